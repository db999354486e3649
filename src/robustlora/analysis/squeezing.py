"""Feature squeezing in the report: the detector's shares per arm, its fitted thresholds, and whether it adds
robust accuracy against PGD and against the adaptive attack that knows it.

Input: the defences stage's squeeze table (one row per variant x seed x attack x ε x image; the columns of
robustlora.defences.evaluation.SQUEEZE_COLUMNS after `variant`, `seed`). Shares in [0, 1] with hierarchical
intervals that are never zero width (robustlora.stats.share_mean); gains are paired within the same seeds and
images (robustlora.analysis.compare) and Holm-corrected over the table.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping

import numpy as np
import pandas as pd

from robustlora import stats
from robustlora.analysis.compare import compare, holm_family
from robustlora.analysis.names import ATTACK_ORDER
from robustlora.analysis.settings import Settings
from robustlora.analysis.tables import Cell, table_cells, validate_table
from robustlora.errors import DataError
from robustlora.formatting import format_eps

__all__ = ["SQUEEZE_ORDER", "SQUEEZE_VERDICTS", "SQUEEZE_TABLE_COLUMNS", "SQUEEZE_VERDICT_COLUMNS",
           "THRESHOLD_COLUMNS", "squeeze_cells", "defended", "squeeze_table", "squeeze_thresholds", "squeeze_verdicts"]

SQUEEZE_ORDER = (*ATTACK_ORDER, "adaptive")  # the attacks on the detector, in report order
SQUEEZE_VERDICTS = ("survives the adaptive attack", "only against non-adaptive attacks", "no gain", "inconclusive")
SQUEEZE_TABLE_COLUMNS = ["variant", "attack", "eps", "quantity", "value", "ci_low", "ci_high", "n_images",
                         "n_seeds", "n_cases"]
SQUEEZE_VERDICT_COLUMNS = ["variant", "eps", "gain_nonadaptive", "gain_nonadaptive_lo", "gain_nonadaptive_hi",
                           "p_nonadaptive", "p_holm_nonadaptive", "gain_adaptive", "gain_adaptive_lo",
                           "gain_adaptive_hi", "p_adaptive", "p_holm_adaptive", "n_images", "n_seeds", "verdict"]
THRESHOLD_COLUMNS = ["variant", "n_seeds", "threshold", "threshold_min", "threshold_max", "holdout_fpr",
                     "holdout_fpr_min", "holdout_fpr_max"]


def squeeze_cells(squeeze: pd.DataFrame) -> tuple[pd.DataFrame, dict[tuple[str, str, float], Cell]]:
    """(the validated table, its cells of clean/adv correct and flagged) in report order (SQUEEZE_ORDER)."""
    # the stage's own column list (defences.columns: torch-free, so reading results does not load torch)
    from robustlora.defences.columns import SQUEEZE_COLUMNS

    table = validate_table(squeeze, ("variant", "seed", *SQUEEZE_COLUMNS), what="squeeze results", stage="defences")
    bools = ("clean_correct", "adv_correct", "clean_flagged", "adv_flagged")
    return table, table_cells(table, "variant", bools, SQUEEZE_ORDER, what="squeeze results", stage="defences")


def defended(x: Mapping[str, np.ndarray]) -> np.ndarray:
    """Attacked input defended: correct before, and after the attack still correct or rejected by the detector."""
    return x["clean_correct"] & (x["adv_correct"] | x["adv_flagged"])


def squeeze_table(squeeze: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Per variant x attack x ε: the detector's shares with hierarchical CIs (columns: SQUEEZE_TABLE_COLUMNS).

    clean_fpr: clean images flagged; detection_rate: flagged among each seed's successful adversarial examples
    (clean-correct, wrong after the attack; NaN without any); robust_accuracy: the classifier alone;
    detector_robust_accuracy: correct before and, after the attack, correct or rejected; detector_clean_accuracy:
    correct and not flagged (a rejected clean input is an error). n_cases: the seed × image pairs a share is over.
    """
    rows = []
    for (variant, attack, eps), c in squeeze_cells(squeeze)[1].items():
        x = c.x
        success = x["clean_correct"] & ~x["adv_correct"]
        for quantity, outcome, among in (
                ("clean_fpr", x["clean_flagged"], None), ("detection_rate", x["adv_flagged"], success),
                ("robust_accuracy", x["clean_correct"] & x["adv_correct"], None),
                ("detector_robust_accuracy", defended(x), None),
                ("detector_clean_accuracy", x["clean_correct"] & ~x["clean_flagged"], None)):
            rows.append({"variant": variant, "attack": attack, "eps": eps, "quantity": quantity,
                         **asdict(stats.share_mean(outcome, among, **settings.bootstrap)),
                         "n_cases": int(success.sum()) if among is not None else success.size})
    return pd.DataFrame(rows, columns=SQUEEZE_TABLE_COLUMNS)


