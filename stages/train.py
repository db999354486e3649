"""Stage `train@<variant>`: adapt the backbone to the target domain once per training seed (full, LoRA, or none)."""

from __future__ import annotations

from pathlib import Path

import _common
import typer

app = _common.app(__doc__)


@app.command()
def main(
    variant: str = typer.Argument(..., help="a variant name under `variants` in params.yaml, e.g. lora_fc"),
    prepared: Path = typer.Option(..., help="the prepared target domain, e.g. data/prepared/target"),
    backbone: Path = typer.Option(..., help="the pretrained backbone, e.g. models/backbone.pt"),
    out: Path = typer.Option(..., help="folder for seed_<s>.pt and seed_<s>.run.json, e.g. models/lora_fc"),
    metrics: Path = typer.Option(..., help="metrics JSON (per seed, mean, std), e.g. metrics/train/lora_fc.json"),
    plots: Path = typer.Option(..., help="folder for seed_<s>.csv per-epoch curves, e.g. plots/train/lora_fc"),
    params: Path = typer.Option(_common.PARAMS, help="params.yaml (sections: model, train, variants, full/lora/none)"),
) -> None:
    """Train VARIANT once per seed in train.seeds, keep each seed's weights with the best holdout accuracy.

    MLflow: one parent run per variant (across-seed mean and std) with one child run per seed.
    """
    import tempfile

    from robustlora import layout, tracking
    from robustlora.config import load_params, to_dict
    from robustlora.io import write_json
    from robustlora.models.adaptation import training_seeds
    from robustlora.training.study import summarize_seeds, train_variant

    p = load_params(params)
    spec = p.variant(variant)
    seeds = training_seeds(spec, p.train.seeds)
    config = {"variant": to_dict(spec), "data": to_dict(p.data), "model": to_dict(p.model), "train": to_dict(p.train)}
    tags = {"stage": f"train@{variant}", "variant": variant, "adaptation": spec.adaptation}
    per_seed, histories = {}, {}
    out.mkdir(parents=True, exist_ok=True)
    with tracking.start_run(p.mlflow.experiment, variant, config, tags | {"level": "arm"}) as parent:
        tracking.log_prepared_dataset(prepared, p.data.source, p.data.url, "training")
        for seed in seeds:
            cfg = p.fit_config(variant, seed) if spec.kind.trains else None
            checkpoint = layout.train_checkpoint(_common.ROOT, variant, seed)
            with tracking.start_run(p.mlflow.experiment, f"{variant}/seed_{seed}",
                                    {"seed": seed, "fit": to_dict(cfg) if cfg else {}},
                                    tags | {"level": "seed", "seed": str(seed)}, nested=True) as run:
                tracking.log_prepared_dataset(prepared, p.data.source, p.data.url, "training")
                metrics_seed, history = train_variant(
                    spec, cfg, backbone_path=backbone, prepared_dir=prepared, model_cfg=p.model,
                    out_path=layout.seed_model(out, seed), seed=seed, device=p.train.device,
                    eval_batch_size=p.train.eval_batch_size, checkpoint_path=checkpoint, extra_meta={"config": config},
                    on_epoch=tracking.log_epoch,
                )
                tracking.log_metrics({k: float(v) for k, v in metrics_seed.items()})
                with tempfile.TemporaryDirectory() as tmp:  # not into models/, which DVC tracks
                    config_file = Path(tmp) / f"{variant}.seed_{seed}.config.json"
                    write_json(config_file, config | {"seed": seed, "fit": to_dict(cfg) if cfg else None})
                    tracking.log_artifact(config_file, "config")
                tracking.write_run_id(layout.seed_run(out, seed), run.run_id)
            checkpoint.unlink(missing_ok=True)
            per_seed[seed], histories[seed] = metrics_seed, history
            print(f"train@{variant} seed {seed}: val accuracy {metrics_seed['val_accuracy']:.3f}, best epoch "
                  f"{metrics_seed['best_epoch']} of {metrics_seed['epochs_run']}")
        summary = summarize_seeds(per_seed)
        tracking.log_metrics({f"{stat}/{k}": v for stat in ("mean", "std") for k, v in summary[stat].items()})
        tracking.write_run_id(layout.variant_run(out), parent.run_id)
    write_json(metrics, summary)
    plots.mkdir(parents=True, exist_ok=True)
    for seed, history in histories.items():
        _common.write_curves(layout.seed_history(plots, seed), history, robust=spec.adversarial is not None)
    mean, std = summary["mean"], summary["std"]
    print(f"train@{variant}: val accuracy {mean['val_accuracy']:.3f} ± {std['val_accuracy']:.3f} over {len(seeds)} seed(s)")


if __name__ == "__main__":
    _common.run(app)
