"""Two arms on the same images: ONE paired test over images and training seeds whose interval inverts it (Tango's
score interval for one seed, its design-effect extension with a crossed image x seed variance for several), McNemar,
Holm, and the minimal detectable effect."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from robustlora.errors import DataError
from robustlora.stats._base import sps, optimize, SIDES, _as_matrix, _select, _mask, _check_confidence


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p on the discordant pairs b (only A right) and c (only B right): scipy's exact
    binomial test of b successes in b + c trials at 1/2; b + c == 0 gives 1.0."""
    if int(b) != b or int(c) != c or b < 0 or c < 0:
        raise DataError(f"mcnemar_exact needs counts >= 0, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    return float(sps.binomtest(int(b), int(b) + int(c), 0.5).pvalue)


def holm_adjust(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (statsmodels ``multipletests``), in the input order. NaN entries stay NaN
    and do not count in the family size."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    valid = ~np.isnan(p)
    if np.any((p[valid] < 0) | (p[valid] > 1)):
        raise DataError(f"p-values must lie in [0, 1], got {p[valid][(p[valid] < 0) | (p[valid] > 1)].tolist()}")
    if valid.any():
        from statsmodels.stats.multitest import multipletests

        out[valid] = multipletests(p[valid], method="holm")[1]
    return out


def majority_vote(outcomes: np.ndarray) -> np.ndarray:
    """Per-image majority over seeds of (S, N) bools: 1.0 if most seeds are True, 0.0 if most are False, NaN on ties."""
    x = _as_matrix(outcomes, "outcomes")
    true_votes = x.astype(bool).sum(axis=0)
    vote = (2 * true_votes > x.shape[0]).astype(np.float64)
    vote[2 * true_votes == x.shape[0]] = np.nan
    return vote


def mcnemar_paired(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, int, int]:
    """Descriptive: exact McNemar on each image's majority vote over seeds; (p, n_a_only, n_b_only). Tied votes and
    images outside ``mask`` are dropped. Not the comparison's test (that is :func:`paired_test`)."""
    va, vb = majority_vote(a), majority_vote(b)
    if va.shape != vb.shape:
        raise DataError(f"arms cover different images: {va.shape[0]} vs {vb.shape[0]}")
    keep = _mask(mask, va.shape[0]) & ~np.isnan(va) & ~np.isnan(vb)
    a_only = int(np.sum(keep & (va == 1) & (vb == 0)))
    b_only = int(np.sum(keep & (va == 0) & (vb == 1)))
    return mcnemar_exact(a_only, b_only), a_only, b_only


# --- the paired test -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PairedTest:
    """a - b on the same images: estimate, its interval at the requested side, the test of 0 with the same
    statistic (p < 1 - confidence iff the interval excludes 0), the 1 - 2 alpha interval (TOST), the minimal
    detectable |effect| at 80 % power and the pair-averaged discordant counts."""

    diff: float
    se: float
    df: float  # degrees of freedom of the t reference; inf: normal (one seed, or no seed-level variance)
    ci_low: float
    ci_high: float
    p: float
    eq_low: float
    eq_high: float
    mde: float
    n_images: int
    n_seeds: int
    method: str


def tango_interval(b: float, c: float, n: float, confidence: float = 0.95,
                   sided: str = "two-sided") -> tuple[float, float]:
    """Tango's (1998, Stat Med 17:891-908) score interval for p_a - p_b from n pairs, b only-a and c only-b.

    The set of d with |(b - c - n d) / sqrt(n (2 q(d) + d (1 - d)))| <= z, q(d) the restricted ML estimate of the
    only-b rate; never zero width for n > 0, monotone in b and c. ``sided`` 'greater' gives [lower, 1], 'less'
    [-1, upper] (one-sided at ``confidence``). Cross-checked against Fagerland et al. (2014, Stat Med 33:2850).
    """
    out = _score_interval(b, c, n, 0.0, 1.0, _quantile(confidence, sided, math.inf), sided)
    return out


def paired_test(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, *, same_seeds: bool = False,
                alpha: float = 0.05, confidence: float = 0.95, sided: str = "two-sided",
                power: float = 0.8) -> PairedTest:
    """Mean of a (Sa, N) minus mean of b (Sb, N) 0/1 outcomes on the same masked images, tested over images and
    seeds together; seeds are NOT paired across arms unless ``same_seeds`` (two outcomes of the same models).

    One seed per arm: Tango's score interval and its score test (at 0: McNemar's uncorrected statistic, well
    calibrated even for few discordant pairs: Fagerland, Lydersen & Laake 2013, BMC Med Res Methodol 13:91).
    Several seeds: the same score statistic T(d) = (diff - d) / sqrt(deff V_T(d) + V_seed) with
    - V_T(d) Tango's variance at d for the pair-averaged discordant counts (b, c: the mean over seed pairs of the
      images only a's / only b's model gets right), scaled by the design effect deff = observed per-image variance of
      the seed-mean differences / V_T(diff) (Kish's effective sample size: the score interval on b/deff, c/deff,
      N/deff images), floored at 1 / max(Sa, Sb), the most that averaging over seeds can shrink a pair's variance;
    - V_seed the variance of whole-seed shifts (a seed's model better on every image), from crossed random effects
      (images x seeds, one outcome a cell; method of moments per arm, pooled: (MS_seed - MS_residual) (1/Sa + 1/Sb) /
      N, or / (S N) for same seeds), truncated at 0;
    - a t reference on Satterthwaite's (1946) degrees of freedom for V_seed (few seeds: few df), normal when it is 0.
    This is the quasi-F treatment of two crossed random factors (Clark 1973, J Verb Learn Verb Behav 12:335). The
    interval is the set of d that the test does not reject (so they agree); sided 'greater' gives [lower, 1], 'less'
    [-1, upper], with a one-sided p. eq_*: the two-sided 1 - 2 alpha interval; mde: the larger half-width of the
    interval at quantile q_{1-alpha/2} + q_{power}, i.e. (z_{1-alpha/2} + z_power) se where the normal applies.
    """
    if sided not in SIDES:
        raise DataError(f"sided must be one of {SIDES}, got {sided!r}")
    _check_confidence(confidence)
    xa, xb = _as_matrix(a, "a"), _as_matrix(b, "b")
    if xa.shape[1] != xb.shape[1] or (same_seeds and xa.shape != xb.shape):
        raise DataError(f"arms cover different {'seeds x ' if same_seeds else ''}images: {xa.shape} vs {xb.shape}")
    keep = _mask(mask, xa.shape[1])
    sa, sb = _select(xa, keep, "a"), _select(xb, keep, "b")
    n_img = sa.shape[1]
    n_seeds = sa.shape[0] if same_seeds else min(sa.shape[0], sb.shape[0])
    if n_img == 0:
        nan = math.nan
        return PairedTest(nan, nan, nan, nan, nan, nan, nan, nan, nan, 0, n_seeds, "not evaluated")
    diff, bc, cc, deff, v_seed, df = (float(v[0]) for v in _components(sa[None], sb[None], same_seeds))
    t0 = _score_stat(diff, bc, cc, n_img, deff, v_seed, 0.0)
    p = _pvalue(t0, df, sided)
    lo, hi = _score_interval(bc, cc, n_img, v_seed, deff, _quantile(confidence, sided, df), sided, diff)
    eq_lo, eq_hi = _score_interval(bc, cc, n_img, v_seed, deff, _quantile(1 - 2 * alpha, "two-sided", df),
                                   "two-sided", diff)
    q_mde = _quantile(1 - alpha, "two-sided", df) + float(sps.t.ppf(power, df))
    m_lo, m_hi = _score_interval(bc, cc, n_img, v_seed, deff, q_mde, "two-sided", diff)
    se = math.sqrt(deff * _tango_var(bc, cc, n_img, diff) + v_seed)
    single = sa.shape[0] == 1 and (same_seeds or sb.shape[0] == 1)
    method = ("Tango score interval, McNemar score test" if single else
              "score test over images and seeds (t, Satterthwaite df)")
    return PairedTest(diff, se, df, lo, hi, p, eq_lo, eq_hi, max(diff - m_lo, m_hi - diff), n_img, n_seeds, method)


def paired_pvalues(a: np.ndarray, b: np.ndarray, *, same_seeds: bool = False, sided: str = "two-sided") -> np.ndarray:
    """The p-values of :func:`paired_test` for R datasets at once: a (R, Sa, N), b (R, Sb, N), no mask (for
    simulations of the test's calibration)."""
    if sided not in SIDES:
        raise DataError(f"sided must be one of {SIDES}, got {sided!r}")
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.ndim != 3 or xb.ndim != 3 or xa.shape[::2] != xb.shape[::2]:
        raise DataError(f"paired_pvalues needs (R, S, N) arrays on the same R and N, got {xa.shape} and {xb.shape}")
    diff, bc, cc, deff, v_seed, df = _components(xa, xb, same_seeds)
    return _pvalue(_score_stat(diff, bc, cc, xa.shape[2], deff, v_seed, 0.0), df, sided)


def mde_share(n: int, p: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimal detectable change of a share p estimated on n images, two-sided at alpha with ``power``:
    (z_{1-alpha/2} + z_power) sqrt(p (1 - p) / n), with p(1 - p) at least that of one image in n (never 0)."""
    if n <= 0:
        return math.nan
    var = max(p * (1 - p), (1 - 1 / n) / n)
    return float((sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)) * math.sqrt(var / n))


def _components(xa: np.ndarray, xb: np.ndarray, same_seeds: bool) -> tuple[np.ndarray, ...]:
    """Per dataset (leading axis R) of (R, S, N) outcomes: diff, pair-averaged discordant counts b and c, the design
    effect, the seed-level variance and its Satterthwaite df (inf when that variance is 0)."""
    n_img = xa.shape[2]
    if same_seeds:
        ma, mb = xa.mean(axis=1), xb.mean(axis=1)
        bc = (xa * (1 - xb)).mean(axis=1).sum(axis=1)
        cc = ((1 - xa) * xb).mean(axis=1).sum(axis=1)
        arms, k, floor = [xa - xb], 1 / (xa.shape[1] * n_img), 1 / xa.shape[1]
    else:
        ma, mb = xa.mean(axis=1), xb.mean(axis=1)  # (R, N) per-image seed means
        bc, cc = (ma * (1 - mb)).sum(axis=1), ((1 - ma) * mb).sum(axis=1)
        arms, k = [xa, xb], (1 / xa.shape[1] + 1 / xb.shape[1]) / n_img
        floor = 1 / max(xa.shape[1], xb.shape[1])
    d = ma - mb
    diff = d.mean(axis=1)
    v_img = d.var(axis=1) / n_img  # ddof 0: Tango's variance at the estimate for one seed
    v_img = np.where(v_img < 1e-15, 0.0, v_img)  # rounding noise
    v_pair = _tango_var(bc, cc, n_img, diff)
    # no discordant pair: the data say nothing about how much averaging over seeds helps, so no credit for it (the
    # one-seed interval); crediting 1/S there would let an equivalence claim rest on seeds that merely agree
    with np.errstate(invalid="ignore", divide="ignore"):
        deff = np.where(v_pair > 0, v_img / v_pair, 1.0)
    deff = np.maximum(deff, floor)
    ms_row = np.zeros_like(diff)
    ms_res = np.zeros_like(diff)
    df_row = df_res = 0
    for x in arms:
        s = x.shape[1]
        if s < 2:
            continue
        row = x.mean(axis=2, keepdims=True)
        col = x.mean(axis=1, keepdims=True)
        resid = x - row - col + x.mean(axis=(1, 2), keepdims=True)
        ms_row += n_img * row[..., 0].var(axis=1, ddof=1) * (s - 1)
        ms_res += (resid ** 2).sum(axis=(1, 2))
        df_row, df_res = df_row + s - 1, df_res + (s - 1) * (n_img - 1)
    tiny = 1e-12  # rounding noise of means of 0/1 outcomes (a real mean square is >= ~1 / (S N)^2)
    ms_row, ms_res = np.where(ms_row < tiny, 0.0, ms_row), np.where(ms_res < tiny, 0.0, ms_res)
    if df_row == 0:
        v_seed = np.zeros_like(diff)
        df = np.full_like(diff, np.inf)
    else:
        ms_row = ms_row / df_row
        ms_res = ms_res / df_res if df_res else np.zeros_like(diff)
        v_seed = k * np.maximum(ms_row - ms_res, 0.0)
        denom = (k * ms_row) ** 2 / df_row + ((k * ms_res) ** 2 / df_res if df_res else 0.0)
        # Satterthwaite's df from the mean squares, also where the seed variance truncated at 0: a small MS_seed
        # from few seeds is no evidence of no seed variance (switching to the normal there rejects ~10 % at 5 %)
        with np.errstate(invalid="ignore", divide="ignore"):
            total = deff * v_pair + v_seed
            df = np.where((denom > 0) & (total > 0), total ** 2 / np.where(denom > 0, denom, 1.0), np.inf)
    return diff, bc, cc, deff, v_seed, df


def _tango_var(b, c, n, delta):
    """Tango's variance of (b - c) / n at the hypothesised difference ``delta``: (2 q + delta (1 - delta)) / n, q
    the restricted ML estimate of the only-b rate (the root of Tango's quadratic); elementwise."""
    a_ = 2 * n
    b_ = -b - c + (2 * n - b + c) * delta
    c_ = -c * delta * (1 - delta)
    q = (np.sqrt(np.maximum(b_ * b_ - 4 * a_ * c_, 0.0)) - b_) / (2 * a_)
    return np.maximum(2 * q + delta * (1 - delta), 0.0) / n


def _score_stat(diff, b, c, n, deff, v_seed, delta):
    """(diff - delta) / sqrt(deff V_T(delta) + v_seed); 0 where both are 0 (nothing varies: no evidence)."""
    var = deff * _tango_var(b, c, n, delta) + v_seed
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(var > 0, (diff - delta) / np.sqrt(np.where(var > 0, var, 1.0)), 0.0)


def _pvalue(t, df, sided: str):
    if sided == "greater":
        p = sps.t.sf(t, df)
    elif sided == "less":
        p = sps.t.cdf(t, df)
    else:
        p = np.minimum(1.0, 2 * sps.t.sf(np.abs(t), df))
    return float(p) if np.ndim(p) == 0 else p


def _quantile(confidence: float, sided: str, df: float) -> float:
    _check_confidence(confidence)
    level = confidence if sided != "two-sided" else 0.5 + confidence / 2
    return float(sps.t.ppf(level, df))


def _score_interval(b: float, c: float, n: float, v_seed: float, deff: float, q: float, sided: str,
                    diff: float | None = None) -> tuple[float, float]:
    """The d in [-1, 1] with |T(d)| <= q (one side only for 'greater' / 'less'), by Brent's root finding on each
    side of the estimate (T is monotone in d: Tango 1998)."""
    if sided not in SIDES:
        raise DataError(f"sided must be one of {SIDES}, got {sided!r}")
    if not (0 <= b and 0 <= c and b + c <= n) or n <= 0:
        raise DataError(f"tango_interval needs 0 <= b, c and b + c <= n > 0, got b={b}, c={c}, n={n}")
    est = (b - c) / n if diff is None else diff

    def excess(d: float) -> float:  # > 0 where d is rejected
        return abs(est - d) - q * math.sqrt(deff * _tango_var(b, c, n, d) + v_seed)

    def bound(end: float) -> float:
        if est == end or excess(end) <= 0:
            return end
        inner = est + (end - est) * 1e-9  # off the estimate, where excess may be 0 (no variance there)
        if excess(inner) > 0:
            return est
        return float(optimize.brentq(excess, min(inner, end), max(inner, end), xtol=1e-12))

    lo = -1.0 if sided == "less" else bound(-1.0)
    hi = 1.0 if sided == "greater" else bound(1.0)
    return lo, hi


# --- one arm: the hierarchical bootstrap -------------------------------------------------------------------------
