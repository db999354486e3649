"""Signs of gradient masking in the attack results (Carlini et al. 2019, section 5; fra31/auto-attack's checks.py).

Per arm, on the same images as PGD: PGD with more steps and restarts (the convergence check, attack `pgd_strong`)
must not fool more images than PGD, nor may AutoAttack leave more images correct, nor may an attack that sees less
(black-box, transfer) beat PGD — each beyond the noise of a one-sided exact binomial test on the discordant
seed·image pairs; every attack must reach (almost) full success at a large ε; the input gradient at a clean image is
non-zero and the model returns logits. Results are `Check`s (robustlora.analysis.checks), ε in [0,1] pixel units.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Sequence

import pandas as pd

from robustlora.analysis.checks import LARGE_EPS, MAX_ZERO_GRADIENT_SHARE, MIN_SANITY_SUCCESS, SLACK_IMAGES, Check
from robustlora.analysis.names import BLACK_BOX, TRANSFER_PREFIX, attack_name, convergence_title
from robustlora.analysis.tables import with_eps_key
from robustlora.formatting import format_eps, format_pct

__all__ = ["masking_checks"]


def masking_checks(results: pd.DataFrame, extra: pd.DataFrame | None = None, *, alpha: float = 0.05,
                   slack_images: int = SLACK_IMAGES, budget_limited: Sequence[str] = ("zoo",),
                   convergence: Any = None) -> list[Check]:
    """Signs of gradient masking, each a Check per arm (pooled over seeds) unless stated.

    ``results``: the attack stage's rows (fgsm, pgd, pgd_strong, with the diagnostic columns); ``extra``: the rows
    of AutoAttack, the black-box attacks and transfer (attack names as robustlora.analysis.names). A weaker attack
    beating a stronger one is judged per cell (arm x attack x ε) on the seed x image pairs of PGD's and the other
    attack's outcomes on the same images: 'failed' when the one-sided exact binomial test on the discordant pairs
    gives p < ``alpha`` (more than the noise), 'warning' when it is ahead by more than ``slack_images`` but not
    significantly. ``budget_limited``: attacks whose default budget need not reach 100 % at a large ε (a warning,
    not a failure). ``convergence``: the attack.convergence params that made `pgd_strong` (None: the defaults), for
    the convergence check's words.
    """
    checks: list[Check] = []
    table = with_eps_key(results)
    checks += _diagnostics(table)
    pgd = table[table["attack"] == "pgd"]
    strong = table[table["attack"] == "pgd_strong"]
    if not strong.empty:
        about = None if convergence is None else convergence_title(convergence)
        checks += [replace(c, about=about) for c in _versus(pgd, strong, "convergence", alpha, slack_images,
                                                            stronger_is="other", convergence=convergence)]
    if extra is None or extra.empty:
        return checks
    other = with_eps_key(extra)
    for attack, rows in other.groupby("attack", sort=False):
        attack = str(attack)
        if attack == "autoattack":
            checks += _versus(pgd, rows, "autoattack_vs_pgd", alpha, slack_images, stronger_is="other")
        elif attack in BLACK_BOX:
            checks += _versus(pgd, rows, "blackbox_vs_pgd", alpha, slack_images, stronger_is="pgd")
        elif attack.startswith(TRANSFER_PREFIX):
            checks += _versus(pgd, rows, "transfer_vs_pgd", alpha, slack_images, stronger_is="pgd")
        checks += _large_eps(attack, rows, attack in budget_limited)
    return checks


def _one_sided_binomial(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2): how surprising k of n discordant pairs on one side are."""
    return float(sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n) if n else 1.0


