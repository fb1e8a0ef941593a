"""Pictures of a run: learning curves (the paper's Fig. 1 style) and conv1 kernels (Fig. 3 style)."""

from __future__ import annotations

from pathlib import Path

import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mean_curves(epochs: list[dict], key: str) -> dict[str, tuple[list[int], list[float]]]:
    """variant -> (epochs, mean of `key` over the seeds that reached each epoch)."""
    acc: dict[str, dict[int, list[float]]] = {}
    for row in epochs:
        if row.get(key) is not None:
            acc.setdefault(row["variant"], {}).setdefault(row["epoch"], []).append(row[key])
    return {v: (sorted(d), [sum(d[e]) / len(d[e]) for e in sorted(d)]) for v, d in acc.items()}


def learning_curves(epochs: list[dict], variants: list[str], target: float | None, path: Path, title: str) -> Path:
    """Training error against epochs per variant, a dashed line at the target error (Fig. 1)."""
    plt = _pyplot()
    curves = mean_curves(epochs, "train_error")
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.cm.tab20.colors  # 20 distinct colours, then the line style changes
    for i, name in enumerate(v for v in variants if v in curves):
        xs, ys = curves[name]
        if name == "baseline":  # black and on top: what every variant is read against
            ax.plot(xs, ys, "-", marker="o", markersize=3, label=name, color="black", linewidth=2.4, zorder=10)
            continue
        style = "-" if i <= len(colours) else "--"
        ax.plot(xs, ys, style, marker="o", markersize=3, label=name, color=colours[(i - 1) % len(colours)], linewidth=1.4)
    if target is not None:
        ax.axhline(target, color="black", linestyle="--", linewidth=1, label=f"target {target:.0%}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training error rate")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def conv1_towers(model: torch.nn.Module, towers: int) -> list[torch.Tensor]:
    """conv1 kernels [K, 3, h, w] of each tower (two conv1 modules when the towers are on two devices)."""
    from testbed.model import paper_layers

    kernels = [m.weight.detach().float().cpu() for name, m in paper_layers(model) if name == "conv1"]
    if len(kernels) == 1 and towers > 1:
        kernels = list(kernels[0].chunk(towers))
    return kernels


