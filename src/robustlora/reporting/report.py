"""The study's report as markdown: what it is made of (`ReportInputs`) and the order of its sections (`render`).

`render(inputs)` turns what robustlora.analysis (estimates, comparisons, findings, sanity checks, cross-checks) and
robustlora.reporting.figures (PNG paths) produced into `report.md`. It computes nothing itself, so the text is a pure
function of its inputs: no timestamps, no absolute paths (figures are linked relative to the report). Shares are
shown in % with one decimal, ε in [0,1] pixel units as k/255, and every estimate with its 95 % interval. Each group
of sections is its own module: overview (Scope of the data, Findings, Threat model, Table 1, training; the
verdicts' definitions), per_attack (FGSM, PGD, paired comparisons), crosscheck (beyond FGSM and PGD), defences,
appendix (sanity checks, definitions, parameters).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pandas as pd

from robustlora.analysis import Analysis, Settings
from robustlora.analysis.checks import Check
from robustlora.analysis.tables import WORST_CASE
from robustlora.reporting.appendix import checks_section, definitions_section, params_section
from robustlora.reporting.cells import attacks_in_order
from robustlora.reporting.crosscheck import CrossCheck, crosscheck_section
from robustlora.reporting.overview import (ArmInfo, ThreatModel, arms_section, findings_section, scope_section,
                                           threat_section, training_section, verdict_definitions)
from robustlora.reporting.per_attack import attack_section, comparisons_section

__all__ = ["TITLE", "ThreatModel", "ArmInfo", "CrossCheck", "ReportInputs", "render"]

TITLE = "Exploring the Robustness of LoRA-Adapted ResNet18 against Adversarial Attacks"


@dataclass(frozen=True)
class ReportInputs:
    """Everything the markdown shows, computed before rendering."""

    analysis: Analysis
    settings: Settings
    checks: Sequence[Check]
    train: pd.DataFrame  # robustlora.analysis.train_table
    arm_info: Mapping[str, ArmInfo]
    threat: ThreatModel
    params: Mapping[str, Any]  # every params.yaml value, resolved
    figures: Mapping[str, str]  # figure key (robustlora.reporting.figures.write_figures) -> path relative to the report
    crosscheck: CrossCheck | None = None  # the attacks beyond FGSM and PGD, when they ran
    defences: str | None = None  # the Defences section (robustlora.reporting.defences.defences_section)
    beyond_pgd: pd.DataFrame | None = None  # pairs PGD left correct that another attack fooled (analysis.tables)
    title: str = TITLE


def render(inputs: ReportInputs) -> str:
    """The whole report.md text: the data's scope, then the Findings."""
    a = inputs.analysis
    parts = [f"# {inputs.title}",
             scope_section(inputs.settings.scope, a),
             findings_section(a.findings, inputs.checks, inputs.settings),
             threat_section(inputs.threat, a),
             arms_section(inputs.train, a, inputs.arm_info, inputs.settings),
             training_section(inputs.figures)]
    parts += [attack_section(a, attack, inputs.settings, inputs.figures,
                             beyond=inputs.beyond_pgd if attack == WORST_CASE else None)
              for attack in sorted(attacks_in_order(a.arm_table["attack"]), key=lambda x: x != WORST_CASE)]
    parts += [comparisons_section(a, inputs.settings, inputs.figures)]
    if inputs.crosscheck is not None:
        parts.append(crosscheck_section(inputs.crosscheck, inputs.settings, inputs.figures))
    if inputs.defences:
        parts.append(inputs.defences)
    parts += [checks_section(inputs.checks),
              definitions_section(inputs.settings) + "\n" + verdict_definitions(),
              params_section(inputs.params)]
    return "\n\n".join(p.strip("\n") for p in parts if p) + "\n"

