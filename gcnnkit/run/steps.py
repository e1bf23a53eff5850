"""One optimiser step: gradient accumulation (``train.accumulate``) and clipping (``train.grad_clip``).

``train.batch_size`` stays the batch of one step. With ``accumulate: k`` the step's batch is cut
into ``k`` micro-batches (sizes differing by at most one); each is run forward and backward on its
own with its loss weighted by its share of the batch, so the summed gradient is that of the mean
loss over the whole batch — up to float rounding and batch-norm statistics, which are computed per
micro-batch — while only one micro-batch's activations are held at a time. Under
``DistributedDataParallel`` the gradients are all-reduced once, at the last micro-batch. With
``grad_clip: c`` the global L2 norm of the gradients is clipped to ``c`` before the step (after
unscaling under fp16).
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from gcnnkit.run.precision import Precision


def optimiser_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    *,
    weight: float = 1.0,
    accumulate: int = 1,
    grad_clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train on the batch ``x`` ``[B, C, H, W]``, ``y`` ``[B]``; returns (mean loss, logits ``[B, K]``).

    ``weight`` multiplies the loss (the distributed share, :func:`gcnnkit.run.distributed.shard`).
    """
    optimizer.zero_grad(set_to_none=True)
    size = math.ceil(len(y) / accumulate)
    chunks = list(zip(x.split(size), y.split(size), strict=True))
    losses, outputs = [], []
    for i, (xc, yc) in enumerate(chunks):
        last = i == len(chunks) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with precision.autocast():
                logits = model(xc)
            loss = criterion(logits.float(), yc)
            share = loss if len(chunks) == 1 else loss * (len(yc) / len(y))
            precision.backward(share * weight)  # weight 1 in a single process
        losses.append(share.detach())
        outputs.append(logits.detach())
    precision.update(optimizer, grad_clip, model.parameters())
    loss = losses[0] if len(losses) == 1 else torch.stack(losses).sum()
    return loss, outputs[0] if len(outputs) == 1 else torch.cat(outputs)
