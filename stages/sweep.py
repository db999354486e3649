"""Sweep report: every DVC experiment of this repo (a rank or target-set sweep) compared in reports/sweep/."""

from __future__ import annotations

from pathlib import Path

import _common
import typer

app = _common.app(__doc__)


@app.command()
def main(
    out: Path = typer.Option(Path("reports/sweep"), help="folder for sweep.md, sweep.csv and figures/"),
    repo: Path = typer.Option(_common.ROOT, help="the DVC repository whose experiments to gather"),
    all_commits: bool = typer.Option(False, "--all-commits", help="experiments of every commit, not only HEAD's"),
    exp_json: Path = typer.Option(None, help="read a saved `dvc exp show --json` instead of running it"),
    baseline: bool = typer.Option(True, help="include the baseline commit's own results as a sweep point"),
) -> None:
    """Gather the experiments (`dvc exp show --json`; failed ones with the tail of their queue log) and write
    the sweep report: a table and figures of clean accuracy, PGD / AutoAttack robust accuracy and attack success rate
    against LoRA rank, trainable parameters and target set, with each experiment's 95 % intervals, and the
    accuracy-robustness Pareto front.
    """
    from robustlora.tracking import experiments

    _common.started()
    if exp_json is not None:
        records = experiments.records(_exp_show(exp_json), include_baseline=baseline)
    else:
        records = experiments.gather(repo, all_commits, include_baseline=baseline)
    from robustlora.reporting.sweep import write_sweep  # the figures' imports, once there is something to draw

    paths = write_sweep(records, out)
    done = records.drop_duplicates("experiment")["status"].value_counts()
    print(f"sweep: {_common.rel(paths.get('sweep.md', out / 'sweep.md'))} ("
          + ", ".join(f"{n} {state}" for state, n in done.items()) + " experiment(s))")


def _exp_show(path: Path) -> list:
    """A saved `dvc exp show --json`: a list of commits, each a mapping (one line naming the file otherwise)."""
    from robustlora.errors import DataError
    from robustlora.tracking import experiments

    data = experiments.read_exp_show(path)
    if not isinstance(data, list) or not all(isinstance(commit, dict) for commit in data):
        got = type(data).__name__ if not isinstance(data, list) else "a list of " + ", ".join(
            sorted({type(c).__name__ for c in data if not isinstance(c, dict)}))
        raise DataError(f"{path}: not the output of `dvc exp show --json` (a list of commits, each a mapping), got "
                        f"{got}; write it with `dvc exp show --json > {path}`")
    return data


if __name__ == "__main__":
    _common.run(app)
