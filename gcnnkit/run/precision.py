"""Mixed precision for training: which autocast dtype a run uses, and why.

``train.mixed_precision`` is ``none`` (float32), ``bf16``, ``fp16`` (CUDA only, with a gradient scaler)
or ``auto``: bf16 where the hardware runs it fast — a CPU with bf16 matrix instructions (AMX,
``amx_bf16``, or AVX-512 BF16, ``avx512_bf16``) or a CUDA device that supports bf16 — else float32.
Only the training forward pass runs under autocast; the loss, the optimiser step, evaluation and
``gcnnkit check`` stay in float32.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from contextlib import AbstractContextManager

import torch

from gcnnkit.core.errors import ConfigError

#: Values of ``train.mixed_precision``.
PRECISIONS = ("none", "bf16", "fp16", "auto")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:  # not Linux: no way to tell, so no claim of fast bf16
        pass
    return frozenset()


def fast_bf16(device: torch.device) -> str | None:
    """Why bf16 autocast is fast on ``device`` (a short phrase), or ``None`` when it is not."""
    if device.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return f"CUDA device {torch.cuda.get_device_name(device)} supports bf16"
        return None
    if device.type == "cpu" and torch.backends.mkldnn.is_available():  # oneDNN runs bf16 convolutions
        flags = _cpu_flags()
        if "amx_bf16" in flags:
            return "the CPU has AMX (amx_bf16)"
        if "avx512_bf16" in flags:
            return "the CPU has AVX-512 BF16 (avx512_bf16)"
    return None


def resolve_precision(mode: str, device: torch.device) -> tuple[str, str]:
    """``(none | bf16 | fp16, reason)`` for ``train.mixed_precision: mode`` on ``device``."""
    if mode not in PRECISIONS:
        raise ConfigError(f"train.mixed_precision: {mode!r} is not allowed; allowed: {', '.join(PRECISIONS)}")
    if mode == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"train.mixed_precision: fp16 needs a CUDA device, but the device is {device}; use bf16, auto or none"
        )
    if mode != "auto":
        return mode, "as configured"
    reason = fast_bf16(device)
    if reason is not None:
        return "bf16", f"auto: {reason}"
    return "none", f"auto: no fast bf16 on {device}"


class Precision:
    """The training forward pass under ``torch.autocast`` (bf16/fp16) and, for fp16, a ``GradScaler``.

    ``mode`` is a resolved precision (``none``, ``bf16`` or ``fp16``; see :func:`resolve_precision`).
    """

    def __init__(self, mode: str, device: torch.device, reason: str = "as configured"):
        if mode not in ("none", *_DTYPES):
            raise ValueError(f"resolve the precision first: got {mode!r}")
        self.mode, self.device, self.reason = mode, device, reason
        self.scaler = torch.amp.GradScaler("cuda") if mode == "fp16" else None

    @classmethod
    def for_config(cls, mode: str, device: torch.device, resumed: str | None = None) -> Precision:
        """The precision of ``train.mixed_precision: mode``; a resumed run keeps the one it started with."""
        if resumed is not None and mode == "auto":
            return cls(resumed, device, "auto, as when the run started")
        resolved, reason = resolve_precision(mode, device)
        return cls(resolved, device, reason)

    @property
    def name(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``."""
        return "fp32" if self.mode == "none" else self.mode

    def autocast(self) -> AbstractContextManager:
        dtype = _DTYPES.get(self.mode)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward pass and optimiser step (scaled for fp16)."""
        self.backward(loss)
        self.update(optimizer)

    def backward(self, loss: torch.Tensor) -> None:
        """Add ``loss``'s gradients (scaled for fp16); several calls accumulate."""
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()

    def update(
        self,
        optimizer: torch.optim.Optimizer,
        grad_clip: float | None = None,
        parameters: Iterable[torch.nn.Parameter] | None = None,
    ) -> None:
        """The optimiser step on the accumulated gradients, their global L2 norm first clipped to
        ``grad_clip`` (over ``parameters``, default the optimiser's) when it is given."""
        if grad_clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)
            if parameters is None:
                parameters = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()
