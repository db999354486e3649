"""Stage `transfer`: PGD examples crafted on each surrogate arm, evaluated on every arm and seed (a matrix per ε)."""

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
    results: Path = typer.Option(..., help="per-image results (parquet), e.g. results/transfer.parquet"),
    metrics: Path = typer.Option(..., help="metrics JSON per target variant, e.g. metrics/transfer.json"),
    params: Path = typer.Option(_common.PARAMS, help="params.yaml to read (sections: transfer, attack, variants)"),
) -> None:
    """Craft PGD (attack.pgd settings) on each surrogate's first seed at transfer.eps; evaluate on every model."""
    import functools

    import pandas as pd

    from robustlora import tracking
    from robustlora.attacks.transfer import craft_pgd, transfer_rows
    from robustlora.config import load_params
    from robustlora.evaluation.suite import attacked_images
    from robustlora.models.adaptation import training_seeds
    from robustlora.models.resnet import load_variant

    p = load_params(params)
    cfg = p.transfer
    _common.started()
    images, labels, ids = attacked_images(prepared, p.attack, cfg.n_images)
    sources = {name: _attacks.model_file(models / name, name, training_seeds(p.variant(name), p.train.seeds)[0])
               for name in (cfg.surrogates or p.variants)}  # a missing surrogate stops the stage before any attack

    @functools.lru_cache(maxsize=None)
    def adversarials(name: str) -> dict:
        """PGD examples of one surrogate, crafted the first time a target needs them."""
        surrogate, _ = load_variant(sources[name])
        crafted = craft_pgd(surrogate, images, labels, cfg.eps, p.attack.pgd, seed=p.attack.seed,
                            device=p.attack.device, batch_size=p.attack.batch_size)
        print(f"transfer: crafted PGD on {_common.rel(sources[name])} at {len(cfg.eps)} ε")
        return crafted

    @functools.lru_cache(maxsize=1)  # one target in memory, loaded once the cache lacks one of its rows
    def target(model_file: Path):
        return load_variant(model_file)[0]

    cache = _attacks.row_cache(results)
    settings = {"transfer": cfg.model_dump(mode="json"), **_attacks.pgd_settings(p.attack)}
    frames = []
    for variant, seed, model_file, _ in list(_attacks.each_model(p, models)):  # all checked before any attack
        for name, source in sources.items():
            frames.append(cache.rows(f"{name} -> {variant} seed {seed}", [source, model_file], settings, ids,
                                     lambda: _attacks.tag_rows(transfer_rows(
                                         target(model_file), images, labels, adversarials(name), surrogate=name,
                                         image_ids=ids, device=p.attack.device), variant, seed)))
    rec = tracking.Recorder(p.mlflow.experiment)
    _attacks.write_attack_outputs(pd.concat(frames, ignore_index=True), results, metrics, models, cache, rec)
    rec.finish("transfer")  # outputs first, then MLflow (the report stage logs it)


if __name__ == "__main__":
    _common.run(app)
