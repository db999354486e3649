"""MLflow 3 tracking: one run per trained variant, reopened by its attack stage, stored in the user's repo.

Where the store lives (``tracking_uri``):

1. ``MLFLOW_TRACKING_URI`` when set (a tracking server, or any store MLflow accepts).
2. Otherwise ``sqlite:///<repo root>/mlflow.db``, artifacts in ``<repo root>/mlartifacts/<experiment>``.
   The repo root is found from ``DVC_ROOT`` (else the cwd) by ``find_repo_root``:

   * DVC sets ``DVC_ROOT`` for every stage, and for ``dvc exp run`` (workspace, ``--temp`` and ``--queue``) it
     points at the *parent* repo, not the executor's temp copy (treeverse/dvc PRs #9879, #9918; see
     ``dvc/repo/experiments/queue/base.py`` and ``dvc/stage/run.py`` in DVC 3.67).
   * Older DVC, or a stage started by hand inside a temp copy, leaves us in the executor directory, which DVC
     always creates as ``<repo>/.dvc/tmp/exps/<tmpXXXX>`` (``TempDirExecutor.from_stash_entry``); that copy is a
     fresh git repo, so we cut the path at ``.dvc/tmp/exps`` to get back to the user's repo.
   * Finally we take the main working tree of that git repo, so linked worktrees share one store; without git
     (or outside a repo) the directory itself is used.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping
from urllib.parse import unquote

from robustlora.errors import TrackingError
from robustlora.io import read_json, write_json

if TYPE_CHECKING:
    import pandas as pd

STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
MAX_PARAM_LENGTH = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH; longer values are rejected
PROBE_TIMEOUT_S = 3.0
_EXEC_TMP_PARTS = (".dvc", "tmp", "exps")  # DVC's experiment executor temp dirs live here




@dataclass(frozen=True)
class RunHandle:
    """The MLflow run a stage is logging into."""

    run_id: str
    experiment_id: str
    tracking_uri: str


def _mlflow() -> Any:
    """Import mlflow lazily (slow import) with telemetry off and fail-fast HTTP settings."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # MLflow's defaults (7 retries, backoff 2, 120 s timeout) turn a flaky server into a minutes-long hang
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    import mlflow

    return mlflow


def _git(args: list[str], cwd: Path) -> str | None:
    """Run a local git command; its stdout, or None when git is missing or fails."""
    # optional locks off: a read-only `git status` must not fight a parallel stage for index.lock
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _outside_exp_tempdir(path: Path) -> Path:
    """Map ``<repo>/.dvc/tmp/exps/tmpXXXX/...`` back to ``<repo>``; other paths are returned unchanged."""
    parts, n = path.parts, len(_EXEC_TMP_PARTS)
    for i in range(len(parts) - n, 0, -1):  # last match wins: the innermost repo holding the executor
        if parts[i : i + n] == _EXEC_TMP_PARTS:
            return Path(*parts[:i])
    return path


def _main_worktree(path: Path) -> Path | None:
    """The main working tree of the git repo containing ``path`` (linked worktrees map to it), or None."""
    common = _git(["rev-parse", "--path-format=absolute", "--git-common-dir"], path)
    if common and Path(common).name == ".git":
        return Path(common).parent
    # submodules keep their git dir under the superproject's .git/modules: use their own top level
    top = _git(["rev-parse", "--show-toplevel"], path)
    return Path(top) if top else None


def find_repo_root(start: Path | None = None) -> Path:
    """The user's repo root for ``start`` (default: ``$DVC_ROOT``, else the cwd); see the module docstring."""
    if start is None:
        start = Path(os.environ["DVC_ROOT"]) if os.environ.get("DVC_ROOT") else Path.cwd()
    start = _outside_exp_tempdir(Path(start).resolve())
    main = _main_worktree(start) if start.is_dir() else None
    return main or start


def tracking_uri(repo_root: Path | None = None) -> str:
    """``$MLFLOW_TRACKING_URI``, else ``sqlite:///<repo_root or find_repo_root()>/mlflow.db``."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(repo_root).resolve() if repo_root is not None else find_repo_root()
    return f"sqlite:///{root / STORE_FILE}"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative paths are cwd-relative), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri[len("sqlite:///") :].split("?")[0])).resolve()


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts beside a sqlite store; None lets a server (or other store) choose."""
    db = _sqlite_path(uri)
    if db is None:
        return None
    # MLflow's default is ./mlruns under the cwd, which for `dvc exp run --temp` is a temp dir deleted afterwards
    return (db.parent / ARTIFACT_DIR / re.sub(r"[^A-Za-z0-9._-]+", "_", experiment)).as_uri()


