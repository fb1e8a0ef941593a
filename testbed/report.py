"""The side-by-side table, rendered with rich from the summary document."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def pct(x, digits=1):
    return "-" if x is None else f"{100 * x:.{digits}f}"


def mean_std(metric: dict, scale=100.0, digits=1) -> str:
    if metric["mean"] is None:
        return "-"
    text = f"{scale * metric['mean']:.{digits}f}"
    if metric["std"] is not None:
        text += f" ± {scale * metric['std']:.{digits}f}"
    if metric.get("missing"):  # e.g. seeds that never reached the target
        n = len(metric["values"])
        text += f" ({n}/{n + metric['missing']})"
    return text


def delta_text(d: dict | None) -> str:
    if not d or d.get("delta") is None:
        return "-"
    text = f"{100 * d['delta']:+.1f}"
    if d["within_noise"]:
        text += " [dim](noise)[/dim]"
    elif d["se"] is None:
        text += " [dim](1 seed)[/dim]"
    return text


def paper_text(paper: dict) -> str:
    parts = []
    if "top1" in paper or "top5" in paper:
        parts.append(" / ".join(f"{paper[k]:+.1f}" if k in paper else "?" for k in ("top1", "top5")))
    if "factor" in paper:
        parts.append(f"{paper['factor']:g}x faster")
    if "test_error" in paper:
        parts.append(f"{paper['test_error']:g}% test err")
    if "claim" in paper:
        parts.append(paper["claim"])
    return "; ".join(parts) or "-"


def changes_text(changes: dict) -> str:
    if not changes:
        return "(baseline)"
    out = []
    for key, value in changes.items():
        short = key.split(".", 1)[1] if "." in key else key
        if isinstance(value, dict) and "name" in value:
            value = value["name"] + ("(" + ", ".join(f"{k}={v}" for k, v in value.items() if k != "name") + ")" if len(value) > 1 else "")
        elif isinstance(value, list):
            value = "[" + ", ".join(v["name"] if isinstance(v, dict) else str(v) for v in value) + "]"
        out.append(f"{short}={value}")
    return ", ".join(out)


def status_text(status: str) -> str:
    colour = {"ok": "green", "diverged": "yellow", "failed": "red", "refused": "red"}.get(status, "magenta")
    return f"[{colour}]{status}[/{colour}]"


def number(x, digits=0) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def paper_delta_text(paper: dict) -> str:
    """The paper's number for the table cell; sentences go to the notes under the table."""
    if "top1" in paper or "top5" in paper:
        return "/".join(f"{paper[k]:+.1f}" if k in paper else "?" for k in ("top1", "top5"))
    if "factor" in paper:
        return f"factor {paper['factor']:g}"
    if "test_error" in paper:
        return f"{paper['test_error']:g}% err"
    return "see note" if "claim" in paper else ""