def _versus(pgd: pd.DataFrame, other: pd.DataFrame, name: str, alpha: float, slack_images: int,
            stronger_is: str, convergence: Any = None) -> list[Check]:
    """Per arm: is the attack expected to be weaker (stronger_is='pgd') ever significantly ahead, per ε?"""
    key = ["variant", "seed", "eps_key", "image"]
    merged = other.merge(pgd[key + ["adv_correct"]], on=key, how="inner", suffixes=("", "_pgd"))
    merged = merged[merged["clean_correct"]]
    checks = []
    for arm, rows in merged.groupby("variant", sort=False):
        attack = str(rows["attack"].iloc[0])
        cells, failures, warnings = [], [], []
        for eps, g in rows.groupby("eps_key", sort=True):
            other_fooled, pgd_fooled = ~g["adv_correct"], ~g["adv_correct_pgd"]
            other_only, pgd_only = int((other_fooled & ~pgd_fooled).sum()), int((pgd_fooled & ~other_fooled).sum())
            # the side that must not be ahead: the weaker attack (black-box, transfer) or PGD (vs a stronger one)
            ahead, behind = (other_only, pgd_only) if stronger_is == "pgd" else (pgd_only, other_only)
            if name == "convergence":
                ahead, behind = other_only, pgd_only  # more effort must not find more than the noise
            p = _one_sided_binomial(ahead, ahead + behind)
            text = (f"ε = {format_eps(eps)}: {ahead} vs {behind} of {len(g)} seed·image pairs (p = {p:.3g}); success "
                    f"{format_pct(float(other_fooled.mean()))} % vs PGD {format_pct(float(pgd_fooled.mean()))} %")
            cells.append(text)
            if ahead > behind and p < alpha:
                failures.append(text)
            elif ahead > behind + slack_images:
                warnings.append(text)
        label = attack_name(attack, convergence)
        if failures:
            checks.append(Check(name, str(arm), None, "failed", f"{label}: " + "; ".join(failures)
                                + " — " + _MASKING_HINT[name]))
        elif warnings:
            checks.append(Check(name, str(arm), None, "warning", f"{label}, ahead but within the noise: "
                                + "; ".join(warnings)))
        else:
            checks.append(Check(name, str(arm), None, "passed", f"{label}: " + "; ".join(cells)))
    return checks


_MASKING_HINT = {
    "blackbox_vs_pgd": "an attack without gradients beats PGD: possible gradient masking",
    "transfer_vs_pgd": "examples from another model beat PGD on this one: possible gradient masking",
    "autoattack_vs_pgd": "AutoAttack leaves more images correct than PGD: a bug, or AutoAttack's budget is too small",
    "convergence": "PGD had not converged: raise attack.pgd.steps / restarts before trusting its numbers",
}


def _diagnostics(table: pd.DataFrame) -> list[Check]:
    """Per arm x seed, from the clean rows: zero input gradients, and outputs that are not logits."""
    if "clean_grad_norm" not in table.columns or "clean_output" not in table.columns:
        return [Check("zero_gradients", "all", None, "not evaluated",
                      "the attack results have no gradient diagnostics; rerun the attack stage")]
    checks = []
    for (arm, seed), rows in table.groupby(["variant", "seed"], sort=False):
        clean = rows.drop_duplicates("image")
        zero = float((clean["clean_grad_norm"] == 0).mean())
        detail = (f"{format_pct(zero)} % of {len(clean)} clean images have an all-zero input gradient "
                  f"(median L1 norm {float(clean['clean_grad_norm'].median()):.3g})")
        status = "failed" if zero > MAX_ZERO_GRADIENT_SHARE else "warning" if zero > 0 else "passed"
        if status == "failed":
            detail += " — gradient attacks get no signal there: gradient masking (e.g. a quantised input)"
        checks.append(Check("zero_gradients", str(arm), int(seed), status, detail))
        kinds = clean["clean_output"].value_counts()
        if set(kinds.index) == {"logits"}:
            checks.append(Check("outputs_are_logits", str(arm), int(seed), "passed", f"{len(clean)} images"))
        else:
            shown = ", ".join(f"{k}: {v}" for k, v in kinds.items())
            checks.append(Check("outputs_are_logits", str(arm), int(seed), "failed",
                                f"outputs are {shown} — cross-entropy on probabilities flattens the loss and masks "
                                "gradients; return logits and keep the softmax out of the model"))
    return checks


def _large_eps(attack: str, rows: pd.DataFrame, budget_limited: bool) -> list[Check]:
    large = rows[(rows["eps_key"] >= LARGE_EPS) & rows["clean_correct"]]
    if large.empty:
        return []
    checks = []
    for arm, g in large.groupby("variant", sort=False):
        rate = float((~g["adv_correct"]).mean())
        top = float(g["eps_key"].max())
        detail = (f"{attack_name(attack)}: success {format_pct(rate)} % ({int((~g['adv_correct']).sum())}/{len(g)}"
                  f" seed·image pairs) at ε = {'1 (unbounded)' if top >= 1 else format_eps(top)}")
        if rate >= MIN_SANITY_SUCCESS:
            checks.append(Check("large_eps", str(arm), None, "passed", detail))
        elif budget_limited:
            checks.append(Check("large_eps", str(arm), None, "warning",
                                detail + " — its query budget is too small to get there (raise it on a GPU)"))
        else:
            checks.append(Check("large_eps", str(arm), None, "failed",
                                detail + " — an attack that cannot fool an unbounded threat model points to a bug "
                                "or gradient masking"))
    return checks
