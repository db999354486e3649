"""Tests for robustlora.stats against hand-computed values and simulations whose truth is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

import robustlora.stats as stats
from robustlora.stats import (
    Estimate, hierarchical_mean, holm_adjust, majority_vote, mcnemar_exact, mcnemar_paired, paired_difference,
    seed_summary, share_mean, wilson_interval,
)


# --- Wilson -----------------------------------------------------------------------------------------------------

def test_wilson_matches_textbook_values():
    # 0/10 -> [0, z²/(n+z²)] = [0, 0.2775]; 5/10 -> [0.2366, 0.7634] (Wilson 1927 / Newcombe 1998 tables)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    lo90, hi90 = wilson_interval(5, 10, confidence=0.90)
    assert 0.23659 < lo90 and hi90 < 0.76341  # a lower confidence gives a narrower interval


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
    assert est == Estimate(0.25, 0.25, 0.25, 50, 3)
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
    y = _bernoulli((3, 120), 0.6, seed=2)
    assert paired_difference(x, y, n_boot=300, seed=7) == paired_difference(x, y, n_boot=300, seed=7)
    assert paired_difference(x, y, n_boot=300, seed=7) != paired_difference(x, y, n_boot=300, seed=8)


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
    monkeypatch.setattr(stats, "_CHUNK_CELLS", 700)  # 7 resamples per chunk
    chunked = hierarchical_mean(x, n_boot=1000, seed=0)
    assert chunked.value == whole.value
    assert chunked.ci_low == pytest.approx(whole.ci_low, abs=0.02)
    assert chunked.ci_high == pytest.approx(whole.ci_high, abs=0.02)


def test_paired_difference_identical_arms_is_zero_with_the_images_wilson_bound():
    # no discordant image among 150: the bootstrap sees no variation, but 150 images cannot rule out a discordance
    # rate up to Wilson's upper bound for 0 of 150, on either side
    bound = wilson_interval(0, 150)[1]
    assert bound == pytest.approx(1.96 ** 2 / (150 + 1.96 ** 2), rel=1e-3)
    x = _bernoulli((1, 150), 0.5, seed=7)
    assert paired_difference(x, x.copy(), n_boot=300, seed=0) == Estimate(0.0, -bound, bound, 150, 1)
    same = np.tile(_bernoulli((1, 150), 0.5, seed=8), (3, 1))  # three seeds that agree
    assert paired_difference(same, same.copy(), n_boot=300, seed=0) == Estimate(0.0, -bound, bound, 150, 3)
    # every image flipped by one arm only: +1, and the interval stays within [-1, 1]
    ones, zeros = np.ones((2, 40)), np.zeros((3, 40))
    assert paired_difference(ones, zeros, n_boot=200, seed=0) == Estimate(1.0, 1 - wilson_interval(0, 40)[1], 1.0, 40, 2)


def test_zero_or_full_share_gets_the_wilson_interval_not_zero_width():
    # e.g. no image fooled (0 / 60 per seed) or every image fooled: the bootstrap alone would say [0, 0] / [1, 1]
    zero = hierarchical_mean(np.zeros((3, 60)), n_boot=200, seed=0)
    assert (zero.value, zero.ci_low) == (0.0, 0.0) and zero.ci_high == pytest.approx(wilson_interval(0, 60)[1])
    full = hierarchical_mean(np.ones((2, 60), dtype=bool), n_boot=200, seed=0)
    assert (full.value, full.ci_high) == (1.0, 1.0) and full.ci_low == pytest.approx(wilson_interval(60, 60)[0])
    # per-image differences (-1 / 0 / +1) that are all 0: symmetric bound; a real spread keeps the bootstrap interval
    diff = hierarchical_mean(np.zeros((1, 30)) - np.zeros((1, 30)), n_boot=200, seed=0, signed=True)
    assert diff.ci_low == pytest.approx(-wilson_interval(0, 30)[1]) and diff.ci_high == pytest.approx(wilson_interval(0, 30)[1])
    spread = hierarchical_mean(np.array([[1.0, 0.0, -1.0, 0.0] * 10]), n_boot=200, seed=0, signed=True)
    assert spread.ci_low < 0 < spread.ci_high and spread.ci_high != pytest.approx(wilson_interval(0, 40)[1])
    # unsigned, all-zero values are a share of 0: one-sided
    assert hierarchical_mean(np.zeros((1, 30)), n_boot=200, seed=0).ci_low == 0.0
    # n_boot = 0 still gives NaN bounds, not a Wilson bound
    assert math.isnan(hierarchical_mean(np.zeros((1, 10)), n_boot=0, seed=0).ci_high)


def test_share_mean_contains_the_wilson_interval_of_the_smallest_count():
    # a share over all images: the hierarchical mean, its interval widened to contain Wilson's at N
    x = _bernoulli((3, 40), 0.3, seed=12).astype(bool)
    est, plain = share_mean(x, n_boot=200, seed=0), hierarchical_mean(x, n_boot=200, seed=0)
    w_lo, w_hi = wilson_interval(plain.value * 40, 40)
    assert est == Estimate(plain.value, min(plain.ci_low, w_lo), max(plain.ci_high, w_hi), 40, 3)
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


def test_paired_difference_pairs_images():
    # a = b + 0.1 on every image: a paired bootstrap sees no image noise, an unpaired one would see lots
    b = np.random.default_rng(9).normal(size=(1, 300))
    est = paired_difference(b + 0.1, b, n_boot=500, seed=0)
    assert est.value == pytest.approx(0.1)
    assert est.ci_high - est.ci_low < 1e-9
    assert hierarchical_mean(b, n_boot=500, seed=0).ci_high - hierarchical_mean(b, n_boot=500, seed=0).ci_low > 0.1


def test_paired_difference_detects_a_real_difference_and_masks():
    a = _bernoulli((3, 300), 0.7, seed=10)
    b = _bernoulli((2, 300), 0.4, seed=11)
    est = paired_difference(a, b, n_boot=500, seed=0)
    assert est.value == pytest.approx(a.mean() - b.mean())
    assert 0 < est.ci_low < est.value < est.ci_high
    assert (est.n_images, est.n_seeds) == (300, 2)
    mask = np.arange(300) < 100
    assert paired_difference(a, b, mask, n_boot=100, seed=0).value == pytest.approx(
        a[:, :100].mean() - b[:, :100].mean())
    empty = paired_difference(a, b, np.zeros(300, bool), n_boot=100, seed=0)
    assert math.isnan(empty.value) and empty.n_images == 0
    with pytest.raises(ValueError, match="different images"):
        paired_difference(a, b[:, :10], n_boot=10, seed=0)


def test_zero_resamples_give_nan_interval():
    est = hierarchical_mean(np.ones((2, 5)), n_boot=0, seed=0)
    assert est.value == 1.0 and math.isnan(est.ci_low) and math.isnan(est.ci_high)
    with pytest.raises(ValueError, match="n_boot"):
        hierarchical_mean(np.ones((2, 5)), n_boot=-1, seed=0)


# --- seed summary -----------------------------------------------------------------------------------------------

def test_seed_summary():
    s = seed_summary([0.8, 0.9, 1.0])
    assert s == pytest.approx({"mean": 0.9, "std": 0.1, "min": 0.8, "max": 1.0, "n_seeds": 3})
    assert seed_summary({0: 0.5})["std"] == 0.0
    assert seed_summary(np.array([1.0, 3.0]))["mean"] == 2.0
    with pytest.raises(ValueError, match="at least one"):
        seed_summary([])
