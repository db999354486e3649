"""Shared wiring of the stage commands: import this repository's own code, one-line errors, paths."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Run the code of *this* checkout (a queued `dvc exp run` works in a temporary copy of the repo), not whichever
# robustlora happens to be installed.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import typer  # noqa: E402

PARAMS = ROOT / "params.yaml"


def app(help: str) -> typer.Typer:
    return typer.Typer(help=help, add_completion=False, pretty_exceptions_enable=False)


def run(app: typer.Typer) -> None:
    """Run a stage: bad input (RobustloraError) ends in one line on stderr and exit code 1, a bug in a traceback."""
    import click

    from robustlora.errors import RobustloraError  # torch-free: `--help` stays fast

    try:
        rc = app(standalone_mode=False)  # returns the exit code of typer.Exit / --help instead of exiting
    except click.exceptions.ClickException as e:
        e.show()
        raise SystemExit(e.exit_code) from None
    except click.exceptions.Abort:
        print("aborted", file=sys.stderr)
        raise SystemExit(130) from None
    except RobustloraError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    if isinstance(rc, int) and rc:
        raise SystemExit(rc)


def rel(path: Path) -> str:
    """``path`` relative to the repository root when it lies inside it (for messages), else as given."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


CURVE_COLUMNS = ("epoch", "train_loss", "train_accuracy", "holdout_accuracy", "lr")


def write_curves(path: Path, history: list[dict], *, robust: bool = False) -> None:
    """One training run's per-epoch curves as CSV (plots/), atomically. ``robust``: adversarial training, whose
    holdout robust accuracy gets a column before lr (train_accuracy is then on the examples trained on)."""
    import pandas as pd

    from robustlora.io import atomic_path

    columns = list(CURVE_COLUMNS)
    if robust:
        columns.insert(4, "holdout_robust_accuracy")
    with atomic_path(path, suffix=".csv") as tmp:
        pd.DataFrame(history, columns=columns).to_csv(tmp, index=False)
