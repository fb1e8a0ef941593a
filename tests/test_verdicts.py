"""testbed.verdicts: intervals, p-values, corrections and power against scipy called here
independently, Holm against its rule written out, seeds needed against a simulation; the table's
words and footnote; and, on generated data, verdicts that a crippled variant is worse and that a
variant changing nothing training depends on is never better or worse."""

from __future__ import annotations

import io
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import run_testbed
from rich.console import Console
from scipy import stats

from testbed.cli import main
from testbed.experiment import Experiment, Variant
from testbed.report import render, render_comparison
from testbed.results import Store, compare_runs, summarize
from testbed.verdicts import (
    Arm,
    Settings,
    difference,
    holm,
    judge,
    pair_seeds,
    paper_check,
    power,
    seeds_needed,
    settings,
)

# per-seed top-1 errors, made up by hand: a baseline and three variants, seeds 0..2
BASE = [0.500, 0.520, 0.505]
WORSE = [0.560, 0.590, 0.555]  # about 5 points worse on every seed
SAME = [0.505, 0.515, 0.510]  # inside the noise
BETTER = [0.470, 0.505, 0.480]


def arm(values, censored=()):
    return Arm(dict(enumerate(values)), frozenset(censored))


# ------------------------------------------------------------------ one test against scipy


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("level", [0.95, 0.99])
def test_paired_matches_scipy_ttest_rel(n, level):
    a, b = WORSE[:n], BASE[:n]
    got = difference(arm(a), arm(b), list(range(n)), level)
    want = stats.ttest_rel(a, b)
    ci = want.confidence_interval(confidence_level=level)
    assert got["test"] == "paired-t" and got["df"] == n - 1
    assert got["p_value"] == pytest.approx(want.pvalue, rel=1e-12)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert got["delta"] == pytest.approx(statistics.fmean(x - y for x, y in zip(a, b)))
    # the interval written out: mean difference +- t quantile x sd / sqrt(n)
    d = [x - y for x, y in zip(a, b)]
    half = stats.t.ppf(0.5 + level / 2, n - 1) * statistics.stdev(d) / math.sqrt(n)
    assert got["ci_high"] - got["delta"] == pytest.approx(half, rel=1e-9)


@pytest.mark.parametrize("n", [2, 3])
def test_unpaired_matches_scipy_welch(n):
    a, b = SAME[:n], BASE[:n]
    got = difference(arm(a), arm(b), None, 0.95)
    want = stats.ttest_ind(a, b, equal_var=False)
    ci = want.confidence_interval(confidence_level=0.95)
    assert got["test"] == "welch"
    assert got["p_value"] == pytest.approx(want.pvalue, rel=1e-12)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-12)
    va, vb = statistics.variance(a) / n, statistics.variance(b) / n  # Welch-Satterthwaite, written out
    assert got["df"] == pytest.approx((va + vb) ** 2 / (va**2 / (n - 1) + vb**2 / (n - 1)))
    assert got["se"] == pytest.approx(math.sqrt(va + vb))


def test_unequal_seed_counts_use_every_finished_seed():
    got = difference(arm(WORSE), Arm({0: BASE[0], 1: BASE[1]}), None, 0.95)
    assert got["n_variant"] == 3 and got["n_reference"] == 2
    assert got["p_value"] == pytest.approx(stats.ttest_ind(WORSE, BASE[:2], equal_var=False).pvalue)


# ------------------------------------------------------------------ corrections


