"""Statistics of the paper tables against scipy, simulation and hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from p2rec.report.stats import (compare_seeds, compare_users, holm, min_detectable_difference, paired_permutation_test,
                                paired_ttest, rejection_interval, relative_effect, seed_ttest, user_means_over_seeds)

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


# ----------------------------------------------------------------------------------------------- seed level
def test_seed_ttest_against_a_hand_computed_case():
    # d = (0.010, 0.025, 0.010): mean 0.015, sd sqrt(0.000075), se 0.005, t = 3 with 2 df;
    # two-sided p for df = 2 in closed form: 1 - t / sqrt(t^2 + 2)
    res = seed_ttest([0.31, 0.33, 0.32], [0.30, 0.305, 0.31])
    assert (res.n_seeds, res.df) == (3, 2)
    assert res.statistic == pytest.approx(3.0)
    assert res.p_value == pytest.approx(1 - 3 / math.sqrt(11))
    assert res.effect == pytest.approx(0.015 / 0.305)
    half = 4.302652729911275 * 0.005  # t(0.975, 2) * se
    assert (res.ci_low, res.ci_high) == pytest.approx(((0.015 - half) / 0.305, (0.015 + half) / 0.305))
    assert res.mean_comparator == pytest.approx(0.305) and res.mean_treatment == pytest.approx(0.32)


def test_seed_ttest_matches_scipy_and_the_t_interval():
    rng = np.random.default_rng(4)
    base = rng.normal(0.30, 0.01, 5)
    treat = base + rng.normal(0.006, 0.004, 5)
    res = seed_ttest(treat, base, level=0.9)
    ref = stats.ttest_rel(treat, base)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    ci = ref.confidence_interval(confidence_level=0.9)
    assert res.ci_low == pytest.approx(ci.low / base.mean()) and res.ci_high == pytest.approx(ci.high / base.mean())
    assert res.mde == pytest.approx(min_detectable_difference((treat - base).std(ddof=1), 5) / base.mean())


def test_seed_ttest_degenerate_cases():
    assert seed_ttest([0.3, 0.4], [0.3, 0.4]).p_value == 1.0  # identical runs
    same_shift = seed_ttest([0.35, 0.45], [0.3, 0.4])  # constant difference: no spread to test against
    assert math.isnan(same_shift.p_value) and same_shift.ci_low == same_shift.ci_high == pytest.approx(0.05 / 0.35)
    with pytest.raises(ValueError, match="two seeds"):
        seed_ttest([0.3], [0.2])
    assert math.isnan(seed_ttest([0.3, 0.4], [0.3, 0.5], power=None).mde)


def test_minimum_detectable_difference_has_the_stated_power():
    # the standard table value: a two-sided one-sample t-test on 10 values detects d = 0.996 sd with power 0.8
    assert min_detectable_difference(1.0, 10) == pytest.approx(0.996, abs=5e-4)
    assert min_detectable_difference(2.0, 10) == pytest.approx(2 * min_detectable_difference(1.0, 10))
    assert math.isnan(min_detectable_difference(1.0, 1)) and min_detectable_difference(0.0, 3) == 0.0
    # simulated: a true mean difference of the MDE is rejected 80% of the time at 3 and 5 seeds (df = 1 too)
    rng = np.random.default_rng(0)
    for n in (2, 3, 5):
        mde = min_detectable_difference(1.0, n)
        draws = rng.normal(mde, 1.0, (40000, n))
        rejected = stats.ttest_1samp(draws, 0.0, axis=1).pvalue < 0.05
        assert rejected.mean() == pytest.approx(0.8, abs=0.01), n


def test_rejection_interval_is_the_exact_binomial_interval():
    ci = stats.binomtest(3, 40).proportion_ci(confidence_level=0.95, method="exact")
    assert rejection_interval(3, 40) == pytest.approx((ci.low, ci.high))
    assert rejection_interval(0, 10)[0] == 0.0
    assert all(math.isnan(x) for x in rejection_interval(0, 0))


def test_family_adjust_refuses_an_empty_family():
    from p2rec import P2RecError
    from p2rec.report.significance import family_adjust

    np.testing.assert_allclose(family_adjust([0.01, 0.04, 0.03], "toy / sasrec / ndcg@10"), holm([0.01, 0.04, 0.03]))
    with pytest.raises(P2RecError, match="family toy / sasrec / ndcg@10: no comparisons"):
        family_adjust([], "toy / sasrec / ndcg@10")
