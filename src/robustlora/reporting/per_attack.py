"""The study report's FGSM and PGD results: one section per attack, then the paired comparisons against the baseline.

Per attack: success rate, robust accuracy and certainty per arm and ε (mean over seeds [hierarchical 95 % CI]
(across-seed sd)), and per seed at the report's ε with Wilson intervals; then every arm minus the baseline, paired on
images, with its McNemar and Holm p. The worst case over attacks (attack `worst_case`, robustlora.analysis.tables
.worst_case_rows) gets its own section with every attack's robust accuracy beside it and, when given, the pairs it
fooled beyond PGD by attack. Pure functions of robustlora.analysis.Analysis; shares in % with one decimal,
differences in signed percentage points, ε in [0,1] pixel units as k/255.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd

from robustlora.analysis import ATTACK_NAMES, Analysis, Settings, attack_name
from robustlora.analysis.tables import WORST_CASE, WORST_CASE_NAME
from robustlora.formatting import MISSING, difference_cell, eps_key, format_eps, format_p, interval_cell, md_table
from robustlora.reporting.cells import estimate_cell, figure_link, find_row

__all__ = ["attack_section", "comparisons_section", "display_name"]


def display_name(attack: str) -> str:
    """'FGSM', 'PGD', 'Worst case over attacks', 'AutoAttack', ..."""
    return WORST_CASE_NAME if attack == WORST_CASE else ATTACK_NAMES.get(attack, attack_name(attack))


def _eps_table(table: pd.DataFrame, arms: Sequence[str], attack: str, metric: str) -> str:
    eps = sorted(set(table.loc[table["attack"] == attack, "eps"]))
    rows = [[arm] + [estimate_cell(find_row(table, arm, attack, e, metric)) for e in eps] for arm in arms]
    return md_table(["Arm"] + [f"ε = {format_eps(e)}" for e in eps], rows)


def _certainty_table(table: pd.DataFrame, arms: Sequence[str], attack: str) -> str:
    eps = sorted(set(table.loc[table["attack"] == attack, "eps"]))
    rows = []
    for arm in arms:
        before = find_row(table, arm, attack, eps[0], "certainty_clean") if eps else None
        rows.append([arm, estimate_cell(before)] + [estimate_cell(find_row(table, arm, attack, e, "certainty_adv"))
                                                    for e in eps])
    return md_table(["Arm", "Before the attack"] + [f"After, ε = {format_eps(e)}" for e in eps], rows)


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
                cells.append(MISSING if r is None else f"{interval_cell(r['value'], r['ci_low'], r['ci_high'])} "
                                                       f"({int(r['successes'])}/{int(r['n'])})")
            rows.append([arm, str(seed)] + cells)
    return md_table(["Arm", "Seed", "Clean acc. (%) [Wilson]", "Robust acc. (%) [Wilson]",
                     "Success rate (%) [Wilson]"], rows)


def _beside_table(a: Analysis, arms: Sequence[str], eps: float) -> str:
    """Per arm at ε: the worst case's robust accuracy, then each attack's own, from the arm table."""
    table = a.arm_table
    attacks = [x for x in dict.fromkeys(table["attack"]) if x != WORST_CASE]
    rows = [[arm] + [estimate_cell(find_row(table, arm, x, eps, "robust_accuracy")) for x in [WORST_CASE, *attacks]]
            for arm in arms]
    return md_table(["Arm", "Worst case"] + [display_name(x) for x in attacks], rows)


def _beyond_lines(beyond: pd.DataFrame | None, arms: Sequence[str], eps: float) -> str:
    """Per arm at ε: clean-correct seed·image pairs PGD left correct that other attacks fooled, by attack."""
    if beyond is None:
        return ""
    at = beyond[beyond["eps"].map(eps_key) == eps_key(eps)]
    lines = []
    for arm in arms:
        g = at[at["variant"] == arm]
        said = ", ".join(f"{display_name(r.attack)} {int(r.pairs)}" for r in g.itertuples())
        lines.append(f"- {arm}: " + (f"{int(g['pairs'].sum())} of {int(g['of'].iloc[0])} clean-correct seed·image "
                                     f"pairs ({said})" if len(g) else "none"))
    return ("Pairs PGD left correct that another attack fooled (the decisive attack; PGD counts first when it "
            f"fooled the image), ε = {format_eps(eps)}:\n\n" + "\n".join(lines))


def attack_section(a: Analysis, attack: str, settings: Settings, figures: Mapping[str, str],
                   beyond: pd.DataFrame | None = None) -> str:
    """'## FGSM' (or PGD, ...): the attack's tables per arm and ε, their figures, and its per-seed table.

    The worst case (attack `worst_case`) opens with how it is made, every attack's robust accuracy beside it at
    the report's ε and, with ``beyond`` (robustlora.analysis.tables.beyond_pgd), the pairs it fooled beyond PGD."""
    name = display_name(attack)
    table = a.arm_table
    arms = [arm for arm in a.arms if ((table["arm"] == arm) & (table["attack"] == attack)).any()]
    eps = format_eps(settings.report_eps)
    intro = [] if attack != WORST_CASE else [
        "The headline robust accuracy and success rate (RobustBench's convention): an image counts as robust only if "
        "every attack that ran on it at that ε left it correct — FGSM and PGD on every image; the convergence "
        "check, AutoAttack, the black-box attacks and transfer on the first images (some on the first seed only), "
        "so elsewhere the worst case is over FGSM and PGD. ε: the grid where PGD ran. Each attack's own figure "
        "below and in its section; AutoAttack, black-box and transfer on their own images in 'Beyond FGSM and PGD'.",
        f"### Robust accuracy (%) at ε = {eps}: worst case and each attack alone, on all attacked images",
        _beside_table(a, arms, settings.report_eps),
        _beyond_lines(beyond, arms, settings.report_eps)]
    return "\n\n".join(p for p in [
        f"## {name}", *intro,
        "### Attack success rate (%), mean over seeds [95% CI] (across-seed sd)",
        "Each seed's rate is over that seed's clean-correct images.",
        _eps_table(table, arms, attack, "attack_success_rate"),
        figure_link(figures, f"success_{attack}", f"{name} attack success rate vs ε, mean over seeds, 95% CI band"),
        "### Robust accuracy (%), mean over seeds [95% CI] (across-seed sd)",
        _eps_table(table, arms, attack, "robust_accuracy"),
        figure_link(figures, f"robust_{attack}", f"{name} robust accuracy vs ε, mean over seeds, 95% CI band"),
        "### Certainty (%): mean max-softmax probability over all attacked images [95% CI] (across-seed sd)",
        _certainty_table(table, arms, attack),
        figure_link(figures, f"certainty_{attack}", f"Certainty before/after {name} at ε = {eps}, 95% CI"),
        f"### Per seed at ε = {eps} (Wilson 95% intervals; successes/n)",
        _seed_table(a.seed_table, arms, attack, settings.report_eps),
    ] if p)


