"""Stage `pretrain`: the backbone every variant starts from (model.weights: pretrain | imagenet | a checkpoint)."""

from __future__ import annotations

from pathlib import Path

import _common
import typer

app = _common.app(__doc__)


@app.command()
def main(
    prepared: Path = typer.Option(..., help="folder with the prepared domains, e.g. data/prepared"),
    out: Path = typer.Option(..., help="the backbone checkpoint, e.g. models/backbone.pt"),
    metrics: Path = typer.Option(..., help="pretraining metrics JSON, e.g. metrics/pretrain.json"),
    plots: Path = typer.Option(..., help="per-epoch curves CSV, e.g. plots/pretrain.csv"),
    params: Path = typer.Option(_common.PARAMS, help="params.yaml to read (sections: model, pretrain)"),
) -> None:
    """Pretrain ResNet18 on the synthetic source domain, or fetch the ImageNet / local weights, into OUT.

    MLflow: a `pretrain` run (pretraining only), logged after OUT, the metrics and the curves are written."""
    from robustlora import layout, tracking
    from robustlora.config import load_params, to_dict
    from robustlora.io import write_json
    from robustlora.training.loop import discard_resume_point
    from robustlora.training.study import pretrain_backbone

    p = load_params(params)
    config = {"model": to_dict(p.model), "pretrain": to_dict(p.pretrain), "data": to_dict(p.data)}
    history: list[dict] = []
    rec = tracking.Recorder(p.mlflow.experiment)
    _common.started()
    if p.model.weights != "pretrain":
        result, history = pretrain_backbone(p.model, p.pretrain, None, out)
    else:
        checkpoint = layout.pretrain_checkpoint(_common.ROOT)
        run = rec.run("pretrain", config, {"stage": "pretrain"})
        run.log_prepared_dataset(prepared / "source", p.data.source, p.data.url, "pretraining")
        result, history = pretrain_backbone(
            p.model, p.pretrain, prepared / "source", out, checkpoint_path=checkpoint, on_epoch=run.log_epoch)
        run.log_metrics({k: v for k, v in result.items() if isinstance(v, (int, float))})
        run.end()
        discard_resume_point(checkpoint)
    write_json(metrics, result)
    _common.write_curves(plots, history)
    print(f"pretrain: {result}")
    rec.finish("pretrain")  # outputs first, then MLflow (the report stage logs it)


if __name__ == "__main__":
    _common.run(app)
