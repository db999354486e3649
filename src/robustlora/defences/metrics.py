"""The defences stage's metrics (its DVC metrics JSON and MLflow figures), computed from its per-image rows.

Shares are in [0, 1], means over every seed and image of the rows given, per attack and ε label ('eps_8' for 8/255):
the squeezing detector's false positive rate on clean images, its detection rate among the successful adversarial
examples, and robust accuracy without and with it; the switching system's clean accuracy, robust accuracy and how
often it switched to the robust adapter. The report's intervals and tests are made elsewhere (robustlora.analysis).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

__all__ = ["squeeze_metrics", "squeeze_summary", "switching_metrics", "switching_run_metrics"]


def squeeze_metrics(rows: pd.DataFrame) -> dict[str, float]:
    """Means over seeds and images per attack and ε: clean FPR, detection rate (NaN where no image was fooled),
    robust accuracy alone and with the detector; keys 'squeeze/<attack>/<eps label>/<figure>'."""
    out = {}
    for (attack, label), g in rows.groupby(["attack", "eps_label"], sort=False):
        fooled = g["clean_correct"] & ~g["adv_correct"]
        key = f"squeeze/{attack}/{label}"
        out[f"{key}/clean_fpr"] = float(g["clean_flagged"].mean())
        out[f"{key}/detection_rate"] = float(g.loc[fooled, "adv_flagged"].mean()) if fooled.any() else float("nan")
        out[f"{key}/robust_accuracy"] = float((g["clean_correct"] & g["adv_correct"]).mean())
        out[f"{key}/detector_robust_accuracy"] = float(
            (g["clean_correct"] & (g["adv_correct"] | g["adv_flagged"])).mean())
    return out


def squeeze_summary(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """{variant: :func:`squeeze_metrics` of its rows} for the squeeze table of every arm, in the table's order."""
    return {variant: squeeze_metrics(rows) for variant, rows in table.groupby("variant", sort=False)}


def switching_metrics(rows: pd.DataFrame) -> dict[str, float]:
    """The switching system's means over seeds and images: clean accuracy and switch rate, then per attack and ε
    robust accuracy and switch rate ('<attack>/<eps label>/robust_accuracy', '.../switch_rate')."""
    out = {}
    for (attack, label), g in rows.groupby(["attack", "eps_label"], sort=False):
        out.setdefault("clean_accuracy", float(g["clean_correct"].mean()))
        out.setdefault("clean_switch_rate", float(g["clean_switched"].mean()))
        out[f"{attack}/{label}/robust_accuracy"] = float((g["clean_correct"] & g["adv_correct"]).mean())
        out[f"{attack}/{label}/switch_rate"] = float(g["adv_switched"].mean())
    return out


def switching_run_metrics(metrics: dict[str, float], cost: dict[str, Any]) -> dict[str, float]:
    """The switching system's MLflow figures: its :func:`switching_metrics`, the median seconds of each way of
    serving the adapters ('cost/<way>_median') and the bytes held ('cost/<what>_bytes'), from
    defences.evaluation.switching_cost."""
    return metrics | {f"cost/{k}_median": v["median"] for k, v in cost.items() if isinstance(v, dict)} | {
        f"cost/{k}": v for k, v in cost.items() if k.endswith("bytes")}
