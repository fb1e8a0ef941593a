"""Activations: a factory takes no context, only its parameters, and returns an elementwise nn.Module."""

from __future__ import annotations

import torch
from torch import nn


class Swish(nn.Module):
    """x * sigmoid(beta * x). beta = 1 is SiLU; as beta grows it approaches ReLU."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta  # a plain float: nothing to move between devices, nothing to train

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.beta * x)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


def swish(*, beta: float = 1.0):
    # Keyword-only arguments with defaults are the user-facing parameters: `beta` becomes
    # model.activation = { name = "swish", beta = 1.5 }. The annotation says float, so an
    # integer from the TOML file (beta = 2) is accepted and widened to 2.0; a string is not.
    if beta <= 0:
        raise ValueError(f"beta must be > 0 (beta = 0 makes swish the linear x/2), got {beta}")
    return Swish(beta)


def mish():
    # No keyword-only arguments: no parameters (`testbed plugins` shows "-").
    return nn.Mish()
