"""Softmax temperatures: fixed, or learned and kept positive."""

from __future__ import annotations

import math

import torch
from torch import nn


class FixedTemperature(nn.Module):
    """A constant temperature (0.05 by default)."""

    learnable = False

    def __init__(self, value: float = 0.05) -> None:
        super().__init__()
        if value <= 0:
            raise ValueError(f"temp.value must be > 0, got {value}")
        self.register_buffer("value", torch.tensor(float(value)))

    def forward(self) -> torch.Tensor:
        return self.value


class LearnableTemperature(nn.Module):
    """A learned temperature ``T = exp(log_t)``, initialised at ``init``.

    The original trains the raw temperature as an unconstrained parameter under weight decay, which can
    drive it to zero or below. Here the parameter is ``log T``: T stays positive by construction, and the
    engine excludes it from weight decay. It is trained with learning rate ``lr * tlr`` (tlr = 0.01 as in the
    original).
    """

    learnable = True

    def __init__(self, init: float = 0.05, tlr: float = 0.01) -> None:
        super().__init__()
        if init <= 0:
            raise ValueError(f"temp.init must be > 0, got {init}")
        if tlr < 0:
            raise ValueError(f"temp.tlr must be >= 0, got {tlr}")
        self.tlr = tlr
        self.log_t = nn.Parameter(torch.tensor(math.log(init)))

    def forward(self) -> torch.Tensor:
        return self.log_t.exp()
