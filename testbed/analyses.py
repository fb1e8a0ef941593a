"""What the paper measures beyond the table, from the runs themselves (no extra training):

- ensembles (Table 2): the softmax averaged over a variant's seeds, from the per-image test
  outputs each job keeps next to its checkpoint (``seed-K.outputs.npz``: float16 probabilities
  of the final test views and the labels);
- tower colourfulness (Figure 3 as a number): how much colour each tower's conv1 kernels carry;
- LRN's effective strength: the distribution of the divisor a normalization applies, against
  the constant it would be with no input (``k ** beta`` for LRN);
- at chance: a job whose training error never left chance, with the saturation statistics'
  diagnosis and a suggestion.

Figure 4 (nearest neighbours in fc7 space) is in testbed/neighbours.py.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sqlite3
import statistics
from pathlib import Path

import numpy as np
import torch

# ---------------------------------------------------------------------------- ensembles (Table 2)

OUTPUTS_SUFFIX = ".outputs.npz"
ENSEMBLE_TABLE = """
CREATE TABLE IF NOT EXISTS ensembles (
    variant TEXT PRIMARY KEY, seeds TEXT NOT NULL, images INTEGER NOT NULL, views TEXT,
    top1_error REAL, top5_error REAL, single_top1_error REAL, single_top5_error REAL
);
"""


def outputs_path(checkpoint: Path) -> Path:
    """Where a job keeps its per-image test outputs: beside its checkpoint."""
    return Path(checkpoint).with_suffix(OUTPUTS_SUFFIX)


def image_keys(images: torch.Tensor) -> np.ndarray:
    """A 64-bit fingerprint of each uint8 image [N, 3, S, S]: seeds evaluated on different test
    subsets (train.seed_varies with subset) are ensembled over the images they share."""
    flat = images.reshape(len(images), -1).numpy()
    return np.array(
        [int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little", signed=True) for row in flat], dtype=np.int64
    )


def save_outputs(path: Path, probabilities: torch.Tensor, labels: torch.Tensor, views: str, keys: np.ndarray | None = None) -> None:
    """The final evaluation's softmax (averaged over the test views) per test image, as float16
    (10 classes x 10,000 images: 200 kB), its labels and image keys (None: the position in the
    test set), written atomically like a checkpoint."""
    path = Path(path)
    keys = np.arange(len(labels), dtype=np.int64) if keys is None else keys
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(
            f,
            probabilities=probabilities.detach().float().cpu().numpy().astype(np.float16),
            labels=labels.detach().cpu().numpy().astype(np.int32),
            keys=keys,
            views=np.array(views),
        )
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_outputs(path: Path) -> dict:
    with np.load(path) as f:
        return {
            "probabilities": f["probabilities"].astype(np.float32),
            "labels": f["labels"].astype(np.int64),
            "keys": f["keys"],
            "views": str(f["views"]),
        }


def topk_errors(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Top-1 and top-5 error of per-image class probabilities [N, C] (ties: the lower class index,
    as torch.topk on the evaluation's side)."""
    k = min(5, probabilities.shape[1])
    top = torch.from_numpy(probabilities).topk(k, dim=1).indices.numpy()
    return float(np.mean(top[:, 0] != labels)), float(np.mean(~(top == labels[:, None]).any(1)))


def ensemble(outputs: list[dict]) -> dict | None:
    """The seeds' softmax averaged per image over the test images every seed was evaluated on,
    and its errors beside the mean single-net error on those images. None with fewer than two
    seeds, or no image in common."""
    if len(outputs) < 2:
        return None
    firsts = [np.unique(o["keys"], return_index=True) for o in outputs]  # sorted keys, a repeated image's first row
    common = functools.reduce(np.intersect1d, (keys for keys, _ in firsts))
    if not len(common):
        return None
    aligned = []
    for o, (keys, first) in zip(outputs, firsts):
        rows = first[np.searchsorted(keys, common)]
        aligned.append((o["probabilities"][rows], o["labels"][rows]))
    labels = aligned[0][1]
    singles = [topk_errors(p, y) for p, y in aligned]
    top1, top5 = topk_errors(np.mean([p for p, _ in aligned], axis=0), labels)
    return {
        "images": len(labels),
        "views": outputs[0]["views"],
        "top1_error": top1,
        "top5_error": top5,
        "single_top1_error": statistics.fmean(s[0] for s in singles),
        "single_top5_error": statistics.fmean(s[1] for s in singles),
    }


