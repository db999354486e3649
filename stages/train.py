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

    MLflow: one parent run per variant (across-seed mean and std) with one child run per seed, logged after the
    models, metrics and curves are written (a tracking failure loses no training).
    """
    import json

    from robustlora import layout, tracking
    from robustlora.config import load_params, to_dict
    from robustlora.io import write_json
    from robustlora.models.adaptation import training_seeds
    from robustlora.training.loop import discard_resume_point
    from robustlora.training.study import summarize_seeds, train_variant

    p = load_params(params)
    spec = p.variant(variant)
    seeds = training_seeds(spec, p.train.seeds)
    config = {"variant": to_dict(spec), "data": to_dict(p.data), "model": to_dict(p.model), "train": to_dict(p.train)}
    tags = {"stage": f"train@{variant}", "variant": variant, "adaptation": spec.adaptation}
    per_seed, histories = {}, {}
    _common.started()
    out.mkdir(parents=True, exist_ok=True)
    rec = tracking.Recorder(p.mlflow.experiment)
    parent = rec.run(variant, config, tags | {"level": "arm"})
    parent.log_prepared_dataset(prepared, p.data.source, p.data.url, "training")
    for seed in seeds:
        cfg = p.fit_config(variant, seed) if spec.kind.trains else None
        checkpoint = layout.train_checkpoint(_common.ROOT, variant, seed)
        run = rec.run(f"{variant}/seed_{seed}", {"seed": seed, "fit": to_dict(cfg) if cfg else {}},
                      tags | {"level": "seed", "seed": str(seed)}, parent=parent)
        run.log_prepared_dataset(prepared, p.data.source, p.data.url, "training")
        metrics_seed, history = train_variant(
            spec, cfg, backbone_path=backbone, prepared_dir=prepared, model_cfg=p.model,
            out_path=layout.seed_model(out, seed), seed=seed, device=p.train.device,
            eval_batch_size=p.train.eval_batch_size, checkpoint_path=checkpoint, extra_meta={"config": config},
            on_epoch=run.log_epoch,
        )
        logged = {step for key, _, _, step in run.metrics if key.startswith("epoch/")}
        for row in history:  # epochs a resumed run trained before it was killed: its curves stay complete
            if int(row["epoch"]) not in logged:
                run.log_epoch({k: v for k, v in row.items() if isinstance(v, (int, float))})
        run.log_metrics({k: v for k, v in metrics_seed.items() if isinstance(v, (int, float))})
        run.log_text(f"{variant}.seed_{seed}.config.json", json.dumps(
            config | {"seed": seed, "fit": to_dict(cfg) if cfg else None}, indent=2) + "\n", "config")
        run.write_key(layout.seed_run(out, seed))  # how the attack stages find this run
        run.end()
        per_seed[seed], histories[seed] = metrics_seed, history
        print(f"train@{variant} seed {seed}: val accuracy {metrics_seed['val_accuracy']:.3f}, best epoch "
              f"{metrics_seed['best_epoch']} of {metrics_seed['epochs_run']}")
    summary = summarize_seeds(per_seed)
    parent.log_metrics({f"{stat}/{k}": v for stat in ("mean", "std") for k, v in summary[stat].items()})
    parent.write_key(layout.variant_run(out))
    parent.end()
    write_json(metrics, summary)
    plots.mkdir(parents=True, exist_ok=True)
    for seed, history in histories.items():
        _common.write_curves(layout.seed_history(plots, seed), history, robust=spec.adversarial is not None)
    for seed in seeds:  # every output is written: the finished seeds' resume points are no longer needed
        discard_resume_point(layout.train_checkpoint(_common.ROOT, variant, seed))
    mean, std = summary["mean"], summary["std"]
    print(f"train@{variant}: val accuracy {mean['val_accuracy']:.3f} ± {std['val_accuracy']:.3f} over {len(seeds)} seed(s)")
    rec.finish(f"train@{variant}")  # outputs first, then MLflow (the report stage logs it)


if __name__ == "__main__":
    _common.run(app)