def holm_by_the_rule(pvalues, alpha):
    """Holm (1979) as stated: sort ascending; reject H(1..k-1) where k is the first i with
    p(i) > alpha / (m - i + 1); reject all when there is none."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    rejected = set()
    for i, index in enumerate(order, start=1):
        if pvalues[index] > alpha / (m - i + 1):
            break
        rejected.add(index)
    return rejected


@pytest.mark.parametrize("pvalues", [[0.01, 0.04, 0.03], [0.001, 0.2, 0.012, 0.011], [0.5], [0.02, 0.02, 0.9], [0.04, 0.01]])
def test_holm_rejects_what_holms_rule_rejects(pvalues):
    adjusted = holm(pvalues)
    for alpha in np.linspace(0.001, 0.5, 400):
        assert {i for i, p in enumerate(adjusted) if p <= alpha} == holm_by_the_rule(pvalues, alpha), alpha
    assert all(p <= a <= 1 for p, a in zip(pvalues, adjusted))


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("paired", [True, False])
def test_holm_across_variants_with_scipy_p_values(n, paired):
    variants = {"worse": WORSE[:n], "same": SAME[:n], "better": BETTER[:n]}
    pairs = list(range(n)) if paired else None
    got = judge({k: (arm(v), arm(BASE[:n]), pairs) for k, v in variants.items()}, Settings())
    test = (lambda a: stats.ttest_rel(a, BASE[:n])) if paired else (lambda a: stats.ttest_ind(a, BASE[:n], equal_var=False))
    raw = {k: test(v).pvalue for k, v in variants.items()}
    ranked = sorted(raw, key=raw.get)  # Holm's adjusted p written out: max over the smaller ones of (m - j + 1) p(j)
    want = {k: min(1.0, max((3 - j) * raw[ranked[j]] for j in range(ranked.index(k) + 1))) for k in raw}
    for k in variants:
        assert got[k]["p_value"] == pytest.approx(raw[k], rel=1e-12)
        assert got[k]["p_adjusted"] == pytest.approx(want[k], rel=1e-12)
        significant = want[k] <= 0.05
        expected = ("worse" if got[k]["delta"] > 0 else "better") if significant else "inconclusive"
        assert got[k]["verdict"] == expected


def test_no_correction_keeps_the_raw_p():
    got = judge({"worse": (arm(WORSE), arm(BASE), None), "same": (arm(SAME), arm(BASE), None)}, Settings(correction="none"))
    for k, values in (("worse", WORSE), ("same", SAME)):
        assert got[k]["p_adjusted"] == got[k]["p_value"] == pytest.approx(stats.ttest_ind(values, BASE, equal_var=False).pvalue)


@pytest.mark.parametrize("n", [2, 3])
def test_dunnett_matches_scipy(n):
    samples = [WORSE[:n], SAME[:n], BETTER[:n]]
    comparisons = {k: (arm(v), arm(BASE[:n]), list(range(n))) for k, v in zip(("worse", "same", "better"), samples)}
    got = judge(comparisons, Settings(confidence=0.9, correction="dunnett"), control=arm(BASE[:n]))
    want = stats.dunnett(*samples, control=BASE[:n], rng=1)  # another QMC seed: agreement to its error
    ci = want.confidence_interval(confidence_level=0.9)
    # the raw p: the same pooled t statistic against Student's t, written out here
    df = 4 * n - 4
    pooled = math.sqrt(sum(statistics.variance(s) * (n - 1) for s in (*samples, BASE[:n])) / df)
    for i, k in enumerate(("worse", "same", "better")):
        assert got[k]["test"] == "dunnett"
        assert got[k]["p_adjusted"] == pytest.approx(want.pvalue[i], abs=2e-3)
        assert (got[k]["ci_low"], got[k]["ci_high"]) == pytest.approx((ci.low[i], ci.high[i]), abs=1e-3)
        t = (statistics.fmean(samples[i]) - statistics.fmean(BASE[:n])) / (pooled * math.sqrt(2 / n))
        assert got[k]["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)
        assert got[k]["p_value"] <= got[k]["p_adjusted"]


def test_looks_split_alpha_over_the_planned_looks():
    one = judge({"w": (arm(WORSE), arm(BASE), [0, 1, 2])}, Settings())["w"]
    three = judge({"w": (arm(WORSE), arm(BASE), [0, 1, 2])}, Settings(looks=3))["w"]
    assert three["p_adjusted"] == pytest.approx(min(1.0, 3 * one["p_adjusted"]))
    ci = stats.ttest_rel(WORSE, BASE).confidence_interval(confidence_level=1 - 0.05 / 3)
    assert (three["ci_low"], three["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert three["ci_level"] == pytest.approx(1 - 0.05 / 3)


def test_settings_come_from_arguments_then_the_report_table_then_defaults():
    assert settings(None) == Settings(0.95, "holm", 1)
    assert settings({"confidence": 0.9, "correction": "dunnett"}) == Settings(0.9, "dunnett", 1)
    assert settings({"confidence": 0.9}, confidence=0.99, correction="none") == Settings(0.99, "none", 1)


# ------------------------------------------------------------------ degenerate cases and censoring


def test_one_seed_gives_no_verdict_and_says_why():
    got = judge({"v": (arm([0.3]), arm([0.6]), None)}, Settings())["v"]
    assert got["verdict"] == "inconclusive" and got["reason"].startswith("1 seed:")
    assert got["delta"] == pytest.approx(-0.3) and got["p_value"] is None and got["ci_low"] is None


def test_no_spread_is_inconclusive_even_with_rounding_noise():
    # the same difference on every seed, computed in floats: the differences' sd is ~1e-17, not 0
    base = [0.56, 0.43, 0.69]
    shifted = [0.58, 0.45, 0.71]  # two more images wrong out of 100 on every seed
    assert statistics.stdev(x - y for x, y in zip(shifted, base)) != 0  # rounding, which must not count as spread
    got = judge({"v": (arm(shifted), arm(base), [0, 1, 2])}, Settings())["v"]
    assert got["verdict"] == "inconclusive" and got["reason"].startswith("no spread:"), got
    assert stats.ttest_rel(shifted, base).pvalue < 1e-6  # where scipy alone would call it certain
    identical = judge({"v": (arm([0.5, 0.5]), arm([0.5, 0.5]), [0, 1])}, Settings())["v"]
    assert identical["verdict"] == "inconclusive" and identical["reason"].startswith("no spread:")
    constant = judge({"v": (arm([3.0, 3.0]), arm([2.0, 2.0]), None)}, Settings())["v"]  # integer epochs, no spread
    assert constant["verdict"] == "inconclusive" and constant["reason"].startswith("no spread:")


def test_a_missing_metric_is_inconclusive():
    got = judge({"v": (Arm({}), arm(BASE), None)}, Settings())["v"]
    assert got["verdict"] == "inconclusive" and got["reason"].startswith("missing:") and got["delta"] is None


def test_censored_epochs_are_judged_only_in_the_safe_direction():
    reached = arm([3.0, 4.0, 3.0])
    never = arm([7.0, 7.0, 6.9], censored={0, 1, 2})  # 6 epochs run: bounds of 7 (one made to differ, for a spread)
    worse = judge({"v": (never, reached, None)}, Settings())["v"]  # the variant missed: it can be worse
    assert worse["verdict"] == "worse" and worse["censored"] == {"variant": 3, "reference": 0}
    assert worse["p_value"] == pytest.approx(
        stats.ttest_ind(list(never.values.values()), list(reached.values.values()), equal_var=False).pvalue
    )
    fast = arm([1.0, 2.0, 1.0])
    partly = Arm({0: 1.0, 1: 1.2, 2: 7.0}, frozenset({2}))
    not_better = judge({"v": (Arm({0: 1.0, 1: 1.1, 2: 1.05}, frozenset({1})), arm([5.0, 5.2, 5.1]), None)}, Settings())["v"]
    assert not_better["verdict"] == "inconclusive" and not_better["reason"].startswith("censored:")
    better = judge({"v": (fast, never, None)}, Settings())["v"]  # the baseline missed: the variant can be better
    assert better["verdict"] == "better"
    not_worse = judge({"v": (never, Arm({0: 1.0, 1: 1.1, 2: 1.2}, frozenset({0})), None)}, Settings())["v"]
    assert not_worse["verdict"] == "inconclusive" and not_worse["reason"].startswith("censored:")
    both = judge({"v": (never, never, None)}, Settings())["v"]
    assert both["verdict"] == "inconclusive" and both["reason"].startswith("censored:")
    assert judge({"v": (partly, reached, None)}, Settings())["v"]["verdict"] != "better"


# ------------------------------------------------------------------ pairing rule


def config(**data):
    return {
        "data": {"dataset": {"name": "synthetic"}, "train_size": 256, "preprocess": {"name": "standardize"}, **data},
        "train": {"batch_size": 32},
    }


def test_seeds_pair_only_when_they_draw_the_same_data():
    finished = {0: None, 1: None, 2: None}
    assert pair_seeds(config(), config(preprocess={"name": "mean"}), finished, finished)[0] == [0, 1, 2]
    assert pair_seeds(config(), config(train_size=512), finished, finished)[0] is None
    other_batch = config()
    other_batch["train"] = {"batch_size": 64}
    assert pair_seeds(config(), other_batch, finished, finished)[0] is None
    assert pair_seeds(config(), config(), {0: None, 1: None}, {1: None, 2: None})[0] is None  # one common seed
    assert pair_seeds(config(), config(), {0: None, 1: None, 2: None}, {1: None, 2: None})[0] == [1, 2]
    varies = {0: ["init", "order"], 1: ["order", "init"]}
    assert pair_seeds(config(), config(), varies, {0: None, 1: ["init", "order"]})[0] == [0, 1]  # missing counts as same
    assert pair_seeds(config(), config(), varies, {0: ["order"], 1: ["order"]})[0] is None
    assert "data.train_size" in pair_seeds(config(), config(train_size=512), finished, finished)[1]


# ------------------------------------------------------------------ power and the paper's claim


def simulated_power(n, delta, sd, paired, alpha, trials=40_000, seed=0):
    """Fraction of simulated experiments whose t-test (scipy) rejects at alpha."""
    rng = np.random.default_rng(seed)
    if paired:
        d = rng.normal(delta, sd["differences"], size=(trials, n))
        p = stats.ttest_1samp(d, 0.0, axis=1).pvalue
    else:
        a = rng.normal(delta, sd["variant"], size=(trials, n))
        b = rng.normal(0.0, sd["reference"], size=(trials, n))
        p = stats.ttest_ind(a, b, axis=1, equal_var=False).pvalue
    return float(np.mean(p <= alpha))


@pytest.mark.parametrize(
    "paired, sd, delta, alpha",
    [
        (True, {"differences": 0.02}, 0.014, 0.05),
        (True, {"differences": 0.01}, 0.02, 0.01),
        (False, {"variant": 0.02, "reference": 0.01}, 0.025, 0.05),
        (False, {"variant": 0.03, "reference": 0.03}, 0.05, 0.0125),
    ],
)
def test_seeds_needed_is_where_simulated_power_crosses_80_percent(paired, sd, delta, alpha):
    n = seeds_needed(delta, sd, alpha, have=0)
    assert isinstance(n, int) and n >= 2
    tolerance = 0.012  # ~3 standard errors of a 40,000-trial estimate near 0.8
    assert simulated_power(n, delta, sd, paired, alpha) >= 0.8 - tolerance
    if n > 2:
        assert simulated_power(n - 1, delta, sd, paired, alpha) < 0.8 + tolerance
    assert power(n, delta, sd, alpha) >= 0.8
    if n > 2:
        assert power(n - 1, delta, sd, alpha) < 0.8
    assert power(n, -delta, sd, alpha) == pytest.approx(power(n, delta, sd, alpha))  # two-sided
    assert seeds_needed(delta, sd, alpha, have=n) == "enough"
    assert seeds_needed(delta, sd, alpha, have=n - 1) == n


def test_seeds_needed_near_the_normal_approximation_and_capped():
    # statistics.md: about 2 ((1.96 + 0.84) s / d)^2 per arm; the t distribution needs a few more
    approx = 2 * ((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * 0.02 / 0.014) ** 2
    n = seeds_needed(0.014, {"variant": 0.02, "reference": 0.02}, 0.05, have=2)
    assert approx <= n <= approx + 3
    assert seeds_needed(0.0001, {"variant": 0.05, "reference": 0.05}, 0.05, have=2) == "over 1000"


def test_paper_check_words():
    judged = judge({"worse": (arm(WORSE), arm(BASE), [0, 1, 2]), "same": (arm(SAME), arm(BASE), [0, 1, 2])}, Settings())
    assert judged["worse"]["verdict"] == "worse"
    assert paper_check(judged["worse"], +1.4, 0.025)["paper_check"] == "agrees"  # points, as experiment files give them
    assert paper_check(judged["worse"], -1.4, 0.025)["paper_check"] == "contradicts"
    same = paper_check(judged["same"], +1.4, 0.025)
    assert same["paper_check"] == "cannot tell" and same["paper_delta"] == pytest.approx(0.014)
    assert same["seeds_needed"] == seeds_needed(0.014, judged["same"]["sd"], 0.025, have=3)
    one = paper_check(judge({"v": (arm([0.3]), arm([0.6]), None)}, Settings())["v"], 1.4, 0.05)
    assert one == {"paper_delta": pytest.approx(0.014), "paper_check": "cannot tell", "seeds_needed": None}


# ------------------------------------------------------------------ summary, table and --vs from a hand-made store


def fake_run(tmp_path: Path, name: str, arms: dict, paper: dict | None = None, data: dict | None = None) -> Path:
    """A run directory whose store holds hand-made metrics: arms maps variant -> per-seed top-1 errors."""
    run = tmp_path / name
    run.mkdir()
    variants = []
    for vname in arms:
        cfg = {
            "data": {"dataset": {"name": "synthetic"}, "preprocess": {"name": "standardize"}, **((data or {}).get(vname, {}))},
            "train": {"batch_size": 32},
        }
        variants.append(Variant(vname, cfg, {} if vname == "baseline" else {"model.x": vname}, (paper or {}).get(vname, {})))
    (run / "experiment.json").write_text(json.dumps(Experiment(name, "x.toml", tuple(variants)).to_json()))
    store = Store(run / "results.sqlite")
    for position, (vname, values) in enumerate(arms.items()):
        for seed, top1 in enumerate(values):
            store.add_job(vname, seed, position)
            metrics = {
                "top1_error": top1,
                "top5_error": top1 / 5,
                "train_error": top1 + 0.1,
                "train_loss": 1.0,
                "epochs_to_target": None,
                "time_to_target_s": None,
                "train_images_per_s": 100.0,
                "parameters": 10,
                "epochs": 5,
                "train_time_s": 1.0,
            }
            store.finish_job(vname, seed, "ok", metrics=metrics)
    store.close()
    return run


def summary(run: Path, **kwargs) -> dict:
    store = Store.open_run(run)
    try:
        return summarize(store, run, **kwargs)
    finally:
        store.close()


def flat(text: str) -> str:
    """The text with every run of whitespace as one space (footnotes wrap at the console's width)."""
    return " ".join(text.split())


def text_of(doc, width=200, colour=False, fn=render) -> str:
    out = io.StringIO()
    fn(doc, Console(file=out, width=width, force_terminal=colour, color_system="standard" if colour else None))
    return out.getvalue()


def test_summary_json_fields_and_the_table(tmp_path):
    arms = {"baseline": BASE, "worse": WORSE, "same": SAME, "other-data": BETTER}
    run = fake_run(
        tmp_path, "r", arms, paper={"worse": {"top1": 1.4, "top5": 1.2}, "same": {"top1": 1.0}}, data={"other-data": {"train_size": 100}}
    )
    doc = summary(run)
    by = {v["name"]: v for v in doc["variants"]}
    d = by["worse"]["delta_vs_baseline"]["top1_error"]
    for key in ("delta", "ci_low", "ci_high", "p_value", "p_adjusted", "verdict", "test", "paper_check", "seeds_needed"):
        assert key in d
    assert d["test"] == "paired-t" and by["other-data"]["delta_vs_baseline"]["top1_error"]["test"] == "welch"
    assert by["worse"]["pairing"]["seeds"] == [0, 1, 2] and by["other-data"]["pairing"]["seeds"] is None
    raw = {
        "worse": stats.ttest_rel(WORSE, BASE).pvalue,
        "same": stats.ttest_rel(SAME, BASE).pvalue,
        "other-data": stats.ttest_ind(BETTER, BASE, equal_var=False).pvalue,
    }
    adjusted = holm(list(raw.values()))
    for (name, p), adj in zip(raw.items(), adjusted):
        assert by[name]["delta_vs_baseline"]["top1_error"]["p_value"] == pytest.approx(p)
        assert by[name]["delta_vs_baseline"]["top1_error"]["p_adjusted"] == pytest.approx(adj)
    assert d["verdict"] == "worse" and d["paper_check"] == "agrees"
    same = by["same"]["delta_vs_baseline"]["top1_error"]
    assert same["paper_check"] == "cannot tell" and isinstance(same["seeds_needed"], int)
    assert "paper_check" not in by["other-data"]["delta_vs_baseline"]["top1_error"]
    assert "paper_check" not in by["same"]["delta_vs_baseline"]["top5_error"]  # the paper gives no top-5 delta for it
    assert set(by["worse"]["delta_vs_baseline"]) == {"top1_error", "top5_error", "train_error", "epochs_to_target"}
    assert by["worse"]["delta_vs_baseline"]["epochs_to_target"]["reason"].startswith("censored:")  # nobody reached it
    st = doc["statistics"]
    assert st["confidence"] == 0.95 and st["correction"] == "holm" and st["family_size"] == 3
    assert st["planning_alpha"] == pytest.approx(0.05 / 3)
    json.dumps(doc)  # plain JSON
    plain = text_of(doc)
    assert "\x1b[" not in plain  # piped: no escape codes, the words carry the verdict
    lines = plain.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("│ worse "))
    lo, hi = (100 * d["ci_low"], 100 * d["ci_high"])
    assert f"{100 * d['delta']:+.1f} worse" in lines[at] and f"[{lo:+.1f}, {hi:+.1f}]" in lines[at + 1]
    assert "inconclusive" in next(line for line in lines if line.startswith("│ same "))
    paper_row = next(line for line in lines if line.startswith("│ worse ") and "top-1" in line)  # the paper-check table
    assert "+1.4" in paper_row and "agrees" in paper_row
    same_row = next(line for line in lines if line.startswith("│ same ") and "top-1" in line)
    assert "cannot tell" in same_row and f"{same['seeds_needed']:,}" in same_row
    note = flat(plain)
    assert "Holm-adjusted p ≤ 0.05 across the 3 variants" in note
    assert "paired t" in note and "Welch's t (unpaired) for other-data ([data] differs (data.train_size))" in note
    assert "not adjusted for multiplicity" in note and "80% power" in note and "alpha 0.017 (0.05 / 3 variants" in note
    assert "ep→tgt" not in plain and "status" not in plain  # nobody reached the target; every job ok
    assert max(len(line) for line in plain.splitlines()) <= 200
    coloured = text_of(doc, colour=True)
    assert "\x1b[31mworse\x1b[0m" in coloured  # red on a terminal


