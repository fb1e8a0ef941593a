"""`testbed report DIR --html FILE`: the run as one self-contained page that works offline.

Everything is inside the file: pictures as base64 ``data:`` URLs, the style sheet and a few
lines of script (sorting the table by a column) inline, so opening it makes no request at all.
The table's cells are the terminal table's (``report._columns``), their Rich markup turned into
HTML classes, so the verdict words and colours are the same in both places; the tables below it
(the paper's checks, speed-ups, saturation) are the terminal's too, recorded and exported by Rich.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path

from rich.console import Console
from rich.text import Text

from testbed import report as terminal
from testbed.rundir import RUN_MARKER

STYLE_CLASSES = {"green": "better", "red": "worse", "yellow": "warn", "magenta": "other", "dim": "dim"}
NUMBER = re.compile(r"[-+]?\d[\d,]*\.?\d*")

CSS = """
:root { --better: #17803d; --worse: #c0262d; --warn: #9a6700; --dim: #6e7781; --line: #d0d7de; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1280px;
       padding: 1rem 1.25rem 3rem; color: #1f2328; }
h1 { font-size: 1.5rem; margin: .2rem 0; } h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid var(--line); }
.meta { color: var(--dim); margin: 0; }
.scroll { overflow-x: auto; max-width: 100%; }
table.results, table.plain { border-collapse: collapse; font-variant-numeric: tabular-nums; }
table.results th, table.results td, table.plain th, table.plain td { border-bottom: 1px solid var(--line); padding: .3rem .55rem;
       vertical-align: top; }
