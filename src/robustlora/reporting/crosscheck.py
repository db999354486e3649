"""The study report's 'Beyond FGSM and PGD' section: AutoAttack, the black-box attacks and transfer, each beside PGD.

Markdown over robustlora.analysis.crosscheck's tables (versus_pgd, query_curves, transfer_matrix): robust accuracy per
attack with PGD on the same images and the paired difference, success rate by query budget, and the transfer matrix
per ε. Shares in % with one decimal, differences in signed percentage points, ε in [0,1] pixel units as k/255.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import pandas as pd

from robustlora.analysis import Settings, attack_name, transfer_source
from robustlora.formatting import (EPS_DECIMALS, MISSING, difference_cell, eps_key, eps_text, format_eps, format_p,
                                   format_pct, interval_cell, md_table)
from robustlora.reporting.cells import figure_link, transfer_figure_key

__all__ = ["CrossCheck", "crosscheck_section"]

QUERY_MARKS = (10, 100, 1000, 10000)  # the query budgets the table reports, besides each attack's largest


@dataclass(frozen=True)
class CrossCheck:
    """The attacks beyond FGSM and PGD (robustlora.analysis.crosscheck tables) and what ran, in words."""

    versus: pd.DataFrame  # crosscheck.versus_pgd
    curves: pd.DataFrame  # crosscheck.query_curves
    matrix: pd.DataFrame  # crosscheck.transfer_matrix
    settings: Mapping[str, str]  # attack -> one line on its settings (budget, images)


def _versus_table(c: CrossCheck, eps: float, figures: Mapping[str, str]) -> list[str]:
    """Robust accuracy per direct attack at the report's ε (AutoAttack at every ε), beside PGD on its images."""
    v = c.versus[c.versus["metric"] == "robust_accuracy"]
    direct = v[v["attack"].map(lambda a: transfer_source(a) is None)]
    at_eps = direct[direct["eps"] == eps]
    aa = direct[(direct["attack"] == "autoattack")]
    rows = []
    for r in pd.concat([at_eps, aa[aa["eps"] != eps]]).itertuples():
        rows.append([attack_name(r.attack), r.arm, eps_text(r.eps), f"{r.n_images} × {r.n_seeds}",
                     interval_cell(r.value, r.ci_low, r.ci_high), interval_cell(r.pgd, r.pgd_ci_low, r.pgd_ci_high),
                     difference_cell(r.diff, r.diff_ci_low, r.diff_ci_high), format_p(r.p)])
    if not rows:
        return []
    return [f"### Robust accuracy per attack (ε = {format_eps(eps)}; AutoAttack at every ε it ran)",
            md_table(["Attack", "Arm", "ε", "Images × seeds", "Robust accuracy [95% CI]",
                      "PGD, same images [95% CI]", "Attack − PGD (points) [95% CI]", "p"], rows),
            figure_link(figures, "attacks", f"Robust accuracy per attack and arm at ε = {format_eps(eps)}")]


def _budget_cells(g: pd.DataFrame) -> list[str]:
    """One attack and arm's success rate at each reported budget up to its largest (g: its curve, by queries)."""
    marks = [q for q in QUERY_MARKS if q <= g["queries"].max()] + [int(g["queries"].max())]
    cells = []
    for q in dict.fromkeys(marks):
        r = g[g["queries"] <= q].iloc[-1]
        cells.append(f"{format_pct(r['success_rate'])} % by {q}")
    if int(g["n"].iloc[0]) == 0:
        return ["no clean-correct image to attack"]
    if g["success_rate"].iloc[-1] == 0:
        return ["none fooled within ε"]
    return cells


def _queries_table(c: CrossCheck, eps: float, figures: Mapping[str, str]) -> list[str]:
    """Success rate by query budget at the report's ε, per black-box attack and arm."""
    curves = c.curves[c.curves["eps"].round(EPS_DECIMALS) == eps]
    if curves.empty:
        return []
    rows = []
    for (attack, arm), g in curves.groupby(["attack", "arm"], sort=False):
        g = g.sort_values("queries")
        rows.append([attack_name(attack), arm, str(int(g["n"].iloc[0])), "; ".join(_budget_cells(g))])
    return [f"### Success rate vs query budget (ε = {format_eps(eps)})",
            "Per image the first query that found an adversarial input within ε; shares of the clean-correct "
            "seed · image pairs. The decision-based attacks and ZOO minimise a distance and are scored at "
            "every ε from one run.",
            md_table(["Attack", "Arm", "Pairs", "Success within the budget"], rows),
            figure_link(figures, "queries", f"Success rate vs queries at ε = {format_eps(eps)}, 95% Wilson bands")]


def _transfer_tables(c: CrossCheck, figures: Mapping[str, str]) -> list[str]:
    """Per ε the surrogate x target success matrix, with each target's own white-box PGD as the last row."""
    if c.matrix.empty:
        return []
    pgd_ref = c.versus[(c.versus["metric"] == "attack_success_rate")
                       & c.versus["attack"].map(lambda a: transfer_source(a) is not None)]
    parts = ["### Transfer: PGD examples from a surrogate, evaluated on every arm",
             "Success rate on each target's clean-correct images, mean over the target's seeds [95% CI]; "
             "the surrogate is the first seed of its arm, so its own row and column mix white-box and "
             "transfer. Last row: the target's own PGD on the same images."]
    for e in sorted(set(c.matrix["eps"])):
        m = c.matrix[c.matrix["eps"] == e]
        targets = list(dict.fromkeys(m["target"]))
        rows = []
        for surrogate, g in m.groupby("surrogate", sort=False):
            cells = {r.target: interval_cell(r.success_rate, r.ci_low, r.ci_high) for r in g.itertuples()}
            rows.append([str(surrogate)] + [cells.get(t, MISSING) for t in targets])
        ref = pgd_ref[pgd_ref["eps"] == e].drop_duplicates("arm").set_index("arm")
        rows.append(["*white-box PGD*"] + [interval_cell(ref.loc[t, "pgd"], ref.loc[t, "pgd_ci_low"],
                                                         ref.loc[t, "pgd_ci_high"])
                                           if t in ref.index else MISSING for t in targets])
        parts += [f"ε = {format_eps(e)}:", md_table(["Surrogate \\ target"] + targets, rows),
                  figure_link(figures, transfer_figure_key(e), f"Transfer success at ε = {format_eps(e)}")]
    return parts


def crosscheck_section(c: CrossCheck, settings: Settings, figures: Mapping[str, str]) -> str:
    """'## Beyond FGSM and PGD': what ran, robust accuracy vs PGD, success by query budget, transfer."""
    eps = eps_key(settings.report_eps)
    parts = ["## Beyond FGSM and PGD: AutoAttack, black-box and transfer attacks",
             "Each attack runs on the first images of the attack subset, for every arm and training seed, and is "
             "compared with PGD on the same images, paired (Carlini et al. 2019: an attack that sees less must not "
             "beat one that sees everything; the gradient-masking checks under Sanity checks test exactly that). "
             "Intervals: hierarchical bootstrap over images and seeds; p: exact McNemar on per-image majority votes "
             "(no multiplicity correction: these are checks, not findings). What ran:",
             "\n".join(f"- {attack_name(k)}: {v}" for k, v in c.settings.items())]
    parts += _versus_table(c, eps, figures) + _queries_table(c, eps, figures) + _transfer_tables(c, figures)
    return "\n\n".join(p for p in parts if p)
