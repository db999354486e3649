"""Stage `download`: fetch Tiny ImageNet (md5-verified) or synthesise the offline miniature; fetch ImageNet weights."""

from __future__ import annotations

from pathlib import Path

import _common
import typer

app = _common.app(__doc__)


@app.command()
def main(
    out: Path = typer.Option(..., help="folder for the archives, e.g. data/raw"),
    params: Path = typer.Option(_common.PARAMS, help="params.yaml to read (sections: data, model)"),
) -> None:
    """Put the data archives into OUT: tiny-imagenet-200.zip (+ source.zip for the synthetic source domain)."""
    from robustlora import layout
    from robustlora.config import load_params
    from robustlora.io import write_json

    p = load_params(params)
    _common.started()
    out.mkdir(parents=True, exist_ok=True)
    if p.data.source == "synthetic":
        from robustlora.data.synthetic import describe, make_synthetic

        paths = make_synthetic(p.data.synthetic, out)
        write_json(out / layout.SYNTHETIC_DESCRIPTION, describe(p.data.synthetic))
        print(f"download: synthesised {', '.join(_common.rel(x) for x in paths.values())}")
    else:
        from robustlora.data.download import fetch_archive

        (out / layout.SOURCE_ARCHIVE).unlink(missing_ok=True)  # no synthetic source domain with real data
        path = fetch_archive(p.data.url, out / layout.TARGET_ARCHIVE, p.data.md5)
        verified = f"verified (md5 {p.data.md5})" if p.data.md5 else "(md5 not checked: data.md5 is null)"
        print(f"download: {_common.rel(path)} {verified}")
    if p.model.weights == "imagenet":
        from robustlora.models.resnet import fetch_imagenet_weights

        print(f"download: ImageNet weights at {fetch_imagenet_weights()}")


if __name__ == "__main__":
    _common.run(app)
