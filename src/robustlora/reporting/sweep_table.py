"""The sweep table: the successful records sorted, their accuracy-robustness Pareto front, and the rest.

From the records (robustlora.reporting.sweep_records): ``sweep_table`` keeps the successful (experiment, arm) rows and
marks the Pareto front of clean vs PGD robust accuracy; ``unsuccessful_experiments`` keeps one row per failed, running
or queued experiment; ``distinct_points`` merges the rows an arm the sweep did not change repeats in every experiment,
which is what the figures draw and the page's front lists. Shares in [0,1]; ε (``eps_255``) in /255 pixel steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from robustlora.reporting.sweep_records import METRIC_COLUMNS, normalised_records, validate_records

__all__ = ["SORT_COLUMNS", "pareto_front", "sweep_table", "unsuccessful_experiments", "distinct_points",
           "eps_values"]

SORT_COLUMNS = ["arm", "targets", "rank", "trainable_params", "experiment"]
# the columns that make two rows one point: everything but where it came from
POINT_COLUMNS = ["arm", "adaptation", "targets", "rank", "alpha", "trainable_params", "n_seeds", "eps_255",
                 *METRIC_COLUMNS]


def pareto_front(table: pd.DataFrame, x: str = "clean_acc", y: str = "pgd_robust_acc") -> pd.Series:
    """True for rows no other row dominates, maximising `x` and `y`; rows with NaN in either are never on it.

    A row is dominated when another is >= on both and > on at least one, so tied rows are all on the front.
    """
    xs = pd.to_numeric(table[x], errors="coerce").to_numpy(float)
    ys = pd.to_numeric(table[y], errors="coerce").to_numpy(float)
    ok = np.isfinite(xs) & np.isfinite(ys)
    px, py = xs[ok], ys[ok]
    # dominated[i, j]: row j dominates row i
    dominated = ((px[None, :] >= px[:, None]) & (py[None, :] >= py[:, None])
                 & ((px[None, :] > px[:, None]) | (py[None, :] > py[:, None])))
    front = np.zeros(len(table), dtype=bool)
    front[ok] = ~dominated.any(axis=1)
    return pd.Series(front, index=table.index, name="pareto", dtype=bool)


def sweep_table(records: pd.DataFrame) -> pd.DataFrame:
    """The successful rows, sorted by arm, targets, rank, trainable params, experiment; plus a bool `pareto` column.

    The front (clean vs PGD robust accuracy) is over all successful rows, each experiment × arm one point.
    """
    validate_records(records)
    table = normalised_records(records)
    table = table[table["status"] == "success"]
    table = table.sort_values(SORT_COLUMNS, kind="mergesort", na_position="last").reset_index(drop=True)
    table["pareto"] = pareto_front(table)
    return table


def unsuccessful_experiments(records: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment that did not succeed (failed, running, queued, in that order), with its log tail."""
    validate_records(records)
    rest = normalised_records(records)
    rest = rest[rest["status"] != "success"]
    order = {s: i for i, s in enumerate(("failed", "running", "queued"))}
    # one row per experiment: the one with the longest log tail when there are several
    rest = rest.assign(_order=rest["status"].map(order), _len=-rest["log_tail"].str.len())
    rest = rest.sort_values(["_order", "experiment", "_len"], kind="mergesort").drop_duplicates("experiment")
    return rest[["experiment", "rev", "status", "swept", "log_tail"]].reset_index(drop=True)


def _key(value: Any) -> Any:
    """A cell as a grouping key: NaN as None (NaN != NaN would split a point), floats rounded to 12 decimals."""
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else round(float(value), 12)
    return value


def distinct_points(table: pd.DataFrame) -> pd.DataFrame:
    """Identical rows of a sweep table as one point (an arm a sweep did not change repeats in every experiment).

    Keeps the first row of each point in table order; `experiments` lists the experiments it came from and `pareto`
    is True when any of them is on the front.
    """
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, row in enumerate(table[POINT_COLUMNS].itertuples(index=False)):
        groups.setdefault(tuple(_key(v) for v in row), []).append(i)
    front = table["pareto"].to_numpy(bool) if "pareto" in table else np.zeros(len(table), dtype=bool)
    points = table.iloc[[positions[0] for positions in groups.values()]].reset_index(drop=True)
    points["experiments"] = pd.Series([tuple(table["experiment"].iloc[p]) for p in groups.values()], dtype=object)
    points["pareto"] = pd.Series([bool(front[p].any()) for p in groups.values()], dtype=bool)
    return points


def eps_values(table: pd.DataFrame) -> list[float]:
    """The distinct ε of a sweep table's rows, in /255 pixel steps, ascending; rows without ε are left out."""
    return sorted({_key(e) for e in table["eps_255"] if np.isfinite(e)})
