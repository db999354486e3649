"""The study report from the pipeline's files: read, analyse, check, draw and render, in one call.

`build_report(p, paths, out_dir)` is everything the report stage does short of writing its outputs and logging them:
it reads the inputs (robustlora.reporting.inputs), turns params into the analysis settings and the threat model the
report states, runs robustlora.analysis (estimates, comparisons, findings, sanity and gradient-masking checks, the
cross-checks, the defences), draws every figure into `out_dir/figures` and renders the markdown. It returns a
`StudyReport`: the text and tables the stage writes under `out_dir` (file names below) and what it logs to MLflow.
ε in [0,1] pixel units throughout; shares in [0,1].
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from robustlora.analysis import (VERDICTS, Analysis, Settings, adversarial_arms, analyse, analyse_defences,
                                 attack_name, findings_json, headline, masking_checks, train_table)
from robustlora.analysis.checks import Check, count, overfitting_checks, run_checks
from robustlora.analysis.crosscheck import query_curves, settings_lines, transfer_matrix, versus_pgd
from robustlora.analysis.settings import Scope
from robustlora.analysis.tables import beyond_pgd, worst_case_rows
from robustlora.models import adaptation
from robustlora.reporting.crosscheck import CrossCheck
from robustlora.reporting.defences import defences_section, write_defence_figures
from robustlora.reporting.figures import write_crosscheck_figures, write_figures
from robustlora.reporting.inputs import InputPaths, StudyData, read_inputs
from robustlora.reporting.overview import ArmInfo, ThreatModel
from robustlora.layout import COMPARISONS, FIGURES, QUERY_CURVES, TRANSFER_MATRIX, VERSUS_PGD
from robustlora.reporting.report import ReportInputs, render

__all__ = ["CROSSCHECK_BOOT", "StudyReport", "study_settings", "study_scope", "threat_model",
           "arm_info", "squeeze_settings", "switching_settings", "build_report"]

# the cross-checks' intervals need less resolution than the findings': at most this many bootstrap resamples
CROSSCHECK_BOOT = 500


@dataclass(frozen=True)
class StudyReport:
    """The report stage's outputs, in memory: what it writes and what it logs."""

    text: str  # report.md
    findings: dict[str, Any]  # findings.json
    tables: dict[str, pd.DataFrame]  # CSV file name inside the output folder -> table, in writing order
    headline: dict[str, Any]  # metrics/summary.json: headline figures per arm with their intervals
    figures: dict[str, Path]  # figure key -> PNG written under out_dir/figures
    analysis: Analysis
    checks: list[Check]

    @property
    def flagged(self) -> list[Check]:
        """The sanity checks that did not pass (failed, warning, not evaluated)."""
        return [c for c in self.checks if c.flagged]

    def verdict_counts(self) -> dict[str, int]:
        """How many findings got each verdict, in robustlora.analysis.VERDICTS order."""
        return {v: sum(f.verdict == v for f in self.analysis.findings) for v in VERDICTS}

    def run_tags(self) -> dict[str, str]:
        """MLflow tags of the report run: 'finding.<key>' -> verdict."""
        return {f"finding.{f.key}": f.verdict for f in self.analysis.findings}

    def run_metrics(self) -> dict[str, int]:
        """MLflow metrics of the report run: flagged and failed checks, findings per verdict."""
        return {"sanity_checks_flagged": len(self.flagged), "sanity_checks_failed": count(self.checks)["failed"],
                **{'findings_' + v.replace("'s", '').replace(' ', '_'): n for v, n in self.verdict_counts().items()}}

    def experiment_metrics(self) -> dict[str, float]:
        """The headline as flat '<arm>/<key>' metrics for the experiment's own run."""
        return {f"{arm}/{key}": value for arm, row in self.headline.items() if isinstance(row, dict)
                for key, value in row.items()}