def update_ensembles(store, run_dir: Path, finished: dict[str, list[dict]]) -> dict[str, dict]:
    """variant -> its ensemble over the finished seeds that kept outputs, written to the store's
    ``ensembles`` table (recomputed each time: a resumed run may have finished more seeds)."""
    from testbed.rundir import checkpoint_path

    out = {}
    for variant, jobs in finished.items():
        kept = [(j["seed"], outputs_path(checkpoint_path(run_dir, variant, j["seed"]))) for j in jobs]
        kept = [(seed, path) for seed, path in kept if path.is_file()]
        result = ensemble([load_outputs(path) for _, path in kept])
        if result is not None:
            out[variant] = {**result, "seeds": [seed for seed, _ in kept]}
    try:
        store_ensembles(store.db, out, list(finished))
    except sqlite3.DatabaseError:  # a read-only run directory: `report` still shows them
        store.db.rollback()
    return out


def store_ensembles(db, ensembles: dict[str, dict], variants: list[str]) -> None:
    db.executescript(ENSEMBLE_TABLE)
    for variant in variants:
        db.execute("DELETE FROM ensembles WHERE variant = ?", (variant,))
        e = ensembles.get(variant)
        if e is not None:
            db.execute(
                "INSERT INTO ensembles VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    variant,
                    json.dumps(e["seeds"]),
                    e["images"],
                    e["views"],
                    e["top1_error"],
                    e["top5_error"],
                    e["single_top1_error"],
                    e["single_top5_error"],
                ),
            )
    db.commit()


# ---------------------------------------------------------------------------- Figure 3 as a number


def kernel_colourfulness(kernels: torch.Tensor) -> torch.Tensor:
    """Per kernel [K, 3, h, w]: the mean chroma of the kernel drawn as a picture. Each kernel is
    scaled to [0, 1] by its own range (as the conv1 plot draws it); a pixel's chroma is
    max(R, G, B) - min(R, G, B) (HSV's chroma); the score is its mean over the kernel's pixels.
    0: grey (the three colour planes equal), 1 the most colourful possible."""
    k = kernels.detach().float()
    lo = k.amin(dim=(1, 2, 3), keepdim=True)
    hi = k.amax(dim=(1, 2, 3), keepdim=True)
    scaled = (k - lo) / (hi - lo).clamp_min(1e-12)
    return (scaled.amax(dim=1) - scaled.amin(dim=1)).mean(dim=(1, 2))


def unplaced(model: torch.nn.Module) -> torch.nn.Module:
    """The one-device form of a placed model (two-device towers back as conv groups)."""
    return model.to_grouped() if hasattr(model, "to_grouped") else model


def tower_colourfulness(model: torch.nn.Module) -> list[float]:
    """Each tower's mean conv1 kernel colourfulness (one value for a single tower)."""
    from testbed.plots import conv1_towers

    model = unplaced(model)
    return [round(float(kernel_colourfulness(k).mean()), 6) for k in conv1_towers(model, model.plan.towers)]


def summarize_colourfulness(jobs: list[dict]) -> dict | None:
    """Per tower the spread over seeds; with two towers, also the gap (the more colourful tower
    minus the other, per seed: the paper's towers specialise 'modulo a renumbering')."""
    from testbed.results import spread

    scores = {j["seed"]: j["metrics"].get("conv1_colourfulness") for j in jobs if j.get("metrics")}
    scores = {seed: s for seed, s in scores.items() if s}
    if not scores:
        return None
    towers = max(len(s) for s in scores.values())
    out = {
        "seeds": sorted(scores),
        "by_seed": scores,
        "towers": [spread([s[t] for s in scores.values() if len(s) > t]) for t in range(towers)],
    }
    if towers == 2:
        out["gap"] = spread([max(s) - min(s) for s in scores.values()])
        out["a_minus_b"] = spread([s[0] - s[1] for s in scores.values()])
    return out


# ---------------------------------------------------------------------------- LRN's effective strength


