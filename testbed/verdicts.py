"""Verdicts on differences measured over seeds: an interval, a p-value, a correction for comparing
many variants at once, and a check of the paper's claimed difference with the seeds it would take.

Pure functions over per-seed values; scipy.stats does the statistics. Every compared metric is an
error or a count of epochs, so lower is better: a significant negative difference (variant minus
reference) is ``better``, a significant positive one ``worse``, anything else ``inconclusive``
with a ``reason``. Reasons start with a short tag and a colon ("1 seed: ...", "no spread: ...").
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats

from testbed.errors import BadInput

CORRECTIONS = ("holm", "dunnett", "none")
POWER = 0.8  # the power seeds_needed plans for
MAX_SEEDS = 1000  # seeds_needed searches up to this many seeds per arm
ROUNDING = 1e-9  # a spread below this fraction of the values' size is float rounding, not spread
DUNNETT_SEED = 0  # scipy integrates Dunnett's multivariate t by quasi-Monte Carlo: fixed, so reports repeat


@dataclass(frozen=True)
class Settings:
    """How one table is judged: the level, the correction across its variants, and the number of
    planned looks at the data (a run that adds seeds until resolved tests after every round;
    alpha is split evenly over the looks, Bonferroni, so the whole sequence keeps its level)."""

    confidence: float = 0.95
    correction: str = "holm"
    looks: int = 1

    @property
    def alpha(self) -> float:
        return 1 - self.confidence

    @property
    def interval_level(self) -> float:
        """The level of each interval: the confidence, or more when alpha is split over looks."""
        return 1 - self.alpha / self.looks

    def as_json(self) -> dict:
        return {
            "confidence": self.confidence,
            "correction": self.correction,
            "looks": self.looks,
            "alpha": self.alpha,
            "interval_level": self.interval_level,
            "power": POWER,
        }


def check_confidence(value, where: str) -> float:
    """A level strictly between 0 and 1 (a number, or text such as "0.99" from the command line)."""
    try:
        level = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        level = math.nan
    if not 0 < level < 1:  # NaN fails too
        raise BadInput(f"{where} {value}: expected a confidence level between 0 and 1, e.g. 0.95 or 0.99")
    return level


def check_correction(value, where: str) -> str:
    if value not in CORRECTIONS:
        raise BadInput(f"{where} {value}: expected one of {', '.join(CORRECTIONS)}")
    return value


def settings(report: dict | None, confidence=None, correction=None, looks: int | None = None) -> Settings:
    """Explicit arguments first, then the experiment's [report] table, then the defaults."""
    report = report or {}
    confidence = confidence if confidence is not None else report.get("confidence", Settings.confidence)
    correction = correction if correction is not None else report.get("correction", Settings.correction)
    looks = looks if looks is not None else report.get("looks", 1)
    if isinstance(looks, bool) or not isinstance(looks, int) or looks < 1:
        raise BadInput(f"looks {looks!r}: expected a whole number of planned looks, at least 1")
    return Settings(check_confidence(confidence, "confidence"), check_correction(correction, "correction"), looks)


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: seed -> value. A ``censored`` seed's value is only a lower bound
    (epochs to a target the seed never reached: the epochs it ran + 1)."""

    values: dict
    censored: frozenset = frozenset()


def pair_seeds(config_a: dict, config_b: dict, policies_a: dict, policies_b: dict) -> tuple[list | None, str]:
    """The seeds on which arms A and B are compared pairwise, or None for Welch's test; and why.

    Seed k of a job draws each source of variation it varies (``train.seed_varies``: the subset,
    the order, augmentation, dropout, the initial weights, identical wherever the shapes agree)
    from (seed, data) alone. So seed k of two arms shares these draws, and their per-seed
    difference cancels them, when:

    - at least 2 seeds finished in both arms (those are the pairs);
    - their [data] tables are equal apart from ``preprocess`` (the same images, in the same order);
    - their ``train.batch_size`` is equal (the same images in each step);
    - their jobs recorded the same seed policy (``seed_varies``: which sources of variation the
      seed changes; a job without the record counts as the same).

    ``policies_*`` map each finished seed to its job's ``seed_varies`` record (None: not recorded).
    Otherwise the arms are independent samples: Welch's test on all finished seeds of each.
    """
    data_a = {k: v for k, v in config_a["data"].items() if k != "preprocess"}
    data_b = {k: v for k, v in config_b["data"].items() if k != "preprocess"}
    if data_a != data_b:
        changed = sorted(k for k in data_a.keys() | data_b.keys() if data_a.get(k) != data_b.get(k))
        return None, f"[data] differs ({', '.join('data.' + k for k in changed)}): other images or another order per seed"
    if config_a["train"]["batch_size"] != config_b["train"]["batch_size"]:
        return None, "train.batch_size differs: other images in each step"
    recorded = {tuple(sorted(p)) for p in (*policies_a.values(), *policies_b.values()) if p is not None}
    if len(recorded) > 1:
        return None, "the jobs' seeds vary different sources of variation (seed_varies)"
    common = sorted(policies_a.keys() & policies_b.keys())
    if len(common) < 2:
        return None, f"{len(common)} seed(s) finished in both arms: too few pairs"
    return common, f"seed k shares the data subset, data order, augmentation stream and initial weights ({len(common)} pairs)"


def _base_result(variant: Arm, reference: Arm, level: float) -> dict:
    def mean(arm):
        return statistics.fmean(arm.values.values()) if arm.values else None

    m_v, m_r = mean(variant), mean(reference)
    out = {
        "delta": m_v - m_r if m_v is not None and m_r is not None else None,
        "se": None,
        "ci_low": None,
        "ci_high": None,
        "ci_level": level,
        "p_value": None,
        "p_adjusted": None,
        "verdict": "inconclusive",
        "reason": None,
        "test": None,
        "df": None,
        "n_variant": len(variant.values),
        "n_reference": len(reference.values),
    }
    if variant.censored or reference.censored:
        out["censored"] = {"variant": len(variant.censored), "reference": len(reference.censored)}
    return out


def untestable(variant: Arm, reference: Arm) -> str | None:
    """Why no t-test can compare the arms, or None."""
    for side, arm in (("variant", variant), ("reference", reference)):
        if not arm.values:
            return f"missing: the {side} has no finished seed with this metric"
    if min(len(variant.values), len(reference.values)) < 2:
        return (
            "1 seed: no spread measured, so no test; 2 seeds per arm give one and 3 or more a useful "
            "interval (the 95% t quantile is 12.71 with 1 degree of freedom, 4.30 with 2)"
        )
    if len(variant.censored) == len(variant.values) and len(reference.censored) == len(reference.values):
        return "censored: no seed of either arm reached the target, so both are only lower bounds"
    return None


def _no_spread(spread: float, values) -> bool:
    return not spread > ROUNDING * max(1.0, *(abs(v) for v in values))


NO_SPREAD = (
    "no spread: the seeds gave identical values (paired: identical differences), which a t-test cannot judge; "
    "more seeds or a finer measure may"
)


def difference(variant: Arm, reference: Arm, pairs: list | None, level: float) -> dict:
    """Variant minus reference: the paired t-test on the differences over ``pairs`` (seeds), or
    Welch's test on all values of each arm; the interval is the test's own at ``level``."""
    out = _base_result(variant, reference, level)
    out["reason"] = untestable(variant, reference)
    if out["reason"]:
        return out
    if pairs:
        a, b = [variant.values[s] for s in pairs], [reference.values[s] for s in pairs]
        diffs = [x - y for x, y in zip(a, b)]
        spread = {"differences": statistics.stdev(diffs)}
        out.update(test="paired-t", delta=statistics.fmean(diffs), n_variant=len(pairs), n_reference=len(pairs))
        result = stats.ttest_rel(a, b) if not _no_spread(spread["differences"], a + b) else None
    else:
        a, b = list(variant.values.values()), list(reference.values.values())
        spread = {"variant": statistics.stdev(a), "reference": statistics.stdev(b)}
        out["test"] = "welch"
        result = stats.ttest_ind(a, b, equal_var=False) if not _no_spread(max(spread.values()), a + b) else None
    out["sd"] = spread
    if result is None or not math.isfinite(result.pvalue):
        out["reason"] = NO_SPREAD
        return out
    ci = result.confidence_interval(confidence_level=level)
    out.update(
        se=_standard_error(spread, out["n_variant"], out["n_reference"]),
        ci_low=float(ci.low),
        ci_high=float(ci.high),
        p_value=float(result.pvalue),
        df=float(result.df),
    )
    return out


def _standard_error(sd: dict, n_variant: int, n_reference: int) -> float:
    """The standard error of the difference the test divides by (for the record; scipy does the test)."""
    if "differences" in sd:
        return sd["differences"] / math.sqrt(n_variant)
    if "pooled" in sd:
        return sd["pooled"] * math.sqrt(1 / n_variant + 1 / n_reference)
    return math.hypot(sd["variant"] / math.sqrt(n_variant), sd["reference"] / math.sqrt(n_reference))


def dunnett(variants: dict, control: Arm, level: float) -> dict:
    """Dunnett's many-to-one test of every variant with 2+ seeds against the control: one pooled
    variance, p-values and simultaneous intervals adjusted across the variants. Seeds are not
    paired. The raw p is the same t statistic against Student's t with the test's degrees of freedom."""
    results = {name: _base_result(arm, control, level) for name, arm in variants.items()}
    testable = []
    for name, arm in variants.items():
        results[name]["reason"] = untestable(arm, control)
        if not results[name]["reason"]:
            testable.append(name)
    if not testable:
        return results
    samples = [list(variants[n].values.values()) for n in testable]
    base = list(control.values.values())
    df = sum(map(len, samples)) + len(base) - len(samples) - 1
    pooled = math.sqrt(sum(statistics.variance(s) * (len(s) - 1) for s in (*samples, base)) / df)
    if _no_spread(pooled, [v for s in (*samples, base) for v in s]):
        for name in testable:
            results[name].update(test="dunnett", reason=NO_SPREAD)
        return results
    res = stats.dunnett(*samples, control=base, rng=DUNNETT_SEED)
    ci = res.confidence_interval(confidence_level=level)
    for i, name in enumerate(testable):
        t, r = float(res.statistic[i]), results[name]
        r.update(
            test="dunnett",
            df=float(df),
            sd={"pooled": pooled},
            se=_standard_error({"pooled": pooled}, r["n_variant"], r["n_reference"]),
            ci_low=float(ci.low[i]),
            ci_high=float(ci.high[i]),
            p_value=float(2 * stats.t.sf(abs(t), df)),
            p_adjusted=float(res.pvalue[i]),
        )
    return results


def holm(pvalues: list) -> list:
    """Holm's step-down adjustment: the i-th smallest of m p-values times (m - i + 1), never less
    than the adjusted p before it, at most 1."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [1.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def decide(result: dict, alpha: float) -> dict:
    """The verdict from the adjusted p. An arm with censored seeds (lower bounds) is judged only in
    the direction the bounds can prove: a censored variant can be shown worse, never better; a
    censored reference the reverse."""
    if result["reason"] or result["p_adjusted"] is None:
        return result
    if result["p_adjusted"] > alpha:
        result["reason"] = f"not significant: adjusted p {result['p_adjusted']:.3g} > alpha {alpha:.3g}"
        return result
    direction = "better" if result["delta"] < 0 else "worse"
    censored = result.get("censored", {})
    if direction == "better" and censored.get("variant"):
        result["reason"] = (
            f"censored: {censored['variant']} seed(s) of the variant never reached the target; "
            "their epochs are lower bounds, which can show it worse but not better"
        )
    elif direction == "worse" and censored.get("reference"):
        result["reason"] = (
            f"censored: {censored['reference']} seed(s) of the reference never reached the target; "
            "their epochs are lower bounds, which can show the variant better but not worse"
        )
    else:
        result["verdict"] = direction
    return result


