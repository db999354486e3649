"""Dynamic adapter switching in the report: the routed system's accuracies and switch rates, and the system against
each of its adapters alone.

Input: the defences stage's switching table (one row per system x seed x attack x ε x image; `system`, `standard`,
`robust`, `seed` and the columns of robustlora.defences.evaluation.SWITCHING_COLUMNS), on the first images of the
attack stage's subset. Shares in [0, 1] (robustlora.stats.share_mean); the comparisons with the adapters are paired
on the switching images (robustlora.analysis.compare), one Holm family over the table.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd

from robustlora import stats
from robustlora.analysis.compare import comparison_table, compare
from robustlora.analysis.settings import Settings
from robustlora.analysis.tables import Cell, Outcomes, ResultSet, result_set, table_cells, validate_table
from robustlora.errors import DataError

__all__ = ["SWITCHING_TABLE_COLUMNS", "SWITCHING_COMPARISON_COLUMNS", "switching_cells", "switching_table",
           "switching_comparisons"]

SWITCHING_TABLE_COLUMNS = ["system", "standard", "robust", "attack", "eps", "quantity", "value", "ci_low", "ci_high",
                           "n_images", "n_seeds"]
SWITCHING_COMPARISON_COLUMNS = ["system", "versus", "role", "quantity", "eps", "diff", "ci_low", "ci_high", "p",
                                "p_holm", "n_images", "verdict"]


def switching_cells(switching: pd.DataFrame) -> tuple[dict[str, tuple[str, str]], dict[tuple[str, str, float], Cell]]:
    """({system: (standard adapter, robust adapter)}, its cells in report order: the stage's attacks first)."""
    # the stage's own column list and attacks, imported here so that reading results does not load torch
    from robustlora.defences.evaluation import SWITCHING_ATTACKS, SWITCHING_COLUMNS

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

    robust_accuracy: the system's worst case minus the adapter's PGD robust accuracy (attack stage); clean_accuracy:
    system minus adapter on the clean images. role: 'standard' / 'robust'. Holm over the table; a missing adapter
    cell gives a 'not evaluated' row. Columns: SWITCHING_COMPARISON_COLUMNS.
    """
    rs, (adapters, cells) = result_set(attack_results), switching_cells(switching)
    rows = []
    for (system, attack, eps), c in cells.items():
        for role, arm in zip(("standard", "robust"), adapters[system]) if attack == "worst" else ():
            ref = rs.get(arm, "pgd", eps) if arm in rs.arms else None
            ref = _restrict(ref, c.images, arm) if ref is not None else None
            for quantity, mine, theirs in (
                    ("robust_accuracy", c.x["clean_correct"] & c.x["adv_correct"], None if ref is None else ref.robust),
                    ("clean_accuracy", c.x["clean_correct"], None if ref is None else ref.clean_correct)):
                rows.append(({"system": system, "versus": arm, "role": role, "quantity": quantity, "eps": eps},
                             compare(mine, theirs, settings)))
    return comparison_table(rows, SWITCHING_COMPARISON_COLUMNS, settings.alpha)
