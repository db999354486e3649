"""Stage `preprocess`: decode the archives into uint8 arrays, the class list and a manifest per domain."""

from __future__ import annotations

from pathlib import Path

import _common
import typer

app = _common.app(__doc__)


@app.command()
def main(
    params: Path = typer.Option(_common.PARAMS, help="params.yaml to read (section: data, model.weights)"),
    raw: Path = typer.Option(_common.ROOT / "data" / "raw", help="folder with the archives"),
    out: Path = typer.Option(_common.ROOT / "data" / "prepared", help="folder for the prepared domains"),
    workers: int = typer.Option(0, help="decoding processes (0 = one per CPU core)"),
) -> None:
    """Prepare the target domain (train / holdout / val) and, for model.weights=pretrain, the source domain."""
    from robustlora.config import load_params
    from robustlora.data import prepare_domain

    p = load_params(params)
    d = p.data
    size = d.synthetic.image_size if d.source == "synthetic" else 64
    out.mkdir(parents=True, exist_ok=True)
    domains = {"target": (raw / "tiny-imagenet-200.zip", d.classes, d.train_per_class, d.val_per_class)}
    if p.model.weights == "pretrain":
        domains["source"] = (raw / "source.zip", d.synthetic.source_classes, None, None)
    else:
        import shutil

        shutil.rmtree(out / "source", ignore_errors=True)
    for name, (archive, classes, train_cap, val_cap) in domains.items():
        manifest = prepare_domain(archive, out / name, classes=classes, train_per_class=train_cap,
                                  val_per_class=val_cap, holdout=d.holdout, seed=d.seed, image_size=size,
                                  workers=workers or None)
        counts = manifest.groupby("split").size().to_dict()
        print(f"preprocess: {name}: {manifest['wnid'].nunique()} classes, {counts}")


if __name__ == "__main__":
    _common.run(app)