def _check_reachable(uri: str) -> None:
    """Fail in seconds, with one line naming the URI, when an http(s) tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return  # it answered (maybe behind auth); MLflow will report any real problem itself
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"MLflow tracking server {uri} not reachable ({reason}); start it or unset MLFLOW_TRACKING_URI "
            f"to use the local sqlite store"
        ) from None


def _connect(repo_root: Path | None) -> str:
    """Point mlflow at the store for ``repo_root`` after checking it answers; returns the URI."""
    uri = tracking_uri(repo_root)
    _check_reachable(uri)
    if (db := _sqlite_path(uri)) is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    _mlflow().set_tracking_uri(uri)
    return uri


def configure(experiment: str, repo_root: Path | None = None) -> str:
    """Set the tracking URI and the active experiment (created with repo-local artifacts); returns the URI."""
    uri = _connect(repo_root)
    mlflow = _mlflow()
    if mlflow.get_experiment_by_name(experiment) is None:
        try:
            mlflow.create_experiment(experiment, artifact_location=_artifact_location(uri, experiment))
        except mlflow.exceptions.MlflowException:
            # a parallel stage may have created it first; anything else is re-raised
            if mlflow.get_experiment_by_name(experiment) is None:
                raise
    mlflow.set_experiment(experiment)
    return uri


def _param_value(value: Any) -> str:
    """A config value as an MLflow param string, truncated to MLflow's length limit."""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return str(value)[:MAX_PARAM_LENGTH]


def flatten_params(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"lora.rank": "8", "attack.eps_255": "1,2,4"}``; lists of dicts get index keys."""
    flat: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        elif isinstance(value, (list, tuple)) and any(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                sub = item if isinstance(item, Mapping) else {"value": item}
                flat.update(flatten_params(sub, f"{name}.{i}."))
        else:
            flat[name] = _param_value(value)
    return flat


def git_tags(repo_root: Path | None = None) -> dict[str, str]:
    """Code provenance tags: git commit and dirty flag of ``repo_root`` (default cwd), DVC experiment env.

    Only local git commands are run; a missing git or a non-repo simply gives no git tags.
    """
    cwd = Path(repo_root) if repo_root is not None else Path.cwd()
    tags: dict[str, str] = {}
    commit = _git(["rev-parse", "HEAD"], cwd)
    if commit:
        status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
        tags["git.commit"] = commit
        tags["mlflow.source.git.commit"] = commit  # shown by the MLflow UI
        if status is not None:
            tags["git.dirty"] = "true" if status else "false"
    # DVC sets these during `dvc exp run` / `dvc repro`
    for env, tag in [("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.exp_baseline_rev"),
                     ("DVC_STAGE", "dvc.stage")]:
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


@contextlib.contextmanager
def start_run(
    experiment: str,
    run_name: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    repo_root: Path | None = None,
    *,
    nested: bool = False,
) -> Iterator[RunHandle]:
    """Create a run with flattened ``params`` and git/DVC tags (``tags`` win); FAILED if the block raises.

    ``nested``: a child of the active run (e.g. one run per training seed under its arm's run), so the MLflow UI
    groups the seeds of an arm and compares arms.
    """
    uri = configure(experiment, repo_root)
    mlflow = _mlflow()
    if nested and mlflow.active_run() is None:
        raise TrackingError("a nested MLflow run needs an active parent run; open the parent with start_run first")
    with mlflow.start_run(run_name=run_name, tags={**git_tags(), **(tags or {})}, nested=nested) as run:
        if params:
            mlflow.log_params(flatten_params(params))
        yield RunHandle(run.info.run_id, run.info.experiment_id, uri)


@contextlib.contextmanager
def resume_run(run_id: str, repo_root: Path | None = None) -> Iterator[RunHandle]:
    """Reopen an existing run (e.g. the attack stage logging into its variant's training run)."""
    uri = _connect(repo_root)
    mlflow = _mlflow()
    try:
        mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise TrackingError(
            f"MLflow run '{run_id}' not found in {uri}; rerun the train stage or point MLFLOW_TRACKING_URI "
            f"at the store that has it"
        ) from None
    with mlflow.start_run(run_id=run_id) as run:
        yield RunHandle(run.info.run_id, run.info.experiment_id, uri)


def _require_active_run() -> Any:
    """The mlflow module, refusing to log outside a run (mlflow would silently start a new one)."""
    mlflow = _mlflow()
    if mlflow.active_run() is None:
        raise TrackingError("no active MLflow run; log inside `with start_run(...)` or `with resume_run(...)`")
    return mlflow


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log scalar metrics (tensors/numpy scalars are converted) at ``step`` (MLflow uses 0 when None)."""
    _require_active_run().log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_artifact(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    """Copy a file (checkpoint, resolved config, figure) into the active run's artifacts."""
    path = Path(path)
    if not path.is_file():
        raise TrackingError(f"artifact '{path}' not found; write it before logging it")
    _require_active_run().log_artifact(str(path), artifact_path=artifact_path)


def write_run_id(path: str | os.PathLike, run_id: str) -> None:
    """Store the run id beside a checkpoint (e.g. ``models/<variant>.run_id.json``), atomically."""
    write_json(path, {"run_id": run_id})


def read_run_id(path: str | os.PathLike) -> str:
    """The run id written by ``write_run_id``."""
    path = Path(path)
    if not path.is_file():
        raise TrackingError(f"run id file '{path}' not found; run the train stage that writes it first")
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("run_id"), str):
        raise TrackingError(f"run id file '{path}' has no 'run_id' string; rerun the train stage to rewrite it")
    return data["run_id"]


def search_runs(experiment: str, filter_string: str = "", repo_root: Path | None = None) -> pd.DataFrame:
    """All runs of ``experiment`` as a DataFrame (``params.*``, ``metrics.*``, ``tags.*`` columns); empty if none."""
    _connect(repo_root)
    return _mlflow().search_runs(experiment_names=[experiment], filter_string=filter_string, output_format="pandas")
