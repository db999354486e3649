"""Log to MLflow what the stages recorded and is still waiting (the outbox): after a tracking outage, or after stages
run one at a time. Not a DVC stage: it writes no outputs, only MLflow runs."""

from __future__ import annotations

from pathlib import Path

import _common
import typer

app = _common.app(__doc__)


@app.command()
def main(
    repo: Path = typer.Option(None, help="the repository whose outbox to log (default: this one, as the stages find "
                                         "it)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list what waits, log nothing"),
) -> None:
    """Log every waiting entry of .robustlora/outbox/, oldest first, into the tracking store the stages use
    (MLFLOW_TRACKING_URI, else the repository's mlflow.db); each entry is removed once it is logged. A failure is one
    line naming the server, and what was not logged keeps waiting."""
    from robustlora.tracking import outbox
    from robustlora.tracking.record import publish_pending

    _common.started()
    waiting = outbox.pending(repo)
    if dry_run or not waiting:
        print(f"{len(waiting)} recorded stage(s) wait in {outbox.outbox_dir(repo)}"
              + "".join(f"\n  {p.name}" for p in waiting))
        return
    logged, uri = publish_pending(repo)
    print(f"MLflow: logged {logged} recorded stage(s) into {uri}")


if __name__ == "__main__":
    _common.run(app)
