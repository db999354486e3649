"""Stage `attack@<variant>`: FGSM and PGD over ε on a fixed val subset; robustness metrics with bootstrap CIs."""

from __future__ import annotations

from pathlib import Path

import _common
import typer

app = _common.app(__doc__)


@app.command()
def main(
    variant: str = typer.Argument(..., help="a trained variant, e.g. lora_fc"),
    params: Path = typer.Option(_common.PARAMS, help="params.yaml to read (section: attack)"),
    prepared: Path = typer.Option(_common.ROOT / "data" / "prepared" / "target", help="the prepared target domain"),
    models: Path = typer.Option(_common.ROOT / "models", help="folder with <variant>.pt and <variant>.run.json"),
    out_dir: Path = typer.Option(_common.ROOT / "metrics" / "attack", help="folder for <variant>.json and .csv"),
    plots_dir: Path = typer.Option(_common.ROOT / "plots" / "attack", help="folder for <variant>.csv (curves over ε)"),
) -> None:
    """Attack VARIANT; write metrics JSON (DVC metrics), a tidy CSV and ε curves; log into its MLflow run."""
    from robustlora import tracking
    from robustlora.config import load_params
    from robustlora.evaluate import flat_metrics, summarize
    from robustlora.io import atomic_path, write_json
    from robustlora.study import attack_variant, success_curves

    p = load_params(params)
    p.variant(variant)
    table = attack_variant(models / f"{variant}.pt", prepared, p.attack, device=p.attack.device)
    table.insert(0, "variant", variant)
    with atomic_path(out_dir / f"{variant}.csv") as tmp:
        table.to_csv(tmp, index=False)
    summary = summarize(table)
    write_json(out_dir / f"{variant}.json", summary)
    with atomic_path(plots_dir / f"{variant}.csv") as tmp:
        success_curves(table).to_csv(tmp, index=False)
    with tracking.resume_run(tracking.read_run_id(models / f"{variant}.run.json")):
        tracking.log_metrics(flat_metrics(table))
    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"  # None: no image was correct before the attack

    attacks = [a for a in ("fgsm", "pgd") if a in summary]
    print(f"attack@{variant}: clean accuracy {fmt(summary.get('clean_accuracy'))}; "
          + "; ".join(f"{a} success " + ", ".join(f"{k}: {fmt(v.get('asr'))}" for k, v in summary[a].items())
                      for a in attacks))


if __name__ == "__main__":
    _common.run(app)