def squeeze_thresholds(squeeze: pd.DataFrame) -> pd.DataFrame:
    """Per variant: the fitted score threshold and its empirical FPR on the clean holdout (constant per seed), mean
    and min–max over seeds. Columns: THRESHOLD_COLUMNS."""
    per_seed = squeeze_cells(squeeze)[0].groupby(["variant", "seed"], sort=False)[["threshold", "holdout_fpr"]].first()
    table = per_seed.groupby(level="variant", sort=False).agg(["mean", "min", "max"])
    table.columns = [c if f == "mean" else f"{c}_{f}" for c, f in table.columns]
    table["n_seeds"] = per_seed.groupby(level="variant", sort=False).size()
    return table.reset_index()[THRESHOLD_COLUMNS]


def squeeze_verdicts(squeeze: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Per variant x ε with both PGD and adaptive rows: does the detector add robust accuracy, and against whom?

    gain_nonadaptive = detector_robust_accuracy(PGD) − robust_accuracy(PGD); gain_adaptive =
    detector_robust_accuracy(adaptive) − robust_accuracy(PGD): same classifier, seeds and images, so the per-seed
    per-image difference is bootstrapped directly. p: exact McNemar on majority votes; Holm over every gain of the
    table. A gain counts when its CI lies above 0 and its Holm p < alpha. Verdict: 'survives the adaptive attack'
    (the adaptive gain counts), 'only against non-adaptive attacks' (only the PGD gain counts), 'no gain' (neither
    gain is above 0: the detector made no image robust), else 'inconclusive'. Columns: SQUEEZE_VERDICT_COLUMNS.
    """
    cells = squeeze_cells(squeeze)[1]
    rows, gains = [], {"nonadaptive": [], "adaptive": []}
    for (variant, attack, eps), pgd in cells.items():
        if attack != "pgd" or (adaptive := cells.get((variant, "adaptive", eps))) is None:
            continue
        if pgd.seeds != adaptive.seeds or not np.array_equal(pgd.images, adaptive.images):
            raise DataError(f"squeeze results: {variant} ε = {format_eps(eps)}: the adaptive attack covers other "
                            "seeds or images than PGD; run both on the same images")
        robust = pgd.x["clean_correct"] & pgd.x["adv_correct"]
        row: dict[str, Any] = {"variant": variant, "eps": eps, "n_images": len(pgd.images), "n_seeds": len(pgd.seeds)}
        for name, x in (("nonadaptive", pgd.x), ("adaptive", adaptive.x)):
            gain = compare(defended(x), robust, settings, same_seeds=True)
            gains[name].append(gain)
            row |= {f"gain_{name}": gain.diff, f"gain_{name}_lo": gain.ci_low, f"gain_{name}_hi": gain.ci_high,
                    f"p_{name}": gain.p}
        rows.append(row)
    table = pd.DataFrame(rows, columns=[c for c in SQUEEZE_VERDICT_COLUMNS if not c.startswith(("p_holm", "verd"))])
    family = holm_family(gains["nonadaptive"] + gains["adaptive"], settings.alpha)  # one family: every gain
    nonadaptive, adaptive = family[:len(table)], family[len(table):]
    table["p_holm_nonadaptive"] = np.array([g.p_holm for g in nonadaptive], dtype=float)
    table["p_holm_adaptive"] = np.array([g.p_holm for g in adaptive], dtype=float)

    def verdict(row: pd.Series, counts: tuple[bool, bool]) -> str:
        if any(counts):
            return SQUEEZE_VERDICTS[0] if counts[0] else SQUEEZE_VERDICTS[1]
        # no image gained against either attack; the CIs still say how large a gain the images cannot rule out
        return SQUEEZE_VERDICTS[2] if max(row["gain_nonadaptive"], row["gain_adaptive"]) <= 0 else SQUEEZE_VERDICTS[3]

    table["verdict"] = [verdict(r, (a.direction == 1, n.direction == 1))
                        for (_, r), a, n in zip(table.iterrows(), adaptive, nonadaptive)] if len(table) else []
    return table[SQUEEZE_VERDICT_COLUMNS]
