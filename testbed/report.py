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


VERDICT_COLOURS = {"better": "green", "worse": "red"}
SHORT_REASONS = ("1 seed", "no spread", "censored", "missing")  # reason tags shown instead of "inconclusive"


def verdict_text(d: dict) -> str:
    """The verdict as a coloured word that reads the same without colour."""
    if d["verdict"] in VERDICT_COLOURS:
        colour = VERDICT_COLOURS[d["verdict"]]
        return f"[{colour}]{d['verdict']}[/{colour}]"
    tag = (d.get("reason") or "").split(":")[0]
    return f"[dim]({tag})[/dim]" if tag in SHORT_REASONS else "[dim]inconclusive[/dim]"


def interval_text(d: dict, scale: float = 100.0) -> str:
    return escape(f"[{scale * d['ci_low']:+.1f}, {scale * d['ci_high']:+.1f}]") if d.get("ci_low") is not None else ""


def delta_text(d: dict | None, scale: float = 100.0) -> str:
    """'+2.6 inconclusive' over '[-1.2, +6.4]': the delta and its verdict, the test's interval below
    (two short lines keep the table narrow enough for 200 columns)."""
    if not d or d.get("delta") is None:
        return "-"
    interval = interval_text(d, scale)
    return f"{scale * d['delta']:+.1f} {verdict_text(d)}" + (f"\n{interval}" if interval else "")


def with_verdict(text: str, d: dict | None) -> str:
    """A value's cell with its delta's verdict appended where there is one (better or worse)."""
    return f"{text} {verdict_text(d)}" if d and d["verdict"] in VERDICT_COLOURS else text


def seeds_text(d: dict) -> str:
    needed = d["seeds_needed"]
    if needed is None:
        tag = (d.get("reason") or "").split(":")[0]
        return f"- ({tag})" if tag in SHORT_REASONS else "-"
    return f"{needed:,}" if isinstance(needed, int) else needed


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


def _columns(doc: dict) -> list[tuple]:
    """(header, justify, cell) of the main table; a column nobody has a value for is left out."""
    variants = doc["variants"]

    def deltas(v):
        return v["delta_vs_baseline"]

    def has(predicate):
        return any(predicate(v) for v in variants)

    reached = has(lambda v: v["metrics"]["epochs_to_target"]["values"])
    columns = [
        ("variant", "left", lambda v: v["name"]),
        ("changed", "left", lambda v: escape(changes_text(v["changes"]))),
        ("top-1 %", "right", lambda v: mean_std(v["metrics"]["top1_error"])),
        ("Δ top-1", "right", lambda v: delta_text(deltas(v).get("top1_error")) if deltas(v) else ""),
        ("top-5 %", "right", lambda v: mean_std(v["metrics"]["top5_error"])),
        ("Δ top-5", "right", lambda v: delta_text(deltas(v).get("top5_error")) if deltas(v) else ""),
        ("ensemble top-1/5 %", "right", ensemble_text) if has(lambda v: v.get("ensemble")) else None,
        ("paper Δ", "right", lambda v: paper_delta_text(v["paper"])) if has(lambda v: v["paper"]) else None,
        ("train err %", "right", lambda v: with_verdict(mean_std(v["metrics"]["train_error"]), deltas(v).get("train_error"))),
        (
            "ep→tgt",
            "right",
            lambda v: with_verdict(mean_std(v["metrics"]["epochs_to_target"], scale=1.0, digits=1), deltas(v).get("epochs_to_target")),
        )
        if reached
        else None,
        ("s→tgt", "right", lambda v: mean_std(v["metrics"]["time_to_target_s"], scale=1.0, digits=0)) if reached else None,
        ("img/s", "right", lambda v: number(v["metrics"]["train_images_per_s"]["mean"])),
        ("params", "right", lambda v: number(v["parameters"])),
        (
            "status",
            "left",
            lambda v: status_text(v["status"]) + (f" [yellow]at chance {v['at_chance']}[/yellow]" if v.get("at_chance") else ""),
        )
        if has(lambda v: v["status"] != "ok" or v.get("at_chance"))
        else None,
    ]
    return [c for c in columns if c is not None]


