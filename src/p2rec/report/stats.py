"""Significance tests for the paper tables (METHOD.md section 7).

Everything here works on plain arrays and is independent of the run layout:

- ``paired_ttest``: two-sided paired t-test (scipy.stats.ttest_rel) over test users;
- ``paired_permutation_test``: two-sided sign-flip permutation test on the paired differences (an option);
- ``holm``: Holm's step-down adjustment of a family of p-values;
- ``relative_effect``: relative difference of means with a seeded percentile-bootstrap interval over users;
- ``seed_means`` / ``user_means_over_seeds``: per-user metric averaged over seeds first, as the protocol asks.

Wilcoxon or sign tests are deliberately absent: at thousands of users with many ties (hit-rate is 0/1) they
inflate type-I error; the paired t-test on per-user values is the default.
"""
from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as _st

from p2rec.evaluation import per_user_metric

EXACT_PERMUTATION_MAX_N = 16  # enumerate all 2**n sign flips up to this many pairs


@dataclass(frozen=True)
class TestResult:
    statistic: float
    p_value: float
    n: int


def _paired(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples need equal 1-d shapes, got {a.shape} and {b.shape}")
    return a, b


def paired_ttest(treatment, comparator) -> TestResult:
    """Two-sided paired t-test of ``treatment - comparator``.

    Degenerate cases get defined values instead of NaN: identical samples give t = 0, p = 1; a constant
    non-zero difference gives t = +-inf, p = 0; fewer than two pairs give NaN (no test possible).
    """
    a, b = _paired(treatment, comparator)
    n = len(a)
    if n < 2:
        return TestResult(math.nan, math.nan, n)
    diff = a - b
    if np.all(diff == diff[0]):
        if diff[0] == 0:
            return TestResult(0.0, 1.0, n)
        return TestResult(math.copysign(math.inf, diff[0]), 0.0, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = _st.ttest_rel(a, b, alternative="two-sided")
    return TestResult(float(res.statistic), float(res.pvalue), n)


def paired_permutation_test(treatment, comparator, n_resamples: int = 10000, seed: int = 0) -> TestResult:
    """Two-sided paired permutation test: randomly flip the sign of each user's difference.

    The statistic is the mean difference. Up to ``EXACT_PERMUTATION_MAX_N`` pairs every sign pattern is
    enumerated (exact p-value); beyond that ``n_resamples`` seeded random patterns are drawn and
    p = (1 + #{|T*| >= |T|}) / (1 + n_resamples), which never reports p = 0.
    """
    a, b = _paired(treatment, comparator)
    diff = a - b
    n = len(diff)
    if n == 0:
        return TestResult(math.nan, math.nan, 0)
    observed = diff.mean()
    tol = 1e-12 * max(1.0, abs(observed))
    if n <= EXACT_PERMUTATION_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        null = signs @ diff / n
        p = float(np.mean(np.abs(null) >= abs(observed) - tol))
        return TestResult(float(observed), p, n)
    rng = np.random.default_rng(seed)
    hits = 0
    chunk = max(1, min(n_resamples, 2_000_000 // n))
    done = 0
    while done < n_resamples:
        m = min(chunk, n_resamples - done)
        signs = rng.integers(0, 2, size=(m, n), dtype=np.int8) * 2 - 1
        null = signs @ diff / n
        hits += int(np.sum(np.abs(null) >= abs(observed) - tol))
        done += m
    return TestResult(float(observed), (1 + hits) / (1 + n_resamples), n)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order.

    With m tests and raw p-values sorted ascending p_(1) <= ... <= p_(m):
    adj_(i) = max_{j <= i} min(1, (m - j + 1) * p_(j)). NaN entries (comparisons that could not be made)
    stay NaN and do not count towards m.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    if m == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for j, idx in enumerate(order):
        running = max(running, min(1.0, (m - j) * p[idx]))
        out[idx] = running
    return out


def adjust(p_values, method: str = "holm") -> np.ndarray:
    if method == "holm":
        return holm(p_values)
    if method == "none":
        return np.asarray(p_values, dtype=float).copy()
    raise ValueError(f"unknown correction {method!r} (known: holm, none)")


def relative_difference(treatment, comparator) -> float:
    """mean(treatment) / mean(comparator) - 1; NaN when the comparator's mean is 0."""
    a, b = _paired(treatment, comparator)
    mb = b.mean() if len(b) else math.nan
    if not mb:
        return math.nan
    return float(a.mean() / mb - 1.0)


def relative_effect(treatment, comparator, n_resamples: int = 2000, seed: int = 0,
                    level: float = 0.95) -> tuple[float, float, float]:
    """Relative difference of means and its percentile-bootstrap interval, resampling users in pairs.

    Returns (effect, low, high). The resamples are drawn as ``rng.integers(0, n, (n_resamples, n))`` from
    ``numpy.random.default_rng(seed)`` (in chunks, which draws the same stream), so the interval equals
    scipy.stats.bootstrap(..., paired=True, method='percentile') given the same generator.
    """
    a, b = _paired(treatment, comparator)
    effect = relative_difference(a, b)
    n = len(a)
    if n == 0 or math.isnan(effect) or n_resamples < 1:
        return effect, math.nan, math.nan
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, 4_000_000 // n))
    ratios = np.empty(n_resamples)
    done = 0
    while done < n_resamples:
        m = min(chunk, n_resamples - done)
        idx = rng.integers(0, n, (m, n))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios[done:done + m] = a[idx].mean(axis=1) / b[idx].mean(axis=1) - 1.0
        done += m
    ratios = ratios[np.isfinite(ratios)]
    if len(ratios) == 0:
        return effect, math.nan, math.nan
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return effect, float(low), float(high)


def mean_interval(values, level: float = 0.95) -> tuple[float, float]:
    """Half-width-based t interval of a mean (used by the plots): (low, high)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return math.nan, math.nan
    half = _st.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean() - half), float(v.mean() + half)


def user_means_over_seeds(ranks_by_seed: dict[int, pd.Series], metric: str) -> pd.Series:
    """Per-user metric averaged over seeds. ``ranks_by_seed``: seed -> Series of ranks indexed by user.

    Only users present in every seed are kept (the split is the same for every seed of a dataset, so this
    drops nobody unless files were mixed up).
    """
    if not ranks_by_seed:
        return pd.Series(dtype=float)
    frame = pd.concat({seed: pd.Series(per_user_metric(r.to_numpy(), metric), index=r.index)
                       for seed, r in ranks_by_seed.items()}, axis=1, join="inner")
    return frame.mean(axis=1)


def compare_users(treatment: pd.Series, comparator: pd.Series, test: str = "ttest", *,
                  n_bootstrap: int = 2000, n_permutations: int = 10000, seed: int = 0) -> dict:
    """Test one comparison over the users both series share; the effect is the relative difference."""
    joined = pd.concat([treatment.rename("t"), comparator.rename("c")], axis=1, join="inner")
    a, b = joined["t"].to_numpy(), joined["c"].to_numpy()
    if test == "ttest":
        res = paired_ttest(a, b)
    elif test == "permutation":
        res = paired_permutation_test(a, b, n_resamples=n_permutations, seed=seed)
    else:
        raise ValueError(f"unknown test {test!r} (known: ttest, permutation)")
    effect, low, high = relative_effect(a, b, n_resamples=n_bootstrap, seed=seed)
    return {"statistic": res.statistic, "p_raw": res.p_value, "effect": effect, "ci_low": low,
            "ci_high": high, "n_users": len(a), "mean_treatment": float(a.mean()) if len(a) else math.nan,
            "mean_comparator": float(b.mean()) if len(b) else math.nan}


def compare_seeds(treatment: dict[int, float], comparator: dict[int, float]) -> dict:
    """Seed-level paired t-test on per-seed scores (seeds matched by id): the robustness check."""
    common = sorted(set(treatment) & set(comparator))
    a = np.array([treatment[s] for s in common], dtype=float)
    b = np.array([comparator[s] for s in common], dtype=float)
    res = paired_ttest(a, b)
    return {"statistic": res.statistic, "p_raw": res.p_value, "n_seeds": len(common),
            "mean_diff": float((a - b).mean()) if len(common) else math.nan,
            "wins": int(np.sum(a > b)), "effect": relative_difference(a, b) if len(common) else math.nan}