class DivisorProbe:
    """The divisor each normalization layer applies, read from the layer's input by a forward
    pre-hook: a module that offers ``divisor(x)`` (the per-element divisor for input x) and
    ``resting_divisor()`` (the divisor with no input, k ** beta for LRN) is measured. The
    core's TowerSplit is hooked as a whole and each tower's module given its own channels, since
    an all-towers ``forward_towers`` pass never calls the towers' modules."""

    def __init__(self, model: torch.nn.Module):
        from testbed.model import TowerSplit

        self.values: dict[str, list[torch.Tensor]] = {}
        self.resting: dict[str, float] = {}
        self.hooks = []
        inside = {id(m) for split in model.modules() if isinstance(split, TowerSplit) for m in split.towers}
        for path, module in model.named_modules():
            name = path.rsplit(".", 1)[-1]
            if isinstance(module, TowerSplit) and hasattr(module.towers[0], "divisor"):
                self.hooks.append(module.register_forward_pre_hook(self._hook(name, list(module.towers))))
            elif hasattr(module, "divisor") and id(module) not in inside:
                self.hooks.append(module.register_forward_pre_hook(self._hook(name, [module])))

    def _hook(self, name, towers):
        def hook(_module, inputs):
            parts = inputs[0].float().chunk(len(towers), dim=1)
            for m, part in zip(towers, parts):
                self.values.setdefault(name, []).append(m.divisor(part).flatten())
                self.resting[name] = float(m.resting_divisor())

        return hook

    def close(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []

    def result(self) -> dict:
        return {name: divisor_statistics(torch.cat(v), self.resting[name]) for name, v in self.values.items()}


QUANTILE_SAMPLE = 1_000_000  # torch.quantile takes at most 16M elements, and sorts what it takes


def quantile_sample(d: torch.Tensor) -> torch.Tensor:
    """``d`` itself up to QUANTILE_SAMPLE elements, else that many drawn at random with replacement
    (fixed seed): the 1% quantile of 10^6 draws is within about +-0.02 percentage points. Drawing
    indices is O(sample); a permutation of all 10^7 elements of a batch of 250 took 0.5 s, the
    most of an epoch's analyses."""
    if len(d) <= QUANTILE_SAMPLE:
        return d
    return d[torch.randint(len(d), (QUANTILE_SAMPLE,), generator=torch.Generator().manual_seed(0))]


def divisor_statistics(d: torch.Tensor, resting: float) -> dict:
    """The divisor's distribution, and how far it is from the constant ``resting``: ``cv`` (std /
    mean; 0: LRN is a fixed rescaling) and ``mean_excess`` (mean of d / resting - 1)."""
    d = d.double()
    qs = torch.quantile(quantile_sample(d), torch.tensor([0.01, 0.5, 0.99], dtype=torch.float64))
    mean = float(d.mean())
    return {
        "resting": resting,
        "mean": mean,
        "std": float(d.std()) if len(d) > 1 else 0.0,
        "min": float(d.min()),
        "p01": float(qs[0]),
        "median": float(qs[1]),
        "p99": float(qs[2]),
        "max": float(d.max()),
        "cv": float(d.std() / mean) if len(d) > 1 else 0.0,
        "mean_excess": mean / resting - 1,
        "elements": len(d),
    }


def measure_divisors(model: torch.nn.Module, pipeline, batch_size: int, precision: str) -> dict:
    """layer -> divisor statistics over the first held-out batch (centre patches), or {} when no
    layer offers a divisor. The model is left in eval mode, as after an evaluation."""
    from testbed.assembly import autocast

    probe = DivisorProbe(model)
    if not probe.hooks:
        return {}
    model.eval()
    try:
        with torch.inference_mode(), autocast(precision, pipeline.device):
            for views, _labels in pipeline.test_batches(batch_size, views=False):
                model(views[0].contiguous(memory_format=pipeline.memory_format))
                break
    finally:
        probe.close()
    return probe.result()


# ---------------------------------------------------------------------------- at chance

AT_CHANCE_FACTOR = 1.2  # training accuracy at most 1.2 x chance (1 / classes): 12% for 10 classes
AT_CHANCE_AFTER = 2  # judged from the 2nd epoch on: one epoch is too early to call
SATURATED = 0.8  # an activation layer with this fraction of outputs in its flat part is named (ReLU: half is normal)


def at_chance(train_error: float, classes: int) -> bool:
    return 1.0 - train_error <= AT_CHANCE_FACTOR / classes


def chance_problem(job: dict, epochs: list[dict], config: dict, classes: int) -> dict | None:
    """A ``problems`` entry for a finished job that ran at least AT_CHANCE_AFTER epochs and whose
    training error is at chance at its last epoch; None otherwise."""
    rows = sorted((r for r in epochs if r["variant"] == job["variant"] and r["seed"] == job["seed"]), key=lambda r: r["epoch"])
    if len(rows) < AT_CHANCE_AFTER or rows[-1]["train_error"] is None or not at_chance(rows[-1]["train_error"], classes):
        return None
    last = rows[-1]
    message = (
        f"at chance: training error {100 * last['train_error']:.1f}% after {last['epoch']} epochs "
        f"(chance {100 * (1 - 1 / classes):.0f}%); {diagnosis(rows)}; {suggestion(config)}"
    )
    return {"seed": job["seed"], "status": "at-chance", "message": message, "plugin": None, "epoch": last["epoch"], "step": None}


def diagnosis(rows: list[dict]) -> str:
    """What the saturation statistics of the first and last epochs say."""
    first, last = rows[0].get("saturation") or {}, rows[-1].get("saturation") or {}
    if not last:
        return "no saturation statistics (the activation does not define them)"
    dead = sorted((name for name, f in last.items() if f >= SATURATED), key=last.get, reverse=True)
    if not dead:
        worst = max(last, key=last.get)
        return f"no activation layer saturated (the most: {worst} {100 * last[worst]:.0f}% in the flat part at epoch {rows[-1]['epoch']})"
    parts = [
        f"{name}: {100 * last[name]:.0f}% of outputs in the flat part (zero for ReLU) at epoch {rows[-1]['epoch']}"
        + (f", {100 * first[name]:.0f}% after epoch {rows[0]['epoch']}" if name in first else "")
        for name in dead
    ]
    return "; ".join(parts)


def suggestion(config: dict) -> str:
    """The fix measured to train at small sizes (experiments/smoke.toml uses it)."""
    changes = []
    if config.get("model", {}).get("init", {}).get("name") != "kaiming":
        changes.append('model.init = "kaiming"')
    if config.get("data", {}).get("preprocess", {}).get("name") != "standardize":
        changes.append('data.preprocess = "standardize"')
    if not changes:
        return "try a smaller train.optimizer lr, or a different schedule"
    return (
        "try " + " with ".join(changes) + " (they train at 32 px and width 0.25, where the paper's N(0, 0.01) init "
        "on 0-255 inputs stays at chance: docs/analyses.md)"
    )


# Measured (docs: /work/notes/readme-analyses.md, tests/test_analyses.py): the paper's defaults,
# N(0, 0.01) weights ("paper" init) on inputs in the 0-255 scale ("mean" or "none" preprocessing),
# stay at chance on 32 px data at these widths, on CIFAR-10 and on generated data.
UNTRAINABLE = {"geometry": "cifar", "init": ("paper",), "preprocess": ("mean", "none"), "max_width": 0.5}


def known_not_to_train(config: dict, geometry: str) -> str | None:
    """A warning for a variant whose geometry, width, init and preprocessing were measured to stay
    at chance (UNTRAINABLE); None otherwise."""
    model, rule = config["model"], UNTRAINABLE
    if (
        geometry != rule["geometry"]
        or model["width"] > rule["max_width"]
        or model["init"]["name"] not in rule["init"]
        or config["data"]["preprocess"]["name"] not in rule["preprocess"]
    ):
        return None
    return (
        f"model.init = {model['init']['name']!r} with data.preprocess = {config['data']['preprocess']['name']!r} at the "
        f"{geometry} geometry and width {model['width']:g} is known not to train (it stays at chance); "
        'set model.init = "kaiming" and data.preprocess = "standardize", as experiments/smoke.toml does'
    )


def chance_problems(variant, jobs: list[dict], epochs: list[dict]) -> list[dict]:
    """The at-chance entries of a variant's finished jobs (the class count: as the job recorded it)."""
    out = []
    for job in jobs:
        classes = (job.get("metrics") or {}).get("classes") or variant.config.get("data", {}).get("classes")
        problem = chance_problem(job, epochs, variant.config, classes) if classes else None
        if problem:
            out.append(problem)
    return out


# ---------------------------------------------------------------------------- into the summary


def annotate(doc: dict, store, run_dir: Path, experiment, finished: dict[str, list[dict]]) -> None:
    """Add the analyses to the summary document: per variant ``ensemble``, ``conv1_colourfulness``,
    ``lrn_divisor`` (the last epoch's, per layer, mean over seeds) and at-chance ``problems``."""
    ensembles = update_ensembles(store, Path(run_dir), finished)
    epochs = store.epochs()
    by_name = {v.name: v for v in experiment.variants}
    for entry in doc["variants"]:
        jobs = finished.get(entry["name"], [])
        entry["ensemble"] = ensembles.get(entry["name"])
        entry["conv1_colourfulness"] = summarize_colourfulness(jobs)
        entry["lrn_divisor"] = last_divisors([r for r in epochs if r["variant"] == entry["name"]])
        flags = chance_problems(by_name[entry["name"]], jobs, epochs)
        entry["problems"] += flags
        entry["at_chance"] = f"{len(flags)}/{len(jobs)}" if flags else None


def last_divisors(rows: list[dict]) -> dict | None:
    """layer -> {epoch, seeds, and each statistic averaged over the seeds} at the last epoch logged."""
    rows = [r for r in rows if r.get("lrn_divisor")]
    if not rows:
        return None
    last = max(r["epoch"] for r in rows)
    at_last = [r["lrn_divisor"] for r in rows if r["epoch"] == last]
    out = {}
    for layer in at_last[0]:
        stats = [s[layer] for s in at_last if layer in s]
        out[layer] = {"epoch": last, "seeds": len(stats), **{k: statistics.fmean(s[k] for s in stats) for k in stats[0]}}
    return out
