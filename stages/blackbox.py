"""Stage `blackbox`: the black-box attacks (Square, HopSkipJump, Boundary, ZOO) on every arm and seed."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import _attacks
import _common
import typer

app = _common.app(__doc__)


@app.command()
def main(
    prepared: Path = typer.Option(..., help="the prepared target domain, e.g. data/prepared/target"),
    models: Path = typer.Option(..., help="the folder of every variant's seed_<s>.pt (+ .run.json), e.g. models"),
    results_dir: Path = typer.Option(..., help="per-image results, one <attack>.parquet each, e.g. results/blackbox"),
    metrics_dir: Path = typer.Option(..., help="metrics JSON per attack (per variant), e.g. metrics/blackbox"),
    only: Optional[List[str]] = typer.Option(None, help="run only these attacks (default: all four)"),
    params: Path = typer.Option(_common.PARAMS, help="params.yaml to read (sections: blackbox, attack, variants)"),
) -> None:
    """Attack the first blackbox.<attack>.n_images of the PGD images; record per image the queries to success.

    Square runs once per ε of blackbox.square.eps; the distance-minimising attacks run once and are scored at every
    ε of attack.eps and at ε = 1 (unbounded). One stage for the four, so ART is imported once; each attack's rows
    of a model are reused from the previous run when the model file, that attack's settings, the images and the
    code are unchanged, so changing blackbox.square.queries recomputes Square only.
    """
    import pandas as pd

    from robustlora import layout, tracking
    from robustlora.attacks.blackbox import blackbox_attack
    from robustlora.config import BLACKBOX_ATTACKS, load_params
    from robustlora.errors import ParamError
    from robustlora.evaluation.suite import attacked_images

    unknown = sorted(set(only or ()) - set(BLACKBOX_ATTACKS))
    if unknown:
        raise ParamError(f"unknown black-box attack(s) {', '.join(unknown)}; choose from {', '.join(BLACKBOX_ATTACKS)}")
    p = load_params(params)
    cfg = p.blackbox
    eps = sorted({*p.attack.eps, 1.0})
    rec = tracking.Recorder(p.mlflow.experiment)
    _common.started()  # ART is imported by the first attack computed (none when every row is reused)
    for attack in [a for a in BLACKBOX_ATTACKS if not only or a in only]:
        settings_ = getattr(cfg, attack)
        images, labels, ids = attacked_images(prepared, p.attack, settings_.n_images)
        results = layout.per_name(results_dir, attack, ".parquet")
        cache = _attacks.row_cache(results)
        key = {**cfg.model_dump(mode="json", include={"batch_size", "seed", "device", attack}), "eps": eps}
        frames = []
        for variant, seed, _, rows in _attacks.each_model_rows(
                p, models, cache, key, ids,
                lambda model: blackbox_attack(attack, model, images, labels, cfg, eps=eps, image_ids=ids),
                first_seed_only=not getattr(settings_, "all_seeds", True)):
            frames.append(rows)
            fooled = (rows["clean_correct"] & ~rows["adv_correct"]).groupby(rows["eps_label"], sort=False).sum()
            print(f"{attack} {variant} seed {seed}: fooled " + ", ".join(f"{k} {v}" for k, v in fooled.items())
                  + f" of {int(rows.drop_duplicates('image')['clean_correct'].sum())} correct images")
        metrics = layout.per_name(metrics_dir, attack, ".json")
        _attacks.write_attack_outputs(pd.concat(frames, ignore_index=True), results, metrics, models, cache, rec,
                                      name=attack)
    rec.finish("blackbox")  # every attack's outputs first, then MLflow (the report stage logs it)


if __name__ == "__main__":
    _common.run(app)
