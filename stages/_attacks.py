"""Shared wiring of the stages that attack every arm and seed in one run (autoattack, blackbox@*, transfer)."""

from __future__ import annotations

from pathlib import Path

from _common import rel


def each_model(p, models: Path, *, first_seed_only: bool = False):
    """(variant, seed, model file, run-id file) of every trained model (``first_seed_only``: each variant's first
    training seed), in params order; a missing file is a one-line ModelError naming the stage that writes it."""
    from robustlora.models.adaptation import training_seeds
    from robustlora.errors import ModelError

    for variant, spec in p.variants.items():
        seeds = training_seeds(spec, p.train.seeds)
        for seed in seeds[:1] if first_seed_only else seeds:
            model_file = models / variant / f"seed_{seed}.pt"
            if not model_file.is_file():
                raise ModelError(f"{rel(model_file)} is missing: run `dvc repro train@{variant}` (train.seeds has "
                                 f"seed {seed})")
            yield variant, seed, model_file, models / variant / f"seed_{seed}.run.json"


def write_attack_outputs(table, results: Path, metrics: Path, models: Path, *, log_prefix: str = "",
                         cache=None, name: str | None = None) -> dict:
    """Per-image rows of several variants and seeds -> results parquet, metrics JSON {variant: metrics_json} and the
    MLflow runs: each seed's figures into its training run, the across-seed means into the variant's run. The
    clean accuracy of an attack's image subset is not logged (the attack stage logs it on all its images)."""
    from robustlora import tracking
    from robustlora.evaluation.suite import flat_metrics, mean_metrics, metrics_json
    from robustlora.io import atomic_path, write_json

    if cache is not None and cache.reused:
        what = f"{name}: " if name else ""
        print(f"{what}reused the unchanged rows of {', '.join(cache.reused)} (same model file, settings, images and "
              "code)")
    with atomic_path(results, suffix=".parquet") as tmp:
        table.to_parquet(tmp, index=False)
    summary = {}
    # rows reused from the earlier file: their runs got these figures when the rows were made
    previous = cache.previous if cache is not None else None
    reused = set(previous["fingerprint"]) if previous is not None else set()
    for variant, rows in table.groupby("variant", sort=False):
        summary[variant] = metrics_json(rows)
        fresh = False
        for seed, seed_rows in rows.groupby("seed", sort=True):
            if "fingerprint" in seed_rows and set(seed_rows["fingerprint"]) <= reused:
                continue
            fresh = True
            tracking.log_into_run(models / variant / f"seed_{seed}.run.json",
                                  {log_prefix + k: v for k, v in flat_metrics(seed_rows).items()
                                   if k != "clean_accuracy"})
        if fresh:
            tracking.log_into_run(models / variant / "run.json",
                                  {f"mean/{log_prefix}{k}": v for k, v in mean_metrics(summary[variant]).items()
                                   if k != "clean_accuracy"})
    write_json(metrics, summary)
    return summary


def tag_rows(rows, variant: str, seed: int):
    """Prepend the variant and seed columns the per-image tables carry."""
    import pandas as pd

    rows.insert(0, "seed", pd.Series(seed, index=rows.index, dtype="int16"))
    rows.insert(0, "variant", variant)
    return rows
