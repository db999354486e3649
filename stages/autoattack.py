"""Stage `autoattack`: the official AutoAttack on every arm and seed, on the first images of the attack subset."""

from __future__ import annotations

from pathlib import Path

import _attacks
import _common
import typer

app = _common.app(__doc__)


@app.command()
def main(
    prepared: Path = typer.Option(..., help="the prepared target domain, e.g. data/prepared/target"),
    models: Path = typer.Option(..., help="the folder of every variant's seed_<s>.pt (+ .run.json), e.g. models"),
    results: Path = typer.Option(..., help="per-image results (parquet), e.g. results/autoattack.parquet"),
    metrics: Path = typer.Option(..., help="metrics JSON per variant (per seed, mean, std), "
                                 "e.g. metrics/autoattack.json"),
    params: Path = typer.Option(_common.PARAMS, help="params.yaml to read (sections: autoattack, attack, variants)"),
) -> None:
    """Run AutoAttack (autoattack.version, autoattack.eps) on the first autoattack.n_images of the PGD images."""
    import pandas as pd

    from robustlora import tracking
    from robustlora.attacks.autoattack import autoattack_suite
    from robustlora.config import load_params
    from robustlora.evaluation.suite import attacked_images

    p = load_params(params)
    cfg = p.autoattack
    _common.started()
    images, labels, ids = attacked_images(prepared, p.attack, cfg.n_images)
    cache = _attacks.row_cache(results)
    frames = []
    for variant, seed, _, rows in _attacks.each_model_rows(
            p, models, cache, cfg.model_dump(mode="json"), ids,
            lambda model: autoattack_suite(model, images, labels, cfg, image_ids=ids)):
        frames.append(rows)
        robust = (rows["clean_correct"] & rows["adv_correct"]).groupby(rows["eps_label"], sort=False).mean()
        print(f"autoattack {variant} seed {seed}: robust accuracy "
              + ", ".join(f"{k} {v:.3f}" for k, v in robust.items()))
    rec = tracking.Recorder(p.mlflow.experiment)
    _attacks.write_attack_outputs(pd.concat(frames, ignore_index=True), results, metrics, models, cache, rec)
    rec.finish("autoattack")  # outputs first, then MLflow (the report stage logs it)


if __name__ == "__main__":
    _common.run(app)