def table_console() -> Console:
    """The terminal's width on a terminal; wide enough for the whole table in a file or a CI log."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


def render(doc: dict, console: Console) -> None:
    table = Table(title=f"{doc['experiment']}  ({doc['run_dir']})", title_justify="left")
    columns = [
        ("variant", "left"), ("changed", "left"), ("top-1 %", "right"), ("Δ top-1", "right"), ("top-5 %", "right"),
        ("Δ top-5", "right"), ("paper Δ", "right"), ("train err %", "right"), ("ep→tgt", "right"), ("s→tgt", "right"),
        ("img/s", "right"), ("params", "right"), ("status", "left"),
    ]
    for name, justify in columns:
        table.add_column(name, justify=justify, max_width=30 if name == "changed" else None, overflow="fold")
    seeds = set()
    notes = []
    for v in doc["variants"]:
        m = v["metrics"]
        d = v["delta_vs_baseline"]
        seeds.add(len(m["top1_error"]["values"]))  # the seeds that finished, which the means are over
        if v["paper"].get("claim"):
            notes.append(f"{v['name']}: the paper: {v['paper']['claim']}")
        table.add_row(
            v["name"],
            escape(changes_text(v["changes"])),
            mean_std(m["top1_error"]),
            delta_text(d.get("top1_error")) if d else "",
            mean_std(m["top5_error"]),
            delta_text(d.get("top5_error")) if d else "",
            paper_delta_text(v["paper"]),
            mean_std(m["train_error"]),
            mean_std(m["epochs_to_target"], scale=1.0, digits=1),
            mean_std(m["time_to_target_s"], scale=1.0, digits=0),
            number(m["train_images_per_s"]["mean"]),
            number(v["parameters"]),
            status_text(v["status"]),
        )
    console.print(table)
    n = max(seeds) if seeds else 0
    if n <= 1:
        console.print("[dim]One seed per variant: no spread was measured, so no Δ can be told apart from noise.[/dim]")
    else:
        console.print(
            f"[dim]Errors: mean ± standard deviation over {n if len(seeds) == 1 else 'the finished'} seeds. Δ = variant − baseline in percentage points; "
            f"(noise): no larger than twice its standard error. Paper Δ: top-1/top-5 on ImageNet. "
            f"ep→tgt, s→tgt: epochs and training seconds to the target training error.[/dim]"
        )
    for note in notes:
        console.print(f"[dim]{escape(note)}[/dim]")
    if doc.get("compare"):
        render_speedups(doc["compare"], console)
    for v in doc["variants"]:
        for p in v.get("problems", []):
            if p["status"] in ("diverged", "failed", "refused"):
                where = f" at epoch {p['epoch']}, step {p['step']}" if p["epoch"] is not None else ""
                plugin = f" [plugin {p['plugin']}]" if p.get("plugin") else ""
                console.print(f"[yellow]{escape(v['name'])} seed {p['seed']}: {p['status']}{where}{escape(plugin)}: {escape(str(p['message']))}[/yellow]")


def render_speedups(compare: dict, console: Console) -> None:
    """Figure 1's measure per setting: epochs and seconds to the target, and the factor."""
    ref = compare["reference"]
    table = Table(title=f"speed-up to the target training error: {compare['key']}, other / {ref}", title_justify="left")
    for col in ("setting", "compared", f"{ref} epochs", "epochs", "factor (epochs)", f"{ref} s", "s", "factor (s)", "paper"):
        table.add_column(col, justify="left" if col in ("setting", "compared") else "right")

    def cell(measured, measure):
        if not measured or not measured["seeds"]:
            return "-"
        values = measured[measure] if measured["reached"] == measured["seeds"] else measured[f"{measure}_bound"]
        mean = sum(values) / len(values)
        text = f"{mean:.1f}" if measure == "epochs" or mean < 100 else f"{mean:.0f}"
        if measured["reached"] < measured["seeds"]:
            text = f">= {text}"
        return text + (f" ({measured['reached']}/{measured['seeds']})" if measured["seeds"] > 1 else "")

    paper = compare.get("paper_factor")
    for row in compare["rows"]:
        mine, theirs = row["measured"][row["compared"]], row["measured"][ref]
        table.add_row(
            escape(row["setting"] or "-"), row["compared"], cell(theirs, "epochs"), cell(mine, "epochs"),
            row["factor_epochs"]["text"], cell(theirs, "seconds"), cell(mine, "seconds"), row["factor_seconds"]["text"],
            f"{paper:g}x" if paper else "",
        )
    console.print(table)
    console.print(
        "[dim]Epochs: the first epoch whose training error (as seen during the epoch) is at or below the target; "
        "(k/n): seeds that got there. '>=': a seed never got there within its epochs, so its count is a lower bound "
        "and so is the factor; '<=' when that happened to the reference.[/dim]"
    )


def render_comparison(a: dict, b: dict, console: Console) -> None:
    """Two runs variant by variant: top-1 and top-5 error of each and the difference."""
    table = Table(title=f"{a['run_dir']}  vs  {b['run_dir']}", title_justify="left")
    for col in ("variant", "top-1 % (A)", "top-1 % (B)", "B − A pp", "top-5 % (A)", "top-5 % (B)", "B − A pp", "status A / B"):
        table.add_column(col, justify="left" if col.startswith(("variant", "status")) else "right")
    right = {v["name"]: v for v in b["variants"]}
    names = [v["name"] for v in a["variants"]] + [n for n in right if n not in {v["name"] for v in a["variants"]}]
    left = {v["name"]: v for v in a["variants"]}
    for name in names:
        va, vb = left.get(name), right.get(name)
        cells = [name]
        for metric in ("top1_error", "top5_error"):
            ma = va["metrics"][metric] if va else None
            mb = vb["metrics"][metric] if vb else None
            cells += [mean_std(ma) if ma else "-", mean_std(mb) if mb else "-"]
            if ma and mb and ma["mean"] is not None and mb["mean"] is not None:
                cells.append(f"{100 * (mb['mean'] - ma['mean']):+.1f}")
            else:
                cells.append("-")
        cells.append(f"{va['status'] if va else '-'} / {vb['status'] if vb else '-'}")
        table.add_row(*cells)
    console.print(table)


def comparison_doc(a: dict, b: dict) -> dict:
    right = {v["name"]: v for v in b["variants"]}
    rows = []
    for va in a["variants"]:
        vb = right.get(va["name"])
        row = {"name": va["name"], "a": va["metrics"], "b": vb["metrics"] if vb else None, "difference": {}}
        for metric in ("top1_error", "top5_error"):
            if vb and va["metrics"][metric]["mean"] is not None and vb["metrics"][metric]["mean"] is not None:
                row["difference"][metric] = vb["metrics"][metric]["mean"] - va["metrics"][metric]["mean"]
        rows.append(row)
    return {"a": a, "b": b, "variants": rows}
