"""Stage `defences`: the feature-squeezing detector on every arm and seed, and the detector-driven switching system
between a standard and an adversarially trained LoRA adapter, each under adaptive attacks (+ the switch's cost)."""

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
    results_dir: Path = typer.Option(..., help="per-image results of the detector (squeeze.parquet) and of the "
                                     "switching system (switching.parquet), e.g. results/defences"),
    metrics: Path = typer.Option(..., help="metrics JSON (detector per arm, switching system, switch cost), "
                                 "e.g. metrics/defences.json"),
    params: Path = typer.Option(_common.PARAMS, help="params.yaml to read (sections: squeeze, switching, attack, "
                                "variants)"),
) -> None:
    """Fit the detector's threshold on each model's clean holdout images, attack arm + detector (FGSM, PGD, BPDA
    adaptive) on the first squeeze.n_images attacked images; then the switching system (switching.*)."""
    import pandas as pd

    from robustlora import layout, tracking
    from robustlora.config import load_params
    from robustlora.data.dataset import load_split
    from robustlora.defences.evaluation import (squeeze_rows, switching_bank, switching_cost, switching_rows,
                                                switching_table, system_rows)
    from robustlora.defences.metrics import squeeze_metrics, squeeze_summary, switching_metrics, switching_run_metrics
    from robustlora.evaluation.suite import attacked_images
    from robustlora.io import atomic_path, write_json
    from robustlora.models.adaptation import training_seeds
    from robustlora.models.resnet import pick_device

    p = load_params(params)
    sq, sw, attack = p.squeeze, p.switching, p.attack
    device = pick_device(attack.device, "attack.device")
    _common.started()
    holdout = load_split(prepared, "holdout").images

    images, labels, ids = attacked_images(prepared, attack, sq.n_images)
    cache = squeeze_cache = _attacks.row_cache(results_dir / layout.SQUEEZE_RESULTS)
    frames, new = [], []
    for variant, seed, run_file, rows in _attacks.each_model_rows(
            p, models, cache, {"squeeze": sq.model_dump(mode="json"), **_attacks.pgd_settings(attack)}, ids,
            lambda model: squeeze_rows(model, images, labels, ids, holdout, sq, attack, device)):
        frames.append(rows)
        if cache.is_new(rows):  # reused rows' runs got their figures when the rows were made
            new.append((run_file, rows))
        print(f"defences: squeeze {variant} seed {seed}: " + "; ".join(
            f"{k} {v:.3f}" for k, v in squeeze_metrics(rows).items() if k.endswith(("fpr", "detection_rate"))))
    _attacks.print_reused(cache, "defences: squeeze")
    squeezed = pd.concat(frames, ignore_index=True)
    summary: dict = {"squeeze": squeeze_summary(squeezed), "switching": {}, "switching_cost": None}

    switched = switching_table([])  # no switching system configured: the empty table
    if sw.standard is not None:
        names = (sw.standard, sw.robust)
        seeds = [s for s in training_seeds(p.variant(sw.standard), p.train.seeds)
                 if s in training_seeds(p.variant(sw.robust), p.train.seeds)]
        images, labels, ids = attacked_images(prepared, attack, sw.n_images)
        cache = _attacks.row_cache(results_dir / layout.SWITCHING_RESULTS)
        settings = {"switching": sw.model_dump(mode="json", exclude={"cost_batch_size", "cost_repeats"}),
                    "squeeze": sq.model_dump(mode="json"), **_attacks.pgd_settings(attack)}
        system = f"{sw.standard}+{sw.robust}"
        saved = ("fc",) if p.model.head == "new" else ()  # a fresh head travels with its adapter (modules_to_save)
        settings["modules_to_save"] = list(saved)
        paths = {seed: [_attacks.model_file(models / name, name, seed) for name in names] for seed in seeds}
        frames = []
        for seed in seeds:
            frames.append(cache.rows(f"{system} seed {seed}", paths[seed], settings, ids, lambda: system_rows(
                switching_rows(switching_bank(*paths[seed], names, saved), images, labels, ids, holdout, sq, sw, attack,
                               device)[0], sw.standard, sw.robust, seed)))
        _attacks.print_reused(cache, "defences: switching")
        switched = switching_table(frames)
        summary["switching"] = switching_metrics(switched)
        first = paths[seeds[0]]
        summary["switching_cost"] = cost = switching_cost(switching_bank(*first, names, saved), *first, images, sw, device)
        print(f"defences: switching {system}: " + "; ".join(
            f"{k} {v:.3f}" for k, v in summary["switching"].items() if k.startswith(("clean", "worst"))) +
            f"; per batch of {cost['batch_size']}: switch {1e3 * cost['switch_s']['median']:.1f} ms, reload from "
            f"disk {1e3 * cost['reload_disk_s']['median']:.1f} ms")

    for name, table in ((layout.SQUEEZE_RESULTS, squeezed), (layout.SWITCHING_RESULTS, switched)):
        with atomic_path(results_dir / name, suffix=".parquet") as tmp:
            table.to_parquet(tmp, index=False)
    write_json(metrics, summary)
    squeeze_cache.done()  # the spilled rows are in the outputs now
    cache.done()
    rec = tracking.Recorder(p.mlflow.experiment)  # outputs first, then MLflow
    for run_file, rows in new:
        rec.into(run_file, squeeze_metrics(rows))
    if sw.standard is not None:
        run = rec.run("switching", {"switching": sw.model_dump(mode="json"), "squeeze": sq.model_dump(mode="json")},
                      {"stage": "defences", "level": "system", "system": system})
        run.log_metrics(switching_run_metrics(summary["switching"], cost))
        run.end()
    rec.finish("defences")


if __name__ == "__main__":
    _common.run(app)