def study_settings(p: Any, scope: Scope | None = None) -> Settings:
    """The analysis settings from params (robustlora.config.Params): attack.eps and the report section; `scope`
    (`study_scope`) decides which claims are testable."""
    return Settings(eps_grid=tuple(p.attack.eps), report_eps=p.report.eps, arms=dict(p.report.arms),
                    reference_fgsm_asr=p.report.reference_fgsm_asr, tolerance=p.report.tolerance,
                    alpha=p.report.alpha, n_boot=p.report.n_boot, seed=p.report.seed,
                    equivalence_margin=p.report.equivalence_margin, scope=scope)


def study_scope(p: Any, data: StudyData) -> Scope:
    """What the figures hold for: data.source and model.* from params, classes, image size and val split from the
    prepared data's info, the epoch cap from the train metrics (the largest over trained seeds; None if none)."""
    caps = [m.get("max_epochs") or 0 for metrics in data.train_metrics.values()
            for m in ((metrics or {}).get("seeds") or {}).values()]
    classes = data.classes if data.classes is not None else (
        p.data.classes if isinstance(p.data.classes, int) else len(p.data.classes))
    return Scope(source=p.data.source, classes=classes, image_size=data.image_size, input_size=p.model.input_size,
                 weights=str(p.model.weights), max_epochs=max(caps) if any(caps) else None, n_val=data.n_val)


def threat_model(p: Any, image_size: int | None) -> ThreatModel:
    """The attack settings the report states, from params and the attacked images' size (px)."""
    pgd = p.attack.pgd
    return ThreatModel(
        eps=tuple(p.attack.eps), image_size=image_size, input_size=p.model.input_size, pgd_steps=pgd.steps,
        pgd_step_sizes=tuple(pgd.step_for(e) for e in p.attack.eps), pgd_rel_step_size=pgd.rel_step_size,
        pgd_random_start=pgd.random_start, pgd_restarts=pgd.restarts, sanity_eps=pgd.sanity_eps,
        n_images_requested=p.attack.n_images, attack_seed=p.attack.seed, pgd_targets=pgd.targets,
        pgd_target_steps=pgd.target_steps, full_eps=p.attack.full_eps, grid_images=p.attack.grid_images)


def arm_info(p: Any) -> dict[str, ArmInfo]:
    """Per variant, its adaptation in words and whether it re-estimates BatchNorm statistics (Table 1)."""
    return {name: ArmInfo(adaptation.describe(spec), adaptation.trains_batchnorm(spec))
            for name, spec in p.variants.items()}


def squeeze_settings(p: Any) -> str:
    """One paragraph on how feature squeezing ran (params.squeeze), for the Defences section."""
    sq = p.squeeze
    squeezers = ", ".join([f"bit depth {sq.bit_depth}"] * (sq.bit_depth is not None)
                          + [f"{sq.median}×{sq.median} median"] * (sq.median is not None))
    return (f"Squeezers: {squeezers} (Xu et al. 2018); the threshold gives a {100 * sq.fpr:g} % false positive rate "
            f"on each model's clean holdout images. First {sq.n_images} attacked images; FGSM and PGD as above; the "
            f"adaptive attack is {sq.adaptive.steps}-step PGD (step {sq.adaptive.rel_step_size:g}·ε) on "
            f"min(CE, {sq.adaptive.ce_cap:g}) − {sq.adaptive.lam:g}·relu(score − 0.9·threshold) through the "
            "squeezers by BPDA, per image the stronger of it and PGD.")


def switching_settings(p: Any) -> str:
    """One paragraph on the adapter-switching system (params.switching); '' when none is configured."""
    sw = p.switching
    if not sw.standard:
        return ""
    return (f"One backbone holds the adapters of `{sw.standard}` and `{sw.robust}` (same seed); the squeezing "
            f"detector on `{sw.standard}` routes each flagged input to `{sw.robust}`. First {sw.n_images} attacked "
            "images. Nothing in the system is random, so no EOT is needed.")


