"""The study's report as markdown: one small function per section, over numbers computed elsewhere.

`render(inputs)` turns what robustlora.analysis.results (estimates, comparisons, findings), robustlora.analysis.checks (sanity checks)
and robustlora.reporting.figures (PNG paths) produced into `report.md`. It computes nothing itself, so the text is a pure
function of its inputs: no timestamps, no absolute paths (figures are linked relative to the report). Shares are
shown in % with one decimal, ε in [0,1] pixel units as k/255, and every estimate with its 95 % interval.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from robustlora.analysis.results import (ATTACK_NAMES, MISSING, Analysis, Finding, Settings, eps_key, format_eps, format_p,
                                 format_pct, format_points, p_phrase)
from robustlora.analysis.checks import STATUSES, Check, count

__all__ = ["TITLE", "ThreatModel", "ArmInfo", "CrossCheck", "ReportInputs", "render"]

TITLE = "Exploring the Robustness of LoRA-Adapted ResNet18 against Adversarial Attacks"


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


@dataclass(frozen=True)
class ReportInputs:
    """Everything the markdown shows, computed before rendering."""

    analysis: Analysis
    settings: Settings
    checks: Sequence[Check]
    train: pd.DataFrame  # robustlora.analysis.results.train_table
    arm_info: Mapping[str, ArmInfo]
    threat: ThreatModel
    params: Mapping[str, Any]  # every params.yaml value, resolved
    figures: Mapping[str, str]  # figure key (robustlora.reporting.figures.write_figures) -> path relative to the report
    crosscheck: CrossCheck | None = None  # the attacks beyond FGSM and PGD, when they ran
    defences: str | None = None  # the Defences section (robustlora.analysis.defences.defences_section)
    title: str = TITLE


@dataclass(frozen=True)
class CrossCheck:
    """The attacks beyond FGSM and PGD (robustlora.analysis.crosscheck tables) and what ran, in words."""

    versus: pd.DataFrame  # crosscheck.versus_pgd
    curves: pd.DataFrame  # crosscheck.query_curves
    matrix: pd.DataFrame  # crosscheck.transfer_matrix
    settings: Mapping[str, str]  # attack -> one line on its settings (budget, images)


def render(inputs: ReportInputs) -> str:
    """The whole report.md text; Findings first."""
    a = inputs.analysis
    parts = [f"# {inputs.title}",
             _findings_section(a.findings, inputs.checks),
             _threat_section(inputs.threat, a),
             _table1_section(inputs.train, a, inputs.arm_info, inputs.settings),
             _training_section(inputs.figures)]
    parts += [_attack_section(a, attack, inputs.settings, inputs.figures) for attack in _attacks(a.arm_table)]
    parts += [_comparisons_section(a, inputs.settings, inputs.figures)]
    if inputs.crosscheck is not None:
        parts.append(_crosscheck_section(inputs.crosscheck, inputs.settings, inputs.figures))
    if inputs.defences:
        parts.append(inputs.defences)
    parts += [_checks_section(inputs.checks),
              _definitions_section(inputs.settings),
              _params_section(inputs.params)]
    return "\n\n".join(p.strip("\n") for p in parts if p) + "\n"


# ----------------------------------------------------------------------------- formatting

def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(header), line(["---"] * len(header))] + [line(r) for r in rows])


def _ci(value: float, lo: float, hi: float) -> str:
    """'v [lo, hi]' in %."""
    if value is None or not np.isfinite(value):
        return MISSING
    return f"{format_pct(value)} [{format_pct(lo)}, {format_pct(hi)}]"


def _diff_ci(value: float, lo: float, hi: float) -> str:
    """'+v [+lo, +hi]' in percentage points."""
    if value is None or not np.isfinite(value):
        return MISSING
    return f"{format_points(value)} [{format_points(lo)}, {format_points(hi)}]"


def _estimate_cell(row: pd.Series | None) -> str:
    """Mean over seeds [hierarchical CI] and the across-seed spread."""
    if row is None or not np.isfinite(row["value"]):
        return MISSING
    spread = f"sd {100 * row['seed_std']:.1f}" if row["n_seeds"] > 1 else "1 seed"
    return f"{_ci(row['value'], row['ci_low'], row['ci_high'])} ({spread})"


def _row(table: pd.DataFrame, arm: str, attack: str, eps: float, metric: str) -> pd.Series | None:
    sel = table[(table["arm"] == arm) & (table["attack"] == attack) & (table["eps"] == eps_key(eps))
                & (table["metric"] == metric)]
    return None if sel.empty else sel.iloc[0]


def _attacks(table: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(table["attack"]))
    return [a for a in ATTACK_NAMES if a in present] + sorted(set(present) - set(ATTACK_NAMES))


def _figure(figures: Mapping[str, str], key: str, caption: str) -> str:
    path = figures.get(key)
    return f"![{caption}]({path})\n\n*{caption}*" if path else ""


def _step(step: float) -> str:
    """A step size in [0,1] pixels as k/255 with up to three significant digits."""
    return f"{255 * step:.3g}/255"


# ----------------------------------------------------------------------------- sections

def _effect(f: Finding) -> str:
    if f.verdict == "not evaluated":
        return ""
    if f.claim == "b":
        return f"{_ci(f.effect, f.ci_low, f.ci_high)} %"
    return f"{_diff_ci(f.effect, f.ci_low, f.ci_high)} points"


def _findings_section(found: Sequence[Finding], checks: Sequence[Check]) -> str:
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


def _threat_section(t: ThreatModel, a: Analysis) -> str:
    grid = ", ".join(format_eps(e) for e in t.eps)
    steps = ", ".join(f"{_step(s)} at ε = {format_eps(e)}" for e, s in zip(t.eps, t.pgd_step_sizes))
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


def _table1_section(train: pd.DataFrame, a: Analysis, info: Mapping[str, ArmInfo], settings: Settings) -> str:
    arms = list(dict.fromkeys(list(train["arm"]) + a.arms))
    first = _attacks(a.arm_table)[0] if len(a.arm_table) else None
    rows = []
    for arm in arms:
        t = train[train["arm"] == arm]
        t = t.iloc[0] if not t.empty else None
        arm_info = info.get(arm)
        bn = MISSING if arm_info is None or arm_info.trains_batchnorm is None else (
            "yes" if arm_info.trains_batchnorm else "no")
        val = (MISSING if t is None or not np.isfinite(t["val_mean"])
               else f"{format_pct(t['val_mean'])} ± {format_pct(t['val_std'])} ({t['n_seeds']})")
        clean = _row(a.arm_table, arm, first, settings.report_eps, "clean_accuracy") if first else None
        rows.append([arm, arm_info.description if arm_info else MISSING, bn, val, _estimate_cell(clean),
                     _params_cell(t) if t is not None else MISSING, _best_epochs(t) if t is not None else MISSING])
    header = ["Arm", "Adaptation", "BatchNorm statistics re-estimated", "Val acc. (%) mean ± sd (seeds)",
              f"Clean acc. on the {a.n_images} attacked images (%) [95% CI]", "Trainable params",
              "Best epoch / epochs run, per seed"]
    return "\n\n".join([
        "## Table 1. Arms: accuracy, parameters, training",
        _md_table(header, rows),
        "Val acc.: the whole val split, per training seed, mean ± sample sd across seeds. Clean acc.: the attacked "
        "subset, mean over seeds with a hierarchical-bootstrap CI. BatchNorm statistics re-estimated: whether "
        "training updates BatchNorm running statistics (LoRA arms keep them frozen).",
    ])


def _training_section(figures: Mapping[str, str]) -> str:
    fig = _figure(figures, "training", "Holdout accuracy and train loss per epoch; one thin line per seed, colour "
                                       "per arm. The checkpoint kept is the best holdout epoch.")
    return f"## Training curves\n\n{fig}" if fig else ""


def _eps_table(table: pd.DataFrame, arms: Sequence[str], attack: str, metric: str) -> str:
    eps = sorted(set(table.loc[table["attack"] == attack, "eps"]))
    rows = [[arm] + [_estimate_cell(_row(table, arm, attack, e, metric)) for e in eps] for arm in arms]
    return _md_table(["Arm"] + [f"ε = {format_eps(e)}" for e in eps], rows)


def _certainty_table(table: pd.DataFrame, arms: Sequence[str], attack: str) -> str:
    eps = sorted(set(table.loc[table["attack"] == attack, "eps"]))
    rows = []
    for arm in arms:
        before = _row(table, arm, attack, eps[0], "certainty_clean") if eps else None
        rows.append([arm, _estimate_cell(before)] + [_estimate_cell(_row(table, arm, attack, e, "certainty_adv"))
                                                    for e in eps])
    return _md_table(["Arm", "Before the attack"] + [f"After, ε = {format_eps(e)}" for e in eps], rows)


def _seed_table(seeds: pd.DataFrame, arms: Sequence[str], attack: str, eps: float) -> str:
    sel = seeds[(seeds["attack"] == attack) & (seeds["eps"] == eps_key(eps))]
    rows = []
    for arm in arms:
        arm_rows = sel[sel["arm"] == arm]
        for seed in sorted(set(arm_rows["seed"])):
            cells = []
            for metric in ("clean_accuracy", "robust_accuracy", "attack_success_rate"):
                r = arm_rows[(arm_rows["seed"] == seed) & (arm_rows["metric"] == metric)]
                r = r.iloc[0] if not r.empty else None
                cells.append(MISSING if r is None else
                             f"{_ci(r['value'], r['ci_low'], r['ci_high'])} ({int(r['successes'])}/{int(r['n'])})")
            rows.append([arm, str(seed)] + cells)
    return _md_table(["Arm", "Seed", "Clean acc. (%) [Wilson]", "Robust acc. (%) [Wilson]",
                      "Success rate (%) [Wilson]"], rows)


def _attack_section(a: Analysis, attack: str, settings: Settings, figures: Mapping[str, str]) -> str:
    name = ATTACK_NAMES.get(attack, attack)
    table = a.arm_table
    arms = [arm for arm in a.arms if ((table["arm"] == arm) & (table["attack"] == attack)).any()]
    eps = format_eps(settings.report_eps)
    return "\n\n".join(p for p in [
        f"## {name}",
        "### Attack success rate (%), mean over seeds [95% CI] (across-seed sd)",
        "Each seed's rate is over that seed's clean-correct images.",
        _eps_table(table, arms, attack, "attack_success_rate"),
        _figure(figures, f"success_{attack}", f"{name} attack success rate vs ε, mean over seeds, 95% CI band"),
        "### Robust accuracy (%), mean over seeds [95% CI] (across-seed sd)",
        _eps_table(table, arms, attack, "robust_accuracy"),
        _figure(figures, f"robust_{attack}", f"{name} robust accuracy vs ε, mean over seeds, 95% CI band"),
        "### Certainty (%): mean max-softmax probability over all attacked images [95% CI] (across-seed sd)",
        _certainty_table(table, arms, attack),
        _figure(figures, f"certainty_{attack}", f"Certainty before/after {name} at ε = {eps}, 95% CI"),
        f"### Per seed at ε = {eps} (Wilson 95% intervals; successes/n)",
        _seed_table(a.seed_table, arms, attack, settings.report_eps),
    ] if p)


def _comparisons_section(a: Analysis, settings: Settings, figures: Mapping[str, str]) -> str:
    if a.comparisons.empty:
        return ("## Paired comparisons\n\nNot evaluated: the baseline arm (report.arms.baseline = "
                f"{settings.baseline}) has no attack results.")
    rows = [[r.arm, ATTACK_NAMES.get(r.attack, r.attack), format_eps(r.eps), r.metric.replace("_", " "),
             _diff_ci(r.diff, r.ci_low, r.ci_high), format_p(r.p), format_p(r.p_holm), str(r.n_images), r.verdict]
            for r in a.comparisons.itertuples()]
    sizes = "; ".join(f"{ATTACK_NAMES.get(att, att)}: " + ", ".join(f"{n} at ε = {e}" for e, n in per_eps.items())
                      for att, per_eps in a.common_sizes.items())
    return "\n\n".join(p for p in [
        f"## Paired comparisons against {settings.baseline}",
        f"Arm minus {settings.baseline} in percentage points on the same images. Robust accuracy: all "
        f"{a.n_images} attacked images. Success rate: the common-correct images, those every adapted arm "
        f"classifies correctly in every seed ({sizes}). CI: paired hierarchical bootstrap (images shared by both arms, seeds "
        f"resampled per arm). p: exact McNemar on per-image majority votes; Holm p: one Holm correction over all "
        f"{len(a.comparisons)} rows. Verdict 'higher'/'lower' needs the CI to exclude 0 and Holm p < "
        f"{settings.alpha:g}.",
        _md_table(["Arm", "Attack", "ε", "Metric", "Difference (points) [95% CI]", "p", "Holm p", "n images",
                   "Verdict"], rows),
        _figure(figures, "forest", f"Paired differences vs {settings.baseline} at ε = "
                                   f"{format_eps(settings.report_eps)}, 95% CI"),
    ] if p)


def _crosscheck_section(c: CrossCheck, settings: Settings, figures: Mapping[str, str]) -> str:
    from robustlora.analysis.crosscheck import attack_name, eps_text, transfer_source

    eps = eps_key(settings.report_eps)
    parts = ["## Beyond FGSM and PGD: AutoAttack, black-box and transfer attacks",
             "Each attack runs on the first images of the attack subset, for every arm and training seed, and is "
             "compared with PGD on the same images, paired (Carlini et al. 2019: an attack that sees less must not "
             "beat one that sees everything; the gradient-masking checks under Sanity checks test exactly that). "
             "Intervals: hierarchical bootstrap over images and seeds; p: exact McNemar on per-image majority votes "
             "(no multiplicity correction: these are checks, not findings). What ran:",
             "\n".join(f"- {attack_name(k)}: {v}" for k, v in c.settings.items())]
    v = c.versus[c.versus["metric"] == "robust_accuracy"]
    direct = v[v["attack"].map(lambda a: transfer_source(a) is None)]
    at_eps = direct[direct["eps"] == eps]
    aa = direct[(direct["attack"] == "autoattack")]
    rows = []
    for r in pd.concat([at_eps, aa[aa["eps"] != eps]]).itertuples():
        rows.append([attack_name(r.attack), r.arm, eps_text(r.eps), f"{r.n_images} × {r.n_seeds}",
                     _ci(r.value, r.ci_low, r.ci_high), _ci(r.pgd, r.pgd_ci_low, r.pgd_ci_high),
                     _diff_ci(r.diff, r.diff_ci_low, r.diff_ci_high), format_p(r.p)])
    if rows:
        parts += [f"### Robust accuracy per attack (ε = {format_eps(eps)}; AutoAttack at every ε it ran)",
                  _md_table(["Attack", "Arm", "ε", "Images × seeds", "Robust accuracy [95% CI]",
                             "PGD, same images [95% CI]", "Attack − PGD (points) [95% CI]", "p"], rows),
                  _figure(figures, "attacks", f"Robust accuracy per attack and arm at ε = {format_eps(eps)}")]
    curves = c.curves[c.curves["eps"].round(9) == eps]
    if not curves.empty:
        rows = []
        for (attack, arm), g in curves.groupby(["attack", "arm"], sort=False):
            g = g.sort_values("queries")
            marks = [q for q in (10, 100, 1000, 10000) if q <= g["queries"].max()] + [int(g["queries"].max())]
            cells = []
            for q in dict.fromkeys(marks):
                r = g[g["queries"] <= q].iloc[-1]
                cells.append(f"{format_pct(r['success_rate'])} % by {q}")
            if int(g["n"].iloc[0]) == 0:
                cells = ["no clean-correct image to attack"]
            elif g["success_rate"].iloc[-1] == 0:
                cells = ["none fooled within ε"]
            rows.append([attack_name(attack), arm, str(int(g["n"].iloc[0])), "; ".join(cells)])
        parts += [f"### Success rate vs query budget (ε = {format_eps(eps)})",
                  "Per image the first query that found an adversarial input within ε; shares of the clean-correct "
                  "seed · image pairs. The decision-based attacks and ZOO minimise a distance and are scored at "
                  "every ε from one run.",
                  _md_table(["Attack", "Arm", "Pairs", "Success within the budget"], rows),
                  _figure(figures, "queries", f"Success rate vs queries at ε = {format_eps(eps)}, 95% Wilson bands")]
    if not c.matrix.empty:
        pgd_ref = c.versus[(c.versus["metric"] == "attack_success_rate")
                           & c.versus["attack"].map(lambda a: transfer_source(a) is not None)]
        parts.append("### Transfer: PGD examples from a surrogate, evaluated on every arm")
        parts.append("Success rate on each target's clean-correct images, mean over the target's seeds [95% CI]; "
                     "the surrogate is the first seed of its arm, so its own row and column mix white-box and "
                     "transfer. Last row: the target's own PGD on the same images.")
        for e in sorted(set(c.matrix["eps"])):
            m = c.matrix[c.matrix["eps"] == e]
            targets = list(dict.fromkeys(m["target"]))
            rows = []
            for surrogate, g in m.groupby("surrogate", sort=False):
                cells = {r.target: _ci(r.success_rate, r.ci_low, r.ci_high) for r in g.itertuples()}
                rows.append([str(surrogate)] + [cells.get(t, MISSING) for t in targets])
            ref = pgd_ref[pgd_ref["eps"] == e].drop_duplicates("arm").set_index("arm")
            rows.append(["*white-box PGD*"] + [_ci(ref.loc[t, "pgd"], ref.loc[t, "pgd_ci_low"], ref.loc[t, "pgd_ci_high"])
                                                if t in ref.index else MISSING for t in targets])
            parts += [f"ε = {format_eps(e)}:", _md_table(["Surrogate \\ target"] + targets, rows),
                      _figure(figures, f"transfer_{format_eps(e)}", f"Transfer success at ε = {format_eps(e)}")]
    return "\n\n".join(p for p in parts if p)


def _checks_section(checks: Sequence[Check]) -> str:
    counts = count(checks)
    flagged = len(checks) - counts["passed"]
    summary = (f"All {len(checks)} checks passed." if not flagged else
               f"**{flagged} of {len(checks)} checks flagged: " +
               ", ".join(f"{counts[s]} {s}" for s in STATUSES if s != "passed" and counts[s]) + ".**")
    marker = {"passed": "passed", "failed": "**FAILED**", "warning": "**WARNING**",
              "not evaluated": "**NOT EVALUATED**"}
    # flagged checks first, so a problem is never buried below a long list of passes
    ordered = sorted(checks, key=lambda c: c.status == "passed")
    rows = [[marker[c.status], c.title, c.arm, "—" if c.seed is None else str(c.seed), c.detail] for c in ordered]
    return "\n\n".join([
        "## Sanity checks",
        summary,
        _md_table(["Result", "Check", "Arm", "Seed", "Detail"], rows) if rows else "No checks ran.",
        "After Carlini et al. 2019, “On Evaluating Adversarial Robustness”: per arm and seed, on the same images; "
        "tolerance one image. 'Not evaluated' means the inputs for the check are missing, never that it passed.",
    ])


def _definitions_section(settings: Settings) -> str:
    level = f"{100 * settings.confidence:.0f}%"
    return "\n".join([
        "## Definitions",
        "",
        "- ε: the L∞ budget in [0,1] pixel units, written k/255.",
        "- Clean accuracy: share of attacked images classified correctly before the attack.",
        "- Robust accuracy: share of attacked images classified correctly before AND after the attack (RobustBench).",
        "- Attack success rate: among the images a model classifies correctly before the attack, the share it "
        "misclassifies after it; per seed over that seed's clean-correct images; in paired comparisons over the "
        "common-correct images.",
        "- Certainty: mean max-softmax probability over all attacked images, before / after the attack.",
        "- Arm value: mean over training seeds of the per-seed value; sd: sample sd across seeds.",
        f"- Per-seed intervals: Wilson score ({level}).",
        f"- Arm intervals: hierarchical percentile bootstrap ({settings.n_boot} resamples, seed {settings.seed}) "
        "drawing seeds and images with replacement; a success rate's per-seed ratio is bootstrapped through its "
        "first-order linearisation. A share's interval is widened to contain the Wilson interval of the arm's mean "
        "share on its smallest per-seed n, so it never has zero width at 0 % or 100 %.",
        "- Paired differences: the same images drawn for both arms, each arm's seeds drawn independently. Where no "
        "image differs (the bootstrap sees no variation), the interval is the Wilson bound of the N images, "
        "±1.96²/(N + 1.96²): never zero width.",
        "- McNemar: exact two-sided binomial test on the images whose majority vote over seeds differs between the "
        "two arms (ties dropped).",
        f"- Holm: step-down correction over a family of p-values; findings and the comparisons table are separate "
        f"families; significance at α = {settings.alpha:g}.",
        f"- Claim (b): supported when the whole CI lies within {format_pct(settings.reference_fgsm_asr)} ± "
        f"{format_pct(settings.tolerance)} % (equivalence band), contradicted when it lies entirely outside.",
    ])


def _json_default(obj: Any) -> Any:
    return obj.item() if hasattr(obj, "item") else str(obj)  # numpy scalars and other odd values


def _render_params(params: Mapping[str, Any], indent: int = 0) -> list[str]:
    """Nested params as YAML-like lines (JSON scalars and lists), in the caller's key order."""
    lines = []
    for key, value in params.items():
        if isinstance(value, Mapping) and value:
            lines.append(f"{' ' * indent}{key}:")
            lines += _render_params(value, indent + 2)
        else:
            lines.append(f"{' ' * indent}{key}: {json.dumps(value, default=_json_default, ensure_ascii=False)}")
    return lines


def _params_section(params: Mapping[str, Any]) -> str:
    body = "\n".join(_render_params(params)) if params else "# (no parameters were passed)"
    return f"## Parameters\n\nEvery value of params.yaml as resolved for this run:\n\n```yaml\n{body}\n```"
