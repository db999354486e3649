"""Stage `pretrain`: the backbone every variant starts from (model.weights: pretrain | imagenet | a checkpoint)."""

from __future__ import annotations

from pathlib import Path

import _common
import typer

app = _common.app(__doc__)


@app.command()
def main(
    params: Path = typer.Option(_common.PARAMS, help="params.yaml to read (sections: model, pretrain)"),
    prepared: Path = typer.Option(_common.ROOT / "data" / "prepared", help="folder with the prepared domains"),
    out: Path = typer.Option(_common.ROOT / "models" / "backbone.pt", help="the backbone checkpoint"),
    metrics_out: Path = typer.Option(_common.ROOT / "metrics" / "pretrain.json", help="pretraining metrics"),
) -> None:
    """Pretrain ResNet18 on the synthetic source domain, or fetch the ImageNet / local weights, into OUT."""
    from robustlora import tracking
    from robustlora.config import load_params, to_dict
    from robustlora.io import write_json
    from robustlora.study import pretrain_backbone

    p = load_params(params)
    source = prepared / "source" if p.model.weights == "pretrain" else None
    config = {"model": to_dict(p.model), "pretrain": to_dict(p.pretrain), "data": to_dict(p.data)}
    if p.model.weights != "pretrain":
        metrics = pretrain_backbone(p.model, p.pretrain, None, out)
    else:
        with tracking.start_run(p.mlflow.experiment, "pretrain", tracking.flatten_params(config),
                                {"stage": "pretrain"}):
            metrics = pretrain_backbone(p.model, p.pretrain, source, out,
                                        checkpoint_path=_common.ROOT / "checkpoints" / "pretrain.pt",
                                        on_epoch=lambda m: tracking.log_metrics(
                                            {f"epoch/{k}": v for k, v in m.items() if k != "epoch"}, step=int(m["epoch"])))
            tracking.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        (_common.ROOT / "checkpoints" / "pretrain.pt").unlink(missing_ok=True)
    write_json(metrics_out, metrics)
    print(f"pretrain: {metrics}")


if __name__ == "__main__":
    _common.run(app)