def _crosscheck(p: Any, data: StudyData, settings: Settings) -> CrossCheck:
    light = dataclasses.replace(settings, n_boot=min(settings.n_boot, CROSSCHECK_BOOT))
    return CrossCheck(versus=versus_pgd(data.attack_rows, data.extra, light), curves=query_curves(data.extra),
                      matrix=transfer_matrix(data.extra, light), settings=settings_lines(p))


def _named(beyond: pd.DataFrame, p: Any) -> pd.DataFrame:
    """The convergence check's attack under the name its params give it ('PGD ×4 steps, 2 restarts')."""
    if beyond is None or beyond.empty or "attack" not in beyond:
        return beyond
    name = attack_name("pgd_strong", p.attack.convergence)
    return beyond.assign(attack=beyond["attack"].replace({"pgd_strong": name}))


def build_report(p: Any, paths: InputPaths, out_dir: Path) -> StudyReport:
    """Read, analyse and render the study for params `p` (robustlora.config.Params); figures go to out_dir/figures.

    The comparisons table compares success rates on the images every adapted arm classifies correctly in every seed
    (the unadapted model would shrink that set to what it happens to get right); the findings on the images every
    paper arm (report.arms) gets right."""
    data = read_inputs(p, paths)
    scope = study_scope(p, data)
    settings = study_settings(p, scope)
    adapted = [name for name, spec in p.variants.items() if spec.kind.trains] or None
    # the headline: per image the worst case over every attack that ran on it (robustlora.analysis.tables)
    worst = worst_case_rows(data.attack_rows, data.extra)
    results = pd.concat([data.results, worst], ignore_index=True)
    result = analyse(results, settings, common_arms=adapted, train_metrics=data.train_metrics)
    checks = run_checks(data.results, data.train_metrics, eps_grid=settings.eps_grid,
                        sanity_eps=p.attack.pgd.sanity_eps)
    checks += masking_checks(data.attack_rows, data.extra, alpha=p.report.alpha, convergence=p.attack.convergence)
    checks += overfitting_checks(data.histories, [a.name for a in adversarial_arms(p.variants)], data.train_metrics)
    cross = _crosscheck(p, data, settings)
    figures_dir = Path(out_dir) / FIGURES
    figs = write_figures(figures_dir, arm_table=result.arm_table, comparisons=result.comparisons,
                         histories=data.histories, arms=result.arms, report_eps=settings.report_eps,
                         baseline=settings.baseline)
    figs.update(write_crosscheck_figures(
        figures_dir, versus=cross.versus, curves=cross.curves, matrix=cross.matrix, arms=result.arms,
        report_eps=settings.report_eps, names={a: attack_name(a) for a in set(data.extra["attack"])}))
    defences = analyse_defences(
        results, settings, at_arms=adversarial_arms(p.variants), arms=list(p.variants),
        train_metrics=data.train_metrics, autoattack=data.autoattack, squeeze=data.squeeze,
        switching=data.switching, cost=data.switching_cost)
    figs.update(write_defence_figures(figures_dir, defences.points, settings.report_eps))
    links = {key: f"{FIGURES}/{path.name}" for key, path in figs.items()}  # relative to report.md
    text = render(ReportInputs(
        analysis=result, settings=settings, checks=checks, train=train_table(data.train_metrics),
        arm_info=arm_info(p), threat=threat_model(p, data.image_size), params=p.model_dump(mode="json"),
        figures=links, crosscheck=cross, beyond_pgd=_named(beyond_pgd(worst), p),
        defences=defences_section(defences, settings, links, squeeze_settings=squeeze_settings(p),
                                  switching_settings=switching_settings(p))))
    return StudyReport(
        text=text, findings=findings_json(result.findings, settings, result.common_sizes, count(checks)),
        tables={COMPARISONS: result.comparisons, VERSUS_PGD: cross.versus, QUERY_CURVES: cross.curves,
                TRANSFER_MATRIX: cross.matrix},
        headline=headline(result.arm_table, cross.versus, data.train_metrics, settings.report_eps),
        figures=figs, analysis=result, checks=checks)
