"""The sweep report's page: every DVC experiment of a sweep (a LoRA rank sweep, a sweep over target sets) side by side.

``write_sweep`` turns the records (robustlora.reporting.sweep_records) into out_dir/sweep.csv (the sweep table with its
Pareto front, robustlora.reporting.sweep_table), the figures (robustlora.reporting.sweep_figures) and sweep.md, which
``render_sweep`` writes: a summary, the table, the front, the figures and every failed, queued or running experiment
with the tail of its log. Shares in [0,1] are shown in % with their 95 % intervals (robustlora.formatting); ε as k/255.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from robustlora.formatting import MISSING, format_eps, interval_cell, md_table
from robustlora.io import atomic_path, write_text
from robustlora.reporting.sweep_figures import write_sweep_figures
from robustlora.reporting.sweep_records import METRICS, RECORD_COLUMNS, normalised_records, swept_assignments
from robustlora.reporting.sweep_table import distinct_points, eps_values, sweep_table, unsuccessful_experiments

__all__ = ["FIGURE_CAPTIONS", "render_sweep", "write_sweep"]

FRONT_MARK = "✓"


def _metric_cell(row: pd.Series, metric: str) -> str:
    """'value [lo, hi]' of one metric of a table row, in %."""
    return interval_cell(row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"])


def _number(value: float) -> str:
    return MISSING if not np.isfinite(value) else f"{value:g}"


def _params_text(value: float) -> str:
    return MISSING if not np.isfinite(value) else f"{int(value):,}"


def _fenced(text: str) -> str:
    """`text` in a fenced block whose fence is longer than any backtick run inside it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text.rstrip()}\n{fence}"


def _swept_values(swept: Sequence[str]) -> dict[str, list[str]]:
    """Each swept key with its values, numerically sorted when they are all numbers."""
    values: dict[str, list[str]] = {}
    for text in swept:
        for key, value in swept_assignments(text):
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
    eps = eps_values(table)
    if len(eps) == 1:
        text.append(f"Robust metrics (PGD, FGSM, AutoAttack) at ε = {format_eps(eps[0] / 255)} (L∞).")
    elif eps:
        text.append("**ε differs between experiments (" + ", ".join(format_eps(e / 255) for e in eps) + "): their "
                    "robust metrics are not comparable.**")
    if len(table):
        points = distinct_points(table)
        text.append(f"{len(table)} rows (experiment × arm, {len(points)} distinct points), "
                    f"{int(points['pareto'].sum())} on the accuracy-robustness Pareto front.")
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
                    + [_metric_cell(r, m) for m in metrics] + [front])
    return md_table(header, rows)


def _front_section(table: pd.DataFrame) -> str:
    points = distinct_points(table)
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
        items.append(f"- **{r['arm'] or MISSING}**{f' ({what})' if what else ''}, {where}: "
                     f"{METRICS['clean_acc']} {_metric_cell(r, 'clean_acc')} %, "
                     f"{METRICS['pgd_robust_acc']} {_metric_cell(r, 'pgd_robust_acc')} %")
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
    rest = normalised_records(failed.reindex(columns=RECORD_COLUMNS))
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
