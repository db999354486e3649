"""Dynamic adapter switching in the report: the routed system's accuracies and switch rates, and the system against
each of its adapters alone.

Input: the defences stage's switching table (one row per system x seed x attack x ε x image; `system`, `standard`,
`robust`, `seed` and the columns of robustlora.defences.evaluation.SWITCHING_COLUMNS), on the first images of the
attack stage's subset. Shares in [0, 1] (robustlora.stats.share_mean); the comparisons with the adapters are paired
on the switching images (robustlora.analysis.compare), one Holm family over the table. `switching_dominance` says
from them when one adapter alone dominates the system: no worse clean accuracy within the noise and a better
robust accuracy than the system's worst case.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd

from robustlora import stats
from robustlora.analysis.compare import comparison_table, compare, direction
from robustlora.analysis.settings import Settings
from robustlora.analysis.tables import (WORST_CASE, Cell, Outcomes, ResultSet, result_set, table_cells,
                                       validate_table)
from robustlora.errors import DataError

__all__ = ["SWITCHING_TABLE_COLUMNS", "SWITCHING_COMPARISON_COLUMNS", "switching_cells", "switching_table",
           "switching_comparisons", "DOMINANCE_COLUMNS", "switching_dominance"]

SWITCHING_TABLE_COLUMNS = ["system", "standard", "robust", "attack", "eps", "quantity", "value", "ci_low", "ci_high",
                           "n_images", "n_seeds"]
SWITCHING_COMPARISON_COLUMNS = ["system", "versus", "role", "quantity", "eps", "diff", "ci_low", "ci_high", "p",
                                "p_holm", "n_images", "verdict"]
DOMINANCE_COLUMNS = ["system", "eps", "adapter", "role", "clean_diff", "clean_ci_low", "clean_ci_high", "clean_p_holm",
                     "robust_gain", "robust_ci_low", "robust_ci_high", "robust_p_holm", "dominates"]


def switching_cells(switching: pd.DataFrame) -> tuple[dict[str, tuple[str, str]], dict[tuple[str, str, float], Cell]]:
    """({system: (standard adapter, robust adapter)}, its cells in report order: the stage's attacks first)."""
    # the stage's own columns and attacks (defences.columns: torch-free, so reading results does not load torch)
    from robustlora.defences.columns import SWITCHING_ATTACKS, SWITCHING_COLUMNS

    table = validate_table(switching, ("system", "standard", "robust", "seed", *SWITCHING_COLUMNS),
                           what="switching results", stage="defences", name="system")
    adapters = {s: (str(g["standard"].iloc[0]), str(g["robust"].iloc[0])) for s, g in table.groupby("system")}
    bools = ("clean_correct", "adv_correct", "clean_switched", "adv_switched")
    return adapters, table_cells(table, "system", bools, SWITCHING_ATTACKS, what="switching results", stage="defences")


def switching_table(switching: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Per system x attack x ε: clean_accuracy, robust_accuracy (correct before and after), switch_rate_clean and
    switch_rate_attacked (inputs routed to the robust adapter), with hierarchical CIs. Columns:
    SWITCHING_TABLE_COLUMNS."""
    adapters, cells = switching_cells(switching)
    rows = []
    for (system, attack, eps), c in cells.items():
        for quantity, outcome in (("clean_accuracy", c.x["clean_correct"]),
                                  ("robust_accuracy", c.x["clean_correct"] & c.x["adv_correct"]),
                                  ("switch_rate_clean", c.x["clean_switched"]),
                                  ("switch_rate_attacked", c.x["adv_switched"])):
            rows.append({"system": system, "standard": adapters[system][0], "robust": adapters[system][1],
                         "attack": attack, "eps": eps, "quantity": quantity,
                         **asdict(stats.share_mean(outcome, **settings.bootstrap))})
    return pd.DataFrame(rows, columns=SWITCHING_TABLE_COLUMNS)


def _restrict(cell: Outcomes, images: np.ndarray, arm: str) -> Outcomes:
    """The attack cell on `images` (the switching subset), in that order."""
    missing = images[~np.isin(images, cell.images)]
    if missing.size:
        raise DataError(f"switching images {missing[:3].tolist()} are not in the attack results of {arm}; run "
                        "switching on the attack stage's image subset")
    i = np.searchsorted(cell.images, images)
    return Outcomes(cell.arm, cell.attack, cell.eps, cell.seeds, images, cell.clean_correct[:, i],
                    cell.adv_correct[:, i], cell.clean_max_prob[:, i], cell.adv_max_prob[:, i])


def switching_comparisons(switching: pd.DataFrame, attack_results: pd.DataFrame | ResultSet,
                          settings: Settings) -> pd.DataFrame:
    """Per system x ε with 'worst' rows: system − each adapter alone, paired on the switching images.

    robust_accuracy: the system's worst case minus the adapter's robust accuracy in the attack stage's results — its
    per-image worst case over attacks (attack `worst_case`) where the results hold it, else PGD's; clean_accuracy:
    system minus adapter on the clean images. role: 'standard' / 'robust'. Holm over the table; a missing adapter
    cell gives a 'not evaluated' row. Columns: SWITCHING_COMPARISON_COLUMNS.
    """
    rs, (adapters, cells) = result_set(attack_results), switching_cells(switching)
    rows = []
    for (system, attack, eps), c in cells.items():
        for role, arm in zip(("standard", "robust"), adapters[system]) if attack == "worst" else ():
            ref = (rs.get(arm, WORST_CASE, eps) or rs.get(arm, "pgd", eps)) if arm in rs.arms else None
            ref = _restrict(ref, c.images, arm) if ref is not None else None
            for quantity, mine, theirs in (
                    ("robust_accuracy", c.x["clean_correct"] & c.x["adv_correct"], None if ref is None else ref.robust),
                    ("clean_accuracy", c.x["clean_correct"], None if ref is None else ref.clean_correct)):
                rows.append(({"system": system, "versus": arm, "role": role, "quantity": quantity, "eps": eps},
                             compare(mine, theirs, settings)))
    return comparison_table(rows, SWITCHING_COMPARISON_COLUMNS, settings.alpha)


def switching_dominance(comparisons: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Per system x ε x adapter, from `switching_comparisons`: does that adapter alone dominate the system?

    Dominates: the system is not significantly more accurate on clean images (system − adapter clean accuracy is
    not 'higher': CI above 0 and Holm p < ``alpha``) and the adapter's robust accuracy is significantly above the
    system's worst case (system − adapter robust accuracy CI below 0 and Holm p < ``alpha``) — always serving that
    adapter costs no clean accuracy within the noise and is more robust. clean_diff: system − adapter;
    robust_gain: adapter − system (its CI flipped). Points in [0, 1]. Columns: DOMINANCE_COLUMNS; rows lacking
    either comparison are left out.
    """
    rows = []
    if comparisons.empty:
        return pd.DataFrame(columns=DOMINANCE_COLUMNS)
    for (system, eps, adapter, role), g in comparisons.groupby(["system", "eps", "versus", "role"], sort=False):
        by = {r.quantity: r for r in g.itertuples()}
        clean, robust = by.get("clean_accuracy"), by.get("robust_accuracy")
        if clean is None or robust is None or not (np.isfinite(clean.diff) and np.isfinite(robust.diff)):
            continue
        worse_clean = direction(clean.ci_low, clean.ci_high, clean.p_holm, alpha) == 1
        more_robust = direction(robust.ci_low, robust.ci_high, robust.p_holm, alpha) == -1
        rows.append({"system": system, "eps": eps, "adapter": adapter, "role": role, "clean_diff": clean.diff,
                     "clean_ci_low": clean.ci_low, "clean_ci_high": clean.ci_high, "clean_p_holm": clean.p_holm,
                     "robust_gain": -robust.diff, "robust_ci_low": -robust.ci_high, "robust_ci_high": -robust.ci_low,
                     "robust_p_holm": robust.p_holm, "dominates": bool(more_robust and not worse_clean)})
    return pd.DataFrame(rows, columns=DOMINANCE_COLUMNS)
