"""The study's report: tables, figures and sanity checks from training metrics and the attack table.

Inputs are what the pipeline stages write: per-variant training metrics (metrics/train/<variant>.json), the tidy
attack table (columns variant, attack, eps, eps_label, metric, value, ci_low, ci_high, n; ε in [0,1] pixel units;
accuracies and success rates in [0,1]; certainties are mean probabilities) and the `attack` params section.

`build_report` writes `<out_dir>/report.md` with relative links to PNGs in `<out_dir>/figures/`, so the markdown
renders on GitHub and in the MLflow artifact view. The output is a pure function of the inputs (no timestamps unless
passed in). Figures use matplotlib's object API (Figure + FigureCanvasAgg), never pyplot, so a notebook user's
backend is left alone.

Sanity checks follow Carlini et al. 2019, "On Evaluating Adversarial Robustness": an iterative attack (PGD) must be
at least as strong as a single-step one (FGSM), success must not fall as ε grows, and at ε = 0.5 (where any image can
be turned uniform grey) an optimising attack must succeed on essentially every image.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from robustlora.io import atomic_path, write_text

REQUIRED_COLUMNS = ("variant", "attack", "eps", "metric", "value", "ci_low", "ci_high", "n")
ATTACK_ORDER = ("fgsm", "pgd")
ATTACK_NAMES = {"fgsm": "FGSM", "pgd": "PGD"}
# the paper's figure numbers, so readers can map our figures onto the publication
PAPER_FIGURES = {("certainty", "fgsm"): "Fig. 3", ("certainty", "pgd"): "Fig. 4",
                 ("success", "fgsm"): "Fig. 5", ("success", "pgd"): "Fig. 6"}
UNBOUNDED_EPS = 0.5  # every pixel can reach 0.5, so any image can be turned uniform grey
UNBOUNDED_MIN_SUCCESS = 0.99
EPS_DECIMALS = 9  # ε keys are rounded so 8/255 from two sources compares equal
DPI = 110
MISSING = "—"

CERTAINTY_METRICS = (  # (metric, column header)
    ("certainty_clean", "Before (all)"),
    ("certainty_adv", "After (all)"),
    ("certainty_clean_correct", "Before (correct)"),
    ("certainty_adv_correct", "After (correct)"),
    ("true_class_prob_clean", "True-class p before"),
    ("true_class_prob_adv", "True-class p after"),
)


# ----------------------------------------------------------------------------- sanity checks

@dataclass(frozen=True)
class Check:
    """One sanity check: `passed` is False both for a failure and for a check that could not be evaluated."""

    name: str
    passed: bool
    detail: str
    evaluated: bool = True

    @property
    def status(self) -> str:
        """'passed', 'FAILED' or 'not evaluated'."""
        if not self.evaluated:
            return "not evaluated"
        return "passed" if self.passed else "FAILED"


def sanity_checks(attack_table: pd.DataFrame, *, slack_images: float = 1.0,
                  unbounded_attacks: Sequence[str] = ("pgd",)) -> list[Check]:
    """Carlini et al. 2019 checks per variant on the attack table (ε in [0,1] pixel units).

    - PGD success >= FGSM success at every ε both attacks share;
    - success non-decreasing in ε, per attack;
    - success >= 0.99 at ε = 0.5 for each of `unbounded_attacks` ("not evaluated" when ε = 0.5 is absent);
    - clean accuracy identical across the attack rows (same images, same model).
    Tolerance: `slack_images` images, i.e. slack/n of the n originally-correct images. Both attacks and all ε use the
    same images, so the comparisons are paired and need no CI overlap. FGSM is left out of the ε = 0.5 check because
    a single step is not an optimiser and may legitimately stop short of 100%.
    """
    table = _checked_table(attack_table)
    success = table[table["metric"] == "attack_success_rate"]
    checks: list[Check] = []
    for variant in _unique(table["variant"]):
        rows = success[success["variant"] == variant]
        checks.append(_check_pgd_stronger(variant, rows, slack_images))
        for attack in _attack_order(rows["attack"]):
            checks.append(_check_monotone(variant, attack, rows[rows["attack"] == attack], slack_images))
        for attack in unbounded_attacks:
            checks.append(_check_unbounded(variant, attack, rows[rows["attack"] == attack]))
        clean = table[(table["variant"] == variant) & (table["metric"] == "clean_accuracy")]
        checks.append(_check_clean_consistent(variant, clean))
    return checks


def _tolerance(slack_images: float, n_a: float, n_b: float) -> float:
    """Slack in rate units: `slack_images` out of the smaller of the two image counts."""
    n = min(n_a, n_b)
    return slack_images / n if n > 0 else math.inf


def _check_pgd_stronger(variant: str, rows: pd.DataFrame, slack_images: float) -> Check:
    name = f"{variant}: PGD success ≥ FGSM success at every shared ε"
    fgsm = rows[rows["attack"] == "fgsm"].set_index("eps_key")
    pgd = rows[rows["attack"] == "pgd"].set_index("eps_key")
    shared = sorted(set(fgsm.index) & set(pgd.index))
    pairs = [(e, fgsm.loc[e], pgd.loc[e]) for e in shared]
    pairs = [(e, f, p) for e, f, p in pairs if np.isfinite(f["value"]) and np.isfinite(p["value"])]
    if not pairs:
        return Check(name, False, "no ε with a success rate for both FGSM and PGD", evaluated=False)
    failures = []
    for eps, f, p in pairs:
        tol = _tolerance(slack_images, f["n"], p["n"])
        if p["value"] < f["value"] - tol:
            failures.append(f"ε={format_eps(eps)}: PGD {_pct(p['value'])}% < FGSM {_pct(f['value'])}% "
                            f"(tolerance {slack_images:g} image = {_pct(tol, 2)}%)")
    if failures:
        return Check(name, False, "; ".join(failures) + " — PGD weaker than FGSM suggests a bug or gradient masking")
    margin = min(p["value"] - f["value"] for _, f, p in pairs)
    return Check(name, True, f"{len(pairs)} shared ε; smallest PGD − FGSM = {_signed_pct(margin)} points")


def _check_monotone(variant: str, attack: str, rows: pd.DataFrame, slack_images: float) -> Check:
    name = f"{variant}/{attack}: success non-decreasing in ε"
    rows = rows[np.isfinite(rows["value"])].sort_values("eps_key")
    if len(rows) < 2:
        return Check(name, False, f"needs at least two ε with a success rate, got {len(rows)}", evaluated=False)
    values, counts, eps = rows["value"].to_numpy(), rows["n"].to_numpy(), rows["eps_key"].to_numpy()
    failures = []
    for j in range(1, len(values)):
        # compare with every smaller ε, so a slow drift below the slack per step is still caught
        for i in range(j):
            tol = _tolerance(slack_images, counts[i], counts[j])
            if values[j] < values[i] - tol:
                failures.append(f"{_pct(values[i])}% at ε={format_eps(eps[i])} → {_pct(values[j])}% at "
                                f"ε={format_eps(eps[j])} (tolerance {slack_images:g} image = {_pct(tol, 2)}%)")
                break
    if failures:
        return Check(name, False, "success falls as ε grows: " + "; ".join(failures))
    return Check(name, True, f"{len(values)} ε from {format_eps(eps[0])} to {format_eps(eps[-1])}: "
                             f"{_pct(values[0])}% → {_pct(values[-1])}%")


def _check_unbounded(variant: str, attack: str, rows: pd.DataFrame) -> Check:
    label = ATTACK_NAMES.get(attack, attack)
    name = (f"{variant}/{attack}: success ≥ {_pct(UNBOUNDED_MIN_SUCCESS, 0)}% at ε = {UNBOUNDED_EPS:g} "
            "(image can turn grey)")
    at_half = rows[np.isclose(rows["eps_key"], UNBOUNDED_EPS)]
    if at_half.empty:
        return Check(name, False, f"ε = {UNBOUNDED_EPS:g} not evaluated for {label}; add {UNBOUNDED_EPS:g} to "
                                  f"attack.{attack}.eps in params.yaml to run this check", evaluated=False)
    value = float(at_half["value"].iloc[0])
    if not np.isfinite(value):
        return Check(name, False, "success rate is NaN (no image was classified correctly)", evaluated=False)
    detail = f"{label} success {_pct(value)}% at ε = {UNBOUNDED_EPS:g} (n = {_count(at_half['n'].iloc[0])})"
    if value >= UNBOUNDED_MIN_SUCCESS:
        return Check(name, True, detail)
    return Check(name, False, detail + " — an unbounded attack that fails points to a bug or gradient masking")


def _check_clean_consistent(variant: str, rows: pd.DataFrame) -> Check:
    name = f"{variant}: clean accuracy identical across attacks and ε"
    values = rows["value"].to_numpy(dtype=float)
    if len(values) == 0:
        return Check(name, False, "no clean_accuracy rows", evaluated=False)
    spread = float(np.nanmax(values) - np.nanmin(values)) if np.isfinite(values).any() else math.nan
    if spread <= 1e-9:
        return Check(name, True, f"{_pct(values[0])}% in all {len(values)} rows")
    return Check(name, False, f"clean accuracy ranges {_pct(np.nanmin(values))}%–{_pct(np.nanmax(values))}% over "
                              f"{len(values)} rows; the attacks did not see the same images/model")


# ----------------------------------------------------------------------------- the report

def build_report(train_metrics: Mapping[str, Mapping[str, Any]], attack_table: pd.DataFrame,
                 attack_params: Mapping[str, Any], out_dir: str | Path,
                 variant_specs: Mapping[str, Mapping[str, Any]] | None = None,
                 title: str = "Exploring the Robustness of LoRA-Adapted ResNet18 against Adversarial Attacks",
                 report_eps: float | None = None, generated: str | None = None) -> Path:
    """Write `out_dir/report.md` and its figures under `out_dir/figures/` (atomically); return the report path.

    `report_eps` (in [0,1] pixel units) picks the ε of the certainty figures; default: the median evaluated ε
    strictly between 0 and 0.5 (the upper one of the two middle values). `generated` is an optional stamp line.
    """
    table = _checked_table(attack_table)
    out_dir = Path(out_dir)
    variants = _unique(list(train_metrics) + list(table["variant"]))
    specs = variant_specs or {}
    checks = sanity_checks(attack_table)
    attacks = _attack_order(table["attack"])
    chosen_eps = {a: _pick_report_eps(table, a, report_eps) for a in attacks}

    figures = _write_figures(table, variants, attacks, chosen_eps, out_dir / "figures")
    attacked = {a: _attacked_variants(table, variants, a) for a in attacks}
    parts = [f"# {title}"]
    if generated:
        parts.append(f"_Generated: {generated}_")
    parts += [
        _definitions_section(),
        _checks_section(checks),
        _table1_section(train_metrics, table, variants, specs),
        _training_cost_section(train_metrics, variants),
        _success_section(table, attacked, figures),
        _robust_accuracy_section(table, attacked, figures),
        _certainty_section(table, attacked, chosen_eps, figures),
        _params_section(attack_params, specs, table, attacks),
    ]
    report = out_dir / "report.md"
    write_text(report, "\n\n".join(p.strip("\n") for p in parts) + "\n")
    return report


def plot_files(out_dir: str | Path) -> list[Path]:
    """The figures that `out_dir/report.md` links to, in report order (stale PNGs in the folder are ignored)."""
    out_dir = Path(out_dir)
    report = out_dir / "report.md"
    if not report.exists():
        raise FileNotFoundError(f"no report at {report}; run build_report(..., out_dir={str(out_dir)!r}) first")
    links = _unique(re.findall(r"\]\((figures/[^)\s]+\.png)\)", report.read_text()))
    paths = [out_dir / link for link in links]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"report {report} links to missing figure(s): {', '.join(missing)}")
    return paths


def format_eps(eps: float) -> str:
    """ε in [0,1] pixel units shown as k/255 when k is whole (8/255 -> '8/255'), else as a decimal (0.5 -> '0.5')."""
    k = float(eps) * 255
    if abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{float(eps):.4g}"


def describe_variant(spec: Mapping[str, Any] | None) -> str:
    """One-line description of a variant spec {"adaptation", "targets", "rank", "alpha"}."""
    if not spec:
        return MISSING
    adaptation = spec.get("adaptation")
    targets = ", ".join(str(t) for t in spec.get("targets") or [])
    if adaptation == "lora":
        return f"LoRA r={spec.get('rank', '?')}, α={spec.get('alpha', '?')} on {targets or '?'}"
    if adaptation == "full":
        return f"fine-tuning of {targets}" if targets else "full fine-tuning"
    if adaptation == "none":
        return "no adaptation (pretrained weights)"
    return json.dumps(dict(spec), sort_keys=True, default=_json_default)


# ----------------------------------------------------------------------------- table access

def _checked_table(attack_table: pd.DataFrame) -> pd.DataFrame:
    """Validate the tidy attack table and add `eps_key` (ε rounded for exact matching)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in attack_table.columns]
    if missing:
        raise ValueError(f"attack table is missing column(s) {', '.join(missing)}; expected "
                         f"{', '.join(REQUIRED_COLUMNS)} (attack_suite's output with a 'variant' column added)")
    if attack_table.empty:
        raise ValueError("attack table is empty; run the attack stage for at least one variant first")
    table = attack_table.copy()
    table["variant"] = table["variant"].astype(str)
    table["attack"] = table["attack"].astype(str)
    for column in ("eps", "value", "ci_low", "ci_high", "n"):
        table[column] = pd.to_numeric(table[column], errors="raise").astype(float)
    bad = table[(table["eps"] < 0) | (table["eps"] > 1)]
    if not bad.empty:
        raise ValueError(f"eps must be in [0,1] pixel units, got {bad['eps'].iloc[0]:g} for variant "
                         f"{bad['variant'].iloc[0]!r}; pass k/255, not k")
    table["eps_key"] = table["eps"].round(EPS_DECIMALS)
    key = ["variant", "attack", "eps_key", "metric"]
    dupes = table[table.duplicated(key, keep=False)]
    if not dupes.empty:
        first = dupes.iloc[0]
        raise ValueError(f"attack table has {int((table[key] == first[key]).all(axis=1).sum())} rows for "
                         f"(variant, attack, eps, metric) = ({first['variant']}, {first['attack']}, "
                         f"{format_eps(first['eps'])}, {first['metric']}); expected one — drop the duplicates")
    return table


