"""Figure 4 (right) of the paper: test images, each followed by the training images whose fc7
feature vectors (the last 4096-wide hidden layer, after its activation) are closest by Euclidean
distance. Features come from a job's final checkpoint, the images through the job's own
preprocessing, centre patch only (no augmentation). The search is one matrix product per chunk
of the training set, never a Python loop over images."""

from __future__ import annotations

from pathlib import Path

import torch

from testbed.analyses import unplaced


def nearest(queries: torch.Tensor, bank: torch.Tensor, k: int, chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances [Q, k], indices [Q, k]) of the k rows of ``bank`` [N, F] closest to each query
    [Q, F] by Euclidean distance, nearest first. |q - b|^2 = |q|^2 - 2 q.b + |b|^2, a chunk of
    the bank at a time, so that memory stays at Q x chunk."""
    queries, k = queries.float(), min(k, len(bank))
    q2 = queries.square().sum(1, keepdim=True)
    best_d = torch.full((len(queries), 0), float("inf"))
    best_i = torch.zeros((len(queries), 0), dtype=torch.long)
    for start in range(0, len(bank), chunk):
        part = bank[start : start + chunk].float()
        b2 = torch.linalg.vector_norm(part, dim=1).square_()  # no chunk-sized temporary, unlike part.square()
        d2 = (queries @ part.T).mul_(-2).add_(q2).add_(b2).clamp_min_(0)
        d, i = d2.topk(min(k, len(part)), dim=1, largest=False)
        best_d, order = torch.cat([best_d, d], 1).topk(k, dim=1, largest=False)
        best_i = torch.cat([best_i, i + start], 1).gather(1, order)
    return best_d.sqrt(), best_i


def fc7_features(model: torch.nn.Module, pipeline, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """fc7's output (after its activation) for uint8 images [N, 3, S, S], centre patch, eval mode."""
    from testbed.data import center_crop

    model = unplaced(model).eval()
    layer = next(m for path, m in model.named_modules() if path.rsplit(".", 1)[-1] == "act7")
    captured = []
    hook = layer.register_forward_hook(lambda _m, _i, out: captured.append(out.float().flatten(1)))
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = center_crop(pipeline._preprocessed(images[start : start + batch_size].to(pipeline.device)), pipeline.input_size)
                model(x.contiguous(memory_format=pipeline.memory_format))
    finally:
        hook.remove()
    return torch.cat(captured)


def pick_queries(labels: torch.Tensor, count: int) -> torch.Tensor:
    """The first test image of each class in turn, until ``count``: a spread of classes."""
    picked: list[int] = []
    by_class = [torch.nonzero(labels == c).flatten().tolist() for c in range(int(labels.max()) + 1)]
    rank = 0
    while len(picked) < min(count, len(labels)):
        for members in by_class:
            if rank < len(members) and len(picked) < count:
                picked.append(members[rank])
        rank += 1
    return torch.tensor(picked)


def neighbour_table(model, pipeline, data, queries: int = 6, k: int = 6) -> dict:
    """The picture's content: query test indices, their k nearest training indices and distances."""
    picked = pick_queries(data.test_labels, queries)
    bank = fc7_features(model, pipeline, data.train_images)
    distances, indices = nearest(fc7_features(model, pipeline, data.test_images[picked]), bank, k)
    return {"queries": picked, "neighbours": indices, "distances": distances}


def draw(table: dict, data, path: Path, title: str) -> Path:
    """One row per query: the test image (framed), then its neighbours, class names above."""
    from testbed.plots import _pyplot

    plt = _pyplot()
    rows, k = table["neighbours"].shape
    fig, axes = plt.subplots(rows, k + 1, figsize=(1.25 * (k + 1), 1.4 * rows), squeeze=False)
    for r, q in enumerate(table["queries"].tolist()):
        cells = [(data.test_images[q], data.test_labels[q], "test")]
        cells += [
            (data.train_images[i], data.train_labels[i], f"{d:.3g}")
            for i, d in zip(table["neighbours"][r].tolist(), table["distances"][r].tolist())
        ]
        for c, (image, label, note) in enumerate(cells):
            ax = axes[r, c]
            ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{data.class_names[int(label)]}\n{note}", fontsize=6)
            for spine in ax.spines.values():
                spine.set_color("red" if c == 0 else "none")
                spine.set_linewidth(2)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def draw_neighbours(variant, model, registry, run_dir: Path, seed: int) -> Path | None:
    """plots/neighbours-<variant>.png for a variant's trained model; None for data not held in memory."""
    from testbed.assembly import build_pipeline
    from testbed.data import InMemoryData, load_dataset
    from testbed.seeding import job_seeds

    cfg = variant.config
    seeds = job_seeds(seed, cfg["train"]["seed_varies"], cfg["data"]["seed"])
    data = load_dataset(cfg["data"], registry, seed=seeds["subset"])
    if not isinstance(data, InMemoryData):
        return None
    built = _Built(model)
    pipeline = build_pipeline(variant, data, built, registry, torch.device("cpu"))
    table = neighbour_table(model, pipeline, data)
    return draw(
        table,
        data,
        Path(run_dir) / "plots" / f"neighbours-{variant.name}.png",
        f"{variant.name} (seed {seed}): test images (red frame) and their nearest training images in fc7 space (Euclidean distance above)",
    )


class _Built:
    """What build_pipeline reads of a built model: its plan."""

    def __init__(self, model):
        self.plan = model.plan