def kernel_grid(kernels: torch.Tensor, columns: int) -> torch.Tensor:
    """Tile kernels [K, 3, h, w] into one RGB image, each kernel scaled to [0, 1] on its own."""
    k, _, h, w = kernels.shape
    lo = kernels.amin(dim=(1, 2, 3), keepdim=True)
    hi = kernels.amax(dim=(1, 2, 3), keepdim=True)
    scaled = (kernels - lo) / (hi - lo).clamp_min(1e-12)
    rows = -(-k // columns)
    grid = torch.ones(3, rows * (h + 1) + 1, columns * (w + 1) + 1)
    for i in range(k):
        r, c = divmod(i, columns)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = scaled[i]
    return grid.permute(1, 2, 0)


def conv1_kernels(model: torch.nn.Module, towers: int, path: Path, title: str) -> Path:
    """One block per tower, like the paper's Fig. 3 (top 48: GPU 1, bottom 48: GPU 2)."""
    plt = _pyplot()
    blocks = conv1_towers(model, towers)
    columns = min(16, len(blocks[0]))
    rows = -(-len(blocks[0]) // columns)
    fig, axes = plt.subplots(len(blocks), 1, figsize=(8, len(blocks) * (8 * rows / columns + 0.45) + 0.4), squeeze=False)
    for t, (ax, kernels) in enumerate(zip(axes[:, 0], blocks)):
        ax.imshow(kernel_grid(kernels, columns=columns).numpy(), interpolation="nearest")
        label = f"tower {'AB'[t]}" if len(blocks) > 1 else "single tower"
        ax.set_title(f"{label}: {len(kernels)} kernels {kernels.shape[-1]}x{kernels.shape[-2]}", fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def figure1(epochs: list[dict], experiment, path: Path) -> Path:
    """The paper's Figure 1 per setting: training error against epochs, the reference value of the
    compared switch (ReLU) solid and the others dashed, with the target line."""
    from testbed.results import compared_value

    plt = _pyplot()
    spec = experiment.compare
    curves = mean_curves(epochs, "train_error")
    settings: dict[str, list] = {}
    for v in experiment.variants:
        if v.name in curves:
            settings.setdefault(v.setting, []).append(v)
    if not settings:
        return path
    columns = min(3, len(settings))
    rows = -(-len(settings) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.6 * rows), squeeze=False, sharey=True)
    styles = ["--", ":", "-."]
    for ax, (setting, variants) in zip(axes.flat, settings.items()):
        others = 0
        for v in variants:
            value = str(compared_value(v.config, spec["key"]))
            xs, ys = curves[v.name]
            if value == spec["reference"]:
                ax.plot(xs, ys, "-", color="black", linewidth=2, label=value)
            else:
                ax.plot(xs, ys, styles[others % len(styles)], linewidth=1.6, label=value)
                others += 1
        target = variants[0].config["train"]["target_train_error"]
        ax.axhline(target, color="grey", linewidth=0.8)
        ax.set_title(setting or "(no setting)", fontsize=9)
        ax.set_xlabel("epochs")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes.flat[len(settings) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("training error rate")
    fig.suptitle(f"{experiment.name}: training error to {target:.0%} (the paper's Figure 1)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- from a run directory


def make_learning_curves(store, run_dir: Path, experiment) -> None:
    """The run's learning curves (and Figure 1 for a [compare] experiment) from its store."""
    epochs = store.epochs()
    if not epochs:
        return
    target = experiment.baseline.config["train"]["target_train_error"]
    learning_curves(
        epochs,
        [v.name for v in experiment.variants],
        target,
        run_dir / "plots" / "learning-curves.png",
        f"{experiment.name}: training error (mean over seeds)",
    )
    if experiment.compare:
        figure1(epochs, experiment, run_dir / "plots" / "figure1.png")


def redraw_plots(run_dir: Path, registry, console, neighbours_of: list[str] | None = None) -> list[Path]:
    """Draw a run's plots again from its store and its checkpoints (`testbed report DIR --plots`),
    and Figure 4's nearest neighbours for the variants ``neighbours_of`` (None: every variant)."""
    from testbed.checkpoint import load, owner
    from testbed.describe import data_shape
    from testbed.model import build_model
    from testbed.results import Store
    from testbed.rundir import checkpoint_path

    store = Store.open_run(run_dir)
    try:
        experiment = store.experiment()
        make_learning_curves(store, run_dir, experiment)
    finally:
        store.close()
    drawn = sorted((run_dir / "plots").glob("*.png"))
    for v in experiment.variants:
        ckpt = checkpoint_path(run_dir, v.name, v.config["train"]["seeds"][0])
        if not ckpt.exists():
            continue
        try:
            state = load(ckpt, owner(v, v.config["train"]["seeds"][0]))
            size, classes = data_shape(v.config["data"], registry)
            built = build_model(v.config["model"], classes, size, registry, "cpu")
            built.module.load_state_dict(state["model"])
        except Exception as exc:  # e.g. towers on GPUs this machine does not have: skip that picture
            console.print(f"[yellow]conv1 plot for {v.name} skipped: {exc}[/yellow]")
            continue
        path = run_dir / "plots" / f"conv1-{v.name}.png"
        conv1_kernels(built.module, built.plan.towers, path, f"{v.name}: conv1 kernels (seed {state['seed']})")
        drawn.append(path)
        if neighbours_of is None or v.name in neighbours_of:
            drawn += _neighbours(v, built.module, registry, run_dir, state["seed"], console)
    return sorted(set(drawn))


def _neighbours(variant, model, registry, run_dir: Path, seed: int, console) -> list[Path]:
    from testbed.neighbours import draw_neighbours

    try:
        path = draw_neighbours(variant, model, registry, run_dir, seed)
    except Exception as exc:  # a picture must never cost the rest
        console.print(f"[yellow]fc7 neighbours for {variant.name} skipped: {exc}[/yellow]")
        return []
    if path is None:
        console.print(f"[yellow]fc7 neighbours for {variant.name} skipped: its data is streamed, not held in memory[/yellow]")
        return []
    return [path]
