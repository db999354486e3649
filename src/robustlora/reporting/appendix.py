"""The study report's closing sections: the sanity checks, the definitions of every number, the parameters used.

Sanity checks are listed flagged first (a problem is never buried below a list of passes), 'not informative' and
'not evaluated' kept apart from 'failed'; the definitions state the estimators and intervals with the settings'
bootstrap size, confidence and α; the parameters are every params.yaml value as resolved, so the report names what
produced it.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from robustlora.analysis import Settings
from robustlora.analysis.checks import STATUSES, Check, count
from robustlora.formatting import format_pct, md_table

__all__ = ["checks_section", "definitions_section", "params_section"]

_MARKERS = {"passed": "passed", "failed": "**FAILED**", "warning": "**WARNING**",
            "not informative": "**NOT INFORMATIVE**", "not evaluated": "**NOT EVALUATED**"}


def checks_section(checks: Sequence[Check]) -> str:
    """'## Sanity checks': a one-line summary and every check, flagged ones first."""
    counts = count(checks)
    flagged = len(checks) - counts["passed"]
    summary = (f"All {len(checks)} checks passed." if not flagged else
               f"**{flagged} of {len(checks)} checks flagged: " +
               ", ".join(f"{counts[s]} {s}" for s in STATUSES if s != "passed" and counts[s]) + ".**")
    # flagged checks first (failed, warning, not informative, not evaluated), never buried below a list of passes
    order = {s: i for i, s in enumerate(("failed", "warning", "not informative", "not evaluated", "passed"))}
    ordered = sorted(checks, key=lambda c: order.get(c.status, len(order)))
    rows = [[_MARKERS[c.status], c.title, c.arm, "—" if c.seed is None else str(c.seed), c.detail] for c in ordered]
    return "\n\n".join([
        "## Sanity checks",
        summary,
        md_table(["Result", "Check", "Arm", "Seed", "Detail"], rows) if rows else "No checks ran.",
        "After Carlini et al. 2019, “On Evaluating Adversarial Robustness”: per arm and seed, on the same images; "
        "tolerance one image. 'Not informative' means the check had too few informative seed·image pairs for its "
        "test to ever reach significance (it cannot detect anything there), 'not evaluated' that the inputs for the "
        "check are missing; neither is a pass.",
    ])


def definitions_section(settings: Settings) -> str:
    """'## Definitions': ε, each metric, the estimators, intervals and tests, with the settings' values."""
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
        "- Paired differences (arm a minus arm b on the same images): one score test and the interval that "
        "inverts it, so p < α exactly when the interval excludes 0. One seed per arm: Tango's score interval for "
        "paired proportions with its score test (McNemar's uncorrected statistic at 0). Several seeds: the same "
        "statistic on the per-image seed means, its image term scaled by the observed design effect (never below "
        "1/seeds; no credit for seeds when no image differs) plus a whole-seed variance component from the crossed "
        "images x seeds layout, on a t reference with Satterthwaite's degrees of freedom (Clark 1973). One-sided "
        "where the quantity cannot be negative by construction.",
        "- MDE: the smallest |difference| this run detects with 80 % power at α (two-sided); equivalence: the "
        "1 − 2α interval lies inside ± the margin (TOST).",
        f"- Holm: step-down correction over a family of p-values; findings and the comparisons table are separate "
        f"families; significance at α = {settings.alpha:g}.",
    ])


def _json_default(obj: Any) -> Any:
    return obj.item() if hasattr(obj, "item") else str(obj)  # numpy scalars and other odd values


def _params_lines(params: Mapping[str, Any], indent: int = 0) -> list[str]:
    """Nested params as YAML-like lines (JSON scalars and lists), in the caller's key order."""
    lines = []
    for key, value in params.items():
        if isinstance(value, Mapping) and value:
            lines.append(f"{' ' * indent}{key}:")
            lines += _params_lines(value, indent + 2)
        else:
            lines.append(f"{' ' * indent}{key}: {json.dumps(value, default=_json_default, ensure_ascii=False)}")
    return lines


def params_section(params: Mapping[str, Any]) -> str:
    """'## Parameters': every params.yaml value as resolved for this run, as a YAML block."""
    body = "\n".join(_params_lines(params)) if params else "# (no parameters were passed)"
    return f"## Parameters\n\nEvery value of params.yaml as resolved for this run:\n\n```yaml\n{body}\n```"
