"""Stage `attack@<variant>`: FGSM and PGD over ε on a fixed val subset, for every training seed; per-image results."""

from __future__ import annotations

from pathlib import Path

import _attacks
import _common
import typer

app = _common.app(__doc__)


@app.command()
def main(
    variant: str = typer.Argument(..., help="a trained variant, e.g. lora_fc"),
    prepared: Path = typer.Option(..., help="the prepared target domain, e.g. data/prepared/target"),
    models: Path = typer.Option(..., help="the variant's folder of seed_<s>.pt (+ .run.json), e.g. models/lora_fc"),
    results: Path = typer.Option(..., help="per-image results (parquet), e.g. results/attack/lora_fc.parquet"),
    metrics: Path = typer.Option(..., help="metrics JSON (per seed, mean, std), e.g. metrics/attack/lora_fc.json"),
    plots: Path = typer.Option(..., help="success rate and robust accuracy vs ε (CSV), e.g. plots/attack/lora_fc.csv"),
    params: Path = typer.Option(_common.PARAMS, help="params.yaml to read (sections: attack, train.seeds, variants)"),
) -> None:
    """Attack every seed's model of VARIANT on the same images; write one row per seed x attack x ε x image.

    MLflow: each seed's metrics go into that seed's training run, the across-seed means into the variant's run, logged
    after the results, metrics and plots are written.
    """
    import pandas as pd

    from robustlora import layout, tracking
    from robustlora.config import load_params
    from robustlora.evaluation.rowcache import FINGERPRINT
    from robustlora.evaluation.suite import (attack_variant, attacked_images, flat_metrics, mean_metrics, metrics_json,
                                             success_curves)
    from robustlora.io import atomic_path, write_json
    from robustlora.models.adaptation import training_seeds

    p = load_params(params)
    frames = []
    seeds = training_seeds(p.variant(variant), p.train.seeds)
    _common.started()
    model_files = {seed: _attacks.model_file(models, variant, seed) for seed in seeds}  # all, before any attack
    ids = attacked_images(prepared, p.attack)[2]
    cache = _attacks.row_cache(results, persisted=False)  # a seed a killed run finished is not attacked again
    for seed in seeds:
        cfg = p.attack
        if seed != seeds[0] and not cfg.convergence.all_seeds:  # the convergence check on the first seed only
            cfg = cfg.model_copy(update={"convergence": cfg.convergence.model_copy(update={"n_images": 0})})
        rows = cache.rows(f"{variant} seed {seed}", [model_files[seed]], cfg.model_dump(mode="json"), ids,
                          lambda: _attacks.tag_rows(attack_variant(model_files[seed], prepared, cfg), variant, seed))
        rows = rows.drop(columns=FINGERPRINT)
        frames.append(rows)
        clean = rows.loc[rows["attack"] == "fgsm"].drop_duplicates("image")["clean_correct"].mean()
        print(f"attack@{variant} seed {seed}: clean accuracy {clean:.3f} on {rows['image'].nunique()} images")
    table = pd.concat(frames, ignore_index=True)
    with atomic_path(results, suffix=".parquet") as tmp:
        table.to_parquet(tmp, index=False)
    summary = metrics_json(table)
    write_json(metrics, summary)
    with atomic_path(plots, suffix=".csv") as tmp:
        success_curves(table).to_csv(tmp, index=False)
    _attacks.print_reused(cache)
    cache.done()  # the finished seeds' rows are in the outputs now
    for attack in ("fgsm", "pgd"):
        asr = ", ".join(f"{k}: {_fmt(v['asr']['mean'])}" for k, v in summary.get(attack, {}).items())
        print(f"attack@{variant}: {attack} success (mean over seeds) {asr}")
    rec = tracking.Recorder(p.mlflow.experiment)  # outputs first, then MLflow
    for seed, rows in zip(seeds, frames):
        rec.into(layout.seed_run(models, seed), flat_metrics(rows))
    rec.into(layout.variant_run(models), {f"mean/{k}": v for k, v in mean_metrics(summary).items()})
    rec.finish(f"attack@{variant}")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"  # None: no image was correct before the attack


if __name__ == "__main__":
    _common.run(app)