def judge(comparisons: dict, settings: Settings, control: Arm | None = None) -> dict:
    """One family, i.e. one metric of one table: ``comparisons`` maps a name to (variant arm,
    reference arm, paired seeds or None). Returns name -> result with the correction applied across
    the family and the verdict. Dunnett's test needs the one shared ``control``; without it, Holm."""
    level = settings.interval_level
    if settings.correction == "dunnett" and control is not None:
        results = dunnett({name: c[0] for name, c in comparisons.items()}, control, level)
    else:
        results = {name: difference(v, r, pairs, level) for name, (v, r, pairs) in comparisons.items()}
        tested = [name for name, r in results.items() if r["p_value"] is not None]
        raw = [results[name]["p_value"] for name in tested]
        for name, p in zip(tested, holm(raw) if settings.correction != "none" else raw):
            results[name]["p_adjusted"] = p
    for result in results.values():
        if result["p_adjusted"] is not None:
            result["p_adjusted"] = min(1.0, result["p_adjusted"] * settings.looks)  # Bonferroni over looks
        decide(result, settings.alpha)
    return results


def power(n: int, delta: float, sd: dict, alpha: float) -> float:
    """Power of the two-sided t-test at ``alpha`` with n seeds per arm (n pairs) when the true
    difference is ``delta``: from the noncentral t. ``sd`` is {"differences": s} for the paired
    test, else the arms' {"variant": s1, "reference": s2} for Welch's (Welch-Satterthwaite df)."""
    if "differences" in sd:
        se, df = sd["differences"] / math.sqrt(n), n - 1
    else:
        parts = [sd["variant"] ** 2 / n, sd["reference"] ** 2 / n]
        se = math.sqrt(sum(parts))
        df = sum(parts) ** 2 / sum(p * p / (n - 1) for p in parts)
    noncentrality = delta / se
    critical = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality))


