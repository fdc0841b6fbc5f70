"""Calibration of the tables' test (METHOD.md section 7, docs/statistics.md "Calibration").

An A/A experiment: runs of ONE method that differ only in their seed. No comparison among them has a true
effect, so a test at level alpha should reject at most an alpha share of them.

- The user-level test (the within-pair analysis): every pair of seeds, a paired t-test over test users on
  the two runs' per-user metric.
- The seed-level test (the tables' test): every split of the seeds into two halves of equal size (an odd
  seed out when the count is odd), the halves' per-seed means paired in seed order and tested by
  ``stats.seed_ttest``. All splits are used up to ``max_splits``; above that a seeded sample of distinct
  splits.
- With planted runs (a second method, same seeds): the seed-level test of method vs planted method, paired
  by seed, on every half that the splits use: its power at that seed count.

Rates come with an exact binomial 95% interval. The pairs (and splits) share runs, so they are not
independent trials: the interval is narrower than the true uncertainty of the rate, and is a guide only.
"""
from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from p2rec import P2RecError
from p2rec.io import write_text
from p2rec.report.formatting import metric_label, render_simple, write_csv
from p2rec.report.runs import Cell, Run, load_run
from p2rec.report.significance import paired_seeds
from p2rec.report.stats import paired_ttest, rejection_interval, seed_ttest

CALIBRATION_COLUMNS = ["metric", "test", "analysis", "method", "seeds_per_side", "n_tests", "rejections", "rate",
                       "ci_low", "ci_high", "alpha", "sampling", "note"]


def _load(paths, role: str) -> list[Run]:
    runs = []
    for p in paths:
        p = Path(p)
        metrics = p / "metrics.json" if p.is_dir() or p.name != "metrics.json" else p
        run = load_run(metrics)
        if not run.ok:
            raise P2RecError(f"calibrate: {metrics}: not a finished run ({run.reason}); --{role} takes finished runs")
        runs.append(run)
    methods = sorted({(r.dataset, r.backbone, r.variant) for r in runs})
    if len(methods) > 1:
        raise P2RecError(f"calibrate: --{role} must be runs of one method, got "
                         + ", ".join("/".join(m) for m in methods))
    seeds = [r.seed for r in runs]
    if len(set(seeds)) != len(seeds):
        dup = sorted({s for s in seeds if seeds.count(s) > 1})
        raise P2RecError(f"calibrate: --{role} gives seed(s) {dup} more than once: "
                         + ", ".join(str(r.path) for r in runs if r.seed in dup))
    return sorted(runs, key=lambda r: r.seed)


def balanced_splits(seeds: list[int], max_splits: int, seed: int = 0) -> tuple[list[tuple[tuple, tuple]], str]:
    """Unordered splits of ``seeds`` into two disjoint halves of ``len(seeds) // 2`` seeds each: all of them
    when there are at most ``max_splits``, else ``max_splits`` distinct ones drawn with
    ``numpy.random.default_rng(seed)``. Returns the splits and a description of which."""
    seeds = sorted(seeds)
    n, h = len(seeds), len(seeds) // 2
    total = math.comb(n, h) * math.comb(n - h, h) // 2
    if h == 0:
        return [], "no split (fewer than two seeds)"
    if total <= max_splits:
        splits = []
        for first in itertools.combinations(seeds, h):
            rest = [s for s in seeds if s not in first]
            for second in itertools.combinations(rest, h):
                if first < second:  # each unordered split once
                    splits.append((first, second))
        return splits, f"all {total} balanced splits"
    rng = np.random.default_rng(seed)
    chosen: dict[tuple, None] = {}
    while len(chosen) < max_splits:
        perm = [seeds[i] for i in rng.permutation(n)]
        a, b = tuple(sorted(perm[:h])), tuple(sorted(perm[h:2 * h]))
        chosen.setdefault(min(a, b) + max(a, b), None)  # the key keeps which half comes first irrelevant
    splits = [(key[:h], key[h:]) for key in chosen]
    return splits, f"{max_splits} of {total} balanced splits, sampled with seed {seed}"


def rejection_counts(users: dict[int, pd.Series], planted: dict[int, pd.Series] | None = None, *,
                     alpha: float = 0.05, max_splits: int = 1000, seed: int = 0) -> list[dict]:
    """The calibration of one metric from per-user values: ``users`` (seed -> per-user metric of one method's
    run, indexed by user) and optionally ``planted`` (the same for a second method, same seeds).

    Returns one dict per analysis: test, analysis, seeds_per_side, n_tests, rejections, sampling, note
    (and effect for the planted rows)."""
    seeds = sorted(users)
    out = []
    pairs = list(itertools.combinations(seeds, 2))
    hits = 0
    for s1, s2 in pairs:
        joined = pd.concat([users[s1].rename("a"), users[s2].rename("b")], axis=1, join="inner")
        hits += bool(paired_ttest(joined["a"], joined["b"]).p_value < alpha)
    out.append({"test": "users_ttest", "analysis": "A/A: same-method seed pairs", "seeds_per_side": 1,
                "n_tests": len(pairs), "rejections": hits, "sampling": f"all {len(pairs)} seed pairs",
                "note": "paired t-test over test users, one run per side"})
    h = len(seeds) // 2
    # a half of one seed leaves the t-test no degrees of freedom: the seed-level rows need 4 seeds or more
    splits, sampling = balanced_splits(seeds, max_splits, seed) if h >= 2 else ([], "")
    too_few = "needs at least 4 seeds (two per half): no test"
    means = {s: float(users[s].mean()) for s in seeds}
    tested = hits = 0
    for first, second in splits:
        p = seed_ttest([means[s] for s in first], [means[s] for s in second], alpha=alpha, power=None).p_value
        if math.isfinite(p):  # NaN: every pair differed by exactly the same amount, no test
            tested += 1
            hits += bool(p < alpha)
    out.append({"test": "seeds_ttest", "analysis": "A/A: balanced seed splits", "seeds_per_side": h,
                "n_tests": tested, "rejections": hits, "sampling": sampling,
                "note": "per-seed means of one half against the other, paired in seed order" if splits else too_few})
    if planted is not None:
        planted_means = {s: float(planted[s].mean()) for s in seeds}
        subsets = sorted({half for split in splits for half in split})
        tested = hits = 0
        for subset in subsets:
            p = seed_ttest([planted_means[s] for s in subset], [means[s] for s in subset], alpha=alpha,
                           power=None).p_value
            if math.isfinite(p):
                tested += 1
                hits += bool(p < alpha)
        overall = np.mean(list(planted_means.values())) / np.mean(list(means.values())) - 1
        out.append({"test": "seeds_ttest", "analysis": "planted: power on seed subsets", "seeds_per_side": h,
                    "n_tests": tested, "rejections": hits,
                    "sampling": f"the {len(subsets)} halves of those splits" if subsets else "",
                    "note": f"relative effect over all seeds {overall * 100:+.2f}%; paired by seed"
                    + ("" if subsets else "; " + too_few)})
    return out


