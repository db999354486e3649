"""Stage `validate`: a Great Expectations suite on each prepared domain's manifest."""

from __future__ import annotations

from pathlib import Path

import _common
import typer

app = _common.app(__doc__)

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
    from robustlora.data import Archive, data_domains, expected_counts
    from robustlora.io import write_json
    from robustlora.validation import validate_manifest

    p = load_params(params)
    results, failed = {}, []
    for name, dom in data_domains(p, raw).items():
        wnids = Archive(dom.archive).select_classes(dom.classes)  # what the params promise, independent of preprocess
        expected = expected_counts(wnids, dom.available_train, dom.available_val, dom.train_per_class,
                                   dom.val_per_class, p.data.holdout)
        manifest = pd.read_csv(prepared / name / "manifest.csv", dtype={"pixel_hash": str})
        report = validate_manifest(manifest, wnids, expected, (dom.image_size, dom.image_size), name=name)
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
