"""The experiments of a sweep, gathered from DVC: ``dvc exp show --json`` plus the queue's logs of failed runs.

One record per experiment x arm (the columns of robustlora.reporting.sweep_records): the experiment's name, git
revision, state (success / failed / queued / running), what it changed against its baseline commit (``swept``), each
arm's resolved LoRA settings (rank, alpha, target set), and the headline figures with their intervals from the
experiment's ``metrics/summary.json`` (written by its report stage). A failed experiment keeps one row with the tail
of its log, so a sweep report never drops it silently.

Runs the ``dvc`` CLI in a subprocess (never imported: the library core stays DVC-free).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import pandas as pd

from robustlora.errors import DataError
from robustlora.reporting.sweep_records import (METRIC_COLUMNS, NUMBER_COLUMNS, RECORD_COLUMNS, TEXT_COLUMNS,
                                                swept_text)

SUMMARY_FILE = "metrics/summary.json"
PARAMS_FILE = "params.yaml"
LOG_TAIL_LINES = 25
COLUMNS = [*RECORD_COLUMNS[:3], "baseline", *RECORD_COLUMNS[3:]]  # sweep's record columns + the baseline commit


def _dvc(args: list[str], repo: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m dvc <args>`` in ``repo`` (the interpreter's own DVC, as the stages use)."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=timeout)


def exp_show(repo: str | os.PathLike = ".", all_commits: bool = False) -> list[dict[str, Any]]:
    """``dvc exp show --json`` of ``repo``: HEAD's experiments (every commit's with ``all_commits``)."""
    args = ["exp", "show", "--json", "--force"] + (["--all-commits"] if all_commits else [])
    done = _dvc(args, Path(repo))
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DataError(f"`dvc exp show` failed in {repo}: {tail[0]}")
    start = done.stdout.find("[")  # DVC may print warnings before the JSON
    try:
        return json.loads(done.stdout[start:]) if start >= 0 else []
    except json.JSONDecodeError as e:
        raise DataError(f"`dvc exp show --json` in {repo} gave unreadable JSON ({e})") from None


def read_exp_show(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A saved ``dvc exp show --json`` output, as ``exp_show`` returns it live."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, IsADirectoryError):
        raise DataError(f"{path}: file not found (write it with `dvc exp show --json > {path}`)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not JSON from `dvc exp show --json` ({e})") from None


def queue_log_tail(name: str, repo: str | os.PathLike = ".", lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` of ``dvc queue logs <name>`` (a queued experiment's worker log), or why there is none."""
    done = _dvc(["queue", "logs", name], Path(repo), timeout=60)
    text = (done.stdout or "") + (done.stderr or "")
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(no log)"


def _file_data(files: Mapping[str, Any] | None, name: str) -> dict[str, Any] | None:
    entry = (files or {}).get(name) or {}
    data = entry.get("data")
    return data if isinstance(data, dict) else None


def _ranges(state: Mapping[str, Any]) -> Iterator[tuple[str, str, Mapping[str, Any], Mapping[str, Any]]]:
    """(name, state, executor, the experiment's last ExpState) for each experiment under a baseline ExpState."""
    for rng in state.get("experiments") or []:
        revs = rng.get("revs") or []
        executor = rng.get("executor") or {}
        status = executor.get("state") or "success"
        last = revs[0] if revs else {}
        yield rng.get("name") or last.get("name") or "", status, executor, last


