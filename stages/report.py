"""Stage `report`: findings, tables, figures and sanity checks in reports/ (+ an MLflow report run)."""

from __future__ import annotations

from pathlib import Path

import _common
import typer

app = _common.app(__doc__)


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
    from robustlora import layout, tracking
    from robustlora.config import load_params
    from robustlora.io import atomic_path, write_json, write_text
    from robustlora.reporting import study
    from robustlora.reporting.inputs import InputPaths

    p = load_params(params)
    _common.started()
    paths = InputPaths(results_dir=results_dir, autoattack=autoattack, blackbox_dir=blackbox_dir, transfer=transfer,
                       defences_dir=defences_dir, defences_metrics=defences_metrics,
                       train_metrics_dir=train_metrics_dir, histories_dir=histories_dir, prepared=prepared,
                       show=_common.rel)
    built = study.build_report(p, paths, out)
    write_text(out / layout.REPORT, built.text)
    write_json(out / layout.FINDINGS, built.findings)
    for name, table in built.tables.items():
        with atomic_path(out / name) as tmp:
            table.to_csv(tmp, index=False)
    write_json(summary, built.headline)

    rec = tracking.Recorder(p.mlflow.experiment)  # outputs first, then MLflow
    run = rec.run("report", {"report": p.report.model_dump(mode="json")}, {"stage": "report", **built.run_tags()})
    for name in (layout.REPORT, layout.FINDINGS, *built.tables):
        run.log_artifact(out / name, "report")
    for path in built.figures.values():
        run.log_artifact(path, "report/figures")
    run.log_metrics(built.run_metrics())
    run.end()
    rec.log_to_experiment(built.experiment_metrics())
    verdicts = ", ".join(f"{n} {v}" for v, n in built.verdict_counts().items())
    print(f"report: {_common.rel(out / layout.REPORT)} (findings: {verdicts}; {len(built.flagged)} sanity checks "
          "flagged)")
    for c in built.flagged:
        if c.status == "failed":
            print(f"  FAILED {c.arm} seed {c.seed}: {c.title}: {c.detail}")
    rec.finish("report", flush=True)  # every stage's waiting record, then the report's own


if __name__ == "__main__":
    _common.run(app)
