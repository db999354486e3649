"""Every defence table of the report at once, and the clean-vs-robust trade-off points the figure draws.

Three defences (robustlora.analysis.adversarial, .squeezing, .switching), each its own Holm family; a defence that
did not run gives empty tables. Shares in [0, 1], ε in [0, 1] pixel units. The markdown and the figure are
robustlora.reporting.defences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pandas as pd

from robustlora.analysis.adversarial import AdversarialArm, adversarial_differences, adversarial_table
from robustlora.analysis.settings import Settings
from robustlora.analysis.squeezing import (SQUEEZE_TABLE_COLUMNS, SQUEEZE_VERDICT_COLUMNS, THRESHOLD_COLUMNS,
                                           squeeze_table, squeeze_thresholds, squeeze_verdicts)
from robustlora.analysis.switching import (SWITCHING_COMPARISON_COLUMNS, SWITCHING_TABLE_COLUMNS,
                                           switching_comparisons, switching_table)
from robustlora.analysis.tables import ResultSet, result_set, row_index
from robustlora.formatting import eps_key

__all__ = ["POINT_COLUMNS", "Defences", "analyse_defences", "tradeoff_points"]

POINT_COLUMNS = ["label", "kind", "arm", "twin", "clean", "clean_lo", "clean_hi", "robust", "robust_lo", "robust_hi"]


@dataclass(frozen=True)
class Defences:
    """Every defence table of the report; empty tables where a defence did not run."""

    at_arms: tuple[AdversarialArm, ...]
    adversarial: pd.DataFrame
    differences: pd.DataFrame
    squeeze: pd.DataFrame
    squeeze_thresholds: pd.DataFrame
    squeeze_verdicts: pd.DataFrame
    switching: pd.DataFrame
    switching_comparisons: pd.DataFrame
    cost: Mapping[str, Any] | None
    points: pd.DataFrame


def tradeoff_points(adversarial: pd.DataFrame, eps: float, at_arms: Sequence[AdversarialArm] = (),
                    squeeze: pd.DataFrame | None = None, switching: pd.DataFrame | None = None) -> pd.DataFrame:
    """Clean vs robust accuracy at ε of every arm (PGD), every arm + squeezing detector under the adaptive attack
    (detector clean vs detector robust accuracy) and every switching system (worst case); shares in [0, 1].
    twin: an adversarially trained arm's standard twin. Columns: POINT_COLUMNS."""
    e, at = eps_key(eps), {a.name: a for a in at_arms}
    adv = row_index(adversarial, ["arm", "quantity", "eps"])
    sq = row_index(squeeze, ["variant", "attack", "eps", "quantity"])
    sw = row_index(switching, ["system", "attack", "eps", "quantity"])
    candidates = [(arm, "adversarial" if arm in at else "arm", arm, at[arm].standard if arm in at else None,
                   adv.get((arm, "clean_accuracy", None)), adv.get((arm, "pgd_robust_accuracy", e)))
                  for arm in dict.fromkeys(adversarial["arm"])]
    candidates += [(f"{v} + squeezing (adaptive)", "squeeze", v, None,
                    sq.get((v, "adaptive", e, "detector_clean_accuracy")),
                    sq.get((v, "adaptive", e, "detector_robust_accuracy")))
                   for v in (dict.fromkeys(squeeze["variant"]) if squeeze is not None else ())]
    candidates += [(f"{s} (switching, worst case)", "switching", s, None, sw.get((s, "worst", e, "clean_accuracy")),
                    sw.get((s, "worst", e, "robust_accuracy")))
                   for s in (dict.fromkeys(switching["system"]) if switching is not None else ())]
    rows = [{"label": label, "kind": kind, "arm": arm, "twin": twin, "clean": c.value, "clean_lo": c.ci_low,
             "clean_hi": c.ci_high, "robust": r.value, "robust_lo": r.ci_low, "robust_hi": r.ci_high}
            for label, kind, arm, twin, c, r in candidates if c is not None and r is not None]
    return pd.DataFrame(rows, columns=POINT_COLUMNS)


def analyse_defences(attack_results: pd.DataFrame | ResultSet, settings: Settings, *,
                     at_arms: Sequence[AdversarialArm] = (), arms: Sequence[str] | None = None,
                     train_metrics: Mapping[str, Any] | None = None, autoattack: pd.DataFrame | None = None,
                     squeeze: pd.DataFrame | None = None, switching: pd.DataFrame | None = None,
                     cost: Mapping[str, Any] | None = None) -> Defences:
    """All defence tables from the per-image inputs; None or empty inputs give empty tables."""
    rs = result_set(attack_results)
    sq_on, sw_on = squeeze is not None and len(squeeze) > 0, switching is not None and len(switching) > 0
    adv = adversarial_table(rs, settings, at_arms=at_arms, arms=arms, train_metrics=train_metrics,
                            autoattack=autoattack)
    sq = squeeze_table(squeeze, settings) if sq_on else pd.DataFrame(columns=SQUEEZE_TABLE_COLUMNS)
    sw = switching_table(switching, settings) if sw_on else pd.DataFrame(columns=SWITCHING_TABLE_COLUMNS)
    return Defences(
        tuple(at_arms), adv, adversarial_differences(rs, settings, at_arms, autoattack), sq,
        squeeze_thresholds(squeeze) if sq_on else pd.DataFrame(columns=THRESHOLD_COLUMNS),
        squeeze_verdicts(squeeze, settings) if sq_on else pd.DataFrame(columns=SQUEEZE_VERDICT_COLUMNS), sw,
        switching_comparisons(switching, rs, settings) if sw_on else pd.DataFrame(columns=SWITCHING_COMPARISON_COLUMNS),
        cost, tradeoff_points(adv, settings.report_eps, at_arms, sq, sw))