def render(doc: dict, console: Console) -> None:
    table = Table(title=f"{doc['experiment']}  ({doc['run_dir']})", title_justify="left")
    columns = _columns(doc)
    for name, justify, _ in columns:
        table.add_column(name, justify=justify, max_width=30 if name == "changed" else None, overflow="fold")
    for v in doc["variants"]:
        table.add_row(*(cell(v) for _, _, cell in columns))
    console.print(table)
    for line in footnote(doc, {name for name, _, _ in columns}):
        console.print(f"[dim]{escape(line)}[/dim]")
    for v in doc["variants"]:
        if v["paper"].get("claim"):
            console.print(f"[dim]{escape(v['name'])}: the paper: {escape(v['paper']['claim'])}[/dim]")
    render_paper_checks(doc, console)
    render_analyses(doc, console)
    if doc.get("compare"):
        render_speedups(doc["compare"], console)
    for v in doc["variants"]:
        for p in v.get("problems", []):
            if p["status"] in ("diverged", "failed", "refused", "at-chance"):
                where = f" at epoch {p['epoch']}, step {p['step']}" if p["epoch"] is not None and p["step"] is not None else ""
                plugin = f" [plugin {p['plugin']}]" if p.get("plugin") else ""
                status = "" if p["status"] == "at-chance" else f" {p['status']}{where}{escape(plugin)}:"  # its message says so
                console.print(f"[yellow]{escape(v['name'])} seed {p['seed']}:{status} {escape(str(p['message']))}[/yellow]")


def footnote(doc: dict, shown: set) -> list[str]:
    """What the numbers are: the spread, then how each Δ was judged (test, level, correction, looks)."""
    seeds = {len(v["metrics"]["top1_error"]["values"]) for v in doc["variants"]}  # the finished seeds the means are over
    n = max(seeds) if seeds else 0
    lines = []
    if n <= 1:
        lines.append("One seed per variant: no spread was measured, so no Δ has a verdict; 3 or more seeds per arm give one (--seeds 3).")
    else:
        lines.append(
            f"Errors: mean ± standard deviation over {n if len(seeds) == 1 else 'the finished'} seeds. "
            "Δ = variant − baseline in percentage points, its interval below it."
            + (" Paper Δ: top-1/top-5 on ImageNet." if "paper Δ" in shown else "")
        )
        if doc.get("statistics"):
            rows = [(v["name"], v["delta_vs_baseline"], v.get("pairing")) for v in doc["variants"][1:]]
            lines += verdict_notes(doc["statistics"], rows, "", "train err or ep→tgt" if "ep→tgt" in shown else "train err")
    lines += seed_policy_notes(doc["variants"])
    if "ensemble top-1/5 %" in shown:
        lines.append(
            "Ensemble: the top-1/top-5 error of the softmax averaged over the seeds (n), on the same test views, "
            "beside the mean single-net error in top-1 % (the paper's Table 2: 5 CNNs)."
        )
    if "ep→tgt" in shown:
        lines.append("ep→tgt, s→tgt: epochs and training seconds to the target training error; (k/n): seeds that reached it.")
    return lines


def seed_policy_notes(variants: list[dict]) -> list[str]:
    """train.seed_varies: which sources of variation a seed changes (the rest is fixed)."""
    policies = {tuple(v.get("seed_varies") or ()) for v in variants}
    if len(policies) == 1:
        (policy,) = policies
        varied = ", ".join(policy) if policy else "nothing"
        return [f"Seed k varies: {varied} (train.seed_varies); the rest is the same for every seed."]
    return [
        "Seed k varies, per variant (train.seed_varies): "
        + "; ".join(f"{v['name']}: {', '.join(v.get('seed_varies') or ()) or 'nothing'}" for v in variants)
        + "."
    ]


def variants_count(n: int, what: str = "") -> str:
    return f"{n} variant{'s' if n != 1 else ''}{what}"


def verdict_notes(st: dict, rows: list[tuple], what: str = "", worded: str = "") -> list[str]:
    """The footnote on the verdicts (plain text). rows: (name, {metric: judged delta}, pairing) per
    comparison; what: after "N variants" (e.g. " compared"); worded: the value columns that carry
    their delta's verdict word."""
    family = variants_count(st["family_size"], what)
    level = f"{100 * st['interval_level']:.4g}%"
    if st["correction"] == "dunnett":
        rule = f"Dunnett's many-to-one test across the {family} (pooled variance, seeds not paired): p and the {level} intervals adjusted"
    else:
        adjusted = {"holm": "Holm-adjusted ", "none": "unadjusted "}[st["correction"]]
        rule = (
            f"{adjusted}p ≤ {st['alpha'] / st['looks']:.3g}"
            + (f" across the {family}" if st["correction"] == "holm" else "")
            + f"; the {level} interval is the test's own, not adjusted for multiplicity"
        )
    lines = [
        f"Verdicts (lower is better): better / worse by {rule}; else inconclusive (reasons and p-values in --json)."
        + (f" A word after {worded}: that Δ's verdict." if worded else "")
    ]
    if st["looks"] > 1:
        lines.append(
            f"Alpha {st['alpha']:.3g} is split over {st['looks']} planned looks (Bonferroni): "
            f"each look tests at {st['alpha'] / st['looks']:.3g}."
        )
    lines.append("Tests: " + tests_text(rows) + ".")
    return lines