def test_table_with_dunnett_and_another_level(tmp_path):
    run = fake_run(tmp_path, "r", {"baseline": BASE, "worse": WORSE, "same": SAME})
    doc = summary(run, confidence=0.99, correction="dunnett")
    assert doc["statistics"]["correction"] == "dunnett" and doc["statistics"]["intervals_adjusted"]
    d = doc["variants"][1]["delta_vs_baseline"]["top1_error"]
    assert d["test"] == "dunnett" and d["ci_level"] == 0.99
    text = flat(text_of(doc))
    assert "Dunnett's many-to-one test across the 2 variants" in text and "p and the 99% intervals adjusted" in text
    assert "Tests: Dunnett's (the seeds would pair) for every comparison" in text


def test_one_seed_table_says_why(tmp_path):
    doc = summary(fake_run(tmp_path, "r", {"baseline": [0.5], "v": [0.3]}))
    assert doc["variants"][1]["delta_vs_baseline"]["top1_error"]["reason"].startswith("1 seed:")
    text = flat(text_of(doc))
    assert "-20.0 (1 seed)" in text and "no spread was measured" in text


def test_report_vs_uses_the_same_statistics(tmp_path):
    a = fake_run(tmp_path, "a", {"baseline": BASE, "v": SAME, "w": BASE})
    b = fake_run(tmp_path, "b", {"baseline": WORSE, "v": SAME, "w": BETTER}, data={"w": {"train_size": 9}})
    comparison = compare_runs(a, b)
    rows = {r["name"]: r for r in comparison["variants"]}
    base = rows["baseline"]["difference"]["top1_error"]
    assert base["test"] == "paired-t" and base["p_value"] == pytest.approx(stats.ttest_rel(WORSE, BASE).pvalue)
    assert rows["v"]["difference"]["top1_error"]["reason"].startswith("no spread:")  # the same numbers twice
    w = rows["w"]["difference"]["top1_error"]
    assert w["test"] == "welch" and w["p_value"] == pytest.approx(stats.ttest_ind(BETTER, BASE, equal_var=False).pvalue)
    assert base["p_adjusted"] == pytest.approx(holm([base["p_value"], w["p_value"]])[0])
    assert comparison["statistics"]["family_size"] == 3 and comparison["statistics"]["correction"] == "holm"
    assert set(base) >= {"delta", "ci_low", "ci_high", "p_value", "p_adjusted", "verdict", "test"}
    assert compare_runs(a, b, correction="dunnett")["statistics"]["correction"] == "holm"  # no shared control
    text = flat(text_of(comparison, fn=render_comparison))
    assert "worse" in text and "Holm-adjusted" in text and "(no spread)" in text


