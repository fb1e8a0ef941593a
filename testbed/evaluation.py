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
    # Every epoch measures saturation on the same images, the centre patches: the configured
    # views' first one need not be the centre (ten-crop's is a padded top-left corner), so the
    # final epoch, which uses them, measures in a pass of its own.
    saturation = SaturationProbe(model) if probe and not views else None
    try:
        with torch.inference_mode(), autocast(precision, pipeline.device):
            centre = centre_saturation(model, pipeline, batch_size, dist) if probe and views else None
            for batch, labels in pipeline.test_batches(batch_size, dist.rank, dist.world, views):
                if stop is not None and stop.requested:
                    raise EvaluationStopped()
                b = batch.shape[1]
                # one view at a time: a forward pass over all ten views at once is slower on a CPU
                fmt = pipeline.memory_format
                probs = model(batch[0].contiguous(memory_format=fmt)).float().softmax(-1)
                if saturation is not None:
                    saturation.close()  # one batch is enough for a fraction
                for view in batch[1:]:
                    probs += model(view.contiguous(memory_format=fmt)).float().softmax(-1)
                probs /= batch.shape[0]
                if keep is not None:
                    keep.append((probs.cpu(), labels.cpu()))
                k = min(5, probs.shape[-1])
                top = probs.topk(k, dim=-1).indices
                hit1 = top[:, 0] == labels
                hit5 = (top == labels.unsqueeze(1)).any(1)
                wrong1 += (~hit1).sum()
                wrong5 += (~hit5).sum()
                seen += b
    finally:
        if saturation is not None:
            saturation.close()
    wrong1, wrong5, seen = dist.sum([float(wrong1), float(wrong5), float(seen)], pipeline.device)
    if seen == 0:
        raise BadInput("the held-out set is empty")
    return wrong1 / seen, wrong5 / seen, centre if centre is not None else saturation.result() if saturation is not None else {}


def centre_saturation(model, pipeline: Pipeline, batch_size: int, dist: Dist) -> dict:
    """SaturationProbe's result on the centre patches of this rank's first held-out batch."""
    probe = SaturationProbe(model)
    try:
        for centre, _labels in pipeline.test_batches(batch_size, dist.rank, dist.world, views=False):
            model(centre[0].contiguous(memory_format=pipeline.memory_format))
            break
    finally:
        probe.close()
    return probe.result()