table.results td.num, table.results th.num { text-align: right; white-space: nowrap; }
table.results th { position: sticky; top: 0; background: #f6f8fa; }
table.plain th { text-align: left; }
th button { all: unset; cursor: pointer; font-weight: 600; }
th button:focus-visible { outline: 2px solid #0969da; }
th[aria-sort=ascending] button::after { content: " \\25B2"; } th[aria-sort=descending] button::after { content: " \\25BC"; }
.better { color: var(--better); font-weight: 600; } .worse { color: var(--worse); font-weight: 600; }
.warn { color: var(--warn); } .other { color: #8250df; } .dim { color: var(--dim); }
td.better-cell { background: #dafbe1; } td.worse-cell { background: #ffebe9; }
.notes { color: var(--dim); font-size: .9rem; max-width: 75rem; }
figure { margin: 1rem 0; break-inside: avoid; } figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--dim); font-size: .9rem; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 30rem), 1fr)); gap: 1rem; }
pre.rich { font-size: .8rem; overflow-x: auto; background: #f6f8fa; padding: .5rem; }
details { margin: .4rem 0; } summary { cursor: pointer; font-weight: 600; }
code { font-size: .88em; word-break: break-word; }
@media (max-width: 700px) { body { font-size: 14px; padding: .5rem; } table.results th, table.results td { padding: .25rem .35rem; } }
@media print {
  body { max-width: none; font-size: 10pt; padding: 0; } th button::after { content: "" !important; }
  .scroll { overflow: visible; } table.results th { position: static; } h2 { break-after: avoid; }
  tr, figure, pre { break-inside: avoid; } * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  details > *:not(summary) { display: block; } .figures { display: block; } figure img { max-height: 45vh; }
}
"""

# Sort the results table by a column: numbers numerically (the cell's data-sort), words alphabetically.
SCRIPT = """
document.querySelectorAll("table.results th button").forEach(function (button) {
  button.addEventListener("click", function () {
    var th = button.parentElement, table = th.closest("table"), body = table.tBodies[0];
    var index = Array.prototype.indexOf.call(th.parentElement.children, th);
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var key = function (row) { var c = row.children[index]; return c.dataset.sort !== undefined ? c.dataset.sort : c.textContent; };
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y), order;
      if (x === "" || y === "") { order = (x === "") - (y === ""); return order; }
      order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def markup_html(markup: str) -> tuple[str, set[str]]:
    """Rich markup as HTML (escaped text, styles as classes) and the classes it used."""
    text = Text.from_markup(markup)
    plain = text.plain
    styles: list[set[str]] = [set() for _ in plain]
    for span in text.spans:
        for word in str(span.style).split():
            if word in STYLE_CLASSES:
                for i in range(span.start, min(span.end, len(plain))):
                    styles[i].add(STYLE_CLASSES[word])
    out, used, i = [], set(), 0
    while i < len(plain):
        j = i
        while j < len(plain) and styles[j] == styles[i]:
            j += 1
        chunk = html.escape(plain[i:j]).replace("\n", "<br>")
        out.append(f'<span class="{" ".join(sorted(styles[i]))}">{chunk}</span>' if styles[i] else chunk)
        used |= styles[i]
        i = j
    return "".join(out), used


def sort_key(plain: str, numeric: bool) -> str:
    """What a cell sorts by: its first number (1,234 read as 1234) for a number column, else its text."""
    if not numeric:
        return plain.strip().lower()
    match = NUMBER.search(plain)
    return match.group(0).replace(",", "") if match else ""


def results_table(doc: dict) -> str:
    columns = terminal._columns(doc)
    head = "".join(
        f'<th scope="col" class="{"num" if justify == "right" else ""}"><button type="button">{html.escape(name)}</button></th>'
        for name, justify, _ in columns
    )
    rows = []
    for v in doc["variants"]:
        cells = []
        for _name, justify, cell in columns:
            markup = cell(v)
            content, used = markup_html(markup)
            plain = Text.from_markup(markup).plain
            classes = ["num"] if justify == "right" else []
            classes += [f"{c}-cell" for c in ("better", "worse") if c in used]
            cells.append(f'<td class="{" ".join(classes)}" data-sort="{html.escape(sort_key(plain, justify == "right"))}">{content}</td>')
        rows.append(f'<tr data-variant="{html.escape(v["name"])}">{"".join(cells)}</tr>')
    return f'<div class="scroll"><table class="results"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def recorded(draw) -> str:
    """What a Rich drawing function prints, as an HTML fragment with inline styles (no style sheet)."""
    console = Console(record=True, width=140, file=io.StringIO(), color_system="truecolor")
    draw(console)
    if not console.export_text(clear=False).strip():
        return ""
    return console.export_html(inline_styles=True, code_format='<pre class="rich">{code}</pre>')


def picture(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def pictures(run_dir: Path, variants: list[str]) -> str:
    """The learning curves and Figure 1, conv1 kernels per variant (one block per tower), then
    every other PNG of the plots folder (other analyses' pictures)."""
    plots = Path(run_dir) / "plots"
    found = {p.name: p for p in sorted(plots.glob("*.png"))} if plots.is_dir() else {}
    parts = []
    for name, caption in (
        ("learning-curves.png", "learning curves: training error by epoch, mean over seeds"),
        ("figure1.png", "the paper's Figure 1: epochs to the target training error"),
    ):
        if name in found:
            parts.append(picture(found.pop(name), caption))
    curves = f'<div class="figures">{"".join(parts)}</div>' if parts else '<p class="dim">no learning curves in plots/</p>'
    kernels = [
        picture(found.pop(f"conv1-{v}.png"), f"{v}: conv1 kernels per tower (first seed)") for v in variants if f"conv1-{v}.png" in found
    ]
    others = [picture(path, path.stem) for path in found.values()]
    out = f"<h2>Learning curves</h2>{curves}"
    if kernels:
        out += f'<h2>conv1 kernels</h2><div class="figures">{"".join(kernels)}</div>'
    if others:
        out += f'<h2>Other analyses</h2><div class="figures">{"".join(others)}</div>'
    return out


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in params.items()) or "-"


def components_section(doc: dict) -> str:
    """Every variant's resolved components, one row per distinct component of a slot (name,
    parameters, plugin, version) with the variants that use it: what differs stands out."""
    names = [v["name"] for v in doc["variants"]]
    rows: dict[tuple, list[str]] = {}  # (slot, name, params, plugin, version) -> variants, in first-seen order
    for v in doc["variants"]:
        for slot, record in (v.get("components") or {}).items():
            for i, item in enumerate(record if isinstance(record, list) else [record]):
                label = f"{slot}[{i}]" if isinstance(record, list) else slot
                key = (label, item["name"], _params_text(item.get("params", {})), item.get("plugin", ""), item.get("version", ""))
                rows.setdefault(key, []).append(v["name"])
    if not rows:
        return '<h2>Components</h2><p class="dim">not recorded (no job started)</p>'
    body = []
    for (slot, name, params, plugin, version), users in sorted(rows.items(), key=lambda kv: _slot_order(kv[0][0], rows)):
        used_by = "all" if users == names else ", ".join(users)
        body.append(
            f'<tr data-variants="{html.escape(" ".join(users))}"><td>{html.escape(slot)}</td><td>{html.escape(name)}</td>'
            f"<td><code>{html.escape(params)}</code></td><td>{html.escape(plugin)}</td><td>{html.escape(version)}</td>"
            f'<td class="{"dim" if used_by == "all" else ""}">{html.escape(used_by)}</td></tr>'
        )
    return (
        '<h2>Components</h2><div class="scroll"><table class="plain components"><thead><tr><th>slot</th><th>component</th>'
        "<th>parameters</th><th>plugin</th><th>version</th><th>variants</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _slot_order(slot: str, rows: dict) -> int:
    """Slots in the order the records list them (the first variant's order)."""
    order = list(dict.fromkeys(key[0] for key in rows))
    return order.index(slot)


def environment_section(doc: dict, run_dir: Path) -> str:
    """The command that made the run, when, and the environments its jobs ran in."""
    marker = Path(run_dir) / RUN_MARKER
    info = json.loads(marker.read_text()) if marker.is_file() else {}
    argv = info.get("argv") or []
    command = "testbed " + " ".join(argv[1:]) if argv else "(not recorded)"
    seen, rows = [], []
    for v in doc["variants"]:
        env = v.get("environment") or {}
        env = {k: val for k, val in env.items() if k != "seeds"}
        if env and env not in seen:
            seen.append(env)
    for env in seen:
        rows.append("<tr>" + "".join(f"<td><code>{html.escape(str(env.get(k, '')))}</code></td>" for k in sorted(seen[0])) + "</tr>")
    header = "".join(f"<th>{html.escape(k)}</th>" for k in sorted(seen[0])) if seen else ""
    table = (
        f'<div class="scroll"><table class="plain"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
        if seen
        else ""
    )
    return (
        f"<h2>Environment and command</h2><p><code>{html.escape(command)}</code></p>"
        f'<p class="meta">created {html.escape(str(info.get("created", "?")))} '
        f"by testbed {html.escape(str(info.get('testbed', '?')))}</p>{table}"
    )


def notes(doc: dict) -> str:
    shown = {name for name, _, _ in terminal._columns(doc)}
    lines = terminal.footnote(doc, shown)
    lines += [f"{v['name']}: the paper: {v['paper']['claim']}" for v in doc["variants"] if v["paper"].get("claim")]
    for v in doc["variants"]:
        for p in v.get("problems", []):
            if p["status"] in ("diverged", "failed", "refused"):
                lines.append(f"{v['name']} seed {p['seed']}: {p['status']}: {p['message']}")
    return '<div class="notes">' + "".join(f"<p>{html.escape(line)}</p>" for line in lines) + "</div>"


def render_html(doc: dict, run_dir: Path, epochs: list[dict], description: str = "") -> str:
    from testbed.describe import render_saturation

    extra = recorded(lambda c: terminal.render_paper_checks(doc, c))
    if doc.get("compare"):
        extra += recorded(lambda c: terminal.render_speedups(doc["compare"], c))
    saturation = recorded(lambda c: render_saturation(epochs, c))
    title = f"{doc['experiment']}: testbed report"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><link rel="icon" href="data:,"><style>{CSS}</style></head>
<body>
<header><h1>{html.escape(doc["experiment"])}</h1>
<p class="meta">{html.escape(description)}</p>
<p class="meta">run <code>{html.escape(str(run_dir))}</code> · status <strong>{html.escape(str(doc["status"]))}</strong> ·
{len(doc["variants"])} variants</p></header>
<main>
<h2>Results</h2>
{results_table(doc)}
{notes(doc)}
{extra}
{pictures(run_dir, [v["name"] for v in doc["variants"]])}
{("<h2>Saturation</h2>" + saturation) if saturation else ""}
{components_section(doc)}
{environment_section(doc, run_dir)}
</main>
<script>{SCRIPT}</script>
</body></html>
"""


def write_html(doc: dict, run_dir: Path, epochs: list[dict], path: Path, description: str = "") -> Path:
    from testbed.errors import BadInput

    try:
        Path(path).write_text(render_html(doc, run_dir, epochs, description), encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"--html {path}: cannot write the report ({exc.strerror or exc})") from None
    return Path(path)
