"""Stage `validate`: a Great Expectations suite on each prepared domain's manifest."""

from __future__ import annotations

from pathlib import Path

import _common
import typer

app = _common.app(__doc__)

# Images per class in the real Tiny ImageNet archive
TINY_IMAGENET_TRAIN, TINY_IMAGENET_VAL = 500, 50


@app.command()
def main(
    params: Path = typer.Option(_common.PARAMS, help="params.yaml to read (section: data)"),
    raw: Path = typer.Option(_common.ROOT / "data" / "raw", help="folder with the archives"),
    prepared: Path = typer.Option(_common.ROOT / "data" / "prepared", help="folder with the prepared domains"),
    out: Path = typer.Option(_common.ROOT / "metrics" / "validation.json", help="validation result (JSON)"),
) -> None:
    """Check row counts per split and class, labels, image sizes and pixel-hash uniqueness; fail on any violation."""
    import pandas as pd

    from robustlora.config import load_params
    from robustlora.data import Archive, expected_counts
    from robustlora.io import write_json
    from robustlora.validation import validate_manifest

    p = load_params(params)
    d, syn = p.data, p.data.synthetic
    size = syn.image_size if d.source == "synthetic" else 64
    if d.source == "synthetic":
        available = {"target": (syn.target_train_per_class, syn.target_val_per_class),
                     "source": (syn.source_train_per_class, syn.source_val_per_class)}
    else:
        available = {"target": (TINY_IMAGENET_TRAIN, TINY_IMAGENET_VAL)}
    domains = {"target": (raw / "tiny-imagenet-200.zip", d.classes, d.train_per_class, d.val_per_class)}
    if (prepared / "source").exists():
        domains["source"] = (raw / "source.zip", syn.source_classes, None, None)
    results, failed = {}, []
    for name, (archive, classes, train_cap, val_cap) in domains.items():
        wnids = Archive(archive).select_classes(classes)  # what the params promise, independent of preprocess
        expected = expected_counts(wnids, *available[name], train_cap, val_cap, d.holdout)
        manifest = pd.read_csv(prepared / name / "manifest.csv", dtype={"pixel_hash": str})
        report = validate_manifest(manifest, wnids, expected, (size, size), name=name)
        results[name] = report.to_dict()
        print(report.summary())
        if not report.success:
            failed.append(name)
    results["success"] = not failed
    write_json(out, results)
    if failed:
        raise typer.Exit(1)


if __name__ == "__main__":
    _common.run(app)