def _unique(items: Iterable[Any]) -> list[Any]:
    """Unique items in first-seen order (deterministic, unlike set)."""
    return list(dict.fromkeys(items))


def _attack_order(attacks: Iterable[str]) -> list[str]:
    present = set(attacks)
    return [a for a in ATTACK_ORDER if a in present] + sorted(present - set(ATTACK_ORDER))


def _attacked_variants(table: pd.DataFrame, variants: Sequence[str], attack: str) -> list[str]:
    """Variants with rows for `attack`, in report order (trained-only variants stay out of attack tables)."""
    present = set(table.loc[table["attack"] == attack, "variant"])
    return [v for v in variants if v in present]


def _attack_eps(table: pd.DataFrame, attack: str) -> list[float]:
    return sorted(set(table.loc[table["attack"] == attack, "eps_key"]))


def _metric(table: pd.DataFrame, variant: str, attack: str, eps: float, metric: str) -> pd.Series | None:
    """The row (value, ci_low, ci_high, n) for one cell of the study, or None."""
    rows = table[(table["variant"] == variant) & (table["attack"] == attack) & (table["eps_key"] == eps)
                 & (table["metric"] == metric)]
    return None if rows.empty else rows.iloc[0]


def _pick_report_eps(table: pd.DataFrame, attack: str, report_eps: float | None) -> float:
    evaluated = _attack_eps(table, attack)
    if report_eps is not None:
        matches = [e for e in evaluated if math.isclose(e, report_eps, abs_tol=1e-7)]
        if not matches:
            raise ValueError(f"report_eps {format_eps(report_eps)} was not evaluated for {attack}; evaluated ε: "
                             f"{', '.join(format_eps(e) for e in evaluated)}")
        return matches[0]
    # ε = 0 and the ε = 0.5 sanity point are checks, not study settings
    study = [e for e in evaluated if 0 < e < UNBOUNDED_EPS - 1e-9] or evaluated
    return study[len(study) // 2]


# ----------------------------------------------------------------------------- formatting

def _pct(value: float, digits: int = 1) -> str:
    """A rate in [0,1] as a percentage string without the % sign."""
    return MISSING if value is None or not np.isfinite(value) else f"{100 * value:.{digits}f}"


def _signed_pct(value: float) -> str:
    return f"{100 * value:+.1f}"


def _count(value: Any) -> str:
    return MISSING if value is None or not np.isfinite(float(value)) else f"{int(round(float(value))):d}"


def _pct_cell(row: pd.Series | None) -> str:
    """'value [ci_low, ci_high]' in percent."""
    if row is None or not np.isfinite(row["value"]):
        return MISSING
    return f"{_pct(row['value'])} [{_pct(row['ci_low'])}, {_pct(row['ci_high'])}]"


def _prob_cell(row: pd.Series | None) -> str:
    """'value [ci_low, ci_high]' as probabilities."""
    if row is None or not np.isfinite(row["value"]):
        return MISSING

    def fmt(v: float) -> str:
        return MISSING if not np.isfinite(v) else f"{v:.3f}"
    return f"{fmt(row['value'])} [{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]"


def _n_range(rows: Iterable[pd.Series | None]) -> str:
    """The image count of a table row, or 'min–max' when it varies across ε."""
    counts = sorted({int(round(r["n"])) for r in rows if r is not None and np.isfinite(r["n"])})
    if not counts:
        return MISSING
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(header), line(["---"] * len(header))] + [line(r) for r in rows])


