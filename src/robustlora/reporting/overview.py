"""The study report's opening sections: Scope of the data, Findings, Threat model, Table 1 (the arms) and the
training curves; and the verdicts' definitions.

What the data are, what was claimed and found, under which attack settings, on which arms: pure functions from
robustlora.analysis's scope, findings, train table and arm table (shares in [0,1], shown in %) and the settings the
report states (ε and step sizes in [0,1] pixel units, shown as k/255) to markdown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import pandas as pd

from robustlora.analysis import VERDICTS, Analysis, Finding, Settings
from robustlora.analysis.checks import Check, count
from robustlora.analysis.findings import VERDICT_DEFINITIONS
from robustlora.analysis.settings import PAPER, Scope
from robustlora.formatting import MISSING, format_eps, format_pct, md_table
from robustlora.reporting.cells import attacks_in_order, estimate_cell, figure_link, find_row, step_text

__all__ = ["ThreatModel", "ArmInfo", "scope_section", "findings_section", "verdict_definitions", "threat_section",
           "arms_section", "training_section"]


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
    pgd_targets: int = 0  # attack.pgd.targets: targeted margin runs on the images cross-entropy PGD left correct
    pgd_target_steps: int | None = None
    full_eps: tuple[float, ...] | None = None  # attack.full_eps: PGD on every image there, else grid_images
    grid_images: int | None = None


@dataclass(frozen=True)
class ArmInfo:
    """How an arm is adapted: the adaptation kind's one-line description and whether BatchNorm is re-estimated."""

    description: str
    trains_batchnorm: bool | None


def scope_section(scope: Scope | None, a: Analysis) -> str:
    """'## Scope of the data': what the data, model input, backbone, training and evaluation are, against the paper's
    configuration, and which claims that leaves testable; '' without a scope."""
    if scope is None:
        return ""
    data = ("the synthetic miniature of ImageNet → Tiny ImageNet the pipeline generates (data.source: synthetic)"
            if scope.synthetic else f"a Tiny ImageNet-layout archive (data.source: {scope.source})")
    size = f", {scope.image_size} px images" if scope.image_size else ""
    classes = f", {scope.classes} classes" if scope.classes else ""
    backbone = {"pretrain": "pretrained on the synthetic source domain (model.weights: pretrain)",
                "imagenet": "with torchvision's ImageNet weights (model.weights: imagenet)"}.get(
        scope.weights, f"from the checkpoint {scope.weights} (model.weights)")
    backbones = ("one backbone: every figure is conditional on it (the intervals cover training seeds and images, "
                 "not the backbone)" if scope.backbones == 1 else
                 f"{scope.backbones} backbones, the intervals cover them")
    epochs = (f"up to {scope.max_epochs} epochs with early stopping (train.max_epochs)" if scope.max_epochs
              else "no trained arm")
    counts = sorted({len(s) for s in a.seeds.values() if len(s) > 1} or {len(s) for s in a.seeds.values()})
    seeds = "/".join(str(n) for n in counts) + " training seeds per trained arm"
    of = (f"all {a.n_images} val images" if scope.n_val == a.n_images
          else f"{a.n_images} of the {scope.n_val} val images" if scope.n_val else f"{a.n_images} val images")
    diffs = scope.differences()
    verdict = (f"Claims about absolute levels (b) are not testable in this configuration ({'; '.join(diffs)}); "
               "comparisons between arms (a, c, d) are judged, and hold for this configuration."
               if diffs else "The configuration matches the paper's in data, classes, input size and backbone: every "
               "claim is judged.")
    paper = PAPER  # the paper's configuration
    return "\n".join([
        "## Scope of the data",
        "",
        f"- Data: {data}{classes}{size}; the paper: {paper['dataset']}, {paper['classes']} classes.",
        f"- Model input: {scope.input_size} px (model.input_size); the paper: {paper['input_size']} px.",
        f"- Backbone: ResNet18 {backbone}; {backbones}.",
        f"- Training: {epochs}; the paper: up to {paper['max_epochs']} epochs with early stopping.",
        f"- Evaluated: {of}, attacked and judged; {seeds}.",
        f"- {verdict}",
    ])


def findings_section(found: Sequence[Finding], checks: Sequence[Check], settings: Settings) -> str:
    """'## Findings': per claim its bold verdict, effect with interval and test, the paper's effect, the equivalence
    test and the minimal detectable effect; flagged sanity checks called out first."""
    counts = count(checks)
    lines = ["## Findings"]
    if counts["failed"] or counts["warning"] or counts["not evaluated"] or counts.get("not informative"):
        lines.append(f"**Sanity checks: {counts['failed']} failed, {counts['warning']} warning(s), "
                     f"{counts.get('not informative', 0)} not informative, {counts['not evaluated']} not "
                     "evaluated** (see Sanity checks); read the findings with that in mind.")
    items = [f"- **{f.verdict}** ({f.claim}) {f.statement}: {f.evidence}" for f in found]
    lines.append("\n".join(items) if items else "No claims could be evaluated.")
    tests = list(dict.fromkeys(f.test for f in found if f.p is not None))
    level = f"{100 * settings.confidence:.0f} %"
    lines.append(
        f"Effects: arm minus reference (certainty: clean minus adversarial) in percentage points, {level} intervals "
        f"over seeds and images. Tests: {' / '.join(tests) if tests else 'none ran'}. p-values are Holm-corrected "
        f"over every finding with one (α = {settings.alpha:g}). Equivalence: TOST at α = {settings.alpha:g} (the "
        f"{100 * (1 - 2 * settings.alpha):.0f} % interval inside ±{100 * settings.equivalence_margin:.1f} points, "
        "report.equivalence_margin; claim (b): inside its band). MDE: the smallest |effect| this run detects with "
        f"{100 * settings.power:.0f} % power at α = {settings.alpha:g}. The paper's effect is excluded when the "
        f"{level} interval excludes it. Verdicts are defined under Definitions. Every line is generated from the "
        "data.")
    return "\n\n".join(lines)


def verdict_definitions() -> str:
    """The verdicts of the Findings, one line each (robustlora.analysis.findings.VERDICT_DEFINITIONS)."""
    return "\n".join(f"- Verdict '{v}': {VERDICT_DEFINITIONS[v]}." for v in VERDICTS)


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
        f" restarts: {t.pgd_restarts}; per image the iterate with the highest loss is kept; {sanity}."
        + (f" Then, on the images cross-entropy PGD left correct, a targeted margin run (z_target − z_true) towards "
           f"each of the {t.pgd_targets} most likely wrong classes, {t.pgd_target_steps or t.pgd_steps} steps with "
           "the same travel (as AutoAttack's APGD-T); PGD's row is the strongest of all runs." if t.pgd_targets else "")
        + (f" PGD covers all attacked images at ε = {', '.join(format_eps(e) for e in t.full_eps)} and the first "
           f"{t.grid_images} at the other ε (attack.grid_images); FGSM covers all."
           if t.full_eps and t.grid_images else ""),
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
