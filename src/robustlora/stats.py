"""Statistics a reviewer accepts: Wilson intervals, exact McNemar, Holm, a hierarchical bootstrap over seeds and images.

Conventions shared by every function:
- per-image outcomes come as an (S, N) array: S training seeds of one arm, N images (the same images for every arm
  and seed); bool outcomes count as 0/1;
- ``mask`` is an optional (N,) bool array selecting the images a statistic is computed over (None = all);
- an arm's value is the mean over its seeds of the mean over the masked images;
- intervals are two-sided at ``confidence`` (0.95 = a 95 % interval); bootstrap intervals are percentile intervals of
  ``n_boot`` seeded resamples (``n_boot=0`` gives NaN bounds); the same ``seed`` always gives the same interval;
- an interval of 0/1 outcomes is never zero width, by two rules that live here only: (1) on 0/1 outcomes (or their
  differences, -1/0/1), where every resample gives the same value (all images alike: no image fooled, or no
  discordant pair), the bootstrap sees no variation, but N images cannot rule out a share up to the Wilson bound
  z²/(N + z²) (1.6 % at N = 240, 66 % at N = 2); the interval is then that bound around the value
  (:func:`_unseen_variation`); (2) a share's interval (:func:`share_mean`) always contains the Wilson interval of
  the mean share on the smallest per-seed count of images it is over.
numpy and the standard library only (no scipy): exact binomial tails come from integer arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

__all__ = ["Estimate", "wilson_interval", "mcnemar_exact", "holm_adjust", "majority_vote", "mcnemar_paired",
           "hierarchical_mean", "share_mean", "paired_difference", "seed_summary"]

_CHUNK_CELLS = 2 ** 20  # bootstrap resamples x images per chunk: bounds memory at ~25 MB whatever n_boot is


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval; n_images masked images, n_seeds training seeds."""

    value: float
    ci_low: float
    ci_high: float
    n_images: int
    n_seeds: int


