"""Stage `report`: findings, tables, figures and sanity checks in reports/ (+ an MLflow report run)."""

from __future__ import annotations

from pathlib import Path

import _common
import typer

app = _common.app(__doc__)


def _need(path: Path, stage: str) -> Path:
    """`path`, or a one-line DataError naming the stage that writes it."""
    from robustlora.errors import DataError

    if not path.exists():
        raise DataError(f"{_common.rel(path)} is missing; stage {stage} writes it (run `dvc repro {stage}`)")
    return path


@app.command()
def main(
    results_dir: Path = typer.Option(..., help="folder of per-image <variant>.parquet files, e.g. results/attack"),
    autoattack: Path = typer.Option(..., help="AutoAttack's per-image results, e.g. results/autoattack.parquet"),
    blackbox_dir: Path = typer.Option(..., help="folder of <attack>.parquet black-box results, e.g. results/blackbox"),
    transfer: Path = typer.Option(..., help="transfer's per-image results, e.g. results/transfer.parquet"),
    defences_dir: Path = typer.Option(..., help="folder of the defences stage's squeeze.parquet and switching.parquet, "
                                      "e.g. results/defences"),
    defences_metrics: Path = typer.Option(..., help="the defences stage's metrics (switching cost), "
                                          "e.g. metrics/defences.json"),
    train_metrics_dir: Path = typer.Option(..., help="folder of <variant>.json train metrics, e.g. metrics/train"),
    histories_dir: Path = typer.Option(..., help="folder of <variant>/seed_<s>.csv histories, e.g. plots/train"),
    prepared: Path = typer.Option(..., help="prepared target domain (its info.json gives the attacked image size), "
                                  "e.g. data/prepared/target"),
    out: Path = typer.Option(..., help="folder for report.md, figures/, findings.json, comparisons.csv, e.g. reports"),
    summary: Path = typer.Option(..., help="headline metrics per arm with intervals (for `dvc exp show` and sweeps), "
                                 "e.g. metrics/summary.json"),
    params: Path = typer.Option(_common.PARAMS, help="params.yaml to read (sections: attack, report, variants, ...)"),
) -> None:
    """Build reports/report.md (Findings first), its figures, findings.json and comparisons.csv."""
    import dataclasses

    import pandas as pd

    from robustlora.models import adaptation
    from robustlora.analysis import results as analysis
    from robustlora.analysis import checks
    from robustlora.analysis import crosscheck
    from robustlora.analysis import defences as defence_report
    from robustlora.reporting import figures
    from robustlora.reporting import report
    from robustlora import tracking
    from robustlora.config import BLACKBOX_ATTACKS, load_params
    from robustlora.io import atomic_path, read_json, write_json, write_text

    p = load_params(params)
    frames, train_metrics, histories, info = [], {}, {}, {}
    for name, spec in p.variants.items():
        frames.append(pd.read_parquet(_need(results_dir / f"{name}.parquet", f"attack@{name}")))
        train_metrics[name] = read_json(_need(train_metrics_dir / f"{name}.json", f"train@{name}"))
        histories[name] = {}
        for seed, seed_metrics in (train_metrics[name].get("seeds") or {}).items():
            if (seed_metrics.get("epochs_run") or 0) > 0:  # an untrained arm (`none`) has no history
                history = _need(histories_dir / name / f"seed_{seed}.csv", f"train@{name}")
                histories[name][int(seed)] = pd.read_csv(history)
        info[name] = report.ArmInfo(adaptation.describe(spec), adaptation.trains_batchnorm(spec))
    attack_rows = pd.concat(frames, ignore_index=True)
    results = attack_rows[attack_rows["attack"].isin(["fgsm", "pgd"])]  # pgd_strong: a check on a subset
    extra = pd.concat([pd.read_parquet(_need(autoattack, "autoattack")),
                       *(pd.read_parquet(_need(blackbox_dir / f"{a}.parquet", f"blackbox@{a}"))
                         for a in BLACKBOX_ATTACKS),
                       pd.read_parquet(_need(transfer, "transfer"))], ignore_index=True)
    image_size = read_json(_need(prepared / "info.json", "preprocess"))["image_size"]

    settings = analysis.Settings(
        eps_grid=tuple(p.attack.eps), report_eps=p.report.eps, arms=dict(p.report.arms),
        reference_fgsm_asr=p.report.reference_fgsm_asr, tolerance=p.report.tolerance, alpha=p.report.alpha,
        n_boot=p.report.n_boot, seed=p.report.seed)
    pgd = p.attack.pgd
    threat = report.ThreatModel(
        eps=tuple(p.attack.eps), image_size=image_size, input_size=p.model.input_size, pgd_steps=pgd.steps,
        pgd_step_sizes=tuple(pgd.step_for(e) for e in p.attack.eps), pgd_rel_step_size=pgd.rel_step_size,
        pgd_random_start=pgd.random_start, pgd_restarts=pgd.restarts, sanity_eps=pgd.sanity_eps,
        n_images_requested=p.attack.n_images, attack_seed=p.attack.seed)

    # success rates are compared on the images every adapted arm classifies correctly in every seed (the unadapted
    # model would shrink that set to what it happens to get right)
    adapted = [name for name, spec in p.variants.items() if spec.kind.trains] or None
    result = analysis.analyse(results, settings, common_arms=adapted)
    found_checks = checks.run_checks(results, train_metrics, eps_grid=settings.eps_grid, sanity_eps=pgd.sanity_eps)
    found_checks += checks.masking_checks(attack_rows, extra, alpha=p.report.alpha)
    # the cross-checks' intervals need less resolution than the findings': at most 500 bootstrap resamples
    light = dataclasses.replace(settings, n_boot=min(settings.n_boot, 500))
    cross = report.CrossCheck(versus=crosscheck.versus_pgd(attack_rows, extra, light),
                              curves=crosscheck.query_curves(extra), matrix=crosscheck.transfer_matrix(extra, light),
                              settings=crosscheck.settings_lines(p))
    figs = figures.write_figures(out / "figures", arm_table=result.arm_table, comparisons=result.comparisons,
                                 histories=histories, arms=result.arms, report_eps=settings.report_eps,
                                 baseline=settings.baseline)
    figs.update(figures.write_crosscheck_figures(
        out / "figures", versus=cross.versus, curves=cross.curves, matrix=cross.matrix, arms=result.arms,
        report_eps=settings.report_eps, names={a: crosscheck.attack_name(a) for a in set(extra["attack"])}))
    defences = defence_report.analyse_defences(
        results, settings, at_arms=defence_report.adversarial_arms(p.variants), arms=list(p.variants),
        train_metrics=train_metrics, autoattack=pd.read_parquet(_need(autoattack, "autoattack")),
        squeeze=pd.read_parquet(_need(defences_dir / "squeeze.parquet", "defences")),
        switching=pd.read_parquet(_need(defences_dir / "switching.parquet", "defences")),
        cost=read_json(_need(defences_metrics, "defences")).get("switching_cost"))
    figs.update(defence_report.write_defence_figures(out / "figures", defences.points, settings.report_eps))
    sq, sw = p.squeeze, p.switching
    squeezers = ", ".join([f"bit depth {sq.bit_depth}"] * (sq.bit_depth is not None)
                          + [f"{sq.median}×{sq.median} median"] * (sq.median is not None))
    defences_text = defence_report.defences_section(
        defences, settings, {key: f"figures/{path.name}" for key, path in figs.items()},
        squeeze_settings=(f"Squeezers: {squeezers} (Xu et al. 2018); the threshold gives a {100 * sq.fpr:g} % false "
                          f"positive rate on each model's clean holdout images. First {sq.n_images} attacked images; "
                          f"FGSM and PGD as above; the adaptive attack is {sq.adaptive.steps}-step PGD (step "
                          f"{sq.adaptive.rel_step_size:g}·ε) on min(CE, {sq.adaptive.ce_cap:g}) − "
                          f"{sq.adaptive.lam:g}·relu(score − 0.9·threshold) through the squeezers by BPDA, per image "
                          "the stronger of it and PGD."),
        switching_settings=(f"One backbone holds the adapters of `{sw.standard}` and `{sw.robust}` (same seed); the "
                            f"squeezing detector on `{sw.standard}` routes each flagged input to `{sw.robust}`. "
                            f"First {sw.n_images} attacked images. Nothing in the system is random, so no EOT is "
                            "needed." if sw.standard else ""))
    text = report.render(report.ReportInputs(
        analysis=result, settings=settings, checks=found_checks, train=analysis.train_table(train_metrics),
        arm_info=info, threat=threat, params=p.model_dump(mode="json"),
        figures={key: f"figures/{path.name}" for key, path in figs.items()}, crosscheck=cross,
        defences=defences_text))
    counts = checks.count(found_checks)
    write_text(out / "report.md", text)
    write_json(out / "findings.json", analysis.findings_json(result.findings, settings, result.common_sizes, counts))
    with atomic_path(out / "comparisons.csv") as tmp:
        result.comparisons.to_csv(tmp, index=False)
    headline = analysis.headline(result.arm_table, cross.versus, train_metrics, settings.report_eps)
    write_json(summary, headline)
    for name, table in (("attacks_vs_pgd.csv", cross.versus), ("success_vs_queries.csv", cross.curves),
                        ("transfer_matrix.csv", cross.matrix)):
        with atomic_path(out / name) as tmp:
            table.to_csv(tmp, index=False)

    flagged = [c for c in found_checks if c.flagged]
    tags = {"stage": "report", **{f"finding.{f.key}": f.verdict for f in result.findings}}
    with tracking.start_run(p.mlflow.experiment, "report", {"report": p.report.model_dump(mode="json")}, tags):
        for name in ("report.md", "findings.json", "comparisons.csv", "attacks_vs_pgd.csv", "success_vs_queries.csv",
                     "transfer_matrix.csv"):
            tracking.log_artifact(out / name, "report")
        for path in figs.values():
            tracking.log_artifact(path, "report/figures")
        tracking.log_metrics({"sanity_checks_flagged": len(flagged), "sanity_checks_failed": counts["failed"],
                              **{f"findings_{v.replace(' ', '_')}": sum(f.verdict == v for f in result.findings)
                                 for v in analysis.VERDICTS}})
    tracking.log_to_experiment_run(p.mlflow.experiment, {
        f"{arm}/{key}": value for arm, row in headline.items() if isinstance(row, dict) for key, value in row.items()})
    verdicts = ", ".join(f"{sum(f.verdict == v for f in result.findings)} {v}" for v in analysis.VERDICTS)
    print(f"report: {_common.rel(out / 'report.md')} (findings: {verdicts}; {len(flagged)} sanity checks flagged)")
    for c in flagged:
        if c.status == "failed":
            print(f"  FAILED {c.arm} seed {c.seed}: {c.title}: {c.detail}")


if __name__ == "__main__":
    _common.run(app)
