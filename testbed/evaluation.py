"""Evaluation on the held-out set: top-1 and top-5 error, softmax averaged over the test views,
and the saturation statistics of the activation layers on the centre patches of the first held-out
batch."""

from __future__ import annotations

import torch

from testbed.assembly import autocast
from testbed.data import Pipeline
from testbed.distributed import Dist
from testbed.errors import BadInput


class SaturationProbe:
    """Per activation layer, the fraction of outputs in the flat part of the curve, over the forward
    passes made while it is open. Only activations that define ``saturation(y)`` are measured."""

    def __init__(self, model):
        self.fractions: dict[str, list] = {}
        self.hooks = [
            module.register_forward_hook(self._hook(path.rsplit(".", 1)[-1]))
            for path, module in model.named_modules()
            if hasattr(module, "saturation")
        ]

    def _hook(self, name):
        def hook(module, _inputs, out):
            # a count, not a float copy of the mask and its mean: this pass over the first batch's
            # activations was a sixth of a centre-view evaluation (benchmarks/eval_throughput.py)
            mask = module.saturation(out.float())
            self.fractions.setdefault(name, []).append(mask.count_nonzero().double() / mask.numel())

        return hook

    def close(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []

    def result(self) -> dict:
        return {name: round(float(torch.stack(v).mean()), 6) for name, v in self.fractions.items()}


class EvaluationStopped(Exception):
    """The user asked to stop while the held-out set was being evaluated."""


def evaluate(
    model,
    pipeline: Pipeline,
    batch_size: int,
    precision: str,
    dist: Dist,
    views: bool = True,
    probe: bool = False,
    stop=None,
    keep: list | None = None,
):
    """(top-1 error, top-5 error, saturation) on the held-out set, softmax averaged over the test
    views (``views=False``: the centre patch only). With ``probe``, the saturation statistics of
    the first batch's centre patches (see SaturationProbe), else {}. ``stop``: a StopFlag looked
    at before every batch (EvaluationStopped when set), so that a stop request does not wait for
    a long test. ``keep``: a list that gets (probabilities, labels) of every batch, on the CPU (the
    ensembles' per-image outputs, testbed/analyses.py)."""
    model.eval()
    wrong1 = wrong5 = seen = 0
    saturation = {}
    with torch.inference_mode(), autocast(precision, pipeline.device):
        for index, (batch, labels) in enumerate(pipeline.test_batches(batch_size, dist.rank, dist.world, views)):
            if stop is not None and stop.requested:
                raise EvaluationStopped()
            b = batch.shape[1]
            probe_view = None
            if probe and index == 0:
                probe_view, saturation = _centre_view(model, pipeline, batch, batch_size, dist, views)
            probs = _mean_probabilities(model, batch, pipeline.memory_format, probe_view, saturation)
            if keep is not None:
                keep.append((probs.cpu(), labels.cpu()))
            k = min(5, probs.shape[-1])
            top = probs.topk(k, dim=-1).indices
            hit1 = top[:, 0] == labels
            hit5 = (top == labels.unsqueeze(1)).any(1)
            wrong1 += (~hit1).sum()
            wrong5 += (~hit5).sum()
            seen += b
    wrong1, wrong5, seen = dist.sum([float(wrong1), float(wrong5), float(seen)], pipeline.device)
    if seen == 0:
        raise BadInput("the held-out set is empty")
    return wrong1 / seen, wrong5 / seen, saturation


# Every epoch measures saturation on the same images, the centre patches of the first batch. The
# configured views need not include them (ten-crop's include them once the padding is cut away,
# but not first: its first is a padded top-left corner); when none is, they get a pass of their own.
def _centre_view(model, pipeline: Pipeline, batch: torch.Tensor, batch_size: int, dist: Dist, views: bool):
    """(the index of the view in ``batch`` that shows the centre patches, or None; the saturation
    statistics when they had to be measured in a pass of their own, else a dict to be filled)."""
    if not views:
        return 0, {}
    centre, _ = next(pipeline.test_batches(batch_size, dist.rank, dist.world, views=False))
    for i, view in enumerate(batch):
        if view.shape == centre[0].shape and torch.equal(view, centre[0]):
            return i, {}
    return None, saturation_of(model, centre[0].contiguous(memory_format=pipeline.memory_format))


def _mean_probabilities(model, batch: torch.Tensor, fmt, probe_view: int | None, saturation: dict) -> torch.Tensor:
    """The softmax averaged over the views of ``batch`` [V, B, ...], one forward pass per view (all
    ten at once is slower on a CPU); the pass over view ``probe_view`` fills ``saturation``."""
    probs = None
    for i, view in enumerate(batch):
        probe = SaturationProbe(model) if i == probe_view else None
        try:
            p = model(view.contiguous(memory_format=fmt)).float().softmax(-1)
        finally:
            if probe is not None:
                probe.close()
        if probe is not None:
            saturation.update(probe.result())
        probs = p if probs is None else probs.add_(p)
    return probs.div_(batch.shape[0])


def saturation_of(model, images: torch.Tensor) -> dict:
    """SaturationProbe's result over one forward pass of ``images``."""
    probe = SaturationProbe(model)
    try:
        model(images)
    finally:
        probe.close()
    return probe.result()
