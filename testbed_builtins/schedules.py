"""Learning-rate schedules, stepped once per epoch with that epoch's metrics."""

from __future__ import annotations

import math

from testbed import hookimpl


class Schedule:
    def __init__(self, optimizer):
        self.optimizer = optimizer

    def set_lr(self, factor: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] *= factor

    def step(self, metrics: dict) -> None:  # called after each epoch
        pass

    def state_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "optimizer"}

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)


class Constant(Schedule):
    pass


class Plateau(Schedule):
    """Divide lr by 10 when the held-out error stops improving (section 5), at most max_reductions times."""

    def __init__(self, optimizer, factor, patience, threshold, max_reductions):
        super().__init__(optimizer)
        self.factor, self.patience, self.threshold, self.max_reductions = factor, patience, threshold, max_reductions
        self.best = math.inf
        self.bad_epochs = 0
        self.reductions = 0

    def step(self, metrics):
        error = metrics["test_top1"]
        if error < self.best - self.threshold:
            self.best, self.bad_epochs = error, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.patience and self.reductions < self.max_reductions:
            self.set_lr(self.factor)
            self.reductions += 1
            self.bad_epochs = 0


class Step(Schedule):
    def __init__(self, optimizer, every, factor):
        super().__init__(optimizer)
        self.every, self.factor, self.epoch = every, factor, 0

    def step(self, metrics):
        self.epoch += 1
        if self.epoch % self.every == 0:
            self.set_lr(self.factor)


def constant(optimizer, epochs: int):
    return Constant(optimizer)


def plateau(optimizer, epochs: int, *, factor: float = 0.1, patience: int = 1, threshold: float = 0.001, max_reductions: int = 3):
    if not 0 < factor < 1:
        raise ValueError(f"factor must be in (0, 1), got {factor}")
    if patience < 0 or max_reductions < 0:
        raise ValueError("patience and max_reductions must be >= 0")
    return Plateau(optimizer, factor, patience, threshold, max_reductions)


def step(optimizer, epochs: int, *, every: int = 30, factor: float = 0.1):
    if every < 1:
        raise ValueError(f"every must be >= 1 epoch, got {every}")
    if not 0 < factor <= 1:
        raise ValueError(f"factor must be in (0, 1], got {factor}")
    return Step(optimizer, every, factor)


@hookimpl
def register_schedules(register):
    register("plateau", plateau, "divide lr by 10 when held-out error stops improving, up to 3 times (section 5)")
    register("step", step, "multiply lr by factor every N epochs")
    register("constant", constant, "keep lr fixed (the Figure 1 setting)")