PAIRED_SHARES = (
    "both arms draw the same subset, order, augmentation and dropout streams, and the same initial weights where the shapes agree"
)


def tests_text(rows: list[tuple]) -> str:
    """Which test judged which comparisons: 'paired t ... for every comparison; Welch's t for x ([data] differs)'."""
    groups: dict[str, list] = {}
    for name, deltas, pairing in rows:
        test = (deltas.get("top1_error") or {}).get("test")
        if test == "paired-t":
            groups.setdefault(f"paired t over the seeds both arms finished (seed k: {PAIRED_SHARES})", []).append(name)
        elif test == "welch":
            why = pairing["why"].split(":")[0] if pairing else ""
            groups.setdefault("Welch's t (unpaired)", []).append(f"{name} ({why})" if why else name)
        elif test == "dunnett":
            groups.setdefault("Dunnett's" + (" (the seeds would pair)" if pairing and pairing["seeds"] else ""), []).append(name)
        else:
            groups.setdefault("none", []).append(name)
    parts = []
    for label, names in groups.items():
        if label == "none":
            parts.append(f"no test for {_names(names, len(rows))} (too few seeds)")
        elif label.startswith("Welch"):
            parts.append(f"{label} for " + "; ".join(names))
        else:
            parts.append(f"{label} for {_names(names, len(rows))}")
    return "; ".join(parts) or "none"


def _names(names: list, total: int) -> str:
    if len(names) == total:
        return "every comparison" if total > 1 else names[0]
    return ", ".join(names) if len(names) <= 4 else f"{len(names)} of them"


def render_paper_checks(doc: dict, console: Console) -> None:
    """Where a variant carries the paper's delta: the measured one beside it, whether they agree, and
    the seeds per arm that would detect the paper's delta."""
    rows = [
        (v["name"], label, v["delta_vs_baseline"][metric])
        for v in doc["variants"][1:]
        for label, metric in (("top-1", "top1_error"), ("top-5", "top5_error"))
        if "paper_check" in v["delta_vs_baseline"].get(metric, {})
    ]
    if not rows:
        return
    table = Table(title="the paper's Δ against the measured Δ (variant − baseline, points)", title_justify="left")
    for col in ("variant", "metric", "paper Δ", "measured Δ", "interval", "check", "seeds for 80% power"):
        table.add_column(col, justify="left" if col in ("variant", "metric", "check") else "right")
    colours = {"agrees": "green", "contradicts": "yellow", "cannot tell": "dim"}
    for name, label, d in rows:
        check = f"[{colours[d['paper_check']]}]{d['paper_check']}[/{colours[d['paper_check']]}]"
        measured = f"{100 * d['delta']:+.1f} {verdict_text(d)}" if d["delta"] is not None else "-"
        table.add_row(name, label, f"{100 * d['paper_delta']:+.1f}", measured, interval_text(d), check, seeds_text(d))
    console.print(table)
    st = doc["statistics"]
    looks = f" / {st['looks']} looks" if st["looks"] > 1 else ""
    family = f" / {variants_count(st['family_size'])}" if st["correction"] != "none" else ""
    note = (
        f"agrees / contradicts: the verdict is better or worse, with the paper's sign / the opposite sign; else cannot tell. "
        f"Seeds: per arm (pairs when paired) for {100 * st['power']:g}% power to detect the paper's Δ with the measured spread, "
        f"at alpha {st['planning_alpha']:.2g} ({st['alpha']:.3g}{family}{looks}, Bonferroni); enough: this run has them."
    )
    console.print(f"[dim]{escape(note)}[/dim]")


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
            escape(row["setting"] or "-"),
            row["compared"],
            cell(theirs, "epochs"),
            cell(mine, "epochs"),
            row["factor_epochs"]["text"],
            cell(theirs, "seconds"),
            cell(mine, "seconds"),
            row["factor_seconds"]["text"],
            f"{paper:g}x" if paper else "",
        )
    console.print(table)
    console.print(
        "[dim]Epochs: the first epoch whose training error (as seen during the epoch) is at or below the target; "
        "(k/n): seeds that got there. '>=': a seed never got there within its epochs, so its count is a lower bound "
        "and so is the factor; '<=' when that happened to the reference.[/dim]"
    )


