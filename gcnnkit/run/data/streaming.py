"""Reading a :class:`~gcnnkit.run.data.splits.StreamedSplit` batch by batch, and the in-memory switch.

``data.in_memory: auto`` holds a data set in memory when its decoded size (float32,
``N × C × H × W × 4`` bytes over all splits) fits ``data.memory_budget_gb``, and streams it
otherwise; :func:`choose_in_memory` returns the choice and the reason printed at start.

Streaming: a ``DataLoader`` over the split's :class:`ImageStore` with ``data.num_workers``
worker processes (each reading one image at a time, one torch thread each), ``pin_memory`` on
CUDA and ``prefetch_factor`` 2, fed the batches of a given order by a batch sampler, so the
batches hold exactly the images the in-memory path would index. Workers send uint8 images (a
quarter of float32's bytes); the conversion to float happens on the model's device.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

IN_MEMORY_CHOICES = ("auto", "true", "false")


def choose_in_memory(setting: str | bool, decoded_bytes: int, budget_gb: float) -> tuple[bool, str]:
    """``(in_memory, reason)`` for ``data.in_memory`` ``setting`` and the decoded size in bytes."""
    size = (
        f"{decoded_bytes / 2**30:.2f} GiB decoded"
        if decoded_bytes >= 2**30
        else f"{decoded_bytes / 2**20:.0f} MiB decoded"
    )
    if setting in (True, "true"):
        return True, f"in memory (data.in_memory: true; {size})"
    if setting in (False, "false"):
        return False, f"streamed from disk (data.in_memory: false; {size})"
    if decoded_bytes <= budget_gb * 2**30:
        return True, f"in memory (data.in_memory: auto; {size} fits data.memory_budget_gb {budget_gb:g})"
    return False, f"streamed from disk (data.in_memory: auto; {size} exceeds data.memory_budget_gb {budget_gb:g})"


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``0..255`` → float ``[0, 1]``; float stays float32."""
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


class _StoreReader(torch.utils.data.Dataset):
    """``DataLoader`` view of a store: item ``k`` is the store's image ``indices[k]`` ``[C, H, W]``."""

    def __init__(self, split) -> None:
        self.store, self.indices = split.store, split.indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> torch.Tensor:
        return self.store.read(int(self.indices[k]))


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # workers decode; many threads each would only fight over the cores


def stream_batches(split, order: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Images ``[b, C, H, W]`` float in ``[0, 1]`` of the split's samples ``order[0:b]``, … on ``split.device``.

    A worker's error is re-raised as the one-line :class:`DataError` naming the file: the failing
    batch is read again in this process to find it.
    """
    chunks = [order[s : s + batch_size].tolist() for s in range(0, len(order), batch_size)]
    workers = split.num_workers
    cuda = split.device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        _StoreReader(split),
        batch_sampler=chunks,
        num_workers=workers,
        pin_memory=cuda,
        prefetch_factor=2 if workers else None,
        worker_init_fn=_one_thread if workers else None,
    )
    it = iter(loader)
    for chunk in chunks:
        try:
            x = next(it)
        except Exception:
            for k in chunk:  # find the file and raise its own one-line error
                split.store.read(int(split.indices[k]))
            raise
        yield to_float(x.to(split.device, non_blocking=cuda))
