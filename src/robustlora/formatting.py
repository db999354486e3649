"""How numbers are written, in one place: ε, shares, differences, p-values, intervals and markdown tables.

Conventions: ε is in [0,1] pixel units and is written k/255 when k is whole; shares are written in % with one
decimal (no % sign: the column header says it); differences of shares in signed percentage points; a missing
number is '—'.
"""

from __future__ import annotations

import math
from typing import Sequence

MISSING = "—"
EPS_DECIMALS = 9  # ε keys are rounded so 8/255 from params and from a parquet file compare equal


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def eps_key(eps: float) -> float:
    """ε in [0,1] pixels rounded for exact matching."""
    return round(float(eps), EPS_DECIMALS)


def format_eps(eps: float) -> str:
    """ε in [0,1] pixel units as k/255 when k is whole (8/255 -> '8/255'), else as a decimal (0.5 -> '0.5')."""
    k = float(eps) * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{float(eps):.4g}"


def eps_text(eps: float) -> str:
    """ε for tables: k/255, or 'unbounded' at 1 (the whole pixel range)."""
    return "unbounded" if eps_key(eps) >= 1 else format_eps(eps)


def eps_label(eps: float) -> str:
    """Name ε (in [0, 1] pixel units) for metric keys: whole multiples of 1/255 as 'eps_8', else 'eps_0.5'."""
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0 in [0, 1] pixel units, got {eps}")
    k = round(eps * 255)
    if abs(eps * 255 - k) < 1e-6:
        return f"eps_{k}"
    # six decimals, trailing zeros trimmed (1/510 -> 0.001961); tiny ε falls back to scientific notation
    text = f"{eps:.6f}".rstrip("0").rstrip(".")
    return f"eps_{text if text != '0' else f'{eps:.6g}'}"


def format_pct(value: float | None) -> str:
    """A share in [0,1] as a percentage with one decimal, without the % sign."""
    return f"{100 * value:.1f}" if _finite(value) else MISSING


def format_points(value: float | None) -> str:
    """A difference of shares as signed percentage points with one decimal."""
    return f"{100 * value:+.1f}" if _finite(value) else MISSING


def format_p(p: float | None) -> str:
    """A p-value: three decimals, '< 0.001' below that, '—' when there is none."""
    if not _finite(p):
        return MISSING
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def p_phrase(name: str, p: float | None) -> str:
    """'p = 0.031', 'p < 0.001' or 'p —' for running text."""
    text = format_p(p)
    return f"{name} {text}" if text.startswith("<") or text == MISSING else f"{name} = {text}"


def interval_cell(value: float | None, lo: float | None, hi: float | None) -> str:
    """A share with its interval, '89.5 [87.1, 91.6]' (%); the value alone when the interval is missing."""
    if not _finite(value):
        return MISSING
    if not (_finite(lo) and _finite(hi)):
        return format_pct(value)
    return f"{format_pct(value)} [{format_pct(lo)}, {format_pct(hi)}]"


def difference_cell(value: float | None, lo: float | None, hi: float | None) -> str:
    """A difference of shares with its interval, '+12.3 [+8.0, +16.5]' (percentage points)."""
    if not _finite(value):
        return MISSING
    return f"{format_points(value)} [{format_points(lo)}, {format_points(hi)}]"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table; '|' inside a cell is escaped."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(header), line(["---"] * len(header))] + [line(r) for r in rows])