def calibrate(runs, planted=None, *, alpha: float = 0.05, metrics=("hr@10", "ndcg@10"), max_splits: int = 1000,
              seed: int = 0) -> pd.DataFrame:
    """Rejection rates of the user-level and the seed-level test on same-method runs (and, with ``planted``,
    the seed-level test's power); ``runs`` / ``planted``: run folders or their metrics.json paths."""
    a_runs = _load(runs, "runs")
    if len(a_runs) < 2:
        raise P2RecError(f"calibrate: needs at least two runs of one method (got {len(a_runs)}): no seed pair to test")
    b_runs = _load(planted, "planted") if planted else []
    paired_seeds(Cell(a_runs), Cell(a_runs))  # same users and dataset version in every run
    method = "/".join((a_runs[0].dataset, a_runs[0].backbone, a_runs[0].variant))
    if b_runs:
        if {r.seed for r in b_runs} != {r.seed for r in a_runs}:
            raise P2RecError(f"calibrate: --planted seeds {[r.seed for r in b_runs]} differ from --runs seeds "
                             f"{[r.seed for r in a_runs]}")
        if (b_runs[0].dataset, b_runs[0].backbone) != (a_runs[0].dataset, a_runs[0].backbone) or \
                b_runs[0].variant == a_runs[0].variant:
            raise P2RecError(f"calibrate: --planted must be another method on the same dataset and backbone "
                             f"({b_runs[0].path} vs {a_runs[0].path})")
        paired_seeds(Cell(a_runs), Cell(b_runs))
        method_b = "/".join((b_runs[0].dataset, b_runs[0].backbone, b_runs[0].variant))
    rows = []
    for metric in metrics:
        users = {r.seed: r.user_metric(metric) for r in a_runs}
        planted_users = {r.seed: r.user_metric(metric) for r in b_runs} if b_runs else None
        for res in rejection_counts(users, planted_users, alpha=alpha, max_splits=max_splits, seed=seed):
            low, high = rejection_interval(res["rejections"], res["n_tests"])
            rows.append({**res, "metric": metric, "alpha": alpha, "ci_low": low, "ci_high": high,
                         "rate": res["rejections"] / res["n_tests"] if res["n_tests"] else math.nan,
                         "method": f"{method_b} vs {method}" if res["analysis"].startswith("planted") else method})
    return pd.DataFrame(rows, columns=CALIBRATION_COLUMNS)


def render_calibration(table: pd.DataFrame) -> str:
    def pct(x):
        return "n/a" if not math.isfinite(x) else f"{x * 100:.1f}%"

    shown = pd.DataFrame({
        "metric": table["metric"].map(metric_label), "test": table["test"], "analysis": table["analysis"],
        "seeds per side": table["seeds_per_side"], "tests": table["n_tests"], "rejections": table["rejections"],
        "rate": table["rate"].map(pct),
        "95% CI": [f"[{pct(lo)}, {pct(hi)}]" if math.isfinite(lo) else "n/a"
                   for lo, hi in zip(table["ci_low"], table["ci_high"])],
        "sampling": table["sampling"], "note": table["note"],
    })
    alpha = table["alpha"].iloc[0] if len(table) else math.nan
    methods = ", ".join(dict.fromkeys(table["method"]))
    caption = (f"Calibration at alpha = {alpha:g} ({methods}). A/A rows: share of comparisons between runs of the "
               "same method that a test calls significant (nominal: alpha). users_ttest: paired t-test over test "
               "users between two runs of different seeds, the within-pair analysis. seeds_ttest: the tables' "
               "test, per-seed means of one half of the seeds against the other. Planted rows: the seeds_ttest "
               "power against a second method on the same seed subsets. 95% CI: exact binomial interval, "
               "treating the comparisons as independent, which they are not (they share runs): a guide only.")
    md, _ = render_simple(shown, caption, "tab:calibration")
    return md


def write_calibration(table: pd.DataFrame, out_prefix: str | os.PathLike) -> dict[str, Path]:
    prefix = Path(out_prefix)
    written = {"csv": prefix.with_name(prefix.name + ".csv"), "md": prefix.with_name(prefix.name + ".md")}
    write_csv(table, written["csv"])
    write_text(written["md"], render_calibration(table))
    return written
