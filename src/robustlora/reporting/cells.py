"""What the study report's sections and figures share: an estimate's cell, a row lookup, figure links, attack order.

Built on robustlora.formatting (shares in % with one decimal, ε in [0,1] pixel units as k/255, '—' for a missing
number); nothing here computes a statistic. A row is one line of robustlora.analysis's long tables (arm, attack, eps,
metric, value, ci_low, ci_high, ...).
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import pandas as pd

from robustlora.analysis import ATTACK_ORDER
from robustlora.formatting import MISSING, eps_key, format_eps, interval_cell

__all__ = ["estimate_cell", "find_row", "attacks_in_order", "figure_link", "transfer_figure_key", "step_text"]


def estimate_cell(row: pd.Series | None) -> str:
    """An arm's estimate: 'mean over seeds [hierarchical CI] (sd 1.2)' in %, '(1 seed)' when there is one seed."""
    if row is None or not math.isfinite(row["value"]):
        return MISSING
    spread = f"sd {100 * row['seed_std']:.1f}" if row["n_seeds"] > 1 else "1 seed"
    return f"{interval_cell(row['value'], row['ci_low'], row['ci_high'])} ({spread})"


def find_row(table: pd.DataFrame, arm: str, attack: str, eps: float, metric: str) -> pd.Series | None:
    """The row of a long table for one arm, attack, ε (in [0,1] pixels) and metric; None when there is none."""
    sel = table[(table["arm"] == arm) & (table["attack"] == attack) & (table["eps"] == eps_key(eps))
                & (table["metric"] == metric)]
    return None if sel.empty else sel.iloc[0]


def attacks_in_order(attacks: Iterable[str]) -> list[str]:
    """The attacks present, each once: FGSM and PGD first (analysis.ATTACK_ORDER), then the others by name."""
    present = set(attacks)
    return [a for a in ATTACK_ORDER if a in present] + sorted(present - set(ATTACK_ORDER))


def figure_link(figures: Mapping[str, str], key: str, caption: str) -> str:
    """A figure as markdown image plus italic caption; '' when the figure was not drawn (no dangling link)."""
    path = figures.get(key)
    return f"![{caption}]({path})\n\n*{caption}*" if path else ""


def transfer_figure_key(eps: float) -> str:
    """The figure key (robustlora.reporting.figures) of the transfer matrix at ε in [0,1] pixels: 'transfer_8/255'."""
    return f"transfer_{format_eps(eps)}"


def step_text(step: float) -> str:
    """A PGD step size in [0,1] pixels as k/255 with up to three significant digits (0.5/255: k need not be whole)."""
    return f"{255 * step:.3g}/255"
