"""Normalizations after conv1 and conv2: the paper's local response normalization, none, batchnorm.

LRN (section 3.3), across channels::

    b[i] = a[i] / (k + scale * sum_{j=max(0, i-n//2)}^{min(N-1, i+n//2)} a[j]^2) ** beta

``alpha_convention`` says what ``scale`` is:

- ``divided-by-n``: scale = alpha / n. What the authors' own code (cuda-convnet2) does with
  its configured alpha, and Caffe and torch.nn.LocalResponseNorm too. The default, because
  the paper's hyper-parameters (alpha = 1e-4) were tuned in that code.
- ``per-term``: scale = alpha, the formula exactly as printed in the paper (and what
  TensorFlow's tf.nn.lrn computes with depth_radius = n//2).

The forward and backward are written out by hand: autograd through the windowed sum and the
power keeps several full-size intermediates alive and is several times slower on a CPU.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from testbed import hookimpl


def window_sum(x: torch.Tensor, half: int, towers: int = 1) -> torch.Tensor:
    """sum_{j=i-half}^{i+half} x[:, j] along dim 1, clipped at the ends (the LRN window) and, with
    ``towers`` > 1, at the towers' boundaries: each tower's channels are summed on their own.
    Shifted slices along dim 1 are views in either memory format, so nothing is copied (add_ on
    the view: ``view[...] += y`` would also copy the view back onto itself)."""
    out = x.clone()
    per = x.shape[1] // towers
    for start in range(0, x.shape[1], per):
        block, src = out[:, start : start + per], x[:, start : start + per]
        for d in range(1, min(half, per - 1) + 1):
            block[:, d:].add_(src[:, :-d])
            block[:, :-d].add_(src[:, d:])
    return out


def _neg_pow_(d: torch.Tensor, beta: float) -> torch.Tensor:
    """d ** -beta (d > 0), in a new tensor. The common exponents avoid the generic pow, whose
    exp/log per element is the most expensive operation of the whole LRN on a CPU:
    0.75 -> rsqrt(d * sqrt(d)), 0.5 -> rsqrt(d), 1 -> 1/d (each within a few ulp of pow)."""
    if beta == 0.75:
        return torch.sqrt(d).mul_(d).rsqrt_()
    if beta == 0.5:
        return torch.rsqrt(d)
    if beta == 1.0:
        return torch.reciprocal(d)
    return d.pow(-beta)


class _LRNFunction(torch.autograd.Function):
    """b = a * D^-beta with D = k + scale * S, S the window sum of a^2.

    Saved for the backward: a, D^-beta and q = b / D = a D^(-beta-1); no other full-size
    tensor outlives the forward, and the backward is three passes plus one window sum."""

    @staticmethod
    def forward(ctx, a, half, scale, beta, k, towers):
        sq = a * a
        denom = window_sum(sq, half, towers).mul_(scale).add_(k)  # D = k + scale * S
        inv = _neg_pow_(denom, beta)  # D^-beta
        out = torch.mul(a, inv, out=sq)
        q = torch.div(out, denom, out=denom)  # a D^(-beta-1), in D's storage
        ctx.save_for_backward(a, inv, q)
        ctx.constants = (half, scale, beta, towers)
        return out

    @staticmethod
    def backward(ctx, grad):
        a, inv, q = ctx.saved_tensors
        half, scale, beta, towers = ctx.constants
        # d b_i / d a_j = delta_ij D_i^-beta - 2 beta scale a_i a_j D_i^(-beta-1)  for j in window(i);
        # the window is symmetric, so the second term sums over the same window around j.
        t = grad * q
        s = window_sum(t, half, towers)
        return torch.mul(grad, inv, out=t).addcmul_(a, s, value=-2.0 * beta * scale), None, None, None, None, None


def local_response_norm(a: torch.Tensor, size: int, alpha: float, beta: float, k: float, convention: str, towers: int = 1):
    scale = alpha / size if convention == "divided-by-n" else alpha
    if a.dtype in (torch.float16, torch.bfloat16):  # the power and the sum of squares want float32
        return _LRNFunction.apply(a.float(), size // 2, scale, beta, k, towers).to(a.dtype)
    return _LRNFunction.apply(a, size // 2, scale, beta, k, towers)


class LocalResponseNorm(nn.Module):
    def __init__(self, size, alpha, beta, k, alpha_convention):
        super().__init__()
        self.size, self.alpha, self.beta, self.k, self.alpha_convention = size, alpha, beta, k, alpha_convention

    def forward(self, x):
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.alpha_convention)

    def forward_towers(self, x, towers: int):
        """All towers in one pass, each normalised over its own channels only: what the core's
        TowerSplit would compute with one copy per tower, without splitting and concatenating."""
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.alpha_convention, towers)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, alpha_convention={self.alpha_convention}"

    # LRN's effective strength (testbed/analyses.py DivisorProbe): written from the formula on its
    # own, not through the fast forward above, so that the statistics do not depend on it.
    def divisor(self, x: torch.Tensor) -> torch.Tensor:
        """(k + scale * sum of a^2 over the window) ** beta per element of x: what forward divides by."""
        scale = self.alpha / self.size if self.alpha_convention == "divided-by-n" else self.alpha
        half, channels = self.size // 2, x.shape[1]
        squares = torch.nn.functional.pad(x.float().square(), (0, 0, 0, 0, half, half))  # zero channels at both ends
        window = sum(squares[:, d : d + channels] for d in range(self.size))
        return (self.k + scale * window) ** self.beta

    def resting_divisor(self) -> float:
        """The divisor with no input: k ** beta (a constant divisor makes LRN a fixed rescaling)."""
        return self.k**self.beta


def lrn(
    channels: int,
    *,
    size: int = 5,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 2.0,
    alpha_convention: Literal["divided-by-n", "per-term"] = "divided-by-n",
):
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd number (a window centred on each channel), got {size}")
    if alpha < 0 or beta < 0 or k < 0:
        raise ValueError("alpha, beta and k must be >= 0")
    if k == 0 and beta > 0:
        raise ValueError("k = 0 divides by zero wherever a window is all zeros (after a ReLU); use k > 0")
    return LocalResponseNorm(size, alpha, beta, k, alpha_convention)


def none(channels: int):
    return nn.Identity()


def batchnorm(channels: int, *, momentum: float = 0.1, eps: float = 1e-5):
    if not 0 <= momentum <= 1:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)


@hookimpl
def register_normalizations(register):
    register("lrn", lrn, "local response normalization across channels (section 3.3); alpha_convention explicit")
    register("none", none, "no normalization")
    register("batchnorm", batchnorm, "batch normalization (Ioffe & Szegedy 2015): the modern comparison")
