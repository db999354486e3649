"""The report's figures as deterministic PNGs: identical inputs give identical bytes.

Drawn with matplotlib's object API (Figure + FigureCanvasAgg), never pyplot, so a notebook user's backend is left
alone; saved without the 'Software' stamp. An arm keeps its colour in every figure. Inputs are the tables of
robustlora.analysis (shares in [0,1], shown in %); ε in [0,1] pixel units, shown as k/255 (robustlora.formatting).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from robustlora.analysis import ATTACK_NAMES
from robustlora.formatting import EPS_DECIMALS, eps_key, format_eps
from robustlora.io import atomic_path
from robustlora.reporting.cells import attacks_in_order, transfer_figure_key

__all__ = ["PAPER_FIGURES", "arm_colors", "new_figure", "save_figure", "eps_curve_figure", "certainty_figure",
           "training_figure", "forest_figure", "write_figures", "attacks_figure", "queries_figure", "transfer_figure",
           "write_crosscheck_figures"]

DPI = 110
# the paper's figure numbers, so readers can map our figures onto the publication
PAPER_FIGURES = {("certainty", "fgsm"): "Fig. 3", ("certainty", "pgd"): "Fig. 4",
                 ("success", "fgsm"): "Fig. 5", ("success", "pgd"): "Fig. 6"}
METRIC_LABELS = {"attack_success_rate": "attack success rate (%)", "robust_accuracy": "robust accuracy (%)"}


def arm_colors(arms: Sequence[str]) -> dict[str, str]:
    """One matplotlib colour per arm, by position."""
    return {arm: f"C{i % 10}" for i, arm in enumerate(arms)}


def new_figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, list[Any]]:
    """An empty figure of `width` x `height` inches with `ncols` axes side by side, drawn off pyplot."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # object API: never touches pyplot or the user's backend
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as PNG atomically; no 'Software' stamp, so bytes depend on the drawing only."""
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    return path


def _rows(table: pd.DataFrame, arm: str, attack: str, metric: str) -> pd.DataFrame:
    sel = table[(table["arm"] == arm) & (table["attack"] == attack) & (table["metric"] == metric)]
    return sel.sort_values("eps")


def eps_curve_figure(arm_table: pd.DataFrame, attack: str, metric: str, colors: Mapping[str, str]) -> Figure:
    """`metric` vs ε for `attack`: one line per arm (mean over seeds), its hierarchical CI as a band."""
    fig, (ax,) = new_figure(7.5, 4.2)
    eps = sorted(set(arm_table.loc[arm_table["attack"] == attack, "eps"]))
    x = {e: i for i, e in enumerate(eps)}  # evenly spaced: 1/255 and 16/255 would crowd a linear axis
    for arm, color in colors.items():
        rows = _rows(arm_table, arm, attack, metric)
        if rows.empty:
            continue
        pos = [x[e] for e in rows["eps"]]
        ax.plot(pos, 100 * rows["value"], marker="o", color=color, label=arm)
        ax.fill_between(pos, 100 * rows["ci_low"], 100 * rows["ci_high"], color=color, alpha=0.2, linewidth=0)
    ax.set_xticks(range(len(eps)), [format_eps(e) for e in eps])
    ax.set_xlabel("ε (L∞, evenly spaced)")
    ax.set_ylim(0, 105)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.grid(alpha=0.3)
    name = ATTACK_NAMES.get(attack, attack)
    paper = PAPER_FIGURES.get(("success", attack)) if metric == "attack_success_rate" else None
    ax.set_title(f"{paper + ' — ' if paper else ''}{name}: {METRIC_LABELS.get(metric, metric)}, mean over seeds "
                 "(95% CI)", fontsize=10)
    fig.legend(loc="outside lower center", ncols=min(len(colors), 5), fontsize=8)
    return fig


def certainty_figure(arm_table: pd.DataFrame, attack: str, eps: float, colors: Mapping[str, str]) -> Figure:
    """Mean max-softmax probability before and after `attack` at ε, per arm, with CI error bars."""
    fig, (ax,) = new_figure(7.5, 4.2)
    at = arm_table[(arm_table["attack"] == attack) & (arm_table["eps"] == eps_key(eps))]
    arms = [a for a in colors if (at["arm"] == a).any()]
    x = np.arange(len(arms))
    for k, (metric, label, alpha) in enumerate((("certainty_clean", "before", 0.45), ("certainty_adv", "after", 1.0))):
        rows = [at[(at["arm"] == a) & (at["metric"] == metric)].iloc[0] for a in arms]
        value = np.array([100 * r["value"] for r in rows])
        err = np.array([[100 * (r["value"] - r["ci_low"]), 100 * (r["ci_high"] - r["value"])] for r in rows]).T
        ax.bar(x + (k - 0.5) * 0.4, value, 0.4, yerr=np.nan_to_num(err).clip(min=0).reshape(2, -1), capsize=3,
               color=[colors[a] for a in arms], alpha=alpha, edgecolor="black", linewidth=0.5,
               label=f"{label} the attack")
    ax.set_xticks(x, arms)
    ax.set_ylim(0, 105)
    ax.set_ylabel("certainty: mean max-softmax probability (%)")
    paper = PAPER_FIGURES.get(("certainty", attack))
    ax.set_title(f"{paper + ' — ' if paper else ''}certainty before (light) / after (dark) "
                 f"{ATTACK_NAMES.get(attack, attack)}, ε = {format_eps(eps)} (95% CI)", fontsize=10)
    return fig


def training_figure(histories: Mapping[str, Mapping[int, pd.DataFrame]], colors: Mapping[str, str]) -> Figure:
    """Holdout accuracy and train loss per epoch: one thin line per seed, one colour per arm."""
    fig, axes = new_figure(10, 4, ncols=2)
    panels = (("holdout_accuracy", "holdout accuracy (%)", 100.0), ("train_loss", "train loss", 1.0))
    for ax, (column, ylabel, scale) in zip(axes, panels):
        for arm, color in colors.items():
            for i, (seed, history) in enumerate(sorted(histories.get(arm, {}).items())):
                if history.empty:
                    continue
                ax.plot(history["epoch"], scale * history[column], color=color, linewidth=0.9, alpha=0.8,
                        label=arm if i == 0 else None)
                best = history.loc[history["holdout_accuracy"].idxmax()]  # the epoch whose weights are kept
                ax.plot([best["epoch"]], [scale * best[column]], marker="o", markersize=3, color=color)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5), fontsize=8)
    fig.suptitle("Training curves (one line per seed; dot: best holdout epoch, the weights kept)", fontsize=10)
    return fig


def forest_figure(comparisons: pd.DataFrame, eps: float, baseline: str) -> Figure:
    """Paired differences vs the baseline at ε (percentage points, 95% CI); filled marks pass Holm."""
    rows = comparisons[comparisons["eps"] == eps_key(eps)].reset_index(drop=True)
    fig, (ax,) = new_figure(7.5, 1.2 + 0.32 * max(len(rows), 1))
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows.itertuples()):
        decided = r.verdict in ("higher", "lower")
        ax.errorbar(100 * r.diff, yi, xerr=[[100 * (r.diff - r.ci_low)], [100 * (r.ci_high - r.diff)]],
                    fmt="o", color="black", mfc="black" if decided else "white", capsize=3)
    labels = [f"{r.arm} · {ATTACK_NAMES.get(r.attack, r.attack)} · {r.metric.replace('_', ' ')}"
              for r in rows.itertuples()]
    ax.set_yticks(y, labels, fontsize=8)
    ax.axvline(0, color="grey", linewidth=1)
    ax.set_xlabel(f"arm − {baseline} (percentage points)")
    ax.set_title(f"Paired differences vs {baseline} at ε = {format_eps(eps)} (95% CI; filled: Holm p < α)",
                 fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return fig


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def write_figures(out_dir: str | Path, *, arm_table: pd.DataFrame, comparisons: pd.DataFrame,
                  histories: Mapping[str, Mapping[int, pd.DataFrame]], arms: Sequence[str], report_eps: float,
                  baseline: str | None) -> dict[str, Path]:
    """Every figure of the report under `out_dir`; returns {key: path}, keys like 'success_pgd', 'training'."""
    out_dir = Path(out_dir)
    colors = arm_colors(arms)
    figures: dict[str, Path] = {}
    if any(len(h) for h in histories.values()):
        figures["training"] = save_figure(training_figure(histories, colors), out_dir / "training_curves.png")
    for attack in attacks_in_order(arm_table["attack"]):
        name = _safe(attack)
        figures[f"success_{attack}"] = save_figure(
            eps_curve_figure(arm_table, attack, "attack_success_rate", colors), out_dir / f"success_rate_{name}.png")
        figures[f"robust_{attack}"] = save_figure(
            eps_curve_figure(arm_table, attack, "robust_accuracy", colors), out_dir / f"robust_accuracy_{name}.png")
        if ((arm_table["attack"] == attack) & (arm_table["eps"] == eps_key(report_eps))).any():
            figures[f"certainty_{attack}"] = save_figure(
                certainty_figure(arm_table, attack, report_eps, colors), out_dir / f"certainty_{name}.png")
    if baseline is not None and (comparisons["eps"] == eps_key(report_eps)).any():
        figures["forest"] = save_figure(forest_figure(comparisons, report_eps, baseline),
                                        out_dir / "paired_differences.png")
    return figures


# ----------------------------------------------------------------------------- beyond FGSM and PGD

def attacks_figure(versus: pd.DataFrame, eps: float, colors: Mapping[str, str], names: Mapping[str, str]) -> Figure:
    """Robust accuracy per attack (groups) and arm (bars) at ε, 95% CIs; PGD on each attack's images as a tick."""
    rows = versus[(versus["metric"] == "robust_accuracy") & (versus["eps"] == eps_key(eps))]
    attacks = list(dict.fromkeys(rows["attack"]))
    arms = [a for a in colors if (rows["arm"] == a).any()]
    fig, (ax,) = new_figure(7.5, 4.2)
    width = 0.8 / max(len(arms), 1)
    for j, arm in enumerate(arms):
        for i, attack in enumerate(attacks):
            r = rows[(rows["arm"] == arm) & (rows["attack"] == attack)]
            if r.empty:
                continue
            r = r.iloc[0]
            x = i - 0.4 + width * (j + 0.5)
            ax.bar(x, 100 * r["value"], width, color=colors[arm], label=arm if i == 0 else None,
                   yerr=[[100 * (r["value"] - r["ci_low"])], [100 * (r["ci_high"] - r["value"])]], capsize=2)
            ax.plot([x - width / 2, x + width / 2], [100 * r["pgd"]] * 2, color="black", linewidth=1.5)
    ax.set_xticks(range(len(attacks)), [names.get(a, a) for a in attacks], fontsize=8)
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Robust accuracy per attack at ε = {format_eps(eps)} (95% CI; black tick: PGD on the same images)",
                 fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def queries_figure(curves: pd.DataFrame, eps: float, colors: Mapping[str, str], names: Mapping[str, str]) -> Figure:
    """Success rate vs query budget per black-box attack (panels) and arm (lines) at ε, log query axis."""
    rows = curves[curves["eps"].round(EPS_DECIMALS) == eps_key(eps)]
    attacks = list(dict.fromkeys(rows["attack"]))
    fig, axes = new_figure(3.2 * max(len(attacks), 1), 3.6, ncols=max(len(attacks), 1))
    for ax, attack in zip(axes, attacks):
        for arm, g in rows[rows["attack"] == attack].groupby("arm", sort=False):
            g = g.sort_values("queries")
            ax.plot(g["queries"], 100 * g["success_rate"], marker=".", color=colors.get(arm), label=arm)
            ax.fill_between(g["queries"], 100 * g["ci_low"], 100 * g["ci_high"], color=colors.get(arm), alpha=0.15)
        ax.set_xscale("log")
        ax.set_ylim(0, 100)
        ax.set_xlabel("queries per image")
        ax.set_title(names.get(attack, attack), fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"success rate at ε = {format_eps(eps)} (%)")
    axes[0].legend(fontsize=7)
    return fig


