"""Tests for robustlora.stats against hand-computed and published values and simulations whose truth is known
(the paired test's calibration under a simulated null: tests/test_calibration.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import robustlora.stats as stats
from robustlora.stats import (
    Estimate, hierarchical_mean, holm_adjust, majority_vote, mcnemar_exact, mcnemar_paired, mde_share, paired_test,
    seed_summary, share_mean, tango_interval, wilson_interval,
)


# --- Wilson -----------------------------------------------------------------------------------------------------

def test_wilson_matches_textbook_values():
    # 0/10 -> [0, z²/(n+z²)] = [0, 0.2775]; 5/10 -> [0.2366, 0.7634] (Wilson 1927 / Newcombe 1998 tables)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    lo90, hi90 = wilson_interval(5, 10, confidence=0.90)
    assert 0.23659 < lo90 and hi90 < 0.76341  # a lower confidence gives a narrower interval


def test_wilson_equals_statsmodels_on_a_grid():
    from statsmodels.stats.proportion import proportion_confint

    for confidence in (0.8, 0.9, 0.95, 0.99):
        for n in (1, 2, 7, 40, 389, 1000):
            k = np.arange(n + 1)
            lo, hi = wilson_interval(k, np.full(n + 1, n), confidence=confidence)
            ref_lo, ref_hi = proportion_confint(k, n, alpha=1 - confidence, method="wilson")
            inner = slice(1, n)  # at 0 and n the bounds are set to exactly 0 and 1 (statsmodels rounds near them)
            assert np.allclose(lo[inner], ref_lo[inner], rtol=0, atol=1e-12)
            assert np.allclose(hi[inner], ref_hi[inner], rtol=0, atol=1e-12)
            assert np.allclose([lo[-1], hi[0]], [ref_lo[-1], ref_hi[0]], rtol=0, atol=1e-12)


def test_wilson_never_zero_width_at_zero_and_n():
    for n in (1, 7, 40, 122, 300, 10_000):  # 40 and 300 once rounded to 0.9999999999999999
        lo, hi = wilson_interval(0, n)
        assert lo == 0.0 and hi > 0.0
        lo, hi = wilson_interval(n, n)
        assert lo < 1.0 and hi == 1.0


def test_wilson_vectorised_and_empty():
    k, n = np.array([0, 3, 10, 0]), np.array([10, 10, 10, 0])
    lo, hi = wilson_interval(k, n)
    assert lo.shape == hi.shape == (4,)
    for i in range(3):
        assert (lo[i], hi[i]) == pytest.approx(wilson_interval(int(k[i]), int(n[i])))
    assert math.isnan(lo[3]) and math.isnan(hi[3])
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    assert isinstance(wilson_interval(3, 10)[0], float)


def test_wilson_refuses_impossible_counts():
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 10, confidence=1.0)


# --- McNemar and Holm -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("b", "c", "p"), [
    (1, 9, 0.021484375),  # 2 (1 + 10) / 2^10
    (9, 1, 0.021484375),
    (0, 5, 0.0625),  # 2 / 2^5
    (4, 4, 1.0),
    (0, 0, 1.0),
    (3, 4, 1.0),  # 2 P(X <= 3 | n = 7) = 1 exactly, capped
    (2, 10, 0.03857421875),  # 2 (1 + 12 + 66) / 2^12
])
def test_mcnemar_exact_known_tables(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)


def test_mcnemar_exact_large_counts_stay_finite():
    p = mcnemar_exact(4800, 5200)  # 2^10000 overflows a float; integer arithmetic does not
    assert 0.0 < p < 0.001


def test_holm_hand_computed():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> running max 0.06
    p = [0.01, np.nan, 0.04, 0.03, 0.005]
    adj = holm_adjust(p)
    assert np.isnan(adj[1])  # NaN stays NaN and is not counted: the family has 4 members
    np.testing.assert_allclose(adj[[0, 2, 3, 4]], [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    np.testing.assert_array_equal(holm_adjust([0.5, 0.6]), [1.0, 1.0])  # capped at 1
    assert holm_adjust([]).shape == (0,)


def test_holm_is_monotone_and_never_below_raw():
    p = np.random.default_rng(0).random(20) ** 3
    adj = holm_adjust(p)
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= 0) and np.all(adj >= p) and np.all(adj <= 1)


# --- majority vote and paired McNemar ---------------------------------------------------------------------------

def test_majority_vote_with_ties():
    votes = majority_vote(np.array([[1, 1, 0, 0], [1, 0, 0, 1]], dtype=bool))
    np.testing.assert_array_equal(votes, [1.0, np.nan, 0.0, np.nan])
    np.testing.assert_array_equal(majority_vote(np.array([[1, 0], [1, 1], [0, 0]], bool)), [1.0, 0.0])


def test_mcnemar_paired_counts_discordant_votes():
    a = np.array([[1, 1, 1, 0, 1, 0], [1, 1, 1, 0, 0, 0], [1, 0, 1, 0, 1, 0]], dtype=bool)  # votes 1 1 1 0 1 0
    b = np.array([[1, 0, 0, 1, 0, 0], [1, 0, 0, 1, 1, 0]], dtype=bool)  # votes 1 0 0 1 tie 0
    p, a_only, b_only = mcnemar_paired(a, b)
    assert (a_only, b_only) == (2, 1)  # image 4 is a tie in b and dropped
    assert p == mcnemar_exact(2, 1)
    mask = np.array([True, False, True, True, True, True])
    assert mcnemar_paired(a, b, mask)[1:] == (1, 1)


# --- hierarchical bootstrap -------------------------------------------------------------------------------------

def _bernoulli(shape, p, seed):
    return np.random.default_rng(seed).random(shape) < p


def test_hierarchical_mean_constant_array_has_zero_width_ci():
    est = hierarchical_mean(np.full((3, 50), 0.25), n_boot=200, seed=0)
    assert est == Estimate(0.25, 0.25, 0.25, 50, 3, 0.0)
    est = hierarchical_mean(np.full((2, 37), 0.3), n_boot=200, seed=0)  # 0.3 is not exact in binary
    assert est.value == pytest.approx(0.3) and est.ci_high - est.ci_low < 1e-12


def test_hierarchical_mean_value_mask_and_empty_mask():
    x = np.array([[1.0, 0.0, 1.0, np.nan], [0.0, 0.0, 1.0, np.nan]])  # NaN outside the mask is ignored
    mask = np.array([True, True, True, False])
    est = hierarchical_mean(x, mask, n_boot=100, seed=0)
    assert est.value == pytest.approx(0.5) and (est.n_images, est.n_seeds) == (3, 2)
    assert est.ci_low < 0.5 < est.ci_high
    empty = hierarchical_mean(x, np.zeros(4, bool), n_boot=100, seed=0)
    assert math.isnan(empty.value) and math.isnan(empty.ci_low) and math.isnan(empty.ci_high)
    assert empty.n_images == 0
    with pytest.raises(ValueError, match="non-finite"):
        hierarchical_mean(x, n_boot=10, seed=0)


def test_bootstrap_is_seeded():
    x = _bernoulli((3, 120), 0.4, seed=1)
    first = hierarchical_mean(x, n_boot=300, seed=7)
    assert hierarchical_mean(x, n_boot=300, seed=7) == first
    assert hierarchical_mean(x, n_boot=300, seed=8) != first
    assert hierarchical_mean(x, n_boot=300, seed=7) == hierarchical_mean(x, n_boot=300, seed=7)
    assert hierarchical_mean(x, n_boot=300, seed=7) != hierarchical_mean(x, n_boot=300, seed=8)


def test_ci_covers_training_seed_variation():
    # same per-image spread in every seed; only the seeds' means disagree in the second array
    base = np.random.default_rng(3).normal(size=200)
    agree = np.tile(base, (3, 1))
    disagree = agree + np.array([[-0.5], [0.0], [0.5]])
    narrow = hierarchical_mean(agree, n_boot=500, seed=0)
    wide = hierarchical_mean(disagree, n_boot=500, seed=0)
    assert wide.value == pytest.approx(narrow.value)
    assert wide.ci_high - wide.ci_low > 2 * (narrow.ci_high - narrow.ci_low)


def test_single_seed_is_the_image_bootstrap():
    x = np.random.default_rng(4).normal(size=(1, 400))
    est = hierarchical_mean(x, n_boot=2000, seed=0)
    normal_width = 2 * 1.96 * x.std() / math.sqrt(400)
    assert est.ci_high - est.ci_low == pytest.approx(normal_width, rel=0.15)
    assert est.n_seeds == 1


def test_coverage_smoke():
    # images differ in difficulty (shared by seeds), outcomes Bernoulli with mean 0.3 overall
    rng = np.random.default_rng(5)
    covered = 0
    for i in range(200):
        difficulty = rng.beta(0.6, 1.4, size=200)
        outcomes = rng.random((3, 200)) < difficulty
        est = hierarchical_mean(outcomes, n_boot=300, seed=i)
        covered += est.ci_low <= 0.3 <= est.ci_high
    assert 0.90 <= covered / 200 <= 0.995


def test_chunked_bootstrap_matches_one_chunk(monkeypatch):
    x = _bernoulli((3, 100), 0.3, seed=6)
    whole = hierarchical_mean(x, n_boot=1000, seed=0)
    monkeypatch.setattr(stats.intervals, "_CHUNK_CELLS", 700)  # 7 resamples per chunk
    chunked = hierarchical_mean(x, n_boot=1000, seed=0)
    assert chunked.value == whole.value
    assert chunked.ci_low == pytest.approx(whole.ci_low, abs=0.02)
    assert chunked.ci_high == pytest.approx(whole.ci_high, abs=0.02)


def test_share_mean_contains_the_wilson_interval_of_the_smallest_count():
    # a share over all images: the hierarchical mean, its interval widened to contain Wilson's at N
    x = _bernoulli((3, 40), 0.3, seed=12).astype(bool)
    est, plain = share_mean(x, n_boot=200, seed=0), hierarchical_mean(x, n_boot=200, seed=0)
    w_lo, w_hi = wilson_interval(plain.value * 40, 40)
    assert est == Estimate(plain.value, min(plain.ci_low, w_lo), max(plain.ci_high, w_hi), 40, 3, plain.se)
    # nothing fooled among each seed's 36, 30 and 20 clean-correct images: [0, Wilson bound at the smallest count, 20]
    among = np.stack([np.arange(40) < k for k in (36, 30, 20)])
    zero = share_mean(np.zeros((3, 40), bool), among, n_boot=200, seed=0)
    assert (zero.value, zero.ci_low, zero.n_seeds) == (0.0, 0.0, 3)
    assert zero.ci_high == pytest.approx(wilson_interval(0, 20)[1])


def test_share_mean_among_is_the_mean_of_per_seed_ratios():
    among = np.stack([np.arange(40) < k for k in (36, 30, 0)])  # seed 2 has no image to count: it drops out
    outcome = np.stack([np.arange(40) < 28, np.arange(40) < 30, np.ones(40, bool)])
    est = share_mean(outcome, among, n_boot=300, seed=0)
    assert est.value == pytest.approx(np.mean([28 / 36, 30 / 30])) and est.n_seeds == 2
    assert 0 <= est.ci_low <= est.value <= est.ci_high <= 1
    nothing = share_mean(outcome, np.zeros((3, 40), bool), n_boot=10, seed=0)
    assert math.isnan(nothing.value) and (nothing.n_images, nothing.n_seeds) == (0, 0)


def test_zero_resamples_give_nan_interval():
    est = hierarchical_mean(np.ones((2, 5)), n_boot=0, seed=0)
    assert est.value == 1.0 and math.isnan(est.ci_low) and math.isnan(est.ci_high)
    with pytest.raises(ValueError, match="n_boot"):
        hierarchical_mean(np.ones((2, 5)), n_boot=-1, seed=0)


# --- Tango's score interval and the paired test -------------------------------------------------------------------

def test_tango_matches_published_values():
    # Fagerland, Lydersen & Laake (2014, Stat Med 33:2850), Cavo et al. (2012): b = 6, c = 16 of 161 pairs,
    # Tango 95 % CI -0.1240 to -0.0054 (also R contingencytables::Tango_asymptotic_score_CI_paired_2x2 in its tests)
    assert tango_interval(6, 16, 161) == pytest.approx((-0.1240, -0.0054), abs=5e-5)
    # all 3 pairs discordant one way: -0.1230 to 1 (the same package's test of the boundary)
    assert tango_interval(3, 0, 3) == pytest.approx((-0.1230, 1.0), abs=5e-5)
    assert tango_interval(0, 3, 3) == pytest.approx((-1.0, 0.1230), abs=5e-5)
    # no discordant pair: the bound solves d / sqrt(d (1 - d) / n) = z, i.e. d = z² / (n + z²), on both sides
    z2 = 1.959963984540054 ** 2
    assert tango_interval(0, 0, 120) == pytest.approx((-z2 / (120 + z2), z2 / (120 + z2)), rel=1e-9)


def test_tango_is_monotone_in_the_discordant_counts():
    # the defect: 0 discordant of 120 gave [-3.1, +3.1] %, one gave [0.0, +2.5] %
    n = 120
    for c in (0, 1, 3, 10):
        bounds = np.array([tango_interval(b, c, n) for b in range(0, 40)])
        assert np.all(np.diff(bounds[:, 0]) > 0) and np.all(np.diff(bounds[:, 1]) > 0)  # more a-only: both rise
        assert np.all(bounds[:, 1] - bounds[:, 0] > 0)  # never zero width
    falling = np.array([tango_interval(5, c, n) for c in range(0, 40)])
    assert np.all(np.diff(falling[:, 0]) < 0) and np.all(np.diff(falling[:, 1]) < 0)
    lo, hi = tango_interval(0, 0, n), tango_interval(1, 0, n)
    assert lo[0] < hi[0] < 0 < lo[1] < hi[1]  # one discordant pair moves both bounds up; 0 stays inside


def test_tango_one_sided_and_refuses_impossible_counts():
    lo, hi = tango_interval(10, 2, 100, sided="greater")
    assert hi == 1.0 and tango_interval(10, 2, 100, confidence=0.90)[0] == pytest.approx(lo, abs=1e-9)
    assert tango_interval(10, 2, 100, sided="less") == pytest.approx((-1.0, tango_interval(10, 2, 100, 0.90)[1]))
    with pytest.raises(ValueError, match="b=90, c=20, n=100"):
        tango_interval(90, 20, 100)
    with pytest.raises(ValueError, match="sided"):
        tango_interval(1, 2, 10, sided="both")


def _table(b: int, c: int, both: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.r_[np.ones(b), np.zeros(c), np.ones(both), np.zeros(neither)][None]
    return a, np.r_[np.zeros(b), np.ones(c), np.ones(both), np.zeros(neither)][None]


def test_one_seed_is_tango_with_the_mcnemar_score_test():
    from statsmodels.stats.contingency_tables import mcnemar
    a, b = _table(6, 16, 59, 80)
    t = paired_test(a, b)
    assert (t.ci_low, t.ci_high) == pytest.approx(tango_interval(6, 16, 161), abs=1e-12)
    assert t.p == pytest.approx(mcnemar([[59, 6], [16, 80]], exact=False, correction=False).pvalue, rel=1e-9)
    assert t.diff == pytest.approx(-10 / 161) and t.df == math.inf and t.method.startswith("Tango")
    assert t.se == pytest.approx(math.sqrt((22 / 161 - (10 / 161) ** 2) / 161))
    # (z_.975 + z_.8) se, from the score interval's wider side (it is skewed away from 0 here)
    assert (1.959964 + 0.841621) * t.se < t.mde < 1.2 * (1.959964 + 0.841621) * t.se
    assert paired_test(a, b, same_seeds=True) == t  # one seed: the same analysis either way
    # the same table at the 1 - 2 alpha level: the TOST interval
    assert (t.eq_low, t.eq_high) == pytest.approx(tango_interval(6, 16, 161, confidence=0.90), abs=1e-12)


@pytest.mark.parametrize(("b", "c"), [(0, 0), (0, 1), (0, 4), (1, 6), (3, 12), (20, 35), (40, 20)])
def test_interval_and_p_agree(b, c):
    # p < 0.05 exactly when the 95 % interval excludes 0, on sparse and dense tables, one seed and several
    a1, b1 = _table(b, c, 30, 50)
    rng = np.random.default_rng(b * 100 + c)
    for a, bb in ((a1, b1), (np.vstack([a1, a1, rng.random(a1.shape) < 0.5]), np.vstack([b1, b1]))):
        t = paired_test(a, bb)
        assert (t.p < 0.05) == (t.ci_low > 0 or t.ci_high < 0)
        assert t.ci_low <= t.diff <= t.ci_high
        assert t.eq_low >= t.ci_low and t.eq_high <= t.ci_high


def test_no_discordance_among_several_seeds_is_not_zero_width():
    # 3 + 3 seeds that all agree on 120 images: no discordant pair says nothing about how much the seeds average
    # out, so the interval is one pair's Tango bound on the 120 images (no credit for agreeing seeds), never [0, 0]
    x = np.tile(np.arange(120) < 70, (3, 1))
    t = paired_test(x, x.copy())
    one = tango_interval(0, 0, 120)
    assert t.diff == 0.0 and t.p == 1.0 and t.ci_low == pytest.approx(-t.ci_high)
    assert t.ci_high == pytest.approx(one[1], rel=1e-6) and t.ci_high > 0


def test_seed_shifts_widen_the_interval():
    # every image the same in both arms but one seed of a is better on 30 images: the seed level counts
    rng = np.random.default_rng(3)
    base = rng.random(300) < 0.6
    a = np.tile(base, (3, 1))
    a[0, :30] = True
    b = np.tile(base, (3, 1))
    agree = paired_test(a, b)
    c = a.copy()
    c[1, 30:60], c[2, 60:90] = True, True  # the same gain on other images in every seed: consistent
    consistent = paired_test(c, b)
    assert agree.df < 20 and agree.p > 0.05  # one seed's gain is not an arm's gain
    assert consistent.p < agree.p and consistent.diff > agree.diff


def test_one_sided_comparison():
    a, b = _table(12, 3, 40, 45)
    two, greater, less = (paired_test(a, b, sided=s) for s in ("two-sided", "greater", "less"))
    assert greater.ci_high == 1.0 and less.ci_low == -1.0
    assert greater.ci_low == pytest.approx(two.eq_low) and less.ci_high == pytest.approx(two.eq_high)
    assert greater.p == pytest.approx(two.p / 2) and less.p == pytest.approx(1 - two.p / 2)
    with pytest.raises(ValueError, match="sided"):
        paired_test(a, b, sided="up")


def test_paired_test_masks_and_refuses_mismatches():
    a, b = _table(10, 2, 30, 58)
    mask = np.arange(100) >= 12  # drops every discordant image
    t = paired_test(a, b, mask)
    assert t.diff == 0.0 and t.n_images == 88 and t.p == 1.0
    empty = paired_test(a, b, np.zeros(100, bool))
    assert empty.n_images == 0 and math.isnan(empty.diff) and math.isnan(empty.p)
    with pytest.raises(ValueError, match="different images"):
        paired_test(a, b[:, :50])
    with pytest.raises(ValueError, match="different seeds x images"):
        paired_test(np.vstack([a, a]), b, same_seeds=True)


def test_mde_share():
    assert mde_share(400, 0.5) == pytest.approx((1.959964 + 0.841621) * math.sqrt(0.25 / 400), rel=1e-6)
    assert mde_share(100, 0.0) > 0 and math.isnan(mde_share(0, 0.5))
    assert mde_share(100, 0.5, power=0.9) > mde_share(100, 0.5)


# --- seed summary -----------------------------------------------------------------------------------------------

def test_seed_summary():
    s = seed_summary([0.8, 0.9, 1.0])
    assert s == pytest.approx({"mean": 0.9, "std": 0.1, "min": 0.8, "max": 1.0, "n_seeds": 3})
    assert seed_summary({0: 0.5})["std"] == 0.0
    assert seed_summary(np.array([1.0, 3.0]))["mean"] == 2.0
    with pytest.raises(ValueError, match="at least one"):
        seed_summary([])


def test_paired_test_is_finite_and_consistent_on_small_random_studies():
    # identical arms, seeds that all agree, one image, one seed vs three: never NaN, p and interval always agree
    rng = np.random.default_rng(21)
    for trial in range(300):
        n, s = int(rng.integers(1, 12)), int(rng.integers(1, 4))
        a = rng.random((s, n)) < rng.random()
        b = (a.copy(), np.tile(a[:1], (2, 1)), rng.random((int(rng.integers(1, 4)), n)) < rng.random())[trial % 3]
        for same in (False, True) if a.shape == b.shape else (False,):
            t = paired_test(a, b, same_seeds=same)
            assert np.all(np.isfinite([t.diff, t.ci_low, t.ci_high, t.p, t.eq_low, t.eq_high, t.mde, t.se]))
            assert t.ci_low <= t.eq_low <= t.diff <= t.eq_high <= t.ci_high and t.ci_low < t.ci_high
            assert (t.p < 0.05) == (t.ci_low > 0 or t.ci_high < 0)
