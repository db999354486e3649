"""Per-arm estimates of the attack results: clean and robust accuracy, attack success rate, certainty.

Conventions (RobustBench), on the attack stage's images:
- clean accuracy: share of attacked images classified correctly before the attack;
- robust accuracy: share classified correctly before AND after the attack;
- attack success rate: among a seed's clean-correct images, the share misclassified after the attack;
- certainty: mean max-softmax probability over all attacked images, before / after the attack.
An arm's value is the mean over its training seeds; its interval a hierarchical bootstrap over seeds and images
(robustlora.stats, which also keeps a share's interval from ever having zero width). Per seed: Wilson intervals.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd

from robustlora import stats
from robustlora.analysis.settings import Settings
from robustlora.analysis.tables import Outcomes, ResultSet
from robustlora.formatting import eps_key

__all__ = ["METRICS", "PROPORTIONS", "grid_cells", "cell_estimate", "arm_estimates", "seed_estimates"]

METRICS = ("clean_accuracy", "robust_accuracy", "attack_success_rate", "certainty_clean", "certainty_adv")
PROPORTIONS = ("clean_accuracy", "robust_accuracy", "attack_success_rate")


def grid_cells(rs: ResultSet, eps_grid: Iterable[float]) -> list[Outcomes]:
    """The cells at the grid's ε in report order: attack, ε, arm (a sanity ε feeds the checks, not the estimates)."""
    out = []
    for attack in rs.attacks():
        for eps in sorted(eps_key(e) for e in eps_grid):
            out += [c for arm in rs.arms if (c := rs.get(arm, attack, eps)) is not None]
    return out


def cell_estimate(cell: Outcomes, metric: str, settings: Settings) -> stats.Estimate:
    """Mean over seeds of `metric` (one of METRICS) with its hierarchical-bootstrap CI; NaN when no seed has a value.

    Shares are stats.share_mean: a success rate over each seed's own clean-correct images, intervals that contain
    the Wilson interval of the mean share (never zero width). Certainties: stats.hierarchical_mean.
    """
    if metric == "attack_success_rate":
        return stats.share_mean(cell.success, cell.clean_correct, **settings.bootstrap)
    if metric in PROPORTIONS:
        outcome = cell.clean_correct if metric == "clean_accuracy" else cell.robust
        return stats.share_mean(outcome, **settings.bootstrap)
    values = cell.clean_max_prob if metric == "certainty_clean" else cell.adv_max_prob
    return stats.hierarchical_mean(values.astype(float), **settings.bootstrap)


def _per_seed(cell: Outcomes, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-seed (value, successes, n); successes/n are NaN for certainties (not proportions)."""
    n_img = cell.clean_correct.shape[1]
    if metric == "attack_success_rate":
        k, n = cell.success.sum(axis=1).astype(float), cell.clean_correct.sum(axis=1).astype(float)
    elif metric in PROPORTIONS:
        outcome = cell.clean_correct if metric == "clean_accuracy" else cell.robust
        k, n = outcome.sum(axis=1).astype(float), np.full(len(cell.seeds), float(n_img))
    else:
        values = cell.clean_max_prob if metric == "certainty_clean" else cell.adv_max_prob
        nan = np.full(len(cell.seeds), np.nan)
        return values.mean(axis=1), nan, nan
    with np.errstate(invalid="ignore", divide="ignore"):
        return k / n, k, n


def arm_estimates(rs: ResultSet, settings: Settings) -> pd.DataFrame:
    """Per arm x attack x ε (grid only) x metric: `cell_estimate` and the spread of the per-seed values.

    Columns: arm, attack, eps, metric, value, ci_low, ci_high, n_images, n_seeds, seed_std, seed_min, seed_max.
    Shares in [0,1]; certainties are mean probabilities. A success rate with no clean-correct image is NaN.
    """
    rows = []
    for cell in grid_cells(rs, settings.eps_grid):
        for metric in METRICS:
            est = cell_estimate(cell, metric, settings)
            per_seed = _per_seed(cell, metric)[0]
            per_seed = per_seed[np.isfinite(per_seed)]
            spread = stats.seed_summary(per_seed) if per_seed.size else None
            rows.append({"arm": cell.arm, "attack": cell.attack, "eps": cell.eps, "metric": metric,
                         "value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high,
                         "n_images": cell.clean_correct.shape[1], "n_seeds": est.n_seeds,
                         "seed_std": spread["std"] if spread else math.nan,
                         "seed_min": spread["min"] if spread else math.nan,
                         "seed_max": spread["max"] if spread else math.nan})
    return pd.DataFrame(rows, columns=["arm", "attack", "eps", "metric", "value", "ci_low", "ci_high", "n_images",
                                       "n_seeds", "seed_std", "seed_min", "seed_max"])


def seed_estimates(rs: ResultSet, settings: Settings) -> pd.DataFrame:
    """Per arm x seed x attack x ε (grid) x metric: the seed's value, Wilson interval (proportions), successes, n.

    Columns: arm, seed, attack, eps, metric, value, ci_low, ci_high, successes, n. Certainties get NaN bounds.
    """
    rows = []
    for cell in grid_cells(rs, settings.eps_grid):
        for metric in METRICS:
            value, k, n = _per_seed(cell, metric)
            for i, seed in enumerate(cell.seeds):
                lo, hi = ((math.nan, math.nan) if not np.isfinite(n[i])
                          else stats.wilson_interval(int(k[i]), int(n[i]), settings.confidence))
                rows.append({"arm": cell.arm, "seed": seed, "attack": cell.attack, "eps": cell.eps,
                             "metric": metric, "value": float(value[i]), "ci_low": lo, "ci_high": hi,
                             "successes": k[i], "n": n[i]})
    return pd.DataFrame(rows, columns=["arm", "seed", "attack", "eps", "metric", "value", "ci_low", "ci_high",
                                       "successes", "n"])
