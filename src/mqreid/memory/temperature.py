"""Softmax temperatures: fixed, or learned as a raw parameter with a positivity floor."""

from __future__ import annotations

import torch
from torch import nn


class FixedTemperature(nn.Module):
    """A constant temperature (0.05 by default)."""

    learnable = False

    def __init__(self, value: float = 0.05) -> None:
        super().__init__()
        if value <= 0:
            raise ValueError(f"temp.value={value}: expected a number > 0")
        self.register_buffer("value", torch.tensor(float(value)))

    def forward(self) -> torch.Tensor:
        return self.value

    def param_group(self, base_lr: float, base_weight_decay: float) -> dict | None:
        return None

    def constrain_(self) -> None:
        pass


class LearnableTemperature(nn.Module):
    """A learned temperature: the raw value T is the parameter, as in the original method.

    The original puts ``T`` (initial 0.05) in its own Adam parameter group with learning rate
    ``lr * tlr`` (3.5e-4 x 0.01 = 3.5e-6) and the optimiser's weight decay (5e-4); the group is decayed by
    the learning-rate schedule like every other group. Adam moves a parameter by about its learning rate per
    step, so T moves by about 3.5e-6 per step (0.05 -> 0.042 over 50 x 200 steps on Market-1501). Training
    ``log T`` instead would shrink that step twenty-fold, so the parameter stays raw.

    Positivity: after every optimiser step the trainer calls :meth:`constrain_`, which clamps T to
    ``floor`` (default 1e-3, far below any value the original reaches). The clamp changes nothing
    while T is above the floor, so the dynamics are the original's.

    Args:
        init: initial temperature (> floor).
        tlr: the temperature's learning rate as a multiple of the optimiser's (original ``--tlr``).
        weight_decay: the group's weight decay; ``None`` uses the optimiser's (the original's behaviour).
        floor: smallest allowed temperature (> 0).
    """

    learnable = True

    def __init__(self, init: float = 0.05, tlr: float = 0.01, weight_decay: float | None = None,
                 floor: float = 1e-3) -> None:
        super().__init__()
        if floor <= 0:
            raise ValueError(f"temp.floor={floor}: expected a number > 0")
        if init <= floor:
            raise ValueError(f"temp.init={init}: expected a number > temp.floor ({floor})")
        if tlr < 0:
            raise ValueError(f"temp.tlr={tlr}: expected a number >= 0")
        if weight_decay is not None and weight_decay < 0:
            raise ValueError(f"temp.weight_decay={weight_decay}: expected a number >= 0 or null")
        self.tlr, self.weight_decay, self.floor = tlr, weight_decay, floor
        self.temperature = nn.Parameter(torch.tensor(float(init)))

    def forward(self) -> torch.Tensor:
        return self.temperature

    def param_group(self, base_lr: float, base_weight_decay: float) -> dict:
        """The optimiser group of the temperature: lr x tlr, and the optimiser's weight decay unless set."""
        wd = base_weight_decay if self.weight_decay is None else self.weight_decay
        return {"params": [self.temperature], "lr": base_lr * self.tlr, "weight_decay": wd, "name": "temperature"}

    @torch.no_grad()
    def constrain_(self) -> None:
        """Clamp T to the floor (call after each optimiser step)."""
        self.temperature.clamp_(min=self.floor)
