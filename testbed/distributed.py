"""Processes that train one job together (torchrun / DDP): who they are, and how they agree.

Every decision that changes what the processes do next (stop, diverged, which job runs) must
be taken by all of them together, or one would wait forever in a collective the others never
reach. ``Dist`` is that agreement; with one process every method is a no-op.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

from testbed.errors import BadInput


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    def sum(self, values: list[float], device) -> list[float]:
        """Element-wise sum over the processes (float64, so counts of images stay exact)."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool, device) -> bool:
        """True on every process when it is true on one."""
        return self.sum([float(flag)], device)[0] > 0

    def broadcast(self, value):
        """Rank 0's value (any picklable object), on every process."""
        if not self.active:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        """Every process's value (picklable), in rank order, on every process."""
        if not self.active:
            return [value]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


def from_env(placements: dict, path: str) -> Dist:
    """The process group torchrun describes (WORLD_SIZE, RANK), checked against the variants'
    placements (name -> Placement) of the experiment file ``path``: data-parallel variants need
    torchrun, and under torchrun every variant must be data-parallel, since every process runs
    every job in step."""
    distributed = [name for name, p in placements.items() if p.distributed]
    if distributed and "RANK" not in os.environ:
        raise BadInput(
            f"{path}: variant '{distributed[0]}' uses placement 'data-parallel', which runs one process per device: "
            f"launch it with torchrun, e.g. `torchrun --standalone --nproc_per_node=2 -m testbed run {path}`",
            file=path,
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    others = [name for name, p in placements.items() if not p.distributed]
    if world > 1 and others:
        raise BadInput(
            f"{path}: variant '{others[0]}' is not data-parallel, but this is a torchrun launch of {world} processes; "
            f'run it without torchrun, or leave it out with --only, or give it model.placement = "data-parallel"',
            file=path,
        )
    return Dist(int(os.environ.get("RANK", "0")), world)


def init_process_group(placements: dict, dist: Dist, device: torch.device) -> None:
    if not dist.active or torch.distributed.is_initialized():
        return
    backends = {p.process_group_backend(device) for p in placements.values()}
    backend = backends.pop() if len(backends) == 1 else ("nccl" if device.type == "cuda" else "gloo")
    options = {"device_id": device} if device.type == "cuda" else {}
    torch.distributed.init_process_group(backend, timeout=datetime.timedelta(hours=2), **options)


def leave_process_group() -> None:
    """Every rank waits for the others, then the group is torn down cleanly (no abort at exit)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
