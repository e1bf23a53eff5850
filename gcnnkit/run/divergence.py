"""Divergence: stop a run whose loss or weights stop being finite, and keep its last good checkpoint.

A learning rate far too high (or an overflow in reduced precision) makes the loss NaN or
infinite; training on would only write non-finite weights over the last good checkpoint.
:class:`DivergenceGuard` looks at every step's loss and at the weights after every epoch, and
raises :class:`~gcnnkit.core.errors.DivergenceError` (exit code 3) with one line (so does an
optimizer update too large to store, see :meth:`DivergenceGuard.optimizer_step`): the epoch,
the step, what was non-finite, where the last finite checkpoint is, and what to try.

The loss check costs no synchronisation on an accelerator or across processes: the first
non-finite step is recorded on the device and read every :data:`CHECK_EVERY` steps (every step
on a single CPU process) and at the end of each epoch; under ``torchrun`` every process reads
the same combined flag, so all of them stop at the same step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

from gcnnkit.core.errors import DivergenceError
from gcnnkit.run import distributed

#: Steps between reads of the loss flag on CUDA or under torchrun (each read waits for the device).
CHECK_EVERY = 16


def first_nonfinite(tensors: Mapping[str, torch.Tensor]) -> tuple[str, str] | None:
    """``(name, "nan" or "inf")`` of the first floating-point tensor holding a non-finite value, else None."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name, "nan" if bool(torch.isnan(t).any()) else "inf"
    return None


class DivergenceGuard:
    """Checks the training loss of every step and the weights after every epoch of one run.

    ``saved_epoch`` is the last epoch whose checkpoint is on disk (updated by the training loop).
    """

    def __init__(
        self,
        run_dir: Path,
        lr: float,
        precision: str,
        device: torch.device,
        ctx: distributed.Context = distributed.SINGLE,
        saved_epoch: int = 0,
    ):
        self.run_dir, self.lr, self.precision, self.device, self.ctx = run_dir, lr, precision, device, ctx
        self.saved_epoch = saved_epoch
        self.every = 1 if device.type == "cpu" and not ctx.enabled else CHECK_EVERY
        self._first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self._epoch, self._steps = 0, 0

    def start_epoch(self, epoch: int, steps: int) -> None:
        self._epoch, self._steps = epoch, steps
        self._first_bad.fill_(-1)

    def observe(self, step: int, loss: torch.Tensor) -> None:
        """Note step ``step``'s (1-based) loss; every :attr:`every` steps and at the last one, stop if it was bad."""
        bad = ~torch.isfinite(loss.detach())
        self._first_bad = torch.where(bad & (self._first_bad < 0), step, self._first_bad)
        if step % self.every == 0 or step == self._steps:
            self._check_loss(loss)

    @contextmanager
    def optimizer_step(self, step: int) -> Iterator[None]:
        """Around step ``step``'s update: an update too large for the weights' dtype (torch's "cannot be
        converted ... without overflow", e.g. Adam with lr 1e308) is divergence too, not a traceback."""
        try:
            yield
        except RuntimeError as exc:
            if "overflow" not in str(exc):
                raise
            if int(self._first_bad) >= 0:  # the loss went first, between two reads of the flag
                self._stop(f"the training loss became non-finite at epoch {self._epoch}, {self._where()}")
            self._stop(f"the optimizer's update overflowed at epoch {self._epoch}, step {step} of {self._steps}")

    def _check_loss(self, loss: torch.Tensor) -> None:
        flag = (self._first_bad >= 0).long()
        if self.ctx.enabled:
            (flag,) = distributed.all_sum([flag], self.ctx, self.device)
        if int(flag) == 0:
            return
        value = loss.detach().float()
        what = "nan" if bool(torch.isnan(value)) else ("inf" if not bool(torch.isfinite(value)) else "non-finite")
        self._stop(f"the training loss became {what} at epoch {self._epoch}, {self._where()}")

    def _where(self) -> str:
        """``step S of N``: this process's first non-finite step (another process may have seen one first)."""
        step = int(self._first_bad)
        return f"step {step} of {self._steps}" if step > 0 else f"within {self._steps} steps"

    def check_weights(self, state: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer | None = None) -> None:
        """Stop if any weight or buffer of ``state`` (a model's state dict), or any tensor of the
        optimizer's state (e.g. Adam's second moments), is non-finite: none of it may be saved."""
        bad = first_nonfinite(state)
        if bad is not None:
            name, what = bad
            self._stop(f"the weights hold {what} after epoch {self._epoch} ({name})")
        if optimizer is not None:
            moments = {
                f"{key} of parameter {index}": value
                for index, per_param in optimizer.state_dict()["state"].items()
                for key, value in per_param.items()
            }
            bad = first_nonfinite(moments)
            if bad is not None:
                name, what = bad
                self._stop(f"the optimizer state holds {what} after epoch {self._epoch} ({name})")

    def _stop(self, what: str) -> None:
        kept = (
            f"the last finite checkpoint (epoch {self.saved_epoch}) stays in {self.run_dir}"
            if self.saved_epoch
            else f"no epoch completed, so {self.run_dir} holds no checkpoint"
        )
        hint = f"lower train.lr (now {self.lr:g})"
        if self.precision != "fp32":
            hint += f" or train in full precision (train.mixed_precision: none; now {self.precision})"
        lr_note = "" if math.isfinite(self.lr) else " (train.lr is not finite)"
        raise DivergenceError(f"diverged: {what}{lr_note}; training stopped, {kept}; {hint} in a new run")