def seeds_needed(delta: float, sd: dict, alpha: float, have: int):
    """The fewest seeds per arm (pairs, when paired) whose test has POWER for ``delta`` at ``alpha``:
    "enough" when ``have`` reaches it, f"over {MAX_SEEDS}" past the search, None without a spread."""
    if "pooled" in sd:
        sd = {"variant": sd["pooled"], "reference": sd["pooled"]}
    if not delta or not any(s > 0 for s in sd.values()):
        return None
    if power(MAX_SEEDS, delta, sd, alpha) < POWER:
        return f"over {MAX_SEEDS}"
    low, high = 1, 2  # power(low) < POWER <= power(high); power grows with n
    while power(high, delta, sd, alpha) < POWER:
        low, high = high, min(2 * high, MAX_SEEDS)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if power(mid, delta, sd, alpha) >= POWER else (mid, high)
    return "enough" if have >= high else high


def paper_check(result: dict, paper_points: float, planning_alpha: float) -> dict:
    """The paper's delta (percentage points, variant minus baseline) against a judged result
    (fractions): ``agrees`` (significant, same sign), ``contradicts`` (significant, opposite sign)
    or ``cannot tell``; and the seeds that would detect the paper's delta (see seeds_needed)."""
    paper = paper_points / 100
    check = "cannot tell"
    if result["verdict"] in ("better", "worse") and paper != 0:
        check = "agrees" if (result["delta"] > 0) == (paper > 0) else "contradicts"
    needed = None
    if result.get("sd") and not (result["reason"] or "").startswith("no spread"):
        needed = seeds_needed(paper, result["sd"], planning_alpha, min(result["n_variant"], result["n_reference"]))
    return {"paper_delta": paper, "paper_check": check, "seeds_needed": needed}


def planning_alpha(settings: Settings, family: int) -> float:
    """The alpha seeds_needed plans at: Bonferroni over the family's variants (the honest value under
    Holm, a safe one under Dunnett) and over the looks."""
    return settings.alpha / (settings.looks * (family if settings.correction != "none" else 1))
