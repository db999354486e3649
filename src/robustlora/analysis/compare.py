"""Paired comparisons of two arms on the same images: the one engine, its Holm family, the table vs the baseline.

`compare(a, b, settings, mask)` is the only place where an effect of arm a over arm b is estimated and tested. It
returns a `Comparison`: the difference of the arms' means (shares in [0,1], so a difference in [-1, 1]) with its
paired bootstrap interval (robustlora.stats: one draw of images for both arms, seeds drawn per arm; or, for two
outcomes of the same seeds, the per-seed per-image difference bootstrapped directly), the exact McNemar p on the
per-image majority votes over seeds and its discordant counts. `holm_family` adjusts the p-values of one family
(Holm) and gives each comparison its direction: +1 / -1 when the CI excludes 0 on that side AND the Holm p < alpha,
else 0. A comparison with no image left is 'not evaluated'.
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
                      "verdict"]


@dataclass(frozen=True)
class Comparison:
    """Arm a minus arm b on the same images, tested; p_holm and direction are set by `holm_family`."""

    diff: float  # mean of a minus mean of b; NaN when not evaluated
    ci_low: float
    ci_high: float
    p: float  # two-sided exact McNemar on per-image majority votes over seeds; NaN when no image is left
    n_images: int
    n_seeds: int  # the smaller arm's seed count (the one that limits the seed level)
    a_only: int  # images whose majority vote is True for a only
    b_only: int  # ... for b only
    p_holm: float = math.nan
    direction: int = 0

    @property
    def verdict(self) -> str:
        """'higher' / 'lower' / 'inconclusive' (by `direction`), 'not evaluated' when no image is left."""
        return DIRECTION_WORDS[self.direction] if self.n_images else "not evaluated"

    @property
    def estimate(self) -> stats.Estimate:
        return stats.Estimate(self.diff, self.ci_low, self.ci_high, self.n_images, self.n_seeds)

    def row(self) -> dict[str, Any]:
        """The columns a comparison table shows: diff, ci_low, ci_high, p, n_images."""
        return {"diff": self.diff, "ci_low": self.ci_low, "ci_high": self.ci_high, "p": self.p,
                "n_images": self.n_images}


NOT_COMPARED = Comparison(math.nan, math.nan, math.nan, math.nan, 0, 0, 0, 0)


def compare(a: np.ndarray | None, b: np.ndarray | None, settings: Settings, mask: np.ndarray | None = None, *,
            same_seeds: bool = False) -> Comparison:
    """a − b of (Sa, N) and (Sb, N) 0/1 outcomes on the same images (``mask``: (N,) bool subset, None = all).

    Interval: stats.paired_difference (images drawn once for both arms, each arm's seeds independently); with
    ``same_seeds`` (two outcomes of the same seeds, e.g. a classifier with and without its detector) the per-seed
    per-image difference is bootstrapped directly (stats.hierarchical_mean). A side that is None gives NaNs and no
    image ('not evaluated').
    """
    if a is None or b is None:
        return NOT_COMPARED
    if same_seeds:
        est = stats.hierarchical_mean(np.asarray(a, dtype=float) - np.asarray(b, dtype=float), mask, signed=True,
                                      **settings.bootstrap)
    else:
        est = stats.paired_difference(a, b, mask, **settings.bootstrap)
    p, a_only, b_only = stats.mcnemar_paired(a, b, mask) if est.n_images else (math.nan, 0, 0)
    return Comparison(est.value, est.ci_low, est.ci_high, p, est.n_images, est.n_seeds, a_only, b_only)


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
    p, p_holm, n_images and verdict; `columns` in that order."""
    family = holm_family([c for _, c in rows], alpha)
    table = pd.DataFrame([{**keys, **c.row()} for (keys, _), c in zip(rows, family)],
                         columns=[c for c in columns if c not in ("p_holm", "verdict")])
    table["p_holm"] = [c.p_holm for c in family]
    table["verdict"] = [c.verdict for c in family]
    return table[list(columns)]


def common_correct(rs: ResultSet, attack: str, eps: float, arms: Sequence[str] | None = None) -> np.ndarray:
    """(N,) bool: images that every arm (default: all) classifies correctly in every seed, at this attack and ε."""
    mask = np.ones(rs.n_images, dtype=bool)
    for arm in arms if arms is not None else rs.arms:
        cell = rs.get(arm, attack, eps)
        if cell is not None:
            mask &= cell.clean_correct.all(axis=0)
    return mask


def paired_comparisons(rs: ResultSet, settings: Settings, arms: Sequence[str] | None = None,
                       common_arms: Sequence[str] | None = None) -> pd.DataFrame:
    """Every arm (default: all but the baseline) minus the baseline, per attack x ε of the grid, paired on images.

    metric `robust_accuracy`: over all attacked images; `attack_success_rate`: on the common-correct images of
    `common_arms` (default: every arm). CI: stats.paired_difference (images and seeds); p: exact McNemar on the
    per-image majority votes; p_holm: ONE Holm correction over the whole table. verdict: 'higher' / 'lower' (CI
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
