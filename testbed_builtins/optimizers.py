"""Optimizers: PyTorch's SGD, the paper's own update rule, and Adam for comparison."""

from __future__ import annotations

import torch

from testbed import hookimpl


class PaperSGD(torch.optim.Optimizer):
    """Section 5's update, learning rate inside the momentum buffer::

        v <- momentum * v - weight_decay * lr * w - lr * grad
        w <- w + v

    PyTorch's SGD keeps lr outside the buffer (v <- m v + g + wd w; w <- w - lr v): the two
    agree while lr is constant and differ for a few steps after each lr drop.
    """

    def __init__(self, params, lr, momentum, weight_decay):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p)
                v = state["velocity"]
                v.mul_(momentum).add_(p, alpha=-wd * lr).add_(p.grad, alpha=-lr)
                p.add_(v)
        return loss


def _check(lr, momentum, weight_decay):
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")


def sgd(params, *, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4, nesterov: bool = False):
    _check(lr, momentum, weight_decay)
    if nesterov and momentum == 0:
        raise ValueError("nesterov needs momentum > 0")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def sgd_paper(params, *, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4):
    _check(lr, momentum, weight_decay)
    return PaperSGD(params, lr, momentum, weight_decay)


def adam(params, *, lr: float = 1e-3, weight_decay: float = 0.0):
    _check(lr, 0.0, weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


@hookimpl
def register_optimizers(register):
    register("sgd", sgd, "torch.optim.SGD with momentum and weight decay (defaults: the paper's 0.01 / 0.9 / 5e-4)")
    register("sgd-paper", sgd_paper, "the paper's own update rule: lr inside the momentum buffer (section 5)")
    register("adam", adam, "AdamW (decoupled weight decay): the modern comparison")