def _train_value(metrics: Mapping[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def _json_default(obj: Any) -> Any:
    # numpy scalars and other odd values from loaded params
    return obj.item() if hasattr(obj, "item") else str(obj)


def _render_params(params: Mapping[str, Any], indent: int = 0) -> list[str]:
    """Nested params as YAML-like lines (JSON scalars and lists), in the caller's key order."""
    lines = []
    for key, value in params.items():
        if isinstance(value, Mapping) and value:
            lines.append(f"{' ' * indent}{key}:")
            lines += _render_params(value, indent + 2)
        else:
            lines.append(f"{' ' * indent}{key}: {json.dumps(value, default=_json_default)}")
    return lines


# ----------------------------------------------------------------------------- sections

def _definitions_section() -> str:
    return (
        "Definitions. ε is the L∞ budget in [0,1] pixel units, shown as k/255. Accuracies and attack success rates "
        "are in %. **Attack success rate**: among images classified correctly before the attack, the share "
        "misclassified after it. **Robust accuracy**: the share of all attacked images classified correctly after "
        "the attack. **Certainty**: mean predicted-class (max-softmax) probability, over all attacked "
        "images or over the originally-correct ones. Brackets give 95% bootstrap confidence intervals; n counts "
        "images (for success rate: originally-correct images)."
    )


def _checks_section(checks: Sequence[Check]) -> str:
    flagged = [c for c in checks if not c.passed]
    failed = sum(c.evaluated and not c.passed for c in checks)
    skipped = sum(not c.evaluated for c in checks)
    if flagged:
        summary = (f"**{len(flagged)} of {len(checks)} checks flagged: {failed} FAILED, "
                   f"{skipped} NOT EVALUATED.** Read the results below with care.")
    else:
        summary = f"All {len(checks)} checks passed."
    marker = {"passed": "passed", "FAILED": "**FAILED**", "not evaluated": "**NOT EVALUATED**"}
    rows = [[marker[c.status], c.name, c.detail] for c in checks]
    return "\n\n".join([
        "## Sanity checks (Carlini et al. 2019, “On Evaluating Adversarial Robustness”)",
        summary,
        _md_table(["Result", "Check", "Detail"], rows),
        "Tolerance: a slack of one image (1/n of the n originally-correct images). FGSM, PGD and every ε attack the "
        "same images, so the comparisons are paired and need no CI overlap. The ε = 0.5 check applies to PGD only: "
        "FGSM is a single step, not an optimiser.",
    ])


def _table1_section(train_metrics: Mapping[str, Mapping[str, Any]], table: pd.DataFrame, variants: Sequence[str],
                    specs: Mapping[str, Mapping[str, Any]]) -> str:
    rows = []
    for variant in variants:
        metrics = train_metrics.get(variant, {})
        clean = table[(table["variant"] == variant) & (table["metric"] == "clean_accuracy")]
        clean_row = clean.sort_values(["attack", "eps_key"]).iloc[0] if not clean.empty else None
        trainable, total = _train_value(metrics, "trainable_params"), _train_value(metrics, "total_params")
        if trainable is None:
            params = MISSING
        elif total:
            params = f"{int(trainable):,} ({100 * trainable / total:.3g}% of {int(total):,})"
        else:
            params = f"{int(trainable):,}"
        epochs = _train_value(metrics, "epochs_run")
        rows.append([
            variant,
            describe_variant(specs.get(variant)),
            _pct(_train_value(metrics, "val_accuracy")),
            _pct_cell(clean_row),
            _count(clean_row["n"]) if clean_row is not None else MISSING,
            _pct(_train_value(metrics, "holdout_accuracy")),
            params,
            MISSING if epochs is None else f"{epochs:g}",
        ])
    header = ["Variant", "Setting", "Val acc. (%)", "Clean acc. on attacked images (%) [95% CI]", "n",
              "Holdout acc. (%)", "Trainable params (% of total)", "Epochs"]
    return "\n\n".join([
        "## Table 1. Clean accuracy and trainable parameters",
        _md_table(header, rows),
        "Val acc. is the training stage's accuracy on the whole validation split; the CI column is measured on the "
        "n validation images the attack stage evaluates.",
    ])


def _training_cost_section(train_metrics: Mapping[str, Mapping[str, Any]], variants: Sequence[str]) -> str:
    rows = []
    for variant in variants:
        metrics = train_metrics.get(variant, {})
        seconds, speed = _train_value(metrics, "train_seconds"), _train_value(metrics, "images_per_second")
        rows.append([variant, MISSING if seconds is None else f"{seconds:.1f}",
                     MISSING if speed is None else f"{speed:.1f}"])
    return "## Training cost\n\n" + _md_table(["Variant", "Train time (s)", "Images/s"], rows)


def _figure_link(figures: Mapping[str, Path], key: str, caption: str) -> str:
    path = figures.get(key)
    return f"![{caption}](figures/{path.name})\n\n*{caption}*" if path else ""


def _per_eps_table(table: pd.DataFrame, variants: Sequence[str], attack: str, metric: str, n_header: str) -> str:
    eps_list = _attack_eps(table, attack)
    rows = []
    for variant in variants:
        cells = [_metric(table, variant, attack, e, metric) for e in eps_list]
        rows.append([variant, _n_range(cells)] + [_pct_cell(c) for c in cells])
    return _md_table(["Variant", n_header] + [f"ε = {format_eps(e)}" for e in eps_list], rows)


def _success_section(table: pd.DataFrame, attacked: Mapping[str, Sequence[str]], figures: Mapping[str, Path]) -> str:
    parts = ["## Attack success rate (%) [95% CI]"]
    for attack, variants in attacked.items():
        label = ATTACK_NAMES.get(attack, attack)
        paper = PAPER_FIGURES.get(("success", attack))
        caption = f"{paper + ' — ' if paper else ''}{label} attack success rate across the settings (95% CI)"
        parts += [f"### {label}",
                  _per_eps_table(table, variants, attack, "attack_success_rate", "n (correct before)"),
                  _figure_link(figures, f"success_{attack}", caption)]
    return "\n\n".join(p for p in parts if p)


def _robust_accuracy_section(table: pd.DataFrame, attacked: Mapping[str, Sequence[str]],
                             figures: Mapping[str, Path]) -> str:
    parts = ["## Robust accuracy (%) [95% CI]"]
    for attack, variants in attacked.items():
        label = ATTACK_NAMES.get(attack, attack)
        caption = f"{label}: robust accuracy and attack success rate vs ε (95% CI bands)"
        parts += [f"### {label}", _per_eps_table(table, variants, attack, "robust_accuracy", "n"),
                  _figure_link(figures, f"curves_{attack}", caption)]
    return "\n\n".join(p for p in parts if p)


def _certainty_section(table: pd.DataFrame, attacked: Mapping[str, Sequence[str]], chosen_eps: Mapping[str, float],
                       figures: Mapping[str, Path]) -> str:
    parts = ["## Model certainty before and after the attack (mean probability [95% CI])"]
    for attack, variants in attacked.items():
        label = ATTACK_NAMES.get(attack, attack)
        rows = []
        for variant in variants:
            for eps in _attack_eps(table, attack):
                cells = [_metric(table, variant, attack, eps, m) for m, _ in CERTAINTY_METRICS]
                if any(c is not None for c in cells):
                    rows.append([variant, format_eps(eps)] + [_prob_cell(c) for c in cells])
        paper = PAPER_FIGURES.get(("certainty", attack))
        caption = (f"{paper + ' — ' if paper else ''}model certainty before/after {label} at "
                   f"ε = {format_eps(chosen_eps[attack])} (95% CI)")
        parts += [f"### {label}", _md_table(["Variant", "ε"] + [h for _, h in CERTAINTY_METRICS], rows),
                  _figure_link(figures, f"certainty_{attack}", caption)]
    return "\n\n".join(p for p in parts if p)


def _params_section(attack_params: Mapping[str, Any], specs: Mapping[str, Mapping[str, Any]],
                    table: pd.DataFrame, attacks: Sequence[str]) -> str:
    params = "\n".join(_render_params(attack_params)) if attack_params else "# (no attack parameters were passed)"
    evaluated = [f"- {ATTACK_NAMES.get(a, a)}: ε = {', '.join(format_eps(e) for e in _attack_eps(table, a))}"
                 for a in attacks]
    parts = ["## Attack hyperparameters",
             "As passed to the report (params.yaml `attack` section), in full:",
             f"```yaml\n{params}\n```",
             "Evaluated ε (from the attack table):\n\n" + "\n".join(evaluated)]
    if specs:
        parts += ["### Variant settings", f"```yaml\n{chr(10).join(_render_params(specs))}\n```"]
    return "\n\n".join(parts)


# ----------------------------------------------------------------------------- figures

def _new_figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # object API: never touches pyplot or the user's backend
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _save_figure(fig: Figure, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        # no 'Software' stamp: identical bytes for identical inputs across matplotlib patch versions
        fig.savefig(tmp, format="png", metadata={"Software": None})
    return path


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _values(rows: Sequence[pd.Series | None], scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Values and non-negative (2, N) error-bar offsets, NaN where a row is missing."""
    value = np.array([np.nan if r is None else r["value"] for r in rows], dtype=float) * scale
    low = np.array([np.nan if r is None else r["ci_low"] for r in rows], dtype=float) * scale
    high = np.array([np.nan if r is None else r["ci_high"] for r in rows], dtype=float) * scale
    err = np.nan_to_num(np.stack([value - low, high - value]), nan=0.0).clip(min=0.0)
    return value, err


def _write_figures(table: pd.DataFrame, variants: Sequence[str], attacks: Sequence[str],
                   chosen_eps: Mapping[str, float], fig_dir: Path) -> dict[str, Path]:
    """Certainty bars, success bars and ε curves per attack; returns {key: path}."""
    colors = {v: f"C{i % 10}" for i, v in enumerate(variants)}  # a variant keeps its colour in every figure
    figures = {}
    for attack in attacks:
        name, attacked = _safe_name(attack), _attacked_variants(table, variants, attack)
        figures[f"certainty_{attack}"] = _save_figure(
            _certainty_figure(table, attacked, attack, chosen_eps[attack]), fig_dir / f"certainty_{name}.png")
        figures[f"success_{attack}"] = _save_figure(
            _success_figure(table, attacked, colors, attack), fig_dir / f"success_rate_{name}.png")
        figures[f"curves_{attack}"] = _save_figure(
            _curves_figure(table, attacked, colors, attack), fig_dir / f"robustness_vs_eps_{name}.png")
    return figures


def _certainty_figure(table: pd.DataFrame, variants: Sequence[str], attack: str, eps: float) -> Figure:
    fig, (ax,) = _new_figure(7.5, 4.2)
    bars = CERTAINTY_METRICS[:4]
    colors = ["#9ecae1", "#08519c", "#fdae6b", "#a63603"]  # light = before, dark = after
    width = 0.8 / len(bars)
    x = np.arange(len(variants))
    for k, ((metric, label), color) in enumerate(zip(bars, colors)):
        value, err = _values([_metric(table, v, attack, eps, metric) for v in variants])
        ax.bar(x + (k - (len(bars) - 1) / 2) * width, value, width, yerr=err, capsize=3, label=label, color=color)
    ax.set_xticks(x, variants)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean predicted-class probability")
    ax.set_title(f"Model certainty before/after {ATTACK_NAMES.get(attack, attack)}, ε = {format_eps(eps)}")
    fig.legend(loc="outside lower center", ncols=len(bars), fontsize=8)  # outside: never hides a bar
    return fig


def _success_figure(table: pd.DataFrame, variants: Sequence[str], colors: Mapping[str, str], attack: str) -> Figure:
    fig, (ax,) = _new_figure(7.5, 4.2)
    eps_list = _attack_eps(table, attack)
    width = 0.8 / len(variants)
    x = np.arange(len(eps_list))
    for k, variant in enumerate(variants):
        value, err = _values([_metric(table, variant, attack, e, "attack_success_rate") for e in eps_list], 100)
        ax.bar(x + (k - (len(variants) - 1) / 2) * width, value, width, yerr=err, capsize=3, label=variant,
               color=colors[variant])
    ax.set_xticks(x, [format_eps(e) for e in eps_list])
    ax.set_xlabel("ε")
    ax.set_ylim(0, 105)
    ax.set_ylabel("attack success rate (%)")
    ax.set_title(f"{ATTACK_NAMES.get(attack, attack)} attack success rate across settings")
    fig.legend(loc="outside lower center", ncols=min(len(variants), 4), fontsize=8)
    return fig


def _curves_figure(table: pd.DataFrame, variants: Sequence[str], colors: Mapping[str, str], attack: str) -> Figure:
    fig, axes = _new_figure(10, 4, ncols=2)
    eps_list = _attack_eps(table, attack)
    # evenly spaced ε positions: the ε = 0.5 sanity point would squash a linear axis
    x = np.arange(len(eps_list))
    panels = (("robust_accuracy", "robust accuracy (%)"), ("attack_success_rate", "attack success rate (%)"))
    for ax, (metric, ylabel) in zip(axes, panels):
        for variant in variants:
            rows = [_metric(table, variant, attack, e, metric) for e in eps_list]
            value, err = _values(rows, 100)
            ax.plot(x, value, marker="o", label=variant, color=colors[variant])
            ax.fill_between(x, value - err[0], value + err[1], alpha=0.2, color=colors[variant], linewidth=0)
        ax.set_xticks(x, [format_eps(e) for e in eps_list])
        ax.set_xlabel("ε (evenly spaced)")
        ax.set_ylim(0, 105)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=min(len(variants), 4),
               fontsize=8)
    fig.suptitle(f"{ATTACK_NAMES.get(attack, attack)}: robustness vs ε")
    return fig
