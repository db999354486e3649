"""Signs of gradient masking and of an unconverged PGD in the attack results (Carlini et al. 2019, section 5;
fra31/auto-attack's checks.py).

Per arm, on the same images as PGD, in both directions: PGD with more steps and restarts (the convergence check,
attack `pgd_strong`) and AutoAttack must not fool more images than PGD (else PGD has not converged and its robust
accuracy is an overestimate: a failure), nor may AutoAttack leave more images correct than PGD, nor may an attack
that sees less (black-box, transfer) beat PGD — each beyond the noise of a one-sided exact binomial test on the
discordant seed·image pairs; every attack must reach (almost) full success at a large ε; the input gradient at a
clean image is non-zero and the model returns logits. Results are `Check`s (robustlora.analysis.checks), ε in [0,1]
pixel units.

A paired comparison reads 'not informative' (never 'passed') when it has fewer informative pairs than the test
needs: the pairs on which the attack that must not be ahead could be (clean-correct seed·image pairs the other
attack left correct); with k of them the smallest possible p is 0.5^k, so p < α needs k ≥ `min_informative_pairs(α)`
(5 at α = 0.05). Cells at ε ≥ LARGE_EPS (unbounded in practice, where every attack should fool everything) are left
to the large-ε check.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Sequence

import pandas as pd
from scipy.stats import binomtest

from robustlora.analysis.checks import LARGE_EPS, MAX_ZERO_GRADIENT_SHARE, MIN_SANITY_SUCCESS, SLACK_IMAGES, Check
from robustlora.analysis.names import BLACK_BOX, TRANSFER_PREFIX, attack_name, convergence_title
from robustlora.analysis.tables import with_eps_key
from robustlora.formatting import format_eps, format_pct

__all__ = ["masking_checks", "min_informative_pairs"]


def masking_checks(results: pd.DataFrame, extra: pd.DataFrame | None = None, *, alpha: float = 0.05,
                   slack_images: int = SLACK_IMAGES, budget_limited: Sequence[str] = ("zoo",),
                   convergence: Any = None) -> list[Check]:
    """Signs of gradient masking, each a Check per arm (pooled over seeds) unless stated.

    ``results``: the attack stage's rows (fgsm, pgd, pgd_strong, with the diagnostic columns); ``extra``: the rows
    of AutoAttack, the black-box attacks and transfer (attack names as robustlora.analysis.names). A weaker attack
    beating a stronger one, or a stronger one (AutoAttack, `pgd_strong`) beating PGD, is judged per cell (arm x
    attack x ε) on the seed x image pairs of PGD's and the other attack's outcomes on the same images: 'failed' when
    the one-sided exact binomial test on the discordant pairs gives p < ``alpha`` (more than the noise), 'warning'
    when it is ahead by more than ``slack_images`` but not significantly, 'not informative' when the cell has fewer
    informative pairs than `min_informative_pairs(alpha)`; the arm's check takes its worst cell (failed, warning,
    not informative, passed). ``budget_limited``: attacks whose default budget need not reach 100 % at a large ε
    (a warning, not a failure). ``convergence``: the attack.convergence params that made `pgd_strong` (None: the
    defaults), for the convergence check's words.
    """
    checks: list[Check] = []
    table = with_eps_key(results)
    checks += _diagnostics(table)
    pgd = table[table["attack"] == "pgd"]
    strong = table[table["attack"] == "pgd_strong"]
    if not strong.empty:
        about = None if convergence is None else convergence_title(convergence)
        checks += [replace(c, about=about) for c in _versus(pgd, strong, "convergence", alpha, slack_images,
                                                            must_not_lead="other", convergence=convergence)]
    if extra is None or extra.empty:
        return checks
    other = with_eps_key(extra)
    for attack, rows in other.groupby("attack", sort=False):
        attack = str(attack)
        if attack == "autoattack":
            checks += _versus(pgd, rows, "autoattack_vs_pgd", alpha, slack_images, must_not_lead="pgd")
            checks += _versus(pgd, rows, "pgd_vs_autoattack", alpha, slack_images, must_not_lead="other")
        elif attack in BLACK_BOX:
            checks += _versus(pgd, rows, "blackbox_vs_pgd", alpha, slack_images, must_not_lead="other")
        elif attack.startswith(TRANSFER_PREFIX):
            checks += _versus(pgd, rows, "transfer_vs_pgd", alpha, slack_images, must_not_lead="other")
        checks += _large_eps(attack, rows, attack in budget_limited)
    return checks


def _one_sided_binomial(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2): how surprising k of n discordant pairs on one side are (scipy's exact
    one-sided binomial test)."""
    return float(binomtest(k, n, 0.5, alternative="greater").pvalue) if n else 1.0


