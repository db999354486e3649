"""Per-arm summaries beside the per-image estimates: the training table and the headline figures of one run.

`train_table` reads metrics/train/<arm>.json (val/holdout accuracy over seeds, parameters, best epochs); `headline`
picks, per arm, the figures a sweep compares from the report's own estimates, each with its 95 % interval: the
robust accuracy and success rate of the per-image worst case over every attack (robustlora.analysis.tables
.worst_case_rows, when the estimates hold it) first, each attack's own figure beside it.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import pandas as pd

from robustlora import stats
from robustlora.analysis.tables import WORST_CASE
from robustlora.errors import DataError
from robustlora.formatting import eps_key

__all__ = ["HEADLINE", "train_table", "headline"]

HEADLINE = ("clean_acc", "worst_robust_acc", "worst_asr", "pgd_robust_acc", "pgd_asr", "fgsm_asr",
            "autoattack_robust_acc")


def train_table(train_metrics: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Per arm, from metrics/train/<arm>.json: val/holdout accuracy over seeds, parameters, best epochs.

    Columns: arm, n_seeds, val_mean, val_std, holdout_mean, holdout_std, trainable_params, total_params,
    best_epochs, epochs_run, max_epochs (the last three: tuples in seed order; None where a seed lacks the key).
    """
    rows = []
    for arm, metrics in train_metrics.items():
        seeds = metrics.get("seeds") or {}
        if not isinstance(seeds, Mapping) or not seeds:
            raise DataError(f"train metrics of {arm!r} have no 'seeds' entries; rerun train@{arm}")
        ordered = [seeds[k] for k in sorted(seeds, key=int)]

        def summary(key: str) -> dict[str, float]:
            values = [float(s[key]) for s in ordered if s.get(key) is not None]
            return stats.seed_summary(values) if values else {"mean": math.nan, "std": math.nan}

        val, holdout = summary("val_accuracy"), summary("holdout_accuracy")
        rows.append({"arm": arm, "n_seeds": len(ordered), "val_mean": val["mean"], "val_std": val["std"],
                     "holdout_mean": holdout["mean"], "holdout_std": holdout["std"],
                     "trainable_params": ordered[0].get("trainable_params"),
                     "total_params": ordered[0].get("total_params"),
                     "best_epochs": tuple(s.get("best_epoch") for s in ordered),
                     "epochs_run": tuple(s.get("epochs_run") for s in ordered),
                     "max_epochs": tuple(s.get("max_epochs") for s in ordered)})
    return pd.DataFrame(rows, columns=["arm", "n_seeds", "val_mean", "val_std", "holdout_mean", "holdout_std",
                                       "trainable_params", "total_params", "best_epochs", "epochs_run",
                                       "max_epochs"])


def headline(arm_table: pd.DataFrame, versus: pd.DataFrame | None, train_metrics: Mapping[str, Any],
             report_eps: float) -> dict[str, Any]:
    """Per arm, the figures a sweep compares, at ``report_eps``, each with its 95 % interval (``_lo``, ``_hi``).

    From the report's own estimates (hierarchical bootstrap over seeds and images): clean accuracy on the attacked
    images, the worst case's robust accuracy and success rate (attack `worst_case`: per image the worst over every
    attack that ran on it; left out when the estimates have no such rows), PGD robust accuracy and success rate,
    FGSM success rate, and AutoAttack's robust accuracy on its subset
    (``autoattack_n_images``); plus the val accuracy (mean ± sd over seeds), trainable parameters and seeds. Flat
    keys, so ``dvc exp show`` / ``dvc metrics diff`` print ``lora_fc.pgd_robust_acc``; NaN values are left out.
    """
    eps = eps_key(report_eps)
    sources = {"clean_acc": ("pgd", "clean_accuracy"), "worst_robust_acc": (WORST_CASE, "robust_accuracy"),
               "worst_asr": (WORST_CASE, "attack_success_rate"), "pgd_robust_acc": ("pgd", "robust_accuracy"),
               "pgd_asr": ("pgd", "attack_success_rate"), "fgsm_asr": ("fgsm", "attack_success_rate")}
    out: dict[str, Any] = {"eps_255": round(report_eps * 255, 4)}
    at_eps = arm_table[arm_table["eps"].map(eps_key) == eps]
    aa = (versus[(versus["attack"] == "autoattack") & (versus["metric"] == "robust_accuracy")
                 & (versus["eps"].map(eps_key) == eps)] if versus is not None and len(versus) else None)
    for arm in dict.fromkeys(arm_table["arm"]):
        row: dict[str, float] = {}
        for name, (attack, metric) in sources.items():
            hit = at_eps[(at_eps["arm"] == arm) & (at_eps["attack"] == attack) & (at_eps["metric"] == metric)]
            if len(hit):
                row.update(_with_interval(name, hit.iloc[0]))
                if name == "clean_acc":
                    row["n_images"], row["n_seeds"] = int(hit.iloc[0]["n_images"]), int(hit.iloc[0]["n_seeds"])
        if aa is not None and len(hit := aa[aa["arm"] == arm]):
            row.update(_with_interval("autoattack_robust_acc", hit.iloc[0]))
            row["autoattack_n_images"] = int(hit.iloc[0]["n_images"])
        train = (train_metrics.get(arm) or {})
        for key, value in (("val_acc", (train.get("mean") or {}).get("val_accuracy")),
                           ("val_acc_std", (train.get("std") or {}).get("val_accuracy")),
                           ("trainable_params", (train.get("mean") or {}).get("trainable_params"))):
            if value is not None and math.isfinite(float(value)):
                row[key] = int(value) if key == "trainable_params" else round(float(value), 6)
        out[arm] = row
    return out


def _with_interval(name: str, row: pd.Series) -> dict[str, float]:
    values = {name: row["value"], f"{name}_lo": row["ci_low"], f"{name}_hi": row["ci_high"]}
    return {k: round(float(v), 6) for k, v in values.items() if v is not None and math.isfinite(float(v))}