def _arm_settings(params: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Per variant: adaptation, rank, alpha, target set (or targets) — resolved as the pipeline resolves them."""
    from robustlora.config import parse_params
    from robustlora.errors import ParamError

    if not params:
        return {}
    try:
        p = parse_params(dict(params))
    except ParamError:
        return {}
    return {name: {"adaptation": spec.adaptation, "rank": spec.rank, "alpha": spec.alpha,
                   "targets": spec.targets_label} for name, spec in p.variants.items()}


def records(states: list[Mapping[str, Any]], log_tail: Callable[[str, Mapping[str, Any]], str] | None = None,
            include_baseline: bool = True) -> pd.DataFrame:
    """The sweep's records (module docstring) from ``dvc exp show --json`` output.

    ``log_tail(name, executor)``: the end of a failed experiment's log (default: the executor's log file when DVC
    names one, else nothing). ``include_baseline``: the baseline commits' own results are rows too (the sweep's
    reference point, named by their branch or short sha).
    """
    # through the package facade, when called: never during the package's own import
    from robustlora.tracking import params_diff

    rows: list[dict[str, Any]] = []
    for base in states:
        if base.get("rev") == "workspace":
            continue
        base_data = base.get("data") or {}
        base_params = _file_data(base_data.get("params"), PARAMS_FILE) or {}
        base_name = base.get("name") or str(base.get("rev", ""))[:7]
        entries = [(base_name, "success", {}, base)] if include_baseline else []
        for name, status, executor, state in [*entries, *_ranges(base)]:
            data = state.get("data") or {}
            params = _file_data(data.get("params"), PARAMS_FILE)
            summary = _file_data(data.get("metrics"), SUMMARY_FILE)
            swept = params_diff(base_params, params) if params and state is not base else {}
            common = {"experiment": name, "rev": str(state.get("rev") or ""), "baseline": base_name,
                      "status": status, "swept": swept_text(swept), "log_tail": ""}
            if status == "success" and not summary:
                status = common["status"] = "failed"
                error = (state.get("error") or {}).get("msg") or ""
                common["log_tail"] = error or f"no {SUMMARY_FILE} in this experiment (did its report stage run?)"
            if status != "success":
                if status == "failed" and not common["log_tail"]:
                    common["log_tail"] = (log_tail or _executor_log)(name, executor)
                rows.append(common | {"arm": ""})
                continue
            settings = _arm_settings(params)
            eps_255 = summary.get("eps_255", math.nan)
            for arm, figures in summary.items():
                if not isinstance(figures, dict):
                    continue
                arm_settings = settings.get(arm, {})
                rows.append(common | {
                    "arm": arm, "adaptation": arm_settings.get("adaptation", ""),
                    "rank": arm_settings.get("rank"), "alpha": arm_settings.get("alpha"),
                    "targets": arm_settings.get("targets", ""), "trainable_params": figures.get("trainable_params"),
                    "n_seeds": figures.get("n_seeds"), "eps_255": eps_255,
                    **{k: figures.get(k) for k in METRIC_COLUMNS}})
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    for column in NUMBER_COLUMNS + METRIC_COLUMNS:
        table[column] = pd.to_numeric(table[column], errors="coerce")
    for column in ("baseline", *TEXT_COLUMNS):
        table[column] = table[column].fillna("").astype(str)
    return table


def _executor_log(name: str, executor: Mapping[str, Any]) -> str:
    """The tail of the log file DVC's executor names (queued runs), or a pointer to ``dvc queue logs``."""
    path = ((executor or {}).get("local") or {}).get("log")
    if path and Path(path).is_file():
        lines = Path(path).read_text(errors="replace").rstrip().splitlines()
        return "\n".join(lines[-LOG_TAIL_LINES:])
    return f"(no log file recorded; try `dvc queue logs {name}`)"


def gather(repo: str | os.PathLike = ".", all_commits: bool = False, include_baseline: bool = True) -> pd.DataFrame:
    """Every experiment of ``repo`` (HEAD's, or all commits') as sweep records; failed ones with their log tail."""
    repo = Path(repo)
    return records(exp_show(repo, all_commits), log_tail=lambda name, executor: log_tail_for(name, executor, repo),
                   include_baseline=include_baseline)


def log_tail_for(name: str, executor: Mapping[str, Any], repo: Path) -> str:
    """A failed experiment's log tail: the executor's log file, else ``dvc queue logs``."""
    text = _executor_log(name, executor)
    return queue_log_tail(name, repo) if text.startswith("(no log file") else text
