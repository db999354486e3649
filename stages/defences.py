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
    squeeze_results: Path = typer.Option(..., help="per-image detector results, e.g. results/defences/squeeze.parquet"),
    switching_results: Path = typer.Option(..., help="per-image results of the switching system, "
                                           "e.g. results/defences/switching.parquet"),
    metrics: Path = typer.Option(..., help="metrics JSON (detector per arm, switching system, switch cost), "
                                 "e.g. metrics/defences.json"),
    params: Path = typer.Option(_common.PARAMS, help="params.yaml to read (sections: squeeze, switching, attack, "
                                "variants)"),
) -> None:
    """Fit the detector's threshold on each model's clean holdout images, attack arm + detector (FGSM, PGD, BPDA
    adaptive) on the first squeeze.n_images attacked images; then the switching system (switching.*)."""
    import pandas as pd

    from robustlora import tracking
    from robustlora.models.adaptation import training_seeds
    from robustlora.config import load_params
    from robustlora.data.dataset import load_split
    from robustlora.defences.evaluation import squeeze_rows, switching_bank, switching_cost, switching_rows
    from robustlora.evaluation.suite import RowCache, attacked_images, fingerprint
    from robustlora.io import atomic_path, write_json
    from robustlora.models.resnet import load_variant, pick_device

    p = load_params(params)
    sq, sw, attack = p.squeeze, p.switching, p.attack
    device = pick_device(attack.device, "attack.device")
    holdout = load_split(prepared, "holdout").images
    attack_settings = {"pgd": attack.pgd.model_dump(mode="json"), "seed": attack.seed,
                       "batch_size": attack.batch_size, "device": attack.device}
    summary: dict = {"squeeze": {}, "switching": {}, "switching_cost": None}

    images, labels, ids = attacked_images(prepared, attack, sq.n_images)
    cache, settings = RowCache(squeeze_results), {"squeeze": sq.model_dump(mode="json"), **attack_settings}
    frames = []
    for variant, seed, model_file, run_file in _attacks.each_model(p, models):
        fp = fingerprint([model_file], settings, ids)
        rows = cache.get(f"{variant} seed {seed}", fp)
        if rows is None:
            model, _ = load_variant(model_file)
            rows = RowCache.tag(_attacks.tag_rows(squeeze_rows(model, images, labels, ids, holdout, sq, attack,
                                                               device), variant, seed), fp)
            tracking.log_into_run(run_file, _squeeze_metrics(rows))
        frames.append(rows)
        print(f"defences: squeeze {variant} seed {seed}: " + "; ".join(
            f"{k} {v:.3f}" for k, v in _squeeze_metrics(rows).items() if k.endswith(("fpr", "detection_rate"))))
    table = pd.concat(frames, ignore_index=True)
    for variant, rows in table.groupby("variant", sort=False):
        summary["squeeze"][variant] = _squeeze_metrics(rows)
    if cache.reused:
        print(f"defences: reused the unchanged detector rows of {', '.join(cache.reused)}")

    switch_frames = []
    if sw.standard is not None:
        names = (sw.standard, sw.robust)
        seeds = [s for s in training_seeds(p.variant(sw.standard), p.train.seeds)
                 if s in training_seeds(p.variant(sw.robust), p.train.seeds)]
        images, labels, ids = attacked_images(prepared, attack, sw.n_images)
        cache = RowCache(switching_results)
        settings = {"switching": sw.model_dump(mode="json", exclude={"cost_batch_size", "cost_repeats"}),
                    "squeeze": sq.model_dump(mode="json"), **attack_settings}
        system = f"{sw.standard}+{sw.robust}"
        cost_bank = None  # the first seed's bank, also timed for the switching cost
        for seed in seeds:
            paths = [models / name / f"seed_{seed}.pt" for name in names]
            fp = fingerprint(paths, settings, ids)
            rows = cache.get(f"{system} seed {seed}", fp)
            if rows is None:
                bank = switching_bank(paths[0], paths[1], names)
                if seed == seeds[0]:
                    cost_bank = bank
                rows, _ = switching_rows(bank, images, labels, ids, holdout, sq, sw, attack, device)
                rows.insert(0, "seed", seed)
                rows.insert(0, "robust", sw.robust)
                rows.insert(0, "standard", sw.standard)
                rows.insert(0, "system", system)
                RowCache.tag(rows, fp)
            switch_frames.append(rows)
        switched = pd.concat(switch_frames, ignore_index=True)
        summary["switching"] = _switching_metrics(switched)
        paths = [models / name / f"seed_{seeds[0]}.pt" for name in names]
        if cost_bank is None:  # every seed's rows were reused: build the first seed's bank for the timing only
            cost_bank = switching_bank(paths[0], paths[1], names)
        summary["switching_cost"] = switching_cost(cost_bank, paths[0], paths[1], images, sw, device)
        cost = summary["switching_cost"]
        print(f"defences: switching {system}: " + "; ".join(
            f"{k} {v:.3f}" for k, v in summary["switching"].items() if k.startswith(("clean", "worst"))) +
            f"; per batch of {cost['batch_size']}: switch {1e3 * cost['switch_s']['median']:.1f} ms, reload from "
            f"disk {1e3 * cost['reload_disk_s']['median']:.1f} ms")
        with tracking.start_run(p.mlflow.experiment, "switching", {"switching": sw.model_dump(mode="json"),
                                                                  "squeeze": sq.model_dump(mode="json")},
                                {"stage": "defences", "level": "system", "system": system}):
            tracking.log_metrics(summary["switching"] | {
                f"cost/{k}_median": v["median"] for k, v in cost.items() if isinstance(v, dict)} | {
                f"cost/{k}": v for k, v in cost.items() if k.endswith("bytes")})
    else:
        switched = pd.DataFrame(columns=["system", "standard", "robust", "seed", "attack", "eps", "eps_label",
                                         "image", "label", "clean_correct", "adv_correct", "clean_switched",
                                         "adv_switched", "fingerprint"])

    for path, frame in ((squeeze_results, table), (switching_results, switched)):
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".parquet") as tmp:
            frame.to_parquet(tmp, index=False)
    write_json(metrics, summary)


def _squeeze_metrics(rows) -> dict[str, float]:
    """Means over seeds and images per attack and ε: clean FPR, detection rate, robust accuracy alone / with it."""
    out = {}
    for (attack, label), g in rows.groupby(["attack", "eps_label"], sort=False):
        fooled = g["clean_correct"] & ~g["adv_correct"]
        key = f"squeeze/{attack}/{label}"
        out[f"{key}/clean_fpr"] = float(g["clean_flagged"].mean())
        out[f"{key}/detection_rate"] = float(g.loc[fooled, "adv_flagged"].mean()) if fooled.any() else float("nan")
        out[f"{key}/robust_accuracy"] = float((g["clean_correct"] & g["adv_correct"]).mean())
        out[f"{key}/detector_robust_accuracy"] = float(
            (g["clean_correct"] & (g["adv_correct"] | g["adv_flagged"])).mean())
    return out


def _switching_metrics(rows) -> dict[str, float]:
    out = {}
    for (attack, label), g in rows.groupby(["attack", "eps_label"], sort=False):
        out.setdefault("clean_accuracy", float(g["clean_correct"].mean()))
        out.setdefault("clean_switch_rate", float(g["clean_switched"].mean()))
        out[f"{attack}/{label}/robust_accuracy"] = float((g["clean_correct"] & g["adv_correct"]).mean())
        out[f"{attack}/{label}/switch_rate"] = float(g["adv_switched"].mean())
    return out


if __name__ == "__main__":
    _common.run(app)
