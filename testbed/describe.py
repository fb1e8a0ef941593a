"""`testbed show`: what each variant builds, without training, and the saturation table of `report`."""

from __future__ import annotations

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from testbed import plugins
from testbed.analyses import known_not_to_train
from testbed.data import load_dataset
from testbed.errors import BadInput, PluginFailure
from testbed.experiment import Experiment
from testbed.model import build_model, layer_shapes, parameter_count


def data_shape(data_cfg: dict, registry) -> tuple[int, int]:
    """(image size, classes) from the file, else from the dataset factory's declared defaults,
    else by loading the data (only then)."""
    declared = registry.get("dataset", data_cfg["dataset"]["name"]).contract
    size = data_cfg["image_size"] or declared.get("image_size")
    classes = data_cfg["classes"] or declared.get("classes")
    if size is None or classes is None:
        data = load_dataset(data_cfg, registry)
        size, classes = size or data.image_size, classes or len(data.class_names)
    return size, classes


def describe_variant(variant, registry, device: torch.device) -> dict:
    cfg = variant.config
    size, classes = data_shape(cfg["data"], registry)
    with torch.device("meta"):
        built = build_model(cfg["model"], classes, size, registry, device=None)
    model = cfg["model"]
    return {
        "name": variant.name,
        "changes": variant.changes,
        "components": {
            "architecture": model["architecture"]["name"],
            "activation": model["activation"]["name"],
            "normalization": model["normalization"]["name"],
            "pooling": model["pooling"]["name"],
            "placement": model["placement"]["name"],
            "augmentation": {"train": [a["name"] for a in cfg["augment"]["train"]], "test": cfg["augment"]["test"]["name"]},
            "dropout": model["dropout"],
            "init": model["init"]["name"],
            "dataset": cfg["data"]["dataset"]["name"],
            "preprocess": cfg["data"]["preprocess"]["name"],
        },
        "slots": registry.get("architecture", model["architecture"]["name"]).contract.get("slots"),
        "geometry": built.plan.geometry,
        "input_size": built.plan.input_size,
        "classes": classes,
        "parameters": parameter_count(built.module),
        "tower_devices": built.placement.tower_devices(device),
        "layers": layer_shapes(built.module),
        "seeds": cfg["train"]["seeds"],
        "paper": variant.paper,
        "config": cfg,
    }


def check_like_run(variant, registry) -> str | None:
    """The checks `testbed run` makes before training (every component created, the model on
    the meta device, the batch size against the training set), against the loaded data when
    `show` had to load it, else a stand-in of the declared size. Bad input raises as in `run`;
    anything else a component raises is what `run` would fail that job with: returned as a warning."""
    from testbed.assembly import check_job, stand_in_data
    from testbed.data import loaded_dataset

    size, classes = data_shape(variant.config["data"], registry)
    data = loaded_dataset(variant.config["data"]) or stand_in_data(variant.config["data"], size, classes)
    try:
        check_job(variant, data, registry)
    except BadInput:
        raise
    except Exception as exc:
        raised = f"{type(exc).__name__}: {exc} [plugin {plugins.blame(exc)}]"
        return f"variant '{variant.name}': a component raised {raised}; `run` would fail that job"
    return None


def describe_experiment(experiment: Experiment, registry) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    variants, warnings = [], []
    for v in experiment.variants:
        try:
            variants.append(describe_variant(v, registry, device))
            warning = check_like_run(v, registry)
            if warning:
                warnings.append(warning)
            untrainable = known_not_to_train(v.config, variants[-1]["geometry"])
            if untrainable:
                warnings.append(f"variant '{v.name}': {untrainable}")
        except BadInput as exc:
            where = "" if v.name == "baseline" else f"variant '{v.name}': "
            raise BadInput(f"{experiment.path}: {where}{exc}", file=experiment.path) from None
        except Exception as exc:
            raise PluginFailure(
                f"{experiment.path}: variant '{v.name}': a component raised {type(exc).__name__}: {exc} [plugin {plugins.blame(exc)}]"
            ) from None
    return {
        "experiment": experiment.name,
        "path": experiment.path,
        "description": experiment.description,
        "variants": variants,
        "warnings": warnings,
    }


def _component(spec: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "name")
    return f"{spec['name']}({params})" if params else spec["name"]