def min_informative_pairs(alpha: float) -> int:
    """The fewest pairs on which one side can be ahead for the one-sided exact binomial test to reach p < alpha:
    the smallest k with 0.5^k < alpha (5 at alpha 0.05)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return math.floor(math.log2(1 / alpha)) + 1


_RANK = {"failed": 0, "warning": 1, "not informative": 2, "passed": 3}


def _versus(pgd: pd.DataFrame, other: pd.DataFrame, name: str, alpha: float, slack_images: int,
            must_not_lead: str, convergence: Any = None) -> list[Check]:
    """Per arm: is the attack that must not be ahead ever significantly ahead, per ε below LARGE_EPS?

    must_not_lead='other': the other attack must not fool more pairs than PGD (black-box and transfer: masking;
    AutoAttack and pgd_strong: PGD's convergence); 'pgd': PGD must not fool more than the other (AutoAttack).
    """
    key = ["variant", "seed", "eps_key", "image"]
    merged = other.merge(pgd[key + ["adv_correct"]], on=key, how="inner", suffixes=("", "_pgd"))
    merged = merged[merged["clean_correct"].astype(bool) & (merged["eps_key"] < LARGE_EPS)]
    need = min_informative_pairs(alpha)
    checks = []
    for arm, rows in merged.groupby("variant", sort=False):
        attack = str(rows["attack"].iloc[0])
        cells: dict[str, list[str]] = {s: [] for s in _RANK}
        for eps, g in rows.groupby("eps_key", sort=True):
            other_fooled, pgd_fooled = ~g["adv_correct"].astype(bool), ~g["adv_correct_pgd"].astype(bool)
            other_only, pgd_only = int((other_fooled & ~pgd_fooled).sum()), int((pgd_fooled & ~other_fooled).sum())
            # the side that must not be ahead, and the pairs on which it could be: those the other side left correct
            if must_not_lead == "other":
                ahead, behind, informative = other_only, pgd_only, int((~pgd_fooled).sum())
            else:
                ahead, behind, informative = pgd_only, other_only, int((~other_fooled).sum())
            p = _one_sided_binomial(ahead, ahead + behind)
            text = (f"ε = {format_eps(eps)}: {ahead} vs {behind} of {len(g)} seed·image pairs (p = {p:.3g}); success "
                    f"{format_pct(float(other_fooled.mean()))} % vs PGD {format_pct(float(pgd_fooled.mean()))} %")
            if ahead > behind and p < alpha:
                cells["failed"].append(text)
            elif ahead > behind + slack_images:
                cells["warning"].append(text)
            elif informative < need:
                cells["not informative"].append(
                    f"{text}; {informative} informative pair{'s' * (informative != 1)}, the test needs {need}")
            else:
                cells["passed"].append(text)
        status = min((s for s in _RANK if cells[s]), key=_RANK.__getitem__)
        label = attack_name(attack, convergence)
        listed = "; ".join(cells[status])
        others = "; ".join(t for s in _RANK if s != status for t in cells[s])
        rest = f" (other ε: {others})" if others else ""
        if status == "failed":
            detail = f"{label}: {listed} — {_MASKING_HINT[name]}{rest}"
        elif status == "warning":
            detail = f"{label}, ahead but within the noise: {listed}{rest}"
        elif status == "not informative":
            detail = f"{label}, too few informative pairs to detect anything: {listed}{rest}"
        else:
            detail = f"{label}: {listed}"
        checks.append(Check(name, str(arm), None, status, detail))
    return checks


_MASKING_HINT = {
    "blackbox_vs_pgd": "an attack without gradients beats PGD: possible gradient masking",
    "transfer_vs_pgd": "examples from another model beat PGD on this one: possible gradient masking",
    "autoattack_vs_pgd": "AutoAttack leaves more images correct than PGD: a bug, or AutoAttack's budget is too small",
    "pgd_vs_autoattack": ("AutoAttack fools images PGD left correct: PGD had not converged, its robust accuracy is an "
                          "overestimate (the worst case over attacks is the headline); raise attack.pgd.steps / "
                          "restarts"),
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
