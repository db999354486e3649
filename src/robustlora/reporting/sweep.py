"""A hyperparameter sweep's report: DVC experiments (a LoRA rank sweep, a sweep over target sets) side by side.

Input: one record per (experiment, arm), as read from `dvc exp show` and each experiment's metrics (RECORD_COLUMNS).
Output: the table of successful rows with their accuracy-robustness Pareto front, deterministic figures
(robustlora.reporting.figures conventions) and a markdown page that lists every failed, queued or running experiment too.
Shares are in [0,1] and shown in %; each metric `m` comes with its 95 % interval `m_lo`, `m_hi`; ε is in /255.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from robustlora.analysis.results import MISSING, format_eps, format_pct
from robustlora.errors import DataError
from robustlora.reporting.figures import new_figure, arm_colors, save_figure
from robustlora.io import atomic_path, write_text
from robustlora.reporting.report import _md_table

__all__ = ["METRICS", "STATUSES", "RECORD_COLUMNS", "validate_records", "pareto_front", "sweep_table",
           "unsuccessful_experiments", "write_sweep_figures", "render_sweep", "write_sweep"]

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
SORT_COLUMNS = ["arm", "targets", "rank", "trainable_params", "experiment"]
FIGURE_METRICS = ("clean_acc", "pgd_robust_acc", "pgd_asr", "autoattack_robust_acc")  # the last only when it ran
ROBUST_METRICS = ("pgd_robust_acc", "pgd_asr", "fgsm_asr", "autoattack_robust_acc")  # measured at ε (eps_255)
FIGURE_FILES = {"rank": "metrics_vs_rank.png", "params": "metrics_vs_trainable_params.png",
                "targets": "metrics_per_target_set.png", "pareto": "pareto.png"}
MARKERS = "osD^vP*X"
FRONT_MARK = "✓"


# ----------------------------------------------------------------------------- records

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


def _normalised(records: pd.DataFrame) -> pd.DataFrame:
    """A copy with text columns as str ('' for missing) and number columns as float (NaN for missing)."""
    out = records.copy()
    for column in TEXT_COLUMNS:
        out[column] = out[column].map(_text)
    for column in NUMBER_COLUMNS + METRIC_COLUMNS:
        out[column] = pd.to_numeric(out[column], errors="coerce").astype(float)
    return out


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
    table = _normalised(records)
    table = table[table["status"] == "success"]
    table = table.sort_values(SORT_COLUMNS, kind="mergesort", na_position="last").reset_index(drop=True)
    table["pareto"] = pareto_front(table)
    return table


def unsuccessful_experiments(records: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment that did not succeed (failed, running, queued, in that order), with its log tail."""
    validate_records(records)
    rest = _normalised(records)
    rest = rest[rest["status"] != "success"]
    order = {s: i for i, s in enumerate(("failed", "running", "queued"))}
    # one row per experiment: the one with the longest log tail when there are several
    rest = rest.assign(_order=rest["status"].map(order), _len=-rest["log_tail"].str.len())
    rest = rest.sort_values(["_order", "experiment", "_len"], kind="mergesort").drop_duplicates("experiment")
    return rest[["experiment", "rev", "status", "swept", "log_tail"]].reset_index(drop=True)


# ----------------------------------------------------------------------------- helpers shared by figures and text

