"""Model selection (``train.select``) and early stopping (``train.early_stopping``).

After every epoch :meth:`Selector.update` reads the epoch's metrics record: ``val_acc`` improves
when it is higher than the best so far, ``val_loss`` when it is lower (by more than
``min_delta`` for early stopping; ties keep the earlier epoch). The run keeps the improving
epoch's weights in ``best.pt`` and stops once the stopping metric has not improved for
``patience`` epochs. The state (best value and epoch, epochs without improvement) goes into the
checkpoint, so a resumed run selects and stops as an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gcnnkit.core.errors import ConfigError


def _better(metric: str, value: float, best: float | None, margin: float = 0.0) -> bool:
    if best is None:
        return True
    return value > best + margin if metric == "val_acc" else value < best - margin


@dataclass
class Selector:
    """Which epoch is best by ``select``, and whether to stop early (``patience`` None: never)."""

    select: str = "last"
    stop_metric: str | None = None
    patience: int | None = None
    min_delta: float = 0.0
    best_value: float | None = None
    best_epoch: int | None = None
    stop_best: float | None = None
    stale: int = 0  # epochs since the stopping metric last improved

    @classmethod
    def for_config(cls, train: Any, has_val: bool) -> Selector:
        """From the ``train`` section; refuses validation metrics when there is no validation set."""
        stopping = train.early_stopping
        stop_metric = None
        if stopping.patience is not None:
            stop_metric = stopping.metric or (train.select if train.select != "last" else "val_loss")
        if not has_val:
            key = "train.select" if train.select != "last" else "train.early_stopping" if stop_metric else None
            if key is not None:
                what = train.select if key == "train.select" else f"patience {stopping.patience}"
                raise ConfigError(
                    f"{key}: {what} needs a validation set; set data.val_split (e.g. 0.1) or use a data set "
                    f"with its own validation split"
                )
        return cls(train.select, stop_metric, stopping.patience, stopping.min_delta)

    @property
    def keeps_best(self) -> bool:
        """Whether a ``best.pt`` is kept (``select`` is a validation metric)."""
        return self.select != "last"

    def update(self, epoch: int, record: dict[str, Any]) -> bool:
        """Take epoch ``epoch``'s metrics; True when its weights are the new selection."""
        if self.stop_metric is not None:
            value = float(record[self.stop_metric])
            if _better(self.stop_metric, value, self.stop_best, self.min_delta):
                self.stop_best, self.stale = value, 0
            else:
                self.stale += 1
        if self.select == "last":
            self.best_epoch = epoch
            return True
        value = float(record[self.select])
        if _better(self.select, value, self.best_value):
            self.best_value, self.best_epoch = value, epoch
            return True
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.stale >= self.patience

    def stop_message(self, epoch: int) -> str:
        return (
            f"early stopping after epoch {epoch}: {self.stop_metric} has not improved on {self.stop_best:.4f} "
            f"for {self.stale} epochs (patience {self.patience})"
        )

    def state_dict(self) -> dict[str, Any]:
        """Plain values for the checkpoint."""
        return {
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "stop_best": self.stop_best,
            "stale": self.stale,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_value = state.get("best_value")
        self.best_epoch = state.get("best_epoch")
        self.stop_best = state.get("stop_best")
        self.stale = int(state.get("stale", 0))
