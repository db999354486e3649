"""Stage `report`: the study's tables, figures and sanity checks in reports/report.md (+ an MLflow report run)."""

from __future__ import annotations

from pathlib import Path

import _common
import typer

app = _common.app(__doc__)


@app.command()
def main(
    params: Path = typer.Option(_common.PARAMS, help="params.yaml to read (sections: attack, variants)"),
    metrics_dir: Path = typer.Option(_common.ROOT / "metrics", help="folder with train/ and attack/ metrics"),
    out: Path = typer.Option(_common.ROOT / "reports", help="folder for report.md and figures/"),
) -> None:
    """Build reports/report.md (Table 1, success-rate and certainty tables, figures, sanity checks)."""
    import pandas as pd

    from robustlora import tracking
    from robustlora.config import load_params
    from robustlora.io import read_json
    from robustlora.report import build_report, plot_files, sanity_checks

    p = load_params(params)
    train_metrics, tables = {}, []
    for name in p.variants:
        train_file, attack_file = metrics_dir / "train" / f"{name}.json", metrics_dir / "attack" / f"{name}.csv"
        for f in (train_file, attack_file):
            if not f.exists():
                raise FileNotFoundError(f"{_common.rel(f)} is missing: run `dvc repro` (stages train@{name}, attack@{name})")
        train_metrics[name] = read_json(train_file)
        tables.append(pd.read_csv(attack_file))
    table = pd.concat(tables, ignore_index=True)
    specs = {name: p.raw["variants"][name] | ({"rank": s.rank, "alpha": s.alpha} if s.adaptation == "lora" else {})
             for name, s in p.variants.items()}
    report = build_report(train_metrics, table, p.raw["attack"], out, variant_specs=specs)
    failed = [c for c in sanity_checks(table) if c.status != "passed"]
    with tracking.start_run(p.mlflow.experiment, "report", tracking.flatten_params({"attack": p.raw["attack"]}),
                            {"stage": "report"}):
        tracking.log_artifact(report, "report")
        for fig in plot_files(out):
            tracking.log_artifact(fig, "report/figures")
        tracking.log_metrics({"sanity_checks_flagged": float(len(failed))})
    print(f"report: {_common.rel(report)} ({len(failed)} sanity checks flagged)")
    for c in failed:
        print(f"  {c.status}: {c.name}: {c.detail}")


if __name__ == "__main__":
    _common.run(app)
