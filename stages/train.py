"""Stage `train@<variant>`: adapt the backbone to the target domain (full fine-tuning, LoRA, or none)."""

from __future__ import annotations

from pathlib import Path

import _common
import typer

app = _common.app(__doc__)


@app.command()
def main(
    variant: str = typer.Argument(..., help="a variant name under `variants` in params.yaml, e.g. lora_fc"),
    params: Path = typer.Option(_common.PARAMS, help="params.yaml to read (sections: model, train, full, lora, variants)"),
    prepared: Path = typer.Option(_common.ROOT / "data" / "prepared" / "target", help="the prepared target domain"),
    backbone: Path = typer.Option(_common.ROOT / "models" / "backbone.pt", help="the pretrained backbone"),
    models: Path = typer.Option(_common.ROOT / "models", help="folder for <variant>.pt and <variant>.run.json"),
    metrics_dir: Path = typer.Option(_common.ROOT / "metrics" / "train", help="folder for <variant>.json"),
    plots_dir: Path = typer.Option(_common.ROOT / "plots" / "train", help="folder for <variant>.csv (per-epoch curves)"),
) -> None:
    """Train VARIANT, keep the weights with the best holdout accuracy, log the run to MLflow."""
    import tempfile

    import pandas as pd

    from robustlora import tracking
    from robustlora.config import load_params, to_dict
    from robustlora.io import atomic_path, write_json
    from robustlora.study import train_variant

    p = load_params(params)
    spec = p.variant(variant)
    config = {"variant": variant, "adaptation": spec.adaptation, "targets": list(spec.targets),
              "data": to_dict(p.data), "model": to_dict(p.model), "train": to_dict(p.train)}
    if spec.adaptation == "lora":
        config["lora"] = to_dict(p.lora)
    if spec.adaptation == "full":
        config["full"] = to_dict(p.full)
    out = models / f"{variant}.pt"
    checkpoint = _common.ROOT / "checkpoints" / f"{variant}.pt"
    with tracking.start_run(p.mlflow.experiment, variant, tracking.flatten_params(config),
                            {"stage": f"train@{variant}", "variant": variant}) as run:
        metrics, history = train_variant(
            spec, backbone_path=backbone, prepared_dir=prepared, model_cfg=p.model, cfg=p.train, full_cfg=p.full,
            out_path=out, checkpoint_path=checkpoint, extra_meta={"config": config},
            on_epoch=lambda m: tracking.log_metrics({f"epoch/{k}": v for k, v in m.items() if k != "epoch"},
                                                    step=int(m["epoch"])),
        )
        tracking.log_metrics({k: float(v) for k, v in metrics.items()})
        tracking.log_artifact(out, "checkpoint")
        with tempfile.TemporaryDirectory() as tmp:  # not into models/, which DVC tracks
            config_file = Path(tmp) / f"{variant}.config.json"
            write_json(config_file, config)
            tracking.log_artifact(config_file, "config")
        tracking.write_run_id(models / f"{variant}.run.json", run.run_id)
    checkpoint.unlink(missing_ok=True)
    write_json(metrics_dir / f"{variant}.json", metrics)
    columns = ["epoch", "train_loss", "train_accuracy", "holdout_accuracy", "lr"]
    with atomic_path(plots_dir / f"{variant}.csv") as tmp:
        pd.DataFrame(history, columns=columns).to_csv(tmp, index=False)
    print(f"train@{variant}: {metrics}")


if __name__ == "__main__":
    _common.run(app)
