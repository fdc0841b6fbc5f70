"""Significance tests for the paper tables (METHOD.md section 7).

Everything here works on plain arrays and is independent of the run layout:

- ``seed_ttest``: the tables' test. The unit of replication is the training run: a two-sided paired
  t-test over seeds on per-seed means (scipy.stats.ttest_rel, df = n_seeds - 1), with a t interval of the
  relative effect and the minimum detectable effect at the seed count used (docs/statistics.md);
- ``min_detectable_difference``: the smallest true mean difference that test detects with a given power;
- ``rejection_interval``: exact binomial interval of a rejection rate (the calibration tables);
- ``paired_ttest``: two-sided paired t-test (scipy.stats.ttest_rel), over test users in the within-pair
  (users) analysis, which ignores run-to-run variance and so is never the tables' decision;
- ``paired_permutation_test``: two-sided sign-flip permutation test on the paired differences (an option);
- ``holm``: Holm's step-down adjustment of a family of p-values;
- ``relative_effect``: relative difference of means with a seeded percentile-bootstrap interval over users;
- ``seed_means`` / ``user_means_over_seeds``: per-user metric averaged over seeds first, as the protocol asks.

Wilcoxon or sign tests are deliberately absent: at thousands of users with many ties (hit-rate is 0/1) they
inflate type-I error.

statsmodels is not a dependency of this package, so the power calculation (``min_detectable_difference``)
uses scipy's noncentral t distribution and Holm's adjustment is written out (``holm``, a few lines checked
against hand-computed values in tests/test_stats.py).
"""
from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize as _opt
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


# ----------------------------------------------------------------------------------------------- seed level
@dataclass(frozen=True)
class SeedTest:
    """A paired t-test over seeds on per-seed means; effects relative to the comparator's mean."""
    n_seeds: int
    df: int
    mean_treatment: float
    mean_comparator: float
    mean_diff: float
    effect: float
    ci_low: float
    ci_high: float
    statistic: float
    p_value: float
    mde: float
    power: float
    level: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def min_detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean of the paired differences that a two-sided paired t-test on ``n`` pairs detects
    with probability ``power`` at level ``alpha``, given the standard deviation ``sd`` of the differences.

    Power of the test at noncentrality delta = mu * sqrt(n) / sd is P(|T| > t_crit) for T ~ nct(n - 1, delta);
    the noncentrality that gives ``power`` is found by root finding (statsmodels' TTestPower does the same,
    but statsmodels is not a dependency). NaN below two pairs or for an undefined ``sd``; 0 when ``sd`` is 0.
    """
    if n < 2 or not math.isfinite(sd):
        return math.nan
    if sd == 0:
        return 0.0
    df = n - 1
    crit = _st.t.ppf(1 - alpha / 2, df)

    def shortfall(delta: float) -> float:
        # the lower tail as the upper tail at -delta: nct.cdf far in its tail returns NaN
        return _st.nct.sf(crit, df, delta) + _st.nct.sf(crit, df, -delta) - power

    high = crit + 10.0
    while shortfall(high) < 0:  # widen the bracket (df = 1 needs a noncentrality far above t_crit)
        high *= 2
    delta = _opt.brentq(shortfall, 0.0, high, xtol=1e-10)
    return float(delta * sd / math.sqrt(n))


def seed_ttest(treatment, comparator, *, alpha: float = 0.05, power: float | None = 0.8,
               level: float = 0.95) -> SeedTest:
    """Paired t-test over seeds: ``treatment[i]`` and ``comparator[i]`` are the per-seed means of the same
    seed (same data order and initialisation apart from the item table).

    effect = mean(d) / mean(comparator) with d the per-seed differences; its interval is the t interval of
    mean(d) (scipy's ``ttest_rel(...).confidence_interval``) divided by mean(comparator), which is treated as
    fixed: the comparator's own seed noise is in d already, and a ratio interval (Fieller) would add little at
    the 2-5 % effects and below-1 % comparator spread seen here. ``mde``: the minimum detectable *relative*
    effect at ``power`` and ``alpha`` with this seed count, from the observed spread of d (NaN with
    ``power=None``, which skips the root finding where only the decision is needed). A constant non-zero
    d has p = NaN (no spread to test against), identical sides p = 1.
    """
    a, b = _paired(treatment, comparator)
    n = len(a)
    if n < 2:
        raise ValueError(f"a paired t-test over seeds needs at least two seeds, got {n}")
    diff = a - b
    base = float(b.mean())
    mean_diff = float(diff.mean())
    sd = float(diff.std(ddof=1))
    if np.all(diff == diff[0]):
        # every seed moved by exactly the same amount: no estimate of the spread, so no test (paired_ttest's
        # p = 0 for a constant difference suits thousands of users, not two or three seeds); identical
        # sides keep p = 1
        res = paired_ttest(a, b)
        low = high = mean_diff
        if mean_diff != 0:
            res = TestResult(res.statistic, math.nan, n)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = _st.ttest_rel(a, b, alternative="two-sided")
            ci = ref.confidence_interval(confidence_level=level)
        res = TestResult(float(ref.statistic), float(ref.pvalue), n)
        low, high = float(ci.low), float(ci.high)

    def rel(x: float) -> float:
        return x / base if base else math.nan

    return SeedTest(n_seeds=n, df=n - 1, mean_treatment=float(a.mean()), mean_comparator=base, mean_diff=mean_diff,
                    effect=rel(mean_diff), ci_low=rel(low), ci_high=rel(high), statistic=res.statistic,
                    p_value=res.p_value, power=math.nan if power is None else power,
                    mde=math.nan if power is None else rel(min_detectable_difference(sd, n, alpha, power)),
                    level=level)


def rejection_interval(rejections: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a rejection rate, from scipy.stats.binomtest."""
    if trials == 0:
        return math.nan, math.nan
    ci = _st.binomtest(rejections, trials).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)
