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

import contextlib
from typing import Literal

import torch
from torch import nn

from testbed import hookimpl


def window_matrix(channels: int, half: int, towers: int = 1, dtype=torch.float32, device=None) -> torch.Tensor:
    """The LRN window as a channels x channels 0/1 matrix M, M[i, j] = 1 where channel j is in
    channel i's window: |i - j| <= half and both in the same tower. Symmetric, so the window sum
    S = M a along channels is also its own transpose (the backward's window sum)."""
    index = torch.arange(channels, device=device)
    per = channels // towers
    near = (index[:, None] - index[None, :]).abs() <= half
    same_tower = (index[:, None] // per) == (index[None, :] // per)
    return (near & same_tower).to(dtype)


_WEIGHTS: dict[tuple, torch.Tensor] = {}  # (what, channels, ..., dtype, device) -> a window matrix or a bias


def _cached_window(channels: int, half: int, towers: int, weight: float, dtype, device, conv: bool) -> torch.Tensor:
    """weight * the window matrix, as a [C, C] matrix (for torch.mm) or as the weight [C, C, 1, 1]
    of a 1x1 convolution (``conv``)."""
    key = ("window", channels, half, towers, weight, dtype, device, conv)
    if key not in _WEIGHTS:
        # a normal tensor even when first needed under inference_mode (evaluation before training,
        # as a resumed job does): an inference tensor could not be saved for a later backward
        with torch.inference_mode(False):
            w = window_matrix(channels, half, towers, dtype, device).mul_(weight)
            _WEIGHTS[key] = w[:, :, None, None].contiguous() if conv else w
    return _WEIGHTS[key]


def _cached_bias(channels: int, offset: float, dtype, device) -> torch.Tensor:
    """``offset`` in every one of ``channels``: the window-sum convolution's bias (k of D = k + scale * S)."""
    key = ("bias", channels, offset, dtype, device)
    if key not in _WEIGHTS:
        with torch.inference_mode(False):  # as for the windows above
            _WEIGHTS[key] = torch.full((channels,), offset, dtype=dtype, device=device)
    return _WEIGHTS[key]


# Which way a channels-last window sum goes on a CPU, by measurement (python benchmarks/lrn_ab.py
# --paths, 1 and 2 threads, on the 2-core Zen 3 machine of the README): a 1x1 convolution with the
# window as its weight (oneDNN) beats torch.mm's GEMM at every AlexNet and conv-local shape. From
# 32 channels a tower, each tower's channels become pixels of their own (the memory of N x H x W x
# C read as N x H x (W * towers) x C / towers: no copy) under one convolution with one tower's
# window: 1.1-2.2x faster than a grouped convolution, and than the block-diagonal window whole.
# Shifted adds along the innermost (channel) dimension win once a tower's rows are long against
# the window (128 channels a tower, half 2).
TOWERS_AS_PIXELS_FROM = 32  # channels a tower from which each tower's channels are convolved as pixels
SHIFTED_FROM = 32  # channels a tower per unit of half-width from which shifted adds win


def _shifted_adds(x: torch.Tensor, half: int) -> torch.Tensor:
    """The window sum along dim 1 of [outer, per, inner] (one tower's channels in dim 1) as
    2 x half in-place adds of shifted views. NCHW: inner is H x W, so each add streams through
    whole planes; channels-last: inner is 1 and each add runs along a pixel's channels."""
    out = x.clone()
    for d in range(1, min(half, x.shape[1] - 1) + 1):
        out[:, d:].add_(x[:, :-d])  # add_ on the view: `view[...] += y` would copy it back
        out[:, :-d].add_(x[:, d:])
    return out


def _window_conv(x: torch.Tensor, half: int, towers: int, weight: float, offset: float) -> torch.Tensor:
    """The channels-last window sum as a 1x1 convolution, ``weight`` and ``offset`` folded in."""
    n, c, h, w = x.shape
    per = c // towers
    as_pixels = towers > 1 and per >= TOWERS_AS_PIXELS_FROM
    width, window_towers = (per, 1) if as_pixels else (c, towers)  # as pixels: one tower's window
    k = _cached_window(width, half, window_towers, weight, x.dtype, x.device, conv=True)
    bias = _cached_bias(width, offset, x.dtype, x.device) if offset else None
    if not as_pixels:
        return torch.nn.functional.conv2d(x, k, bias)
    pixels = x.permute(0, 2, 3, 1).reshape(n, h, w * towers, per).permute(0, 3, 1, 2)  # a view: N, H, W, C memory
    out = torch.nn.functional.conv2d(pixels, k, bias)
    return out.permute(0, 2, 3, 1).reshape(n, h, w, c).permute(0, 3, 1, 2)


def window_sum(x: torch.Tensor, half: int, towers: int = 1, weight: float = 1.0, offset: float = 0.0) -> torch.Tensor:
    """offset + weight * sum_{j=i-half}^{i+half} x[:, j] along dim 1, clipped at the ends (the LRN
    window) and, with ``towers`` > 1, at the towers' boundaries: each tower's channels are summed
    on their own. The result has x's memory format. NCHW: shifted adds. Channels-last (channels
    innermost, where shifted views are short strided runs): on a CPU a 1x1 convolution whose
    weight is the banded window matrix (``offset`` its bias), or shifted adds for long towers;
    elsewhere a matrix product. All exact up to float summation order; ``weight`` and ``offset``
    are folded into the convolution, saving passes over the result."""
    n, c, h, w = x.shape
    per = c // towers
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if not channels_last:
        out = _shifted_adds(x.contiguous().view(n * towers, per, h * w), half).view(n, c, h, w)
    elif x.device.type == "cpu" and per < SHIFTED_FROM * half:
        return _window_conv(x, half, towers, weight, offset)
    elif x.device.type == "cpu":
        flat = x.permute(0, 2, 3, 1).reshape(n * h * w * towers, per, 1)  # a view: the memory is N, H, W, C
        out = _shifted_adds(flat, half).view(n, h, w, c).permute(0, 3, 1, 2)
    else:  # weight folded into the matrix: in float16 the unscaled sum of squares could overflow
        flat = x.permute(0, 2, 3, 1).reshape(n * h * w, c)
        out = torch.mm(flat, _cached_window(c, half, towers, weight, x.dtype, x.device, conv=False)).view(n, h, w, c).permute(0, 3, 1, 2)
        return out.add_(offset) if offset else out
    if weight != 1.0:
        out.mul_(weight)
    return out.add_(offset) if offset else out


def _neg_pow_(d: torch.Tensor, beta: float) -> torch.Tensor:
    """d ** -beta (d > 0), in a new tensor. The common exponents avoid the generic pow, whose
    exp/log per element is the most expensive operation of the whole LRN on a CPU:
    0.75 -> rsqrt(rsqrt(d)) * rsqrt(d)^2, 0.5 -> rsqrt(d), 1 -> 1/d (each within a few ulp of pow).
    (d^1/4 / d would save a pass, but rounds differently: every LRN result would change in its
    last digits, and with them the README's measured numbers.)"""
    if beta == 0.75:  # two rsqrts and two products: a sqrt costs about two rsqrts on a CPU
        r = torch.rsqrt(d)  # d^-1/2
        return torch.rsqrt(r).mul_(r).mul_(r)  # d^1/4 * d^-1/2 * d^-1/2
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
        denom = window_sum(sq, half, towers, scale, k)  # D = k + scale * S
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


def _lrn_forward_only(a: torch.Tensor, half: int, scale: float, beta: float, k: float, towers: int) -> torch.Tensor:
    """b = a * D^-beta when no gradient is wanted (evaluation): nothing saved, no q = b / D pass."""
    sq = a * a
    denom = window_sum(sq, half, towers, scale, k)
    if beta == 0.75:  # D^-0.75 as in _neg_pow_, in the storage of the squares and of D: no new tensor
        r = torch.rsqrt(denom, out=sq)
        return torch.rsqrt(r, out=denom).mul_(r).mul_(r).mul_(a)
    return _neg_pow_(denom, beta).mul_(a)


def local_response_norm(a: torch.Tensor, size: int, alpha: float, beta: float, k: float, convention: str, towers: int = 1):
    scale = alpha / size if convention == "divided-by-n" else alpha
    low = a.dtype in (torch.float16, torch.bfloat16)  # the power and the sum of squares want float32
    x = a.float() if low else a
    # and autocast off: it would run the window sum's convolution or matrix product in bf16/fp16,
    # where k + scale * S rounds to k (bf16 has 8 bits) and LRN becomes a fixed rescaling
    autocasting = a.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(a.device.type)  # meta tensors: no autocast
    with torch.autocast(a.device.type, enabled=False) if autocasting else contextlib.nullcontext():
        if torch.is_grad_enabled() and a.requires_grad:
            out = _LRNFunction.apply(x, size // 2, scale, beta, k, towers)
        else:
            out = _lrn_forward_only(x, size // 2, scale, beta, k, towers)
    return out.to(a.dtype) if low else out


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


class ResponseNormSameMap(nn.Module):
    """cuda-convnet's ``rnorm``: each map normalized over a size x size neighbourhood of itself,

        b[c, y, x] = a[c, y, x] / (k + scale * sum_{|dy|, |dx| <= size//2} a[c, y+dy, x+dx]^2) ** beta

    the window clipped at the border; scale = alpha / size^2 (``divided-by-n``, what
    cuda-convnet does with its configured scale) or alpha (``per-term``)."""

    def __init__(self, size, alpha, beta, k, alpha_convention):
        super().__init__()
        self.size, self.alpha, self.beta, self.k, self.alpha_convention = size, alpha, beta, k, alpha_convention

    def forward(self, x):
        a = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        # the mean over the zero-padded window times size^2 is the sum over the window's pixels inside the map
        mean_sq = torch.nn.functional.avg_pool2d(a * a, self.size, stride=1, padding=self.size // 2, count_include_pad=True)
        scale = self.alpha if self.alpha_convention == "divided-by-n" else self.alpha * self.size * self.size
        return (a * (mean_sq * scale + self.k).pow(-self.beta)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, alpha_convention={self.alpha_convention}"


def rnorm(
    channels: int,
    *,
    size: int = 3,
    alpha: float = 5e-5,
    beta: float = 0.75,
    k: float = 1.0,
    alpha_convention: Literal["divided-by-n", "per-term"] = "divided-by-n",
):
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd number (a window centred on each pixel), got {size}")
    if alpha < 0 or beta < 0 or k <= 0:
        raise ValueError("alpha and beta must be >= 0 and k > 0")
    return ResponseNormSameMap(size, alpha, beta, k, alpha_convention)


def none(channels: int):
    return nn.Identity()


def batchnorm(channels: int, *, momentum: float = 0.1, eps: float = 1e-5):
    if not 0 <= momentum <= 1:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)


@hookimpl
def register_normalizations(register):
    register("lrn", lrn, "local response normalization across channels (section 3.3); alpha_convention explicit")
    register("rnorm", rnorm, "same-map response normalization over a size x size window (cuda-convnet rnorm; alpha / size^2)")
    register("none", none, "no normalization")
    register("batchnorm", batchnorm, "batch normalization (Ioffe & Szegedy 2015): the modern comparison")
