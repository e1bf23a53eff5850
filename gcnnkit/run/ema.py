"""An exponential moving average of a model's weights (``train.ema``).

After every optimiser step each floating-point entry of the state dict (parameters and batch-norm
running statistics) moves towards the trained model's: ``avg ← decay · avg + (1 − decay) · w``;
integer entries (``num_batches_tracked``, index tables) are copied. The average is a separate
module, so it is evaluated, selected (``best.pt``) and saved (``checkpoint["ema"]``) without
touching the weights being trained.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """``module``: a copy of the model holding the averaged weights (eval mode when evaluated)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay!r}")
        self.decay = decay
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One averaging step towards ``model``'s current weights (the model the copy was made of)."""
        current = model.state_dict()
        for name, avg in self.module.state_dict().items():
            value = current[name].detach()
            if avg.is_floating_point():
                avg.lerp_(value.to(avg.dtype), 1.0 - self.decay)
            else:
                avg.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state)
