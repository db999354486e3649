"""Paired comparisons of two arms on the same images: the one engine, its Holm family, the table vs the baseline.

`compare(a, b, settings, mask)` is the only place where an effect of arm a over arm b is estimated and tested. It
returns a `Comparison`: the difference of the arms' means (shares in [0,1], so a difference in [-1, 1]), and ONE
paired analysis over images and training seeds together (robustlora.stats.paired_test: Tango's score interval and
test for one seed per arm, its crossed image x seed extension for several), so the interval and the p-value agree
(p < 1 - confidence iff the interval excludes 0), with its standard error, the 1 - 2 alpha interval (TOST) and the
minimal detectable effect. ``sided='greater'`` / ``'less'`` gives a one-sided bound and p for a quantity that
cannot be negative / positive by construction. `holm_family` adjusts the p-values of one family (Holm) and gives
each comparison its direction: +1 / -1 when the CI excludes 0 on that side AND the Holm p < alpha, else 0. A
comparison with no image left is 'not evaluated'. a_only / b_only are descriptive (majority votes over seeds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from robustlora import stats
from robustlora.analysis.settings import Settings
from robustlora.analysis.tables import ResultSet
from robustlora.formatting import eps_key

__all__ = ["DIRECTION_WORDS", "COMPARISON_COLUMNS", "Comparison", "compare", "direction", "holm_family",
           "comparison_table", "common_correct", "paired_comparisons"]

DIRECTION_WORDS = {1: "higher", -1: "lower", 0: "inconclusive"}
COMPARISON_COLUMNS = ["arm", "attack", "eps", "metric", "diff", "ci_low", "ci_high", "p", "p_holm", "n_images",
                      "verdict", "mde"]


@dataclass(frozen=True)
class Comparison:
    """Arm a minus arm b on the same images, tested; p_holm and direction are set by `holm_family`."""

    diff: float  # mean of a minus mean of b; NaN when not evaluated
    ci_low: float  # at settings.confidence; one-sided comparisons: [low, 1] ('greater') or [-1, high] ('less')
    ci_high: float
    p: float  # stats.paired_test's p of diff = 0 (one-sided when the comparison is); NaN when no image is left
    n_images: int
    n_seeds: int  # the smaller arm's seed count (the one that limits the seed level)
    a_only: int  # images whose majority vote over seeds is True for a only (descriptive)
    b_only: int  # ... for b only
    p_holm: float = math.nan
    direction: int = 0
    se: float = math.nan  # standard error of diff
    mde: float = math.nan  # minimal detectable |effect| at 80 % power, two-sided at settings.alpha, for this n
    eq_low: float = math.nan  # the two-sided 1 - 2 alpha interval: equivalence (TOST) iff inside +-margin
    eq_high: float = math.nan
    method: str = ""  # the test and interval, in one short phrase

    @property
    def verdict(self) -> str:
        """'higher' / 'lower' / 'inconclusive' (by `direction`), 'not evaluated' when no image is left."""
        return DIRECTION_WORDS[self.direction] if self.n_images else "not evaluated"

    @property
    def estimate(self) -> stats.Estimate:
        return stats.Estimate(self.diff, self.ci_low, self.ci_high, self.n_images, self.n_seeds, self.se)

    def rejects(self, effect: float) -> bool:
        """True when ``effect`` lies outside [ci_low, ci_high] (the test rejects it); False for a NaN interval."""
        return bool(effect < self.ci_low or effect > self.ci_high)

    def equivalent(self, margin: float) -> bool:
        """True when the 1 - 2 alpha interval lies within (-margin, margin) (TOST at alpha); False when NaN."""
        return bool(self.eq_low > -margin and self.eq_high < margin)

    def row(self) -> dict[str, Any]:
        """The columns a comparison table shows: diff, ci_low, ci_high, p, n_images, mde."""
        return {"diff": self.diff, "ci_low": self.ci_low, "ci_high": self.ci_high, "p": self.p,
                "n_images": self.n_images, "mde": self.mde}


NOT_COMPARED = Comparison(math.nan, math.nan, math.nan, math.nan, 0, 0, 0, 0, method="not evaluated")


def compare(a: np.ndarray | None, b: np.ndarray | None, settings: Settings, mask: np.ndarray | None = None, *,
            same_seeds: bool = False, sided: str = "two-sided") -> Comparison:
    """a − b of (Sa, N) and (Sb, N) 0/1 outcomes on the same images (``mask``: (N,) bool subset, None = all).

    stats.paired_test at settings.confidence and settings.alpha: seeds unpaired across arms, or, with
    ``same_seeds`` (two outcomes of the same models, e.g. a classifier with and without its detector), paired.
    ``sided``: 'two-sided', 'greater' (a quantity >= 0 by construction: [low, 1]) or 'less'. A side that is None
    gives NaNs and no image ('not evaluated').
    """
    if a is None or b is None:
        return NOT_COMPARED
    t = stats.paired_test(a, b, mask, same_seeds=same_seeds, alpha=settings.alpha, confidence=settings.confidence,
                          sided=sided)
    _, a_only, b_only = stats.mcnemar_paired(a, b, mask) if t.n_images else (math.nan, 0, 0)
    return Comparison(t.diff, t.ci_low, t.ci_high, t.p, t.n_images, t.n_seeds, a_only, b_only, se=t.se, mde=t.mde,
                      eq_low=t.eq_low, eq_high=t.eq_high, method=t.method)


def direction(ci_low: float, ci_high: float, p_holm: float | None, alpha: float) -> int:
    """+1 / -1 when the CI excludes 0 on that side and (when tested) the Holm-adjusted p < alpha; else 0."""
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return 0
    significant = p_holm is None or (np.isfinite(p_holm) and p_holm < alpha)
    if ci_low > 0 and significant:
        return 1
    if ci_high < 0 and significant:
        return -1
    return 0


def holm_family(comparisons: Sequence[Comparison], alpha: float) -> list[Comparison]:
    """The comparisons of one family, each with its Holm-adjusted p (a NaN p is neither adjusted nor counted in the
    family size) and its direction at ``alpha``."""
    adjusted = stats.holm_adjust(np.array([c.p for c in comparisons], dtype=float))
    return [replace(c, p_holm=float(h), direction=direction(c.ci_low, c.ci_high, float(h), alpha))
            for c, h in zip(comparisons, adjusted)]


def comparison_table(rows: Sequence[tuple[Mapping[str, Any], Comparison]], columns: Sequence[str],
                     alpha: float) -> pd.DataFrame:
    """One Holm family as a table: per row its keys (the first mapping) and its comparison's diff, ci_low, ci_high,
    p, p_holm, n_images, verdict and mde; `columns` in that order."""
    family = holm_family([c for _, c in rows], alpha)
    table = pd.DataFrame([{**keys, **c.row()} for (keys, _), c in zip(rows, family)],
                         columns=[c for c in columns if c not in ("p_holm", "verdict")])
    table["p_holm"] = [c.p_holm for c in family]
    table["verdict"] = [c.verdict for c in family]
    return table[list(columns)]


def common_correct(rs: ResultSet, attack: str, eps: float, arms: Sequence[str] | None = None) -> np.ndarray:
    """(N,) bool over the images of this attack and ε (N: its cells' images; PGD off attack.full_eps covers fewer
    than the others): those that every arm (default: all) classifies correctly in every seed."""
    cells = [c for c in (rs.get(arm, attack, eps) for arm in (arms if arms is not None else rs.arms)) if c is not None]
    mask = np.ones(len(cells[0].images) if cells else rs.n_images, dtype=bool)
    for cell in cells:
        mask &= cell.clean_correct.all(axis=0)
    return mask


def paired_comparisons(rs: ResultSet, settings: Settings, arms: Sequence[str] | None = None,
                       common_arms: Sequence[str] | None = None) -> pd.DataFrame:
    """Every arm (default: all but the baseline) minus the baseline, per attack x ε of the grid, paired on images.

    metric `robust_accuracy`: over all attacked images; `attack_success_rate`: on the common-correct images of
    `common_arms` (default: every arm). CI and p: stats.paired_test (images and seeds together); p_holm: ONE Holm
    correction over the whole table; mde: the minimal detectable |effect| (80 % power). verdict: 'higher' / 'lower' (CI
    excludes 0 and p_holm < alpha) or 'inconclusive'; 'not evaluated' when no image is left.
    Columns: COMPARISON_COLUMNS.
    """
    base_arm = settings.baseline
    if base_arm is None or base_arm not in rs.arms:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    arms = [a for a in (arms if arms is not None else rs.arms) if a != base_arm]
    rows = []
    for attack in rs.attacks():
        for eps in sorted(eps_key(e) for e in settings.eps_grid):
            base = rs.get(base_arm, attack, eps)
            if base is None:
                continue
            mask = common_correct(rs, attack, eps, common_arms)
            for arm in arms:
                cell = rs.get(arm, attack, eps)
                if cell is None:
                    continue
                for metric, a, b, m in (("robust_accuracy", cell.robust, base.robust, None),
                                        ("attack_success_rate", cell.success, base.success, mask)):
                    rows.append(({"arm": arm, "attack": attack, "eps": eps, "metric": metric},
                                 compare(a, b, settings, m)))
    return comparison_table(rows, COMPARISON_COLUMNS, settings.alpha)