# ------------------------------------------------------------------ on generated data, end to end

TINY3 = """
name = "tiny3"
[data]
dataset = "synthetic"
train_size = 320
test_size = 100
preprocess = "standardize"
[model]
geometry = "cifar"
width = 0.125
init = "kaiming"
normalization = "none"
dropout = 0.0
[augment]
train = []
test = "center"
[train]
epochs = 3
batch_size = 32
optimizer = { name = "sgd", lr = 0.001, momentum = 0.9 }
schedule = "constant"
seeds = 3
target_train_error = 0.8

[[variant]]
name = "lr-100x-smaller"
train.optimizer.lr = 0.00001

[[variant]]
name = "no-change"
description = "changes only what training does not depend on"
train.eval_batch_size = 50
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verdicts")
    file = tmp / "tiny3.toml"
    file.write_text(TINY3)
    proc = run_testbed("run", file, "--out", tmp / "run", "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    return tmp, file, json.loads(proc.stdout)


def test_a_crippled_variant_is_worse_and_a_no_op_variant_is_never_judged(trained):
    _, _, doc = trained
    by = {v["name"]: v for v in doc["variants"]}
    crippled = by["lr-100x-smaller"]["delta_vs_baseline"]
    assert by["lr-100x-smaller"]["pairing"]["seeds"] == [0, 1, 2]
    assert crippled["top1_error"]["test"] == "paired-t"
    assert crippled["top1_error"]["verdict"] == "worse", crippled["top1_error"]
    assert crippled["train_error"]["verdict"] == "worse", crippled["train_error"]
    base = [by["baseline"]["metrics"]["top1_error"]["values"], by["lr-100x-smaller"]["metrics"]["top1_error"]["values"]]
    assert crippled["top1_error"]["p_value"] == pytest.approx(stats.ttest_rel(base[1], base[0]).pvalue)
    for metric, d in by["no-change"]["delta_vs_baseline"].items():
        assert d["verdict"] == "inconclusive", (metric, d)
    # its training is the baseline's, seed by seed: the paired differences are zero
    assert by["no-change"]["metrics"]["train_error"]["values"] == by["baseline"]["metrics"]["train_error"]["values"]
    assert by["no-change"]["delta_vs_baseline"]["train_error"]["reason"].startswith("no spread:")


def test_cli_level_and_correction_and_bad_values(trained):
    tmp, _, _ = trained
    run = tmp / "run"
    cli = CliRunner()
    result = cli.invoke(main, ["report", str(run), "--json", "--confidence", "0.99", "--correction", "none"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    d = doc["variants"][1]["delta_vs_baseline"]["top1_error"]
    assert doc["statistics"]["confidence"] == 0.99 and d["p_adjusted"] == d["p_value"]
    a = doc["variants"][1]["metrics"]["top1_error"]["values"]
    b = doc["variants"][0]["metrics"]["top1_error"]["values"]
    ci = stats.ttest_rel(a, b).confidence_interval(confidence_level=0.99)
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((ci.low, ci.high))
    for args in (["--confidence", "1.5"], ["--confidence", "abc"], ["--confidence", "0"], ["--correction", "bonferroni"]):
        result = cli.invoke(main, ["report", str(run), *args])
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and args[0] in result.stderr and args[1] in result.stderr
        assert result.exception is None or isinstance(result.exception, SystemExit)
    resumed = run_testbed("resume", run, "--json", "-q", "--confidence", "0.9", "--correction", "dunnett")  # nothing left to train
    assert resumed.returncode == 0, resumed.stderr
    st = json.loads(resumed.stdout)["statistics"]
    assert (st["confidence"], st["correction"]) == (0.9, "dunnett")
    assert json.loads((run / "experiment.json").read_text())["report"] == {"confidence": 0.95, "correction": "holm"}  # resume only views
    table = run_testbed("report", run)  # as a user runs it: piped, so no colour, the words carry the verdicts
    assert table.returncode == 0 and "\x1b[" not in table.stdout
    assert "worse" in table.stdout and "Holm-adjusted" in flat(table.stdout) and "(no spread)" in table.stdout


def test_report_vs_on_two_trained_runs(trained):
    tmp, file, _ = trained
    proc = run_testbed(
        "run",
        file,
        "--out",
        tmp / "crippled",
        "--only",
        "baseline",
        "--set",
        "train.optimizer.lr=0.00001",
        "--json",
        "-q",
        "--confidence",
        "0.9",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp / "crippled" / "experiment.json").read_text())["report"]["confidence"] == 0.9  # kept with the run
    vs = run_testbed("report", tmp / "run", "--vs", tmp / "crippled", "--json")
    assert vs.returncode == 0, vs.stderr
    comparison = json.loads(vs.stdout)
    rows = {r["name"]: r for r in comparison["variants"]}
    base = rows["baseline"]["difference"]["top1_error"]
    assert rows["baseline"]["pairing"]["seeds"] == [0, 1, 2] and base["test"] == "paired-t"
    assert base["verdict"] == "worse"  # run B's baseline is the crippled one
    # the crippled baseline of B trains exactly like A's crippled variant, seed by seed
    a_variant = next(v for v in comparison["a"]["variants"] if v["name"] == "lr-100x-smaller")["metrics"]["top1_error"]["values"]
    assert rows["baseline"]["b"]["top1_error"]["values"] == a_variant
    assert rows["lr-100x-smaller"]["difference"] == {}  # not in run B
    text = run_testbed("report", tmp / "run", "--vs", tmp / "crippled")
    assert text.returncode == 0 and "worse" in text.stdout and "paired t" in text.stdout
