"""The study's analysis at once: per-arm estimates, paired comparisons vs the baseline and the paper's findings.

Input: the concatenated `results/attack/<variant>.parquet` files (robustlora.analysis.tables.RESULT_COLUMNS; one row
per arm x seed x attack x ε x image, ε in [0,1] pixel units). Every arm and seed is attacked on the same images, so
all comparisons are paired on images. Pure functions of DataFrames and small dataclasses: no files, no plotting,
no markdown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pandas as pd

from robustlora.analysis.compare import common_correct, paired_comparisons
from robustlora.analysis.estimates import arm_estimates, seed_estimates
from robustlora.analysis.findings import Finding, findings
from robustlora.analysis.settings import Settings
from robustlora.analysis.tables import ResultSet, result_set
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


def analyse(results: pd.DataFrame | ResultSet, settings: Settings,
            common_arms: Sequence[str] | None = None) -> Analysis:
    """Per-arm estimates, paired comparisons vs the baseline and findings from the per-image results."""
    rs = result_set(results)
    sizes = {attack: {format_eps(e): int(common_correct(rs, attack, e, common_arms).sum())
                      for e in sorted(eps_key(x) for x in settings.eps_grid) if e in rs.eps(attack)}
             for attack in rs.attacks()}
    return Analysis(arms=list(rs.arms), arm_table=arm_estimates(rs, settings), seed_table=seed_estimates(rs, settings),
                    comparisons=paired_comparisons(rs, settings, common_arms=common_arms),
                    findings=findings(rs, settings, common_arms), common_sizes=sizes, n_images=rs.n_images,
                    seeds={arm: rs.seeds(arm) for arm in rs.arms})
