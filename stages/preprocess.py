"""Stage `preprocess`: decode the archives into uint8 arrays, the class list and a manifest per domain."""

from __future__ import annotations

from pathlib import Path

import _common
import typer

app = _common.app(__doc__)


@app.command()
def main(
    raw: Path = typer.Option(..., help="folder with the archives, e.g. data/raw"),
    out: Path = typer.Option(..., help="folder for the prepared domains, e.g. data/prepared"),
    params: Path = typer.Option(_common.PARAMS, help="params.yaml to read (section: data, model.weights)"),
    workers: int = typer.Option(0, help="decoding processes (0 = one per CPU core)"),
) -> None:
    """Prepare the target domain (train / holdout / val) and, for model.weights=pretrain, the source domain."""
    import shutil

    from robustlora.config import load_params
    from robustlora.data.dataset import data_domains, prepare_domain

    p = load_params(params)
    domains = data_domains(p, raw)
    _common.started()
    if "source" not in domains:
        shutil.rmtree(out / "source", ignore_errors=True)
    for name, dom in domains.items():
        # how many images each split and class gets comes from the archive itself (data.expected_counts)
        manifest = prepare_domain(dom.archive, out / name, classes=dom.classes, train_per_class=dom.train_per_class,
                                  val_per_class=dom.val_per_class, holdout=dom.holdout, seed=dom.seed,
                                  image_size=dom.image_size, workers=workers or None)
        counts = manifest.groupby("split").size().to_dict()
        print(f"preprocess: {name}: {manifest['wnid'].nunique()} classes, {counts}")


if __name__ == "__main__":
    _common.run(app)