def wilson_interval(successes: int | np.ndarray, n: int | np.ndarray,
                    confidence: float = 0.95) -> tuple[float | np.ndarray, float | np.ndarray]:
    """Wilson score interval for the proportion successes / n; elementwise over arrays (broadcast).

    Never zero width for n > 0 (at 0 successes the upper bound is > 0, at n the lower bound is < 1);
    n == 0 gives (nan, nan). Scalars in, floats out.
    """
    _check_confidence(confidence)
    k = np.asarray(successes, dtype=np.float64)
    m = np.asarray(n, dtype=np.float64)
    if np.any(m < 0) or np.any(k < 0) or np.any(k > m):
        raise ValueError(f"wilson_interval needs 0 <= successes <= n, got successes={successes}, n={n}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / m
        shrink = 1 + z * z / m
        center = (p + z * z / (2 * m)) / shrink
        half = z / shrink * np.sqrt(p * (1 - p) / m + z * z / (4 * m * m))
    # the exact bounds at k = 0 and k = n are 0 and 1; rounding would give 6.9e-18 or 0.9999999999999999
    lo = np.where(k == 0, 0.0, np.clip(center - half, 0.0, 1.0))
    hi = np.where(k == m, 1.0, np.clip(center + half, 0.0, 1.0))
    lo, hi = np.where(m == 0, np.nan, lo), np.where(m == 0, np.nan, hi)
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value on the discordant pairs b (only A right) and c (only B right).

    p = min(1, 2 P(X <= min(b, c))) with X ~ Binomial(b + c, 1/2), computed exactly in integers; b + c == 0 gives 1.0.
    """
    if int(b) != b or int(c) != c or b < 0 or c < 0:
        raise ValueError(f"mcnemar_exact needs counts >= 0, got b={b}, c={c}")
    n, k = int(b) + int(c), min(int(b), int(c))
    if n == 0:
        return 1.0
    term = tail = 1  # C(n, 0); the recurrence C(n, i+1) = C(n, i) (n - i) / (i + 1) stays exact in integers
    for i in range(k):
        term = term * (n - i) // (i + 1)
        tail += term
    return min(1.0, 2 * tail / 2 ** n)  # int / int is correctly rounded even for huge n


def holm_adjust(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values, in the input order.

    The i-th smallest of m p-values gets max over j <= i of min(1, (m - j + 1) p_(j)), so adjusted values are
    monotone in the p-values' order and <= 1. NaN entries stay NaN and do not count in the family size m.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p.ravel()))
    flat = p.ravel()[valid]
    if np.any((flat < 0) | (flat > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {flat[(flat < 0) | (flat > 1)].tolist()}")
    order = np.argsort(flat, kind="stable")
    m = len(flat)
    stepped = np.minimum(1.0, (m - np.arange(m)) * flat[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)
    out.ravel()[valid] = adjusted  # out is a fresh contiguous array, so ravel() is a view
    return out


def majority_vote(outcomes: np.ndarray) -> np.ndarray:
    """Per-image majority over seeds of (S, N) bools: 1.0 if most seeds are True, 0.0 if most are False, NaN on ties."""
    x = _as_matrix(outcomes, "outcomes")
    true_votes = x.astype(bool).sum(axis=0)
    vote = (2 * true_votes > x.shape[0]).astype(np.float64)
    vote[2 * true_votes == x.shape[0]] = np.nan
    return vote


def mcnemar_paired(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, int, int]:
    """Exact McNemar test of arms a (Sa, N) and b (Sb, N) on the same images, on each image's majority vote over seeds.

    Returns (p, n_a_only, n_b_only): images where only a's vote is True, only b's. Images whose vote is tied
    (an even number of seeds split evenly) in either arm are dropped, as are images outside ``mask``.
    """
    va, vb = majority_vote(a), majority_vote(b)
    if va.shape != vb.shape:
        raise ValueError(f"arms cover different images: {va.shape[0]} vs {vb.shape[0]}")
    keep = _mask(mask, va.shape[0]) & ~np.isnan(va) & ~np.isnan(vb)
    a_only = int(np.sum(keep & (va == 1) & (vb == 0)))
    b_only = int(np.sum(keep & (va == 0) & (vb == 1)))
    return mcnemar_exact(a_only, b_only), a_only, b_only


def hierarchical_mean(values: np.ndarray, mask: np.ndarray | None = None, *, n_boot: int, seed: int,
                      confidence: float = 0.95, signed: bool = False) -> Estimate:
    """Mean over seeds of the mean over masked images of (S, N) values, with a two-level bootstrap interval.

    Each resample draws the masked images with replacement and, independently, the S seeds with replacement; its
    statistic is the mean over the drawn seeds of the mean over the drawn images. With one seed the seed level is
    degenerate and only images vary. An empty mask gives NaN value and interval, n_images 0.
    ``signed``: the values are per-image differences of 0/1 outcomes (-1, 0, 1), so an all-zero array is a difference
    of 0 (interval on both sides), not a share of 0.
    """
    x = _as_matrix(values, "values")
    sel = _select(x, _mask(mask, x.shape[1]), "values")
    n_img, n_seeds = sel.shape[1], sel.shape[0]
    if n_img == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, n_seeds)
    value = float(sel.sum() / sel.size)
    boot = _bootstrap([sel], n_boot, seed)[0]
    lo, hi = _unseen_variation(value, *_percentile(boot, confidence), [sel], n_img, confidence, signed)
    return Estimate(value, lo, hi, n_img, n_seeds)


def share_mean(outcome: np.ndarray, among: np.ndarray | None = None, *, n_boot: int, seed: int,
               confidence: float = 0.95) -> Estimate:
    """Mean over seeds of the share of (S, N) bool ``outcome`` over all N images, or over each seed's ``among`` images.

    Over ``among`` (e.g. an attack's success rate over each seed's clean-correct images) a seed's share is the
    ratio r_s = Σ (among & outcome) / Σ among, bootstrapped through its delta-method linearisation
    v_si = r_s + among_si (outcome_si - r_s) N / n_s: row means are exactly r_s, and resampling images reproduces
    the ratio's variance to first order. Seeds with no ``among`` image drop out; none left gives NaN, 0 seeds.
    The hierarchical interval is widened to contain the Wilson interval of the mean share on the smallest per-seed
    count (rule 2 of the module docstring), so it is never zero width; clipped to [0, 1].
    """
    x = np.asarray(outcome, dtype=bool)
    if among is None:
        values, counts = x.astype(float), np.full(x.shape[0], float(x.shape[1]))
    else:
        values, counts = _ratio_values(x, np.asarray(among, dtype=bool))
        if values is None:
            return Estimate(math.nan, math.nan, math.nan, 0, 0)
    est = hierarchical_mean(values, n_boot=n_boot, seed=seed, confidence=confidence)
    n_min = int(counts[counts > 0].min())
    w_lo, w_hi = wilson_interval(est.value * n_min, n_min, confidence)
    # clip: the linearised ratio may overshoot [0,1] by rounding-size amounts
    lo, hi = float(np.clip(min(est.ci_low, w_lo), 0, 1)), float(np.clip(max(est.ci_high, w_hi), 0, 1))
    return Estimate(est.value, lo, hi, est.n_images, est.n_seeds)


def paired_difference(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, *, n_boot: int, seed: int,
                      confidence: float = 0.95) -> Estimate:
    """Mean of a (Sa, N) minus mean of b (Sb, N) on the same masked images, with a paired two-level bootstrap interval.

    Each resample draws one set of images for both arms (the pairing) and each arm's seeds independently (seed s of
    one arm is no more related to seed s of the other than to any other seed). So identical arms whose seeds
    disagree get a point value of 0 but an interval of nonzero width. n_seeds is the smaller arm's seed count,
    the one that limits the seed level. An empty mask gives NaN value and interval, n_images 0.
    """
    xa, xb = _as_matrix(a, "a"), _as_matrix(b, "b")
    if xa.shape[1] != xb.shape[1]:
        raise ValueError(f"arms cover different images: {xa.shape[1]} vs {xb.shape[1]}")
    keep = _mask(mask, xa.shape[1])
    sa, sb = _select(xa, keep, "a"), _select(xb, keep, "b")
    n_img, n_seeds = sa.shape[1], min(sa.shape[0], sb.shape[0])
    if n_img == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, n_seeds)
    value = float(sa.sum() / sa.size - sb.sum() / sb.size)
    boot_a, boot_b = _bootstrap([sa, sb], n_boot, seed)
    lo, hi = _unseen_variation(value, *_percentile(boot_a - boot_b, confidence), [sa, sb], n_img, confidence,
                               signed=True)
    return Estimate(value, lo, hi, n_img, n_seeds)


def seed_summary(values_per_seed: Sequence[float] | Mapping[object, float] | np.ndarray) -> dict[str, float | int]:
    """Mean, sample std (ddof=1; 0 for a single seed), min, max and count of one number per training seed."""
    vals = values_per_seed.values() if isinstance(values_per_seed, Mapping) else values_per_seed
    x = np.asarray(list(vals) if not isinstance(vals, np.ndarray) else vals, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("seed_summary needs at least one seed's value")
    return {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
            "min": float(x.min()), "max": float(x.max()), "n_seeds": int(x.size)}


def _ratio_values(outcome: np.ndarray, among: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """(S', N) linearised values of each seed's share of ``outcome`` among its ``among`` images (share_mean), and the
    (S,) per-seed counts of ``among`` images; values None when no seed has one."""
    correct, success = among.astype(float), (among & outcome).astype(float)
    n = correct.sum(axis=1)
    keep = n > 0
    if not keep.any():
        return None, n
    correct, success, kept = correct[keep], success[keep], n[keep]
    rate = success.sum(axis=1) / kept
    return rate[:, None] + correct * (success - rate[:, None]) * correct.shape[1] / kept[:, None], n


def _bootstrap(arms: list[np.ndarray], n_boot: int, seed: int) -> list[np.ndarray]:
    """(n_boot,) replicate means per arm: images drawn once per resample for all arms, seeds per arm independently."""
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    n_img = arms[0].shape[1]
    rng = np.random.default_rng(seed)
    out = [np.empty(n_boot) for _ in arms]
    chunk = max(1, _CHUNK_CELLS // n_img)
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        img_counts = _draw_counts(rng, k, n_img)  # (k, N) multiplicity of each image
        for x, o in zip(arms, out):
            seed_counts = _draw_counts(rng, k, x.shape[0])  # (k, S)
            # Σ_s u_s Σ_i w_i x_si / (S N): integer-exact for 0/1 outcomes, so equal arms give equal replicates
            o[start:start + k] = np.einsum("ks,ks->k", seed_counts, img_counts @ x.T) / x.size
    return out


def _draw_counts(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    """(k, n) float counts of n draws with replacement from n items, one row per resample."""
    idx = rng.integers(0, n, size=(k, n)) + n * np.arange(k)[:, None]
    return np.bincount(idx.ravel(), minlength=k * n).reshape(k, n).astype(np.float64)


def _unseen_variation(value: float, lo: float, hi: float, arms: list[np.ndarray], n_img: int,
                      confidence: float, signed: bool) -> tuple[float, float]:
    """(lo, hi), or where the bootstrap saw no variation (lo == hi) on 0/1 outcomes (``signed``: on arms of 0/1
    outcomes compared, or on their per-image differences), the Wilson bound of ``n_img`` images around ``value``:
    with nothing differing among N images, a share up to z²/(N + z²) is not ruled out. Bounds stay within [0, 1]
    for a share and [-1, 1] for a difference; continuous values that all agree keep their zero width."""
    if not lo == hi or n_img == 0:  # a real interval, or NaN bounds (n_boot = 0)
        return lo, hi
    levels = (-1.0, 0.0, 1.0) if signed else (0.0, 1.0)
    if not all(np.isin(x, levels).all() for x in arms):
        return lo, hi
    floor, ceil = (-1.0, 1.0) if signed else (0.0, 1.0)
    bound = float(wilson_interval(0, n_img, confidence)[1])
    return max(value - bound, floor), min(value + bound, ceil)


def _percentile(boot: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates; NaN bounds when there are none."""
    _check_confidence(confidence)
    if boot.size == 0:
        return math.nan, math.nan
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return float(lo), float(hi)


def _as_matrix(values: np.ndarray, name: str) -> np.ndarray:
    """An (S, N) float64 array with S >= 1."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a (seeds, images) array with at least one seed, got shape {x.shape}")
    return x


def _select(x: np.ndarray, keep: np.ndarray, name: str) -> np.ndarray:
    """The masked columns of x, which must be finite (values outside the mask may be anything, NaN included)."""
    sel = x[:, keep]
    if not np.all(np.isfinite(sel)):
        raise ValueError(f"{name} holds non-finite values on masked images")
    return sel


def _mask(mask: np.ndarray | None, n: int) -> np.ndarray:
    """A fresh (n,) bool mask; None selects every image."""
    if mask is None:
        return np.ones(n, dtype=bool)
    m = np.asarray(mask)
    if m.dtype != bool or m.shape != (n,):
        raise ValueError(f"mask must be a bool array of shape ({n},), got {m.dtype} {m.shape}")
    return m.copy()


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
