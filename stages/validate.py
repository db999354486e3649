"""Stage `validate`: a Great Expectations suite on each prepared domain's manifest."""

from __future__ import annotations

from pathlib import Path

import _common
import typer

app = _common.app(__doc__)


@app.command()
def main(
    raw: Path = typer.Option(..., help="folder with the archives, e.g. data/raw"),
    prepared: Path = typer.Option(..., help="folder with the prepared domains, e.g. data/prepared"),
    out: Path = typer.Option(..., help="validation result (JSON), e.g. metrics/validation.json"),
    params: Path = typer.Option(_common.PARAMS, help="params.yaml to read (section: data, model.weights)"),
) -> None:
    """Check counts per split and class (as the archive and the caps imply), labels, image sizes and pixel-hash
    uniqueness, and the official Tiny ImageNet sizes when the archive is the official zip; fail on any violation."""
    from robustlora.config import load_params
    from robustlora.data.dataset import data_domains
    from robustlora.errors import ValidationError
    from robustlora.io import write_json
    from robustlora.data.validation import validate_domain

    p = load_params(params)
    results, failed = {}, []
    _common.started()
    for name, dom in data_domains(p, raw).items():
        report = validate_domain(dom, prepared / name)
        results[name] = report.to_dict()
        print(report.summary())
        if not report.success:
            failed.append(name)
    results["success"] = not failed
    write_json(out, results)  # written on failure too: it holds the offending rows
    if failed:
        raise ValidationError(f"validation of {', '.join(failed)} failed; the failed expectations are above and in "
                              f"{_common.rel(out)}")


if __name__ == "__main__":
    _common.run(app)
