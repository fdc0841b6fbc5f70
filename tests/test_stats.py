"""Statistics of the paper tables against scipy and hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from p2rec.report.stats import (compare_seeds, compare_users, holm, paired_permutation_test, paired_ttest, relative_effect,
                         user_means_over_seeds)

A = np.array([0.50, 0.00, 1.00, 0.63, 0.39, 0.00, 1.00, 0.43, 0.31, 0.00])
B = np.array([0.39, 0.00, 0.63, 0.63, 0.00, 0.00, 1.00, 0.29, 0.31, 0.50])


def test_paired_ttest_matches_scipy():
    res = paired_ttest(A, B)
    ref = stats.ttest_rel(A, B)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    assert res.n == 10
    # hand check of the statistic: mean difference over its standard error
    d = A - B
    assert res.statistic == pytest.approx(d.mean() / (d.std(ddof=1) / math.sqrt(len(d))))


def test_paired_ttest_degenerate_cases_are_defined():
    same = paired_ttest(A, A)
    assert (same.statistic, same.p_value) == (0.0, 1.0)
    shifted = paired_ttest([1.5, 2.5, 0.5], [1.0, 2.0, 0.0])  # exactly constant difference
    assert shifted.statistic == math.inf and shifted.p_value == 0.0
    assert math.isnan(paired_ttest([1.0], [0.0]).p_value)
    with pytest.raises(ValueError):
        paired_ttest(A, B[:-1])


@pytest.mark.parametrize(
    "raw, expected",
    [
        # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> raised to 0.06 (monotone)
        ([0.01, 0.04, 0.03, 0.005], [0.03, 0.06, 0.06, 0.02]),
        # 0.01*5, 0.02*4, 0.03*3, 0.04*2 = 0.08 -> 0.09, 0.05*1 -> 0.09
        ([0.01, 0.02, 0.03, 0.04, 0.05], [0.05, 0.08, 0.09, 0.09, 0.09]),
        # capped at 1
        ([0.5, 0.6], [1.0, 1.0]),
        # NaN (no test possible) stays NaN and does not count: m = 2
        ([0.02, math.nan, 0.04], [0.04, math.nan, 0.04]),
        ([0.2], [0.2]),
        ([], []),
    ],
)
def test_holm_against_hand_computed_values(raw, expected):
    np.testing.assert_allclose(holm(raw), expected, rtol=1e-12)


def test_holm_is_never_below_raw_and_keeps_order():
    rng = np.random.default_rng(3)
    p = rng.random(20) ** 3
    adj = holm(p)
    assert np.all(adj >= p - 1e-15)
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= -1e-15)


def test_bootstrap_interval_equals_scipy_percentile_bootstrap():
    rng = np.random.default_rng(5)
    a, b = rng.random(60), rng.random(60)
    effect, low, high = relative_effect(a, b, n_resamples=3000, seed=11)
    assert effect == pytest.approx(a.mean() / b.mean() - 1.0)

    def ratio(x, y, axis=-1):
        return np.mean(x, axis=axis) / np.mean(y, axis=axis) - 1.0

    ref = stats.bootstrap((a, b), ratio, paired=True, vectorized=True, method="percentile", n_resamples=3000,
                          rng=np.random.default_rng(11))
    assert low == pytest.approx(ref.confidence_interval.low, rel=1e-9)
    assert high == pytest.approx(ref.confidence_interval.high, rel=1e-9)
    assert low < effect < high
    # seeded: the same seed gives the same interval, another seed a different one
    assert relative_effect(a, b, 3000, 11) == (effect, low, high)
    assert relative_effect(a, b, 3000, 12)[1] != low


def test_bootstrap_with_zero_comparator_mean_is_nan():
    effect, low, high = relative_effect([0.2, 0.3], [0.0, 0.0])
    assert math.isnan(effect) and math.isnan(low) and math.isnan(high)


def test_exact_permutation_test_matches_scipy():
    a, b = A, B
    res = paired_permutation_test(a, b)
    ref = stats.permutation_test((a, b), lambda x, y, axis=-1: np.mean(x - y, axis=axis),
                                 permutation_type="samples", n_resamples=np.inf, vectorized=True)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    assert res.statistic == pytest.approx((a - b).mean())


def test_random_permutation_test_agrees_with_scipy_and_is_seeded():
    rng = np.random.default_rng(8)
    a = rng.random(200)
    b = a - 0.03 + rng.normal(0, 0.2, 200)
    res = paired_permutation_test(a, b, n_resamples=20000, seed=1)
    ref = stats.permutation_test((a, b), lambda x, y, axis=-1: np.mean(x - y, axis=axis),
                                 permutation_type="samples", n_resamples=20000, vectorized=True,
                                 rng=np.random.default_rng(2))
    assert abs(res.p_value - ref.pvalue) < 0.02
    assert res.p_value == paired_permutation_test(a, b, n_resamples=20000, seed=1).p_value
    assert res.p_value > 0  # the (1 + hits) / (1 + n) estimate never reports 0


def test_user_means_over_seeds_average_each_user_first():
    ranks = {1: pd.Series([0, 20, 1], index=[7, 8, 9]), 2: pd.Series([1, 0, 30], index=[7, 8, 9])}
    hr = user_means_over_seeds(ranks, "hr@10")
    assert hr.to_dict() == {7: 1.0, 8: 0.5, 9: 0.5}
    ndcg = user_means_over_seeds(ranks, "ndcg@10")
    assert ndcg[7] == pytest.approx((1.0 + 1 / math.log2(3)) / 2)
    # a user missing from one seed is dropped, not averaged over fewer seeds
    ranks[2] = ranks[2].drop(9)
    assert list(user_means_over_seeds(ranks, "hr@10").index) == [7, 8]


def test_compare_users_pairs_by_user_id_and_compare_seeds_by_seed_id():
    t = pd.Series(A, index=np.arange(10))
    c = pd.Series(B[::-1], index=np.arange(10)[::-1])  # same pairs, other order
    res = compare_users(t, c, n_bootstrap=200)
    assert res["p_raw"] == pytest.approx(stats.ttest_rel(A, B).pvalue)
    assert res["n_users"] == 10
    perm = compare_users(t, c, test="permutation")
    assert perm["p_raw"] == pytest.approx(paired_permutation_test(A, B).p_value)
    seeds = compare_seeds({1: 0.30, 2: 0.32, 3: 0.31}, {1: 0.25, 2: 0.33, 4: 0.20})
    assert seeds["n_seeds"] == 2 and seeds["wins"] == 1
    assert seeds["p_raw"] == pytest.approx(stats.ttest_rel([0.30, 0.32], [0.25, 0.33]).pvalue)
    with pytest.raises(ValueError):
        compare_users(t, c, test="wilcoxon")
