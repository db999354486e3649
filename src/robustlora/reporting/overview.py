"""The study report's opening sections: Findings, Threat model, Table 1 (the arms) and the training curves.

What was claimed and found, under which attack settings, on which arms: pure functions from robustlora.analysis's
findings, train table and arm table (shares in [0,1], shown in %) and the settings the report states (ε and step
sizes in [0,1] pixel units, shown as k/255) to markdown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import pandas as pd

from robustlora.analysis import Analysis, Finding, Settings
from robustlora.analysis.checks import Check, count
from robustlora.formatting import MISSING, difference_cell, format_eps, format_pct, interval_cell, md_table, p_phrase
from robustlora.reporting.cells import attacks_in_order, estimate_cell, figure_link, find_row, step_text

__all__ = ["ThreatModel", "ArmInfo", "findings_section", "threat_section", "arms_section", "training_section"]


@dataclass(frozen=True)
class ThreatModel:
    """The attack settings the report states; ε and step sizes in [0,1] pixel units."""

    eps: tuple[float, ...]  # attack.eps, one grid for FGSM and PGD
    image_size: int | None  # H of the attacked H x H images (from the prepared data)
    input_size: int  # model.input_size: what the model resizes its input to
    pgd_steps: int
    pgd_step_sizes: tuple[float, ...]  # per ε of `eps`
    pgd_rel_step_size: float | None  # step = rel · ε, when params give it that way
    pgd_random_start: bool
    pgd_restarts: int
    sanity_eps: float | None
    n_images_requested: int  # attack.n_images
    attack_seed: int  # attack.seed: which val images are drawn


@dataclass(frozen=True)
class ArmInfo:
    """How an arm is adapted: the adaptation kind's one-line description and whether BatchNorm is re-estimated."""

    description: str
    trains_batchnorm: bool | None


def _effect(f: Finding) -> str:
    if f.verdict == "not evaluated":
        return ""
    if f.claim == "b":
        return f"{interval_cell(f.effect, f.ci_low, f.ci_high)} %"
    return f"{difference_cell(f.effect, f.ci_low, f.ci_high)} points"


def findings_section(found: Sequence[Finding], checks: Sequence[Check]) -> str:
    """'## Findings': a bold verdict per claim with its effect and p-values; flagged sanity checks called out first."""
    counts = count(checks)
    lines = ["## Findings"]
    if counts["failed"] or counts["warning"] or counts["not evaluated"]:
        lines.append(f"**Sanity checks: {counts['failed']} failed, {counts['warning']} warning(s), "
                     f"{counts['not evaluated']} not evaluated** (see Sanity checks); read the findings with that "
                     "in mind.")
    items = []
    for f in found:
        effect = _effect(f)
        tested = f"; {p_phrase('p', f.p)}, {p_phrase('Holm p', f.p_holm)}" if f.p is not None else ""
        numbers = f": {effect}{tested}" if effect else ""
        items.append(f"- **{f.verdict}** ({f.claim}) {f.statement}{numbers}. {f.detail[:1].upper()}{f.detail[1:]}.")
    lines.append("\n".join(items) if items else "No claims could be evaluated.")
    lines.append("Effects are arm minus reference (or clean minus adversarial for certainty) in percentage points, "
                 "95 % hierarchical-bootstrap CIs over seeds and images; p: exact McNemar on per-image majority "
                 "votes, Holm-corrected over every finding with a p-value. Every line is generated from the data.")
    return "\n\n".join(lines)


