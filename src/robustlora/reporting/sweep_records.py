"""The sweep's input contract: one record per (experiment, arm), the columns it has and the checks it must pass.

robustlora.tracking.experiments writes these records from ``dvc exp show --json``; the sweep table, figures and page
read them. A record names its experiment, git revision, status (success / failed / queued / running), what the
experiment changed against its baseline commit (``swept``, written by ``swept_text``), the tail of a failed run's log,
the arm's LoRA settings and its headline metrics. Shares are in [0,1]; each metric ``m`` comes with its 95 % interval
``m_lo``, ``m_hi``; ε is ``eps_255``, in /255 pixel steps.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np
import pandas as pd

from robustlora.errors import DataError

__all__ = ["METRICS", "STATUSES", "TEXT_COLUMNS", "NUMBER_COLUMNS", "METRIC_COLUMNS", "RECORD_COLUMNS",
           "validate_records", "normalised_records", "swept_text", "swept_assignments"]

# metric column -> human label; each comes as a triple m, m_lo, m_hi (95 % interval), shares in [0,1]
METRICS: dict[str, str] = {
    "val_acc": "val accuracy",
    "clean_acc": "clean accuracy",
    "pgd_robust_acc": "PGD robust accuracy",
    "pgd_asr": "PGD attack success rate",
    "fgsm_asr": "FGSM attack success rate",
    "autoattack_robust_acc": "AutoAttack robust accuracy",
}
STATUSES = ("success", "failed", "queued", "running")
TEXT_COLUMNS = ("experiment", "rev", "status", "swept", "log_tail", "arm", "adaptation", "targets")
NUMBER_COLUMNS = ("rank", "alpha", "trainable_params", "n_seeds", "eps_255")
METRIC_COLUMNS = tuple(c for m in METRICS for c in (m, f"{m}_lo", f"{m}_hi"))
RECORD_COLUMNS = ("experiment", "rev", "status", "swept", "log_tail", "arm", "adaptation", "rank", "alpha", "targets",
                  "trainable_params", "n_seeds", "eps_255") + METRIC_COLUMNS


def validate_records(records: pd.DataFrame) -> None:
    """Refuse records that would give a silently wrong report; each DataError is one line naming the culprit."""
    for column in RECORD_COLUMNS:
        if column not in records.columns:
            raise DataError(f"sweep records lack column '{column}'; expected one row per (experiment, arm) with "
                            f"columns {', '.join(RECORD_COLUMNS[:13])} and each metric m of "
                            f"{', '.join(METRICS)} as m, m_lo, m_hi")
    status = records["status"].fillna("").astype(str)
    bad = records[~status.isin(STATUSES)]
    if len(bad):
        raise DataError(f"experiment '{bad['experiment'].iloc[0]}' has status '{bad['status'].iloc[0]}'; expected "
                        f"one of {', '.join(STATUSES)}")
    for column in NUMBER_COLUMNS + METRIC_COLUMNS:
        values = pd.to_numeric(records[column], errors="coerce")
        wrong = values.isna() & records[column].notna()
        if wrong.any():
            raise DataError(f"column '{column}' holds the non-number {records.loc[wrong, column].iloc[0]!r} "
                            f"(experiment '{records.loc[wrong, 'experiment'].iloc[0]}'); use NaN when absent")
        if column in METRIC_COLUMNS and ((values < 0) | (values > 1)).any():
            row = records[(values < 0) | (values > 1)].iloc[0]
            raise DataError(f"column '{column}' is {row[column]} for experiment '{row['experiment']}', arm "
                            f"'{row['arm']}'; shares must be in [0,1], not in %")
    done = records[status == "success"]
    dup = done.duplicated(["experiment", "arm"])
    if dup.any():
        row = done[dup].iloc[0]
        raise DataError(f"experiment '{row['experiment']}' has arm '{row['arm']}' twice; expected one row per "
                        "(experiment, arm)")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    missing = value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and np.isnan(value))
    return "" if missing else str(value)


def normalised_records(records: pd.DataFrame) -> pd.DataFrame:
    """A copy with text columns as str ('' for missing) and number columns as float (NaN for missing)."""
    out = records.copy()
    for column in TEXT_COLUMNS:
        out[column] = out[column].map(_text)
    for column in NUMBER_COLUMNS + METRIC_COLUMNS:
        out[column] = pd.to_numeric(out[column], errors="coerce").astype(float)
    return out


def swept_text(changed: Mapping[str, Any]) -> str:
    """The `swept` field: {'lora.rank': 8, 'lora.alpha': 16} -> 'lora.alpha=16, lora.rank=8' (keys sorted)."""
    return ", ".join(f"{k}={v}" for k, v in sorted(changed.items()))


def swept_assignments(swept: str) -> list[tuple[str, str]]:
    """'lora.rank=8,lora.alpha=16' -> [('lora.rank', '8'), ('lora.alpha', '16')]; values may contain commas."""
    parts = [p.strip() for p in re.split(r"[,\s]+(?=[\w.\-\[\]]+=)", swept.strip()) if p.strip()]
    return [(p.split("=", 1)[0], p.split("=", 1)[1]) if "=" in p else (p, "") for p in parts]
