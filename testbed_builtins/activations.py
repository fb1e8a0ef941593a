"""Activations: the paper's ReLU, the saturating nonlinearities it was compared with, and modern ones."""

from __future__ import annotations

import torch
from torch import nn

from testbed import hookimpl


class Saturating(nn.Module):
    """An elementwise nonlinearity that can say which of its outputs sit where its gradient vanishes."""

    def __init__(self, fn, saturated):
        super().__init__()
        self.fn = fn
        self._saturated = saturated

    def forward(self, x):
        return self.fn(x)

    def saturation(self, y: torch.Tensor) -> torch.Tensor:
        """Boolean mask of outputs in the flat part of the curve (for the saturation statistics)."""
        return self._saturated(y)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", "")


def relu():
    # ReLU's flat part is x <= 0: a zero output passes no gradient.
    return Saturating(torch.relu, lambda y: y <= 0)


def tanh():
    return Saturating(torch.tanh, lambda y: y.abs() > 0.99)


def sigmoid():
    return Saturating(torch.sigmoid, lambda y: (y < 0.01) | (y > 0.99))


def leaky_relu(*, negative_slope: float = 0.01):
    if negative_slope < 0:
        raise ValueError(f"negative_slope must be >= 0, got {negative_slope}")
    return nn.LeakyReLU(negative_slope)


def gelu():
    return nn.GELU()


@hookimpl
def register_activations(register):
    register("relu", relu, "max(0, x): the paper's choice (section 3.1)")
    register("tanh", tanh, "hyperbolic tangent: the saturating unit the paper compared against (Fig. 1)")
    register("sigmoid", sigmoid, "logistic 1/(1+exp(-x)): the other saturating unit the paper names")
    register("leaky-relu", leaky_relu, "max(x, slope*x): ReLU without dead units")
    register("gelu", gelu, "x * Phi(x): the modern smooth ReLU")