def threat_section(t: ThreatModel, a: Analysis) -> str:
    """'## Threat model': the L∞ grid, input size, FGSM and PGD settings, images and training seeds."""
    grid = ", ".join(format_eps(e) for e in t.eps)
    steps = ", ".join(f"{step_text(s)} at ε = {format_eps(e)}" for e, s in zip(t.eps, t.pgd_step_sizes))
    rel = f" ({t.pgd_rel_step_size:g} · ε)" if t.pgd_rel_step_size is not None else ""
    size = (f"images of {t.image_size} px are resized to {t.input_size} px inside the model (model.input_size), so "
            f"ε bounds the {t.image_size} px image" if t.image_size is not None
            else f"images are resized to {t.input_size} px inside the model (model.input_size)")
    seeds = "; ".join(f"{arm}: {', '.join(str(s) for s in seeds)}" for arm, seeds in a.seeds.items())
    sanity = (f"one extra PGD run at ε = {format_eps(t.sanity_eps)} feeds the sanity checks only"
              if t.sanity_eps is not None else "no sanity ε (attack.pgd.sanity_eps is null)")
    return "\n".join([
        "## Threat model",
        "",
        f"- Perturbation: L∞ ball, ε ∈ {{{grid}}} in [0,1] pixel units, the same grid for FGSM and PGD.",
        f"- Input: {size}.",
        "- FGSM: one signed-gradient step of size ε.",
        f"- PGD: {t.pgd_steps} steps, step size{rel}: {steps}; random start: {'yes' if t.pgd_random_start else 'no'};"
        f" restarts: {t.pgd_restarts}; per image the iterate with the highest loss is kept; {sanity}.",
        "- Model under attack: eval mode (BatchNorm uses its running statistics), evaluated in float32.",
        f"- Images: {a.n_images} val images (attack.n_images = {t.n_images_requested}), a fixed subset drawn with "
        f"attack.seed = {t.attack_seed}, the same for every arm and seed.",
        f"- Training seeds per arm: {seeds}.",
    ])


def _best_epochs(row: pd.Series) -> str:
    pairs = [f"{b if b is not None else '?'}/{r if r is not None else '?'}"
             for b, r in zip(row["best_epochs"], row["epochs_run"])]
    return ", ".join(pairs) if pairs else MISSING


def _params_cell(row: pd.Series) -> str:
    trainable, total = row["trainable_params"], row["total_params"]
    if trainable is None:
        return MISSING
    share = f" ({100 * trainable / total:.3g} % of {int(total):,})" if total else ""
    return f"{int(trainable):,}{share}"


def arms_section(train: pd.DataFrame, a: Analysis, info: Mapping[str, ArmInfo], settings: Settings) -> str:
    """'## Table 1': per arm its adaptation, val and clean accuracy, trainable parameters and epochs.

    train: robustlora.analysis.train_table; clean accuracy is the first attack's at settings.report_eps."""
    arms = list(dict.fromkeys(list(train["arm"]) + a.arms))
    first = attacks_in_order(a.arm_table["attack"])[0] if len(a.arm_table) else None
    rows = []
    for arm in arms:
        t = train[train["arm"] == arm]
        t = t.iloc[0] if not t.empty else None
        arm_info = info.get(arm)
        bn = MISSING if arm_info is None or arm_info.trains_batchnorm is None else (
            "yes" if arm_info.trains_batchnorm else "no")
        val = (MISSING if t is None or not math.isfinite(t["val_mean"])
               else f"{format_pct(t['val_mean'])} ± {format_pct(t['val_std'])} ({t['n_seeds']})")
        clean = find_row(a.arm_table, arm, first, settings.report_eps, "clean_accuracy") if first else None
        rows.append([arm, arm_info.description if arm_info else MISSING, bn, val, estimate_cell(clean),
                     _params_cell(t) if t is not None else MISSING, _best_epochs(t) if t is not None else MISSING])
    header = ["Arm", "Adaptation", "BatchNorm statistics re-estimated", "Val acc. (%) mean ± sd (seeds)",
              f"Clean acc. on the {a.n_images} attacked images (%) [95% CI]", "Trainable params",
              "Best epoch / epochs run, per seed"]
    return "\n\n".join([
        "## Table 1. Arms: accuracy, parameters, training",
        md_table(header, rows),
        "Val acc.: the whole val split, per training seed, mean ± sample sd across seeds. Clean acc.: the attacked "
        "subset, mean over seeds with a hierarchical-bootstrap CI. BatchNorm statistics re-estimated: whether "
        "training updates BatchNorm running statistics (LoRA arms keep them frozen).",
    ])


def training_section(figures: Mapping[str, str]) -> str:
    """'## Training curves': the training figure, or '' when no arm was trained."""
    fig = figure_link(figures, "training", "Holdout accuracy and train loss per epoch; one thin line per seed, colour "
                                           "per arm. The checkpoint kept is the best holdout epoch.")
    return f"## Training curves\n\n{fig}" if fig else ""