def render_comparison(comparison: dict, console: Console) -> None:
    """Two runs variant by variant: top-1 and top-5 error of each, B − A with its verdict and interval."""
    a, b = comparison["a"], comparison["b"]
    table = Table(title=f"{a['run_dir']}  vs  {b['run_dir']}", title_justify="left")
    for col in ("variant", "top-1 % (A)", "top-1 % (B)", "B − A", "top-5 % (A)", "top-5 % (B)", "B − A", "status A / B"):
        table.add_column(col, justify="left" if col.startswith(("variant", "status")) else "right")
    status = {side: {v["name"]: v["status"] for v in doc["variants"]} for side, doc in (("a", a), ("b", b))}
    for row in comparison["variants"]:
        cells = [row["name"]]
        for metric in ("top1_error", "top5_error"):
            cells += [mean_std(row[side][metric]) if row[side] else "-" for side in ("a", "b")]
            cells.append(delta_text(row["difference"].get(metric)))
        cells.append(f"{status['a'].get(row['name'], '-')} / {status['b'].get(row['name'], '-')}")
        table.add_row(*cells)
    console.print(table)
    console.print("[dim]B − A: run B's variant minus run A's same variant, in percentage points, its interval below it.[/dim]")
    rows = [(r["name"], r["difference"], r["pairing"]) for r in comparison["variants"] if r["difference"]]
    if rows:
        for line in verdict_notes(comparison["statistics"], rows, " compared"):
            console.print(f"[dim]{escape(line)}[/dim]")


# ---------------------------------------------------------------------------- the analyses (testbed/analyses.py)


def ensemble_text(v: dict) -> str:
    e = v.get("ensemble")
    return f"{100 * e['top1_error']:.1f} / {100 * e['top5_error']:.1f} ({len(e['seeds'])})" if e else "-"


def render_analyses(doc: dict, console: Console) -> None:
    """Below the table: the towers' conv1 colourfulness and LRN's divisor, where the run has them."""
    render_colourfulness(doc, console)
    render_divisors(doc, console)


def render_colourfulness(doc: dict, console: Console) -> None:
    rows = [(v["name"], v["conv1_colourfulness"]) for v in doc["variants"] if v.get("conv1_colourfulness")]
    if not rows:
        return
    table = Table(title="conv1 colourfulness per tower (Figure 3 as a number; mean ± sd over seeds)", title_justify="left")
    for col in ("variant", "seeds", "tower A", "tower B", "gap (more − less colourful)", "A − B"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for name, c in rows:
        towers = [mean_std(t, scale=1.0, digits=3) for t in c["towers"]] + ["-"] * (2 - len(c["towers"]))
        two = len(c["towers"]) == 2
        table.add_row(
            name,
            str(len(c["seeds"])),
            *towers[:2],
            mean_std(c["gap"], 1.0, 3) if two else "-",
            mean_std(c["a_minus_b"], 1.0, 3) if two else "-",
        )
    console.print(table)
    console.print(
        "[dim]Colourfulness: the mean chroma (max − min of R, G, B) of each conv1 kernel scaled to [0, 1] by its own range, "
        "averaged over a tower's kernels: 0 grey, 1 the most colourful. The paper's towers specialise (one colour-agnostic, "
        "one colour-specific) whichever GPU gets which: the gap per seed measures that.[/dim]"
    )


def render_divisors(doc: dict, console: Console) -> None:
    rows = [(v["name"], layer, s) for v in doc["variants"] for layer, s in (v.get("lrn_divisor") or {}).items()]
    if not rows:
        return
    table = Table(title="LRN's effective strength: the divisor (k + α Σa²)^β on a held-out batch, last epoch", title_justify="left")
    for col in ("variant", "layer", "epoch", "k^β", "p1", "median", "p99", "max", "mean / k^β − 1", "cv (sd / mean)"):
        table.add_column(col, justify="left" if col in ("variant", "layer") else "right")
    for name, layer, s in rows:
        table.add_row(
            name,
            layer,
            str(s["epoch"]),
            *(f"{s[k]:.6g}" for k in ("resting", "p01", "median", "p99", "max")),
            f"{100 * s['mean_excess']:+.2g}%",
            f"{s['cv']:.2g}",
        )
    console.print(table)
    console.print(
        "[dim]A divisor that hardly varies (cv near 0, mean near k^β) makes LRN a fixed rescaling by 1/k^β: "
        "it then normalizes nothing. Every epoch's is in the store (epochs, lrn_divisor); here the last, mean over seeds.[/dim]"
    )
