"""The sweep report's figures: metrics against LoRA rank, trainable parameters and target set, and the Pareto front.

Drawn from a sweep table (robustlora.reporting.sweep_table) after merging the rows an unchanged arm repeats in every
experiment (``distinct_points``), with the conventions of robustlora.reporting.figures (one colour per arm,
deterministic PNG bytes). Shares in [0,1] are drawn in %, with their 95 % intervals as error bars; ε is named as k/255.
Each figure function takes a sweep table and ``colors`` (arm -> colour, reporting.figures.arm_colors) and returns
None when it has nothing to show (one rank, one target set, fewer than two points).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from robustlora.formatting import format_eps
from robustlora.reporting.figures import arm_colors, new_figure, save_figure
from robustlora.reporting.sweep_records import METRICS, swept_assignments
from robustlora.reporting.sweep_table import distinct_points, eps_values

__all__ = ["FIGURE_FILES", "rank_figure", "params_figure", "targets_figure", "pareto_figure", "write_sweep_figures"]

FIGURE_METRICS = ("clean_acc", "pgd_robust_acc", "pgd_asr", "autoattack_robust_acc")  # the last only when it ran
ROBUST_METRICS = ("pgd_robust_acc", "pgd_asr", "fgsm_asr", "autoattack_robust_acc")  # measured at ε (eps_255)
FIGURE_FILES = {"rank": "metrics_vs_rank.png", "params": "metrics_vs_trainable_params.png",
                "targets": "metrics_per_target_set.png", "pareto": "pareto.png"}
MARKERS = "osD^vP*X"


def _short_swept(swept: str) -> str:
    """The swept values with each key cut to its last part: 'variants.lora_fc.targets=layer4' -> 'targets=layer4'."""
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" if v else k for k, v in swept_assignments(swept))


def _point_label(row: pd.Series) -> str:
    """arm + swept value; an arm the sweep did not change (identical in several experiments) by its name only."""
    if len(row["experiments"]) > 1:
        return str(row["arm"])
    detail = _short_swept(row["swept"]) or row["experiment"]
    return f"{row['arm']} · {detail}"


def _eps_axis_text(table: pd.DataFrame) -> str:
    """The ε of an axis label: '8/255', 'several ε' or 'ε unknown'."""
    eps = eps_values(table)
    return format_eps(eps[0] / 255) if len(eps) == 1 else "several ε" if eps else "ε unknown"


def _err(rows: pd.DataFrame, metric: str) -> np.ndarray:
    """Error-bar lengths (2, n) in % from m_lo, m_hi; 0 where an interval is missing."""
    v, lo, hi = (rows[c].to_numpy(float) for c in (metric, f"{metric}_lo", f"{metric}_hi"))
    return np.nan_to_num(100 * np.vstack([v - lo, hi - v]), nan=0.0).clip(min=0)


def _metrics_to_plot(table: pd.DataFrame) -> list[str]:
    return [m for m in FIGURE_METRICS if m != "autoattack_robust_acc" or table[m].notna().any()]


def _metric_axis_label(metric: str, eps: str) -> str:
    return f"{METRICS[metric]} (%)" + (f", ε = {eps}" if metric in ROBUST_METRICS else "")


def _is_lora(table: pd.DataFrame) -> pd.Series:
    return table["rank"].notna()


def rank_figure(table: pd.DataFrame, colors: Mapping[str, str]) -> Figure | None:
    """Metrics vs LoRA rank (log2 axis): one line per (arm, targets), arms without LoRA as reference bands."""
    points = distinct_points(table)
    lora, others = points[_is_lora(points)], points[~_is_lora(points)]
    ranks = sorted(set(lora["rank"]))
    if len(ranks) < 2:
        return None
    metrics = _metrics_to_plot(table)
    eps = _eps_axis_text(table)
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


def params_figure(table: pd.DataFrame, colors: Mapping[str, str]) -> Figure | None:
    """Metrics vs trainable parameters (log axis), one point per row with its CI, colour per arm."""
    points = distinct_points(table)
    points = points[points["trainable_params"] > 0]  # a frozen model (0 trainable) has no place on a log axis
    params = sorted(set(points["trainable_params"]))
    if len(params) < 2:
        return None
    metrics = _metrics_to_plot(table)
    eps = _eps_axis_text(table)
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


def targets_figure(table: pd.DataFrame) -> Figure | None:
    """Grouped bars per LoRA target set (x, fewest trainable parameters first), one bar per rank, 95% CI."""
    points = distinct_points(table)
    lora = points[_is_lora(points) & (points["targets"] != "")]
    if lora["targets"].nunique() < 2:
        return None
    order = lora.groupby("targets")["trainable_params"].min().reset_index()
    order = order.sort_values(["trainable_params", "targets"], kind="mergesort", na_position="last")
    target_sets = list(order["targets"])
    ranks = sorted(set(lora["rank"]))
    rank_colors = {r: f"C{i % 10}" for i, r in enumerate(ranks)}
    metrics = _metrics_to_plot(table)
    eps = _eps_axis_text(table)
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


def pareto_figure(table: pd.DataFrame, colors: Mapping[str, str]) -> Figure | None:
    """Clean (x) vs PGD robust accuracy (y) with CIs on both; the front highlighted and joined by a step line."""
    points = distinct_points(table)
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
    ax.set_ylabel(f"{METRICS['pgd_robust_acc']} at ε = {_eps_axis_text(table)} (%)")
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
    for key, fig in (("rank", rank_figure(table, colors)), ("params", params_figure(table, colors)),
                     ("targets", targets_figure(table)), ("pareto", pareto_figure(table, colors))):
        if fig is not None:
            figures[key] = save_figure(fig, out_dir / FIGURE_FILES[key])
    return figures
