"""Shared wiring of the attack stages (attack, autoattack, blackbox, transfer, defences): the trained models they
attack, the rows they reuse from their previous run, and the outputs and MLflow figures they write."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from _common import rel

if TYPE_CHECKING:  # the stages import the library lazily, so that `--help` stays fast
    import numpy as np
    import pandas as pd
    from torch import nn

    from robustlora.config import AttackConfig, Params
    from robustlora.evaluation.rowcache import RowCache
    from robustlora.tracking import Recorder


def model_file(variant_dir: Path, variant: str, seed: int) -> Path:
    """The model file of one training seed of ``variant`` (its folder ``variant_dir``); a missing one is a one-line
    ModelError naming the stage that writes it."""
    from robustlora import layout
    from robustlora.errors import ModelError

    path = layout.seed_model(variant_dir, seed)
    if not path.is_file():
        raise ModelError(f"{rel(path)} is missing: run `dvc repro train@{variant}` (train.seeds has seed {seed})")
    return path


def each_model(p: Params, models: Path, *,
               first_seed_only: bool = False) -> Iterator[tuple[str, int, Path, Path]]:
    """(variant, seed, model file, run-id file) of every trained model in ``models`` (``first_seed_only``: each
    variant's first training seed), in params order; a missing model is a ModelError (:func:`model_file`)."""
    from robustlora import layout
    from robustlora.models.adaptation import training_seeds

    for variant, spec in p.variants.items():
        seeds = training_seeds(spec, p.train.seeds)
        for seed in seeds[:1] if first_seed_only else seeds:
            yield variant, seed, model_file(models / variant, variant, seed), layout.seed_run(models / variant, seed)


def each_model_rows(p: Params, models: Path, cache: RowCache, settings: Any, image_ids: np.ndarray,
                    attack: Callable[[nn.Module], pd.DataFrame], *,
                    first_seed_only: bool = False) -> Iterator[tuple[str, int, Path, pd.DataFrame]]:
    """(variant, seed, run-id file, rows) of every trained model (see :func:`each_model`): its rows of the earlier
    run when the row cache has them for these settings and images, else ``attack(model)``'s, tagged with variant and
    seed."""
    from robustlora.models.resnet import load_variant

    # every model file checked before the first attack: a missing one stops the stage before any compute
    for variant, seed, path, run_file in list(each_model(p, models, first_seed_only=first_seed_only)):
        rows = cache.rows(f"{variant} seed {seed}", [path], settings, image_ids,
                          lambda: tag_rows(attack(load_variant(path)[0]), variant, seed))
        yield variant, seed, run_file, rows


def row_cache(results: Path, *, persisted: bool = True) -> RowCache:
    """The row cache of a stage's per-image ``results``: the earlier run's rows (``persisted``: the file is kept
    between runs, dvc.yaml ``persist: true``) and the rows a killed run had finished, spilled to
    checkpoints/rows/<results>/ (emptied once the outputs are written: RowCache.done)."""
    from robustlora import layout
    from robustlora.evaluation.rowcache import RowCache

    from _common import ROOT

    return RowCache(results if persisted else None, spill=layout.row_checkpoints(ROOT, results))


def pgd_settings(attack: AttackConfig) -> dict:
    """The attack section's settings that PGD-based rows depend on (for their row-cache fingerprint)."""
    return {"pgd": attack.pgd.model_dump(mode="json"), "seed": attack.seed, "batch_size": attack.batch_size,
            "device": attack.device}


def print_reused(cache: RowCache, name: str | None = None) -> None:
    """Say which rows the row cache handed back (``name``: the attack, when a stage runs several)."""
    what = f"{name}: " if name else ""
    if cache.reused:
        print(f"{what}reused the unchanged rows of {', '.join(cache.reused)} (same model file, settings, images and "
              "code)")
    if cache.resumed:
        print(f"{what}resumed: the rows of {', '.join(cache.resumed)} were finished by a run that was stopped "
              f"({rel(cache.spill)})")


def write_attack_outputs(table: pd.DataFrame, results: Path, metrics: Path, models: Path, cache: RowCache,
                         recorder: Recorder, name: str | None = None) -> dict:
    """Per-image rows of several variants and seeds -> results parquet, metrics JSON {variant: metrics_json}, then
    the MLflow figures recorded in ``recorder`` (the stage publishes them after all its outputs): each seed's figures
    into its training run, the across-seed means into the variant's run. The clean accuracy of an attack's image
    subset is not logged (the attack stage logs it on all its images); rows the row cache handed back are not logged
    again (their runs got these figures when the rows were made)."""
    from robustlora import layout
    from robustlora.evaluation.suite import flat_metrics, mean_metrics, metrics_json
    from robustlora.io import atomic_path, write_json

    print_reused(cache, name)
    with atomic_path(results, suffix=".parquet") as tmp:
        table.to_parquet(tmp, index=False)
    summary = {variant: metrics_json(rows) for variant, rows in table.groupby("variant", sort=False)}
    write_json(metrics, summary)
    cache.done()  # the spilled rows are in the outputs now
    for variant, rows in table.groupby("variant", sort=False):
        new = [(seed, seed_rows) for seed, seed_rows in rows.groupby("seed", sort=True) if cache.is_new(seed_rows)]
        for seed, seed_rows in new:
            recorder.into(layout.seed_run(models / variant, seed),
                          {k: v for k, v in flat_metrics(seed_rows).items() if k != "clean_accuracy"})
        if new:
            recorder.into(layout.variant_run(models / variant),
                          {f"mean/{k}": v for k, v in mean_metrics(summary[variant]).items() if k != "clean_accuracy"})
    return summary


def tag_rows(rows: pd.DataFrame, variant: str, seed: int) -> pd.DataFrame:
    """Prepend the variant and seed columns the per-image tables carry."""
    import pandas as pd

    rows.insert(0, "seed", pd.Series(seed, index=rows.index, dtype="int16"))
    rows.insert(0, "variant", variant)
    return rows