def _key(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else round(float(value), 12)
    return value


def _collapse(table: pd.DataFrame) -> pd.DataFrame:
    """Identical points (an arm a sweep did not change repeats in every experiment) as one row; `experiments` lists
    where it came from, `pareto` is True when any of them is on the front."""
    columns = ["arm", "adaptation", "targets", "rank", "alpha", "trainable_params", "n_seeds", "eps_255",
               *METRIC_COLUMNS]
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, row in enumerate(table[columns].itertuples(index=False)):
        groups.setdefault(tuple(_key(v) for v in row), []).append(i)
    front = table["pareto"].to_numpy(bool) if "pareto" in table else np.zeros(len(table), dtype=bool)
    points = table.iloc[[positions[0] for positions in groups.values()]].reset_index(drop=True)
    points["experiments"] = pd.Series([tuple(table["experiment"].iloc[p]) for p in groups.values()], dtype=object)
    points["pareto"] = pd.Series([bool(front[p].any()) for p in groups.values()], dtype=bool)
    return points


def _assignments(swept: str) -> list[tuple[str, str]]:
    """'lora.rank=8,lora.alpha=16' -> [('lora.rank', '8'), ('lora.alpha', '16')]; values may contain commas."""
    parts = [p.strip() for p in re.split(r"[,\s]+(?=[\w.\-\[\]]+=)", swept.strip()) if p.strip()]
    return [(p.split("=", 1)[0], p.split("=", 1)[1]) if "=" in p else (p, "") for p in parts]


def _short_swept(swept: str) -> str:
    """The swept values with each key cut to its last part: 'variants.lora_fc.targets=layer4' -> 'targets=layer4'."""
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" if v else k for k, v in _assignments(swept))


def _point_label(row: pd.Series) -> str:
    """arm + swept value; an arm the sweep did not change (identical in several experiments) by its name only."""
    if len(row["experiments"]) > 1:
        return str(row["arm"])
    detail = _short_swept(row["swept"]) or row["experiment"]
    return f"{row['arm']} · {detail}"


def _eps_values(table: pd.DataFrame) -> list[float]:
    return sorted({_key(e) for e in table["eps_255"] if np.isfinite(e)})


def _eps_text(table: pd.DataFrame) -> str:
    eps = _eps_values(table)
    return format_eps(eps[0] / 255) if len(eps) == 1 else "several ε" if eps else "ε unknown"


def _err(rows: pd.DataFrame, metric: str) -> np.ndarray:
    """Error-bar lengths (2, n) in % from m_lo, m_hi; 0 where an interval is missing."""
    v, lo, hi = (rows[c].to_numpy(float) for c in (metric, f"{metric}_lo", f"{metric}_hi"))
    return np.nan_to_num(100 * np.vstack([v - lo, hi - v]), nan=0.0).clip(min=0)


def _metrics_to_plot(table: pd.DataFrame) -> list[str]:
    return [m for m in FIGURE_METRICS if m != "autoattack_robust_acc" or table[m].notna().any()]


def _metric_axis_label(metric: str, eps: str) -> str:
    return f"{METRICS[metric]} (%)" + (f", ε = {eps}" if metric in ROBUST_METRICS else "")


def _number(value: float) -> str:
    return MISSING if not np.isfinite(value) else f"{value:g}"


def _is_lora(table: pd.DataFrame) -> pd.Series:
    return table["rank"].notna()


# ----------------------------------------------------------------------------- figures

def _rank_figure(table: pd.DataFrame, colors: Mapping[str, str]) -> Figure | None:
    """Metrics vs LoRA rank (log2 axis): one line per (arm, targets), arms without LoRA as reference bands."""
    points = _collapse(table)
    lora, others = points[_is_lora(points)], points[~_is_lora(points)]
    ranks = sorted(set(lora["rank"]))
    if len(ranks) < 2:
        return None
    metrics = _metrics_to_plot(table)
    eps = _eps_text(table)
    target_sets = sorted(set(lora["targets"]))
    fig, axes = new_figure(3.6 * len(metrics), 3.8, ncols=len(metrics))
    for ax, metric in zip(axes, metrics):
        for (arm, targets), rows in lora.groupby(["arm", "targets"], sort=True):
            # two points at one rank (another swept value) would zig-zag: split by α, else draw points only
            split = rows["rank"].duplicated().any() and rows["alpha"].nunique(dropna=False) > 1
            for alpha, series in rows.groupby("alpha", dropna=False, sort=True) if split else [(None, rows)]:
                series = series.sort_values(["rank", "experiment"], kind="mergesort")
                if series[metric].isna().all():
                    continue
                label = f"{arm} · {targets or 'no targets'}" + (f" · α={alpha:g}" if alpha is not None else "")
                linestyle = "none" if series["rank"].duplicated().any() else "-"
                ax.errorbar(series["rank"].to_numpy(float), 100 * series[metric].to_numpy(float),
                            yerr=_err(series, metric), capsize=3, color=colors[arm], linestyle=linestyle,
                            marker=MARKERS[target_sets.index(targets) % len(MARKERS)], label=label)
        for row in others.itertuples():
            value, lo, hi = (getattr(row, c) for c in (metric, f"{metric}_lo", f"{metric}_hi"))
            if not np.isfinite(value):
                continue
            ax.axhline(100 * value, color=colors[row.arm], linestyle="--", linewidth=1,
                       label=f"{row.arm} (no LoRA)")
            if np.isfinite(lo) and np.isfinite(hi):
                ax.axhspan(100 * lo, 100 * hi, color=colors[row.arm], alpha=0.12, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_xlim(ranks[0] / 1.4, ranks[-1] * 1.4)
        ax.set_xticks(ranks, [f"{r:g}" for r in ranks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("LoRA rank")
        ax.set_ylabel(_metric_axis_label(metric, eps), fontsize=8)
        ax.grid(alpha=0.3)
    _shared_legend(fig, axes)
    fig.suptitle("Metrics vs LoRA rank: one line per arm · target set (95% CI); dashed line + band: arms without "
                 "LoRA", fontsize=10)
    return fig


def _shared_legend(fig: Figure, axes: Sequence[Any]) -> None:
    labels: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            labels.setdefault(label, handle)
    if labels:
        fig.legend(list(labels.values()), list(labels), loc="outside lower center", ncols=min(len(labels), 4),
                   fontsize=7)


def _params_figure(table: pd.DataFrame, colors: Mapping[str, str]) -> Figure | None:
    """Metrics vs trainable parameters (log axis), one point per row with its CI, colour per arm."""
    points = _collapse(table)
    points = points[points["trainable_params"] > 0]  # a frozen model (0 trainable) has no place on a log axis
    params = sorted(set(points["trainable_params"]))
    if len(params) < 2:
        return None
    metrics = _metrics_to_plot(table)
    eps = _eps_text(table)
    fig, axes = new_figure(3.6 * len(metrics), 3.8, ncols=len(metrics))
    for ax, metric in zip(axes, metrics):
        for arm, rows in points.groupby("arm", sort=True):
            rows = rows.sort_values("trainable_params", kind="mergesort")
            if rows[metric].isna().all():
                continue
            ax.errorbar(rows["trainable_params"].to_numpy(float), 100 * rows[metric].to_numpy(float),
                        yerr=_err(rows, metric), fmt="o", capsize=3, color=colors[arm], label=arm)
        ax.set_xscale("log")
        ax.set_xlim(params[0] / 2, params[-1] * 2)
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel(_metric_axis_label(metric, eps), fontsize=8)
        ax.grid(alpha=0.3)
    _shared_legend(fig, axes)
    fig.suptitle("Metrics vs trainable parameters (95% CI), colour per arm", fontsize=10)
    return fig


def _targets_figure(table: pd.DataFrame) -> Figure | None:
    """Grouped bars per LoRA target set (x, fewest trainable parameters first), one bar per rank, 95% CI."""
    points = _collapse(table)
    lora = points[_is_lora(points) & (points["targets"] != "")]
    if lora["targets"].nunique() < 2:
        return None
    order = lora.groupby("targets")["trainable_params"].min().reset_index()
    order = order.sort_values(["trainable_params", "targets"], kind="mergesort", na_position="last")
    target_sets = list(order["targets"])
    ranks = sorted(set(lora["rank"]))
    rank_colors = {r: f"C{i % 10}" for i, r in enumerate(ranks)}
    metrics = _metrics_to_plot(table)
    eps = _eps_text(table)
    slots = max(len(g) for _, g in lora.groupby("targets"))
    width = 0.8 / slots
    fig, axes = new_figure(max(3.6, 0.9 + 0.5 * len(target_sets) * slots ** 0.5) * len(metrics), 4.0,
                            ncols=len(metrics))
    for ax, metric in zip(axes, metrics):
        for i, targets in enumerate(target_sets):
            rows = lora[lora["targets"] == targets].sort_values(["rank", "alpha", "experiment"], kind="mergesort")
            for j, row in enumerate(rows.itertuples()):
                ax.bar(i - 0.4 + width * (j + 0.5), 100 * getattr(row, metric), width,
                       yerr=_err(rows.iloc[[j]], metric), capsize=2, color=rank_colors[row.rank],
                       label=f"rank {row.rank:g}")
        arms = [", ".join(sorted(set(lora.loc[lora["targets"] == t, "arm"]))) for t in target_sets]
        ax.set_xticks(range(len(target_sets)), [f"{t}\n({a})" for t, a in zip(target_sets, arms)], fontsize=7)
        ax.set_ylabel(_metric_axis_label(metric, eps), fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    _shared_legend(fig, axes)
    fig.suptitle("Metrics per LoRA target set (95% CI), one bar per rank", fontsize=10)
    return fig


def _pareto_figure(table: pd.DataFrame, colors: Mapping[str, str]) -> Figure | None:
    """Clean (x) vs PGD robust accuracy (y) with CIs on both; the front highlighted and joined by a step line."""
    points = _collapse(table)
    points = points[points["clean_acc"].notna() & points["pgd_robust_acc"].notna()]
    if len(points) < 2:
        return None
    fig, (ax,) = new_figure(7.5, 5.2)
    for row_index, row in points.iterrows():
        one = points.loc[[row_index]]
        front = bool(row["pareto"])
        ax.errorbar(100 * row["clean_acc"], 100 * row["pgd_robust_acc"], xerr=_err(one, "clean_acc"),
                    yerr=_err(one, "pgd_robust_acc"), fmt="o", capsize=2, color=colors[row["arm"]],
                    markersize=8 if front else 5, markeredgecolor="black" if front else colors[row["arm"]],
                    alpha=1.0 if front else 0.45, zorder=3 if front else 2)
        # front labels above right, the others below right: a dominated point often sits level with a front one
        ax.annotate(_point_label(row), (100 * row["clean_acc"], 100 * row["pgd_robust_acc"]),
                    xytext=(4, 4) if front else (4, -10), textcoords="offset points", fontsize=7,
                    fontweight="bold" if front else "normal")
    front = points[points["pareto"]].sort_values(["clean_acc", "pgd_robust_acc"], ascending=[True, False])
    ax.step(100 * front["clean_acc"], 100 * front["pgd_robust_acc"], where="pre", color="black", linewidth=1,
            zorder=1, label="Pareto front")
    for arm in sorted(set(points["arm"])):
        ax.plot([], [], "o", color=colors[arm], label=arm)  # legend entries: one per arm
    ax.set_xlabel(f"{METRICS['clean_acc']} (%)")
    ax.set_ylabel(f"{METRICS['pgd_robust_acc']} at ε = {_eps_text(table)} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title("Accuracy vs robustness (95% CI on both); bold, edged and joined: the Pareto front", fontsize=10)
    return fig


def write_sweep_figures(table: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """The sweep's figures as deterministic PNGs under `out_dir`; a figure with nothing to show is not written.

    Keys (files): rank (metrics_vs_rank.png), params, targets, pareto; only the written ones are returned.
    """
    out_dir = Path(out_dir)
    colors = arm_colors(sorted(set(table["arm"])))
    figures: dict[str, Path] = {}
    for key, fig in (("rank", _rank_figure(table, colors)), ("params", _params_figure(table, colors)),
                     ("targets", _targets_figure(table)), ("pareto", _pareto_figure(table, colors))):
        if fig is not None:
            figures[key] = save_figure(fig, out_dir / FIGURE_FILES[key])
    return figures


# ----------------------------------------------------------------------------- markdown

def _interval(row: pd.Series, metric: str) -> str:
    """'value [lo, hi]' in % with one decimal; the value alone when the interval is missing; '—' for NaN."""
    value, lo, hi = row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"]
    if not np.isfinite(value):
        return MISSING
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return format_pct(value)
    return f"{format_pct(value)} [{format_pct(lo)}, {format_pct(hi)}]"


def _params_text(value: float) -> str:
    return MISSING if not np.isfinite(value) else f"{int(value):,}"


def _code(text: str) -> str:
    return f"`{text}`" if text else MISSING


def _fenced(text: str) -> str:
    """`text` in a fenced block whose fence is longer than any backtick run inside it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text.rstrip()}\n{fence}"


def _swept_values(swept: Sequence[str]) -> dict[str, list[str]]:
    """Each swept key with its values, numerically sorted when they are all numbers."""
    values: dict[str, list[str]] = {}
    for text in swept:
        for key, value in _assignments(text):
            values.setdefault(key, [])
            if value not in values[key]:
                values[key].append(value)
    for key, vals in values.items():
        try:
            values[key] = sorted(vals, key=float)
        except ValueError:
            values[key] = sorted(vals)
    return values


def _summary(table: pd.DataFrame, rest: pd.DataFrame, metrics: Sequence[str]) -> str:
    done = list(dict.fromkeys(table["experiment"]))
    counts = {s: int((rest["status"] == s).sum()) for s in ("failed", "queued", "running")}
    total = len(done) + sum(counts.values())
    text = [f"{total} experiment{'s' if total != 1 else ''}: {len(done)} succeeded, {counts['failed']} failed, "
            f"{counts['queued']} still queued, {counts['running']} running"
            + (" (see Failed experiments)." if counts["failed"] else ".")]
    swept = _swept_values(list(table["swept"]) + list(rest["swept"]))
    text.append("Swept: " + "; ".join(f"{k} ∈ {{{', '.join(v)}}}" for k, v in swept.items()) + "."
                if swept else "No swept parameter is recorded.")
    eps = _eps_values(table)
    if len(eps) == 1:
        text.append(f"Robust metrics (PGD, FGSM, AutoAttack) at ε = {format_eps(eps[0] / 255)} (L∞).")
    elif eps:
        text.append("**ε differs between experiments (" + ", ".join(format_eps(e / 255) for e in eps) + "): their "
                    "robust metrics are not comparable.**")
    if len(table):
        n_points = len(_collapse(table))
        text.append(f"{len(table)} rows (experiment × arm, {n_points} distinct points), "
                    f"{int(_collapse(table)['pareto'].sum())} on the accuracy-robustness Pareto front.")
    absent = [METRICS[m] for m in METRICS if m not in metrics]
    if absent:
        text.append(f"Not evaluated in any experiment: {', '.join(absent)}.")
    return " ".join(text)


def _main_table(table: pd.DataFrame, metrics: Sequence[str]) -> str:
    header = ["Experiment", "Swept", "Arm", "Targets", "Rank", "Trainable params", "Seeds"]
    header += [f"{METRICS[m]} (%) [95% CI]" for m in metrics] + ["Pareto"]
    rows = []
    for _, r in table.iterrows():
        front = FRONT_MARK if r["pareto"] else (MISSING if not np.isfinite(r["clean_acc"] + r["pgd_robust_acc"])
                                                 else "")
        rows.append([r["experiment"], r["swept"] or MISSING, r["arm"] or MISSING, r["targets"] or MISSING,
                     _number(r["rank"]), _params_text(r["trainable_params"]), _number(r["n_seeds"])]
                    + [_interval(r, m) for m in metrics] + [front])
    return _md_table(header, rows)


def _front_section(table: pd.DataFrame) -> str:
    points = _collapse(table)
    front = points[points["pareto"]].sort_values(["clean_acc", "pgd_robust_acc"], ascending=[False, True])
    if front.empty:
        return "## Pareto front\n\nNo row has both clean and PGD robust accuracy."
    items = []
    for _, r in front.iterrows():
        what = ", ".join(p for p in [f"targets {r['targets']}" if r["targets"] else "",
                                     f"rank {r['rank']:g}" if np.isfinite(r["rank"]) else ""] if p)
        if len(r["experiments"]) > 1:  # an arm the sweep did not change
            where = "experiments " + ", ".join(f"`{e}`" for e in r["experiments"])
        else:
            where = f"experiment `{r['experiment']}`" + (f" ({r['swept']})" if r["swept"] else "")
        items.append(f"- **{r['arm'] or MISSING}**{f' ({what})' if what else ''}, {where}: {METRICS['clean_acc']} "
                     f"{_interval(r, 'clean_acc')} %, {METRICS['pgd_robust_acc']} {_interval(r, 'pgd_robust_acc')} %")
    return "\n\n".join([
        "## Pareto front",
        "Clean accuracy vs PGD robust accuracy, both maximised, on the point estimates: no other row is at least as "
        "good on both and better on one. Highest clean accuracy first; an arm identical in several experiments is "
        "one point.",
        "\n".join(items)])


FIGURE_CAPTIONS = {
    "rank": "Metrics vs LoRA rank, one line per arm · target set (95% CI); dashed line and band: arms without LoRA",
    "params": "Metrics vs trainable parameters (log axis, 95% CI), colour per arm",
    "targets": "Metrics per LoRA target set, one bar per rank (95% CI)",
    "pareto": "Clean vs PGD robust accuracy (95% CI on both); the Pareto front highlighted and joined",
}


def _figures_section(figures: Mapping[str, str | Path]) -> str:
    parts = ["## Figures"]
    for key, path in figures.items():
        caption = FIGURE_CAPTIONS.get(key, key)
        parts.append(f"![{caption}](figures/{Path(path).name})\n\n*{caption}*")
    if len(parts) == 1:
        parts.append("None: no figure has anything to show (one rank, one target set, fewer than two points).")
    return "\n\n".join(parts)


def _failed_section(rest: pd.DataFrame) -> str:
    failed = rest[rest["status"] == "failed"]
    parts = ["## Failed experiments"]
    if failed.empty:
        parts.append("none")
    for _, r in failed.iterrows():
        rev = f" (rev {r['rev'][:7]})" if r["rev"] else ""
        swept = f", {r['swept']}" if r["swept"] else ""
        parts.append(f"### `{r['experiment']}`{rev}{swept}")
        parts.append(_fenced(r["log_tail"]) if r["log_tail"].strip() else "No log tail was recorded.")
    return "\n\n".join(parts)


def _pending_section(rest: pd.DataFrame) -> str:
    pending = rest[rest["status"].isin(["running", "queued"])]
    items = [f"- `{r['experiment']}`: {r['status']}" + (f", {r['swept']}" if r["swept"] else "")
             for _, r in pending.iterrows()]
    return "## Queued or running experiments\n\n" + ("\n".join(items) if items else "none")


HOW_TO_READ = (
    "## How to read\n\n"
    "Each value is a mean over training seeds, in %. Intervals are 95 % hierarchical-bootstrap intervals over "
    "training seeds and images, as computed by each experiment's own report (val accuracy: no interval when the "
    "experiment reported none). Differences between experiments whose intervals overlap are not established. The "
    "Pareto front is taken on point estimates, so a row just off it is not shown to be worse. Arms a sweep did not "
    "change repeat in every experiment (DVC reuses their results).")


def render_sweep(table: pd.DataFrame, failed: pd.DataFrame, figures: Mapping[str, str | Path], *,
                 title: str = "Sweep report") -> str:
    """The sweep page as markdown: summary, table, Pareto front, figures, every failed/queued/running experiment.

    `table`: sweep_table; `failed`: unsuccessful_experiments (success rows in it are ignored); `figures`: key -> PNG
    path, linked as figures/<file name>.
    """
    rest = _normalised(failed.reindex(columns=RECORD_COLUMNS))
    rest = rest[rest["status"] != "success"]
    metrics = [m for m in METRICS if table[m].notna().any()]
    parts = [f"# {title}", _summary(table, rest, metrics)]
    parts.append(_main_table(table, metrics) if len(table) else "No experiment succeeded.")
    parts += [_front_section(table), HOW_TO_READ, _figures_section(figures), _failed_section(rest),
              _pending_section(rest)]
    return "\n\n".join(p.strip("\n") for p in parts) + "\n"


def write_sweep(records: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """Validate `records` and write out_dir/sweep.csv, out_dir/sweep.md and out_dir/figures/*.png atomically.

    PNGs left in figures/ by an earlier run and not written now are removed. Returns {path relative to out_dir:
    path}: 'sweep.csv', 'sweep.md' and 'figures/<name>.png' for each figure written.
    """
    out_dir = Path(out_dir)
    table = sweep_table(records)
    rest = unsuccessful_experiments(records)
    figures = write_sweep_figures(table, out_dir / "figures")
    kept = {p.name for p in figures.values()}
    for stale in sorted((out_dir / "figures").glob("*.png")):
        if stale.name not in kept:
            stale.unlink()
    csv, markdown = out_dir / "sweep.csv", out_dir / "sweep.md"
    with atomic_path(csv, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    write_text(markdown, render_sweep(table, rest, figures))
    return {"sweep.csv": csv, "sweep.md": markdown} | {f"figures/{p.name}": p for p in figures.values()}
