"""One arm: Wilson intervals and the seeded two-level (images x seeds) percentile bootstrap of a
mean or a share; the across-seed summary of a figure."""

from __future__ import annotations

import math
from statistics import NormalDist
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from robustlora.errors import DataError
from robustlora.stats._base import _as_matrix, _select, _mask, _check_confidence


_CHUNK_CELLS = 2 ** 20  # bootstrap resamples x images per chunk: bounds memory at ~25 MB whatever n_boot is


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its interval; n_images masked images, n_seeds training seeds; se: the bootstrap
    replicates' standard deviation (NaN with fewer than 2 resamples)."""

    value: float
    ci_low: float
    ci_high: float
    n_images: int
    n_seeds: int
    se: float = math.nan


def wilson_interval(successes: int | np.ndarray, n: int | np.ndarray,
                    confidence: float = 0.95) -> tuple[float | np.ndarray, float | np.ndarray]:
    """Wilson score interval for successes / n, elementwise: the closed form (Wilson 1927), equal to statsmodels'
    ``proportion_confint(method="wilson")`` (tests/test_stats.py checks it on a grid), computed here because importing
    statsmodels (and scipy.stats with it) costs every attack stage ~2 s of start-up for these few lines.

    Never zero width for n > 0 (the bounds at 0 and n successes are exactly 0 and 1); n == 0 gives (nan, nan).
    Scalars in, floats out.
    """
    _check_confidence(confidence)
    k = np.asarray(successes, dtype=np.float64)
    m = np.asarray(n, dtype=np.float64)
    if np.any(m < 0) or np.any(k < 0) or np.any(k > m):
        raise DataError(f"wilson_interval needs 0 <= successes <= n, got successes={successes}, n={n}")
    k, m = np.broadcast_arrays(k, m)
    safe = np.where(m == 0, 1.0, m)
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = k / safe
    centre = (p + z * z / (2 * safe)) / (1 + z * z / safe)
    half = z / (1 + z * z / safe) * np.sqrt(p * (1 - p) / safe + z * z / (4 * safe * safe))
    lo, hi = centre - half, centre + half
    lo = np.where(m == 0, np.nan, np.where(k == 0, 0.0, np.clip(lo, 0.0, 1.0)))
    hi = np.where(m == 0, np.nan, np.where(k == m, 1.0, np.clip(hi, 0.0, 1.0)))
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def hierarchical_mean(values: np.ndarray, mask: np.ndarray | None = None, *, n_boot: int, seed: int,
                      confidence: float = 0.95) -> Estimate:
    """Mean over seeds of the mean over masked images of (S, N) values, with a two-level bootstrap interval.

    Each resample draws the masked images with replacement and, independently, the S seeds with replacement; its
    statistic is the mean over the drawn seeds of the mean over the drawn images (a two-stage bootstrap; Davison &
    Hinkley 1997, sec. 3.8; scipy.stats.bootstrap resamples one level only). With one seed only images vary. An
    empty mask gives NaN value and interval, n_images 0.
    """
    x = _as_matrix(values, "values")
    sel = _select(x, _mask(mask, x.shape[1]), "values")
    n_img, n_seeds = sel.shape[1], sel.shape[0]
    if n_img == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, n_seeds)
    boot = _bootstrap(sel, n_boot, seed)
    lo, hi = _percentile(boot, confidence)
    se = float(boot.std(ddof=1)) if boot.size > 1 else math.nan
    return Estimate(float(sel.sum() / sel.size), lo, hi, n_img, n_seeds, se)


def share_mean(outcome: np.ndarray, among: np.ndarray | None = None, *, n_boot: int, seed: int,
               confidence: float = 0.95) -> Estimate:
    """Mean over seeds of the share of (S, N) bool ``outcome`` over all N images, or over each seed's ``among`` images.

    Over ``among`` (e.g. an attack's success rate over each seed's clean-correct images) a seed's share is the
    ratio r_s = Σ (among & outcome) / Σ among, bootstrapped through its delta-method linearisation
    v_si = r_s + among_si (outcome_si - r_s) N / n_s: row means are exactly r_s, and resampling images reproduces
    the ratio's variance to first order. Seeds with no ``among`` image drop out; none left gives NaN, 0 seeds.
    The interval is widened to contain the Wilson interval of the mean share on the smallest per-seed count, so it
    is never zero width; clipped to [0, 1].
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
    return Estimate(est.value, lo, hi, est.n_images, est.n_seeds, est.se)


def seed_summary(values_per_seed: Sequence[float] | Mapping[object, float] | np.ndarray) -> dict[str, float | int]:
    """Mean, sample std (ddof=1; 0 for a single seed), min, max and count of one number per training seed."""
    vals = values_per_seed.values() if isinstance(values_per_seed, Mapping) else values_per_seed
    x = np.asarray(list(vals) if not isinstance(vals, np.ndarray) else vals, dtype=np.float64).ravel()
    if x.size == 0:
        raise DataError("seed_summary needs at least one seed's value")
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


def _bootstrap(x: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot,) replicate means of (S, N) x: images and seeds drawn with replacement, independently."""
    if n_boot < 0:
        raise DataError(f"n_boot must be >= 0, got {n_boot}")
    n_img = x.shape[1]
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    chunk = max(1, _CHUNK_CELLS // n_img)
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        img_counts = _draw_counts(rng, k, n_img)  # (k, N) multiplicity of each image
        seed_counts = _draw_counts(rng, k, x.shape[0])  # (k, S)
        out[start:start + k] = np.einsum("ks,ks->k", seed_counts, img_counts @ x.T) / x.size
    return out


def _draw_counts(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    """(k, n) float counts of n draws with replacement from n items, one row per resample."""
    idx = rng.integers(0, n, size=(k, n)) + n * np.arange(k)[:, None]
    return np.bincount(idx.ravel(), minlength=k * n).reshape(k, n).astype(np.float64)


def _percentile(boot: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates; NaN bounds when there are none."""
    _check_confidence(confidence)
    if boot.size == 0:
        return math.nan, math.nan
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return float(lo), float(hi)
