"""The study's analysis at once: per-arm estimates, paired comparisons vs the baseline and the paper's findings.

Input: the concatenated `results/attack/<variant>.parquet` files (robustlora.analysis.tables.RESULT_COLUMNS; one row
per arm x seed x attack x ε x image, ε in [0,1] pixel units). Every arm and seed is attacked on the same images, so
all comparisons are paired on images. The findings also read the train metrics (which arms are still improving at
their epoch cap) and, from the table, the true-class probabilities. Pure functions of DataFrames and small
dataclasses: no files, no plotting, no markdown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pandas as pd

from robustlora.analysis.compare import common_correct, paired_comparisons
from robustlora.analysis.estimates import arm_estimates, seed_estimates
from robustlora.analysis.findings import Finding, findings, unconverged_arms
from robustlora.analysis.settings import Settings
from robustlora.analysis.tables import ResultSet, result_set, with_eps_key
from robustlora.formatting import eps_key, format_eps

__all__ = ["Analysis", "analyse"]


@dataclass(frozen=True)
class Analysis:
    """Everything the report shows, computed once."""

    arms: list[str]
    arm_table: pd.DataFrame
    seed_table: pd.DataFrame
    comparisons: pd.DataFrame
    findings: list[Finding]
    common_sizes: dict[str, dict[str, int]]  # attack -> ε label (k/255) -> number of common-correct images
    n_images: int
    seeds: dict[str, tuple[int, ...]]


def true_probabilities(results: pd.DataFrame | ResultSet) -> dict[tuple[str, str, float], tuple[float, float]]:
    """(arm, attack, ε key) -> mean true-class probability before and after the attack (every seed attacks the same
    images, so the mean over rows is the mean over seeds of the per-seed means); {} without those columns."""
    if isinstance(results, ResultSet) or not {"clean_true_prob", "adv_true_prob"} <= set(results.columns):
        return {}
    means = with_eps_key(results).groupby(["variant", "attack", "eps_key"])[["clean_true_prob", "adv_true_prob"]]
    return {(str(v), str(a), float(e)): (float(row["clean_true_prob"]), float(row["adv_true_prob"]))
            for (v, a, e), row in means.mean().iterrows()}


def analyse(results: pd.DataFrame | ResultSet, settings: Settings, common_arms: Sequence[str] | None = None, *,
            train_metrics: Mapping[str, Any] | None = None) -> Analysis:
    """Per-arm estimates, paired comparisons vs the baseline (success rates on the images every arm of
    `common_arms`, default all, gets right) and findings (on the paper's arms; an arm whose `train_metrics` show a
    seed still improving at its cap reads 'not converged') from the per-image results."""
    rs = result_set(results)
    sizes = {attack: {format_eps(e): int(common_correct(rs, attack, e, common_arms).sum())
                      for e in sorted(eps_key(x) for x in settings.eps_grid) if e in rs.eps(attack)}
             for attack in rs.attacks()}
    return Analysis(arms=list(rs.arms), arm_table=arm_estimates(rs, settings), seed_table=seed_estimates(rs, settings),
                    comparisons=paired_comparisons(rs, settings, common_arms=common_arms),
                    findings=findings(rs, settings, unconverged=unconverged_arms(train_metrics or {}),
                                      true_prob=true_probabilities(results)),
                    common_sizes=sizes, n_images=rs.n_images,
                    seeds={arm: rs.seeds(arm) for arm in rs.arms})