def transfer_figure(matrix: pd.DataFrame, eps: float) -> Figure:
    """Heat map of transfer success (%): surrogate (rows) x target arm (columns) at ε; white-box cells outlined."""
    rows = matrix[matrix["eps"] == eps_key(eps)]
    surrogates, targets = list(dict.fromkeys(rows["surrogate"])), list(dict.fromkeys(rows["target"]))
    grid = np.full((len(surrogates), len(targets)), np.nan)
    for r in rows.itertuples():
        grid[surrogates.index(r.surrogate), targets.index(r.target)] = 100 * r.success_rate
    fig, (ax,) = new_figure(1.6 + 1.3 * len(targets), 1.2 + 0.6 * len(surrogates))
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i in range(len(surrogates)):
        for j in range(len(targets)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if grid[i, j] < 60 else "black",
                        fontweight="bold" if surrogates[i] == targets[j] else "normal")
    ax.set_xticks(range(len(targets)), targets, fontsize=8)
    ax.set_yticks(range(len(surrogates)), surrogates, fontsize=8)
    ax.set_xlabel("target arm (every seed)")
    ax.set_ylabel("surrogate (first seed)")
    ax.set_title(f"PGD transfer success (%) at ε = {format_eps(eps)}; bold: same arm", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def write_crosscheck_figures(out_dir: str | Path, *, versus: pd.DataFrame, curves: pd.DataFrame,
                             matrix: pd.DataFrame, arms: Sequence[str], report_eps: float,
                             names: Mapping[str, str]) -> dict[str, Path]:
    """The figures of the report's 'Beyond FGSM and PGD' section; returns {key: path}."""
    out_dir = Path(out_dir)
    colors = arm_colors(arms)
    figures: dict[str, Path] = {}
    if (versus["eps"] == eps_key(report_eps)).any():
        figures["attacks"] = save_figure(attacks_figure(versus, report_eps, colors, names),
                                         out_dir / "robust_accuracy_per_attack.png")
    if (curves["eps"].round(EPS_DECIMALS) == eps_key(report_eps)).any():
        figures["queries"] = save_figure(queries_figure(curves, report_eps, colors, names),
                                         out_dir / "success_vs_queries.png")
    for eps in sorted(set(matrix["eps"])) if len(matrix) else []:
        figures[transfer_figure_key(eps)] = save_figure(
            transfer_figure(matrix, eps), out_dir / f"transfer_{_safe(format_eps(eps))}.png")
    return figures