def _setup_rows(base: dict, cfg: dict) -> list[tuple[str, str]]:
    """(slot, text) rows of the baseline's setup table: only the slots its architecture honours."""
    slots = base.get("slots")  # None: every [model] key counts
    if slots is None:
        model_row = f"{base['geometry']} geometry, {base['input_size']} px input, width {cfg['model']['width']:g}"
    else:
        model_row = f"architecture {_component(cfg['model']['architecture'])}, {base['input_size']} px input"
    rows = [
        ("data", f"{_component(cfg['data']['dataset'])}, {base['classes']} classes, preprocess {_component(cfg['data']['preprocess'])}"),
        ("model", model_row),
        ("activation", _component(cfg["model"]["activation"])),
        ("normalization", _component(cfg["model"]["normalization"])),
        ("pooling", _component(cfg["model"]["pooling"])),
        ("dropout", f"{cfg['model']['dropout']:g} in fc6, fc7"),
        ("init", _component(cfg["model"]["init"])),
        ("placement", _component(cfg["model"]["placement"])),
        ("augment", f"train [{', '.join(_component(a) for a in cfg['augment']['train'])}], test {_component(cfg['augment']['test'])}"),
        (
            "train",
            f"{cfg['train']['epochs']} epochs, batch {cfg['train']['batch_size']}, {_component(cfg['train']['optimizer'])}, "
            f"schedule {_component(cfg['train']['schedule'])}, seeds {cfg['train']['seeds']}",
        ),
    ]
    if slots is not None:  # only the slots the architecture honours
        rows = [
            row
            for row in rows
            if row[0] not in ("activation", "normalization", "pooling", "dropout", "init", "placement") or row[0] in slots
        ]
    groups = {k: cfg["train"][k] for k in ("bias_lr_scale", "bias_weight_decay", "layer_weight_decay")}
    if groups != {"bias_lr_scale": 1.0, "bias_weight_decay": None, "layer_weight_decay": {}}:
        rows.append(("param groups", ", ".join(f"{k}={v}" for k, v in groups.items() if v not in (None, {}, 1.0))))
    if cfg["model"]["skip"]:
        rows.append(("skip", ", ".join(cfg["model"]["skip"])))
    return rows


def render_description(doc: dict, console: Console) -> None:
    from testbed.report import changes_text, paper_text

    base = doc["variants"][0]
    cfg = base["config"]
    setup = Table(title=f"{doc['experiment']}: the baseline ({doc['path']})", title_justify="left", show_header=False)
    setup.add_column("slot", style="bold")
    setup.add_column("component")
    rows = _setup_rows(base, cfg)
    for slot, text in rows:
        setup.add_row(slot, escape(text))
    console.print(setup)
    table = Table(title="variants", title_justify="left")
    for col in ("variant", "what changed", "params", "tower devices", "paper"):
        table.add_column(col, justify="right" if col == "params" else "left", overflow="fold")
    for v in doc["variants"]:
        table.add_row(
            v["name"],
            escape(changes_text(v["changes"])),
            f"{v['parameters']:,}",
            ", ".join(v["tower_devices"]),
            escape(paper_text(v["paper"])) if v["paper"] else "",
        )
    console.print(table)
    base = doc["variants"][0]
    differing = [v for v in doc["variants"][1:] if v["layers"] != base["layers"]]
    shapes = Table(
        title=f"layer output shapes (C x H x W) and parameters; baseline: {base['input_size']} px, {base['geometry']}", title_justify="left"
    )
    shapes.add_column("layer")
    for v in [base] + differing:
        shapes.add_column(v["name"], justify="right")
        shapes.add_column("params", justify="right")
    names = [layer["name"] for layer in base["layers"]]
    for v in differing:
        names += [layer["name"] for layer in v["layers"] if layer["name"] not in names]
    for name in names:
        row = [name]
        for v in [base] + differing:
            layer = next((layer for layer in v["layers"] if layer["name"] == name), None)
            row.append("x".join(map(str, layer["shape"])) if layer else "-")
            row.append(f"{layer['parameters']:,}" if layer and layer.get("parameters") else "")
        shapes.add_row(*row)
    console.print(shapes)


def render_saturation(epochs: list[dict], console: Console) -> None:
    """Per variant, the fraction of saturated units per activation layer at the first and last epoch."""
    rows: dict[str, dict[int, list[dict]]] = {}
    for r in epochs:
        if r.get("saturation"):
            rows.setdefault(r["variant"], {}).setdefault(r["epoch"], []).append(r["saturation"])
    if not rows:
        return
    layers = sorted({k for per in rows.values() for recs in per.values() for rec in recs for k in rec})
    table = Table(
        title="saturated units per layer (% of outputs in the flat part of the activation; tanh |y|>0.99, relu y<=0)", title_justify="left"
    )
    table.add_column("variant")
    table.add_column("epoch", justify="right")
    for layer in layers:
        table.add_column(layer, justify="right")
    for variant, per_epoch in rows.items():
        for epoch in sorted({min(per_epoch), max(per_epoch)}):
            recs = per_epoch[epoch]
            cells = []
            for layer in layers:
                vals = [rec[layer] for rec in recs if layer in rec]
                cells.append(f"{100 * sum(vals) / len(vals):.1f}" if vals else "-")
            table.add_row(variant, str(epoch), *cells)
    console.print(table)