def comparisons_section(a: Analysis, settings: Settings, figures: Mapping[str, str]) -> str:
    """'## Paired comparisons against <baseline>': every arm minus the baseline, one Holm family over all rows."""
    if a.comparisons.empty:
        return ("## Paired comparisons\n\nNot evaluated: the baseline arm (report.arms.baseline = "
                f"{settings.baseline}) has no attack results.")
    rows = [[r.arm, ATTACK_NAMES.get(r.attack, r.attack), format_eps(r.eps), r.metric.replace("_", " "),
             difference_cell(r.diff, r.ci_low, r.ci_high), format_p(r.p), format_p(r.p_holm), str(r.n_images),
             r.verdict]
            for r in a.comparisons.itertuples()]
    sizes = "; ".join(f"{ATTACK_NAMES.get(att, att)}: " + ", ".join(f"{n} at ε = {e}" for e, n in per_eps.items())
                      for att, per_eps in a.common_sizes.items())
    return "\n\n".join(p for p in [
        f"## Paired comparisons against {settings.baseline}",
        f"Arm minus {settings.baseline} in percentage points on the same images. Robust accuracy: all "
        f"{a.n_images} attacked images. Success rate: the common-correct images, those every adapted arm "
        f"classifies correctly in every seed ({sizes}). CI: paired hierarchical bootstrap (images shared by both "
        "arms, seeds resampled per arm). p: exact McNemar on per-image majority votes; Holm p: one Holm correction "
        f"over all {len(a.comparisons)} rows. Verdict 'higher'/'lower' needs the CI to exclude 0 and Holm p < "
        f"{settings.alpha:g}.",
        md_table(["Arm", "Attack", "ε", "Metric", "Difference (points) [95% CI]", "p", "Holm p", "n images",
                  "Verdict"], rows),
        figure_link(figures, "forest", f"Paired differences vs {settings.baseline} at ε = "
                                       f"{format_eps(settings.report_eps)}, 95% CI"),
    ] if p)
