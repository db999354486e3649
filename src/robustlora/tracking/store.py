"""Where the MLflow store lives, how we connect to it, and how mlflow is imported (:func:`import_mlflow`).

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
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote

from robustlora.errors import TrackingError

STORE_FILE = "mlflow.db"
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # the UI opens on runs, not GenAI traces
ARTIFACT_DIR = "mlartifacts"
PROBE_TIMEOUT_S = 3.0
_EXEC_TMP_PARTS = (".dvc", "tmp", "exps")  # DVC's experiment executor temp dirs live here


def import_mlflow() -> Any:
    """Import mlflow lazily (slow import) with telemetry off and fail-fast HTTP settings."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # MLflow's defaults (7 retries, backoff 2, 120 s timeout) turn a flaky server into a minutes-long hang
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    import mlflow

    return mlflow


def git(args: list[str], cwd: Path) -> str | None:
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
    common = git(["rev-parse", "--path-format=absolute", "--git-common-dir"], path)
    if common and Path(common).name == ".git":
        return Path(common).parent
    # submodules keep their git dir under the superproject's .git/modules: use their own top level
    top = git(["rev-parse", "--show-toplevel"], path)
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
            f"tracking server {uri}: not reachable ({reason}); start it or unset MLFLOW_TRACKING_URI "
            f"to use the local sqlite store"
        ) from None




def connect(repo_root: Path | None) -> str:
    """Point mlflow at the store for ``repo_root`` after checking it answers; returns the URI."""
    uri = tracking_uri(repo_root)
    _check_reachable(uri)
    if (db := _sqlite_path(uri)) is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    import_mlflow().set_tracking_uri(uri)
    return uri


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Hold ``<db>.lock`` (an advisory lock) for a SQLite store: parallel queue workers opening a new store otherwise
    race in MLflow's schema migrations (``table _alembic_tmp_metrics already exists``) and in creating the
    experiment. A server (or any other store) serialises these itself."""
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock
        yield
        return
    with open(f"{db}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def configure(experiment: str, repo_root: Path | None = None) -> str:
    """Set the tracking URI and the active experiment (created with repo-local artifacts); returns the URI."""
    uri = connect(repo_root)
    with _store_lock(uri):
        return _configure(experiment, uri)


def _configure(experiment: str, uri: str) -> str:
    mlflow = import_mlflow()
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        try:
            mlflow.create_experiment(experiment, artifact_location=_artifact_location(uri, experiment),
                                     tags=dict([EXPERIMENT_KIND]))
        except mlflow.exceptions.MlflowException:
            # a parallel stage may have created it first; anything else is re-raised
            if mlflow.get_experiment_by_name(experiment) is None:
                raise
    elif found.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:  # a store made before the tag, or by MLflow 3's UI
        mlflow.MlflowClient().set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)
    mlflow.set_experiment(experiment)
    return uri


UI_ROUTE = "#/experiments/{id}/runs"  # MLflow 3's UI: the runs table (its home and an experiment's default tab are GenAI)
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` listens by default


def runs_view_link(experiment: str, uri: str | None = None) -> str | None:
    """The direct link to ``experiment``'s runs table in the MLflow UI: on the tracking server itself for an http(s)
    URI, else on a local ``mlflow ui`` (``mlflow ui --backend-store-uri <uri>``). None when the experiment does not
    exist. Opens the store (imports mlflow)."""
    uri = uri or tracking_uri()
    mlflow = import_mlflow()
    found = mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    if found is None:
        return None
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI
    return f"{base}/{UI_ROUTE.format(id=found.experiment_id)}"


def ui_line(experiment: str, uri: str) -> str | None:
    """One line telling where the runs are: the link, and for a local store the command that serves it."""
    link = runs_view_link(experiment, uri)
    if link is None:
        return None
    if uri.startswith(("http://", "https://")):
        return f"MLflow runs: {link}"
    return f"MLflow runs: {link} (after `mlflow ui --backend-store-uri {uri}`)"
