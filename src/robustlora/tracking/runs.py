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
import functools
import os
import re
import subprocess
import time
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
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # the UI opens on runs, not GenAI traces
GROUP_TAG = "dvc.group"  # the key of a DVC experiment's parent run (see experiment_run)
MAX_SWEPT_IN_NAME = 120
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


def _param_value(value: Any) -> str:
    """A config value as an MLflow param string, truncated to MLflow's length limit."""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return str(value)[:MAX_PARAM_LENGTH]


def mlflow_key(name: str) -> str:
    """``name`` with the characters MLflow refuses in param, metric and tag names as '_' (``fc+conv1`` -> ``fc_conv1``)."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", name)


def flatten_params(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"lora.rank": "8", "attack.eps_255": "1,2,4"}``; lists of dicts get index keys.

    Keys are made valid MLflow names (``mlflow_key``)."""
    flat: dict[str, str] = {}
    for key, value in cfg.items():
        name = mlflow_key(f"{prefix}{key}")
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


# ----------------------------------------------------------------------------- one parent run per DVC experiment


@dataclass(frozen=True)
class DvcExperiment:
    """Which DVC experiment (or workspace run) the current stage belongs to, and what it changed.

    ``name``: ``$DVC_EXP_NAME`` (set by ``dvc exp run``, also in a queue worker), else ``workspace@<commit>``.
    ``swept``: the params that differ from the baseline commit's params.yaml (``$DVC_EXP_BASELINE_REV``, else HEAD),
    flattened, e.g. ``{"lora.rank": "8"}``: what ``-S`` set, or what was edited by hand before ``dvc repro``.
    """

    name: str
    baseline_rev: str | None
    commit: str | None
    swept: Mapping[str, str]

    @property
    def swept_text(self) -> str:
        text = ", ".join(f"{k}={v}" for k, v in sorted(self.swept.items()))
        return text if len(text) <= MAX_SWEPT_IN_NAME else text[: MAX_SWEPT_IN_NAME - 1] + "…"

    @property
    def label(self) -> str:
        """The run-name suffix: the experiment's name and its swept values, e.g. ``exp-1a2b3 lora.rank=8``."""
        return f"{self.name} {self.swept_text}".strip()

    @property
    def key(self) -> str:
        """Unique per experiment: DVC names are; a workspace run is keyed by its commit and its edits."""
        if os.environ.get("DVC_EXP_NAME"):
            return f"exp:{self.name}"
        return f"workspace:{self.commit or 'nogit'}:{self.swept_text}"


def params_diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, str]:
    """Flattened keys whose value differs between two params mappings (added keys included, removed as '∅')."""
    old, new = flatten_params(before), flatten_params(after)
    changed = {k: v for k, v in new.items() if old.get(k) != v}
    changed.update({k: "∅" for k in old if k not in new})
    return changed


def dvc_experiment(params_file: str | os.PathLike = "params.yaml") -> DvcExperiment:
    """The current DVC experiment from DVC's environment and git (local commands only); see DvcExperiment.

    Computed once per process for the same params file, its content and DVC's variables (a stage opens several
    runs, each of which asks)."""
    params_file = Path(params_file).resolve()
    text = params_file.read_text() if params_file.is_file() else None
    return _dvc_experiment(params_file, text, os.environ.get("DVC_EXP_NAME"), os.environ.get("DVC_EXP_BASELINE_REV"))


@functools.lru_cache(maxsize=8)
def _dvc_experiment(params_file: Path, text: str | None, exp_name: str | None, baseline_rev: str | None
                    ) -> DvcExperiment:
    import yaml

    cwd = params_file.parent
    commit = _git(["rev-parse", "HEAD"], cwd)
    baseline = baseline_rev or commit
    swept: dict[str, str] = {}
    if baseline and text is not None:
        before = _git(["show", f"{baseline}:./{params_file.name}"], cwd)
        try:
            swept = params_diff(yaml.safe_load(before or "") or {}, yaml.safe_load(text) or {})
        except yaml.YAMLError:
            swept = {}
    name = exp_name or f"workspace@{(commit or 'nogit')[:7]}"
    return DvcExperiment(name=name, baseline_rev=baseline, commit=commit, swept=swept)


def experiment_run(experiment: str, exp: DvcExperiment, params: Mapping[str, Any] | None = None,
                   repo_root: Path | None = None) -> str:
    """The id of ``exp``'s parent run in ``experiment``, created on first use (FINISHED; children attach to it).

    Every stage of one DVC experiment finds the same run by its ``dvc.group`` tag; ``params`` (params.yaml) are logged
    on it once, so the UI compares experiments by any param (``lora.rank``) and by the report's headline metrics.
    """
    configure(experiment, repo_root)
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    key = exp.key.replace("'", "")
    found = client.search_runs([experiment_id], filter_string=f"tags.`{GROUP_TAG}` = '{key}'", max_results=1)
    if found:
        return found[0].info.run_id
    tags = {**git_tags(), GROUP_TAG: key, "level": "experiment", "dvc.experiment": exp.name,
            **{mlflow_key(f"swept.{k}"): v[:MAX_PARAM_LENGTH] for k, v in exp.swept.items()}}
    tags.pop("dvc.stage", None)
    if exp.baseline_rev:
        tags["dvc.exp_baseline_rev"] = exp.baseline_rev
    run = client.create_run(experiment_id, run_name=exp.label, tags=tags)
    flat = list(flatten_params(params or {}).items())
    for i in range(0, len(flat), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in flat[i : i + 100]])
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def log_to_experiment_run(experiment: str, metrics: Mapping[str, float], exp: DvcExperiment | None = None,
                          repo_root: Path | None = None) -> str:
    """Log ``metrics`` (e.g. the report's headline figures) on the current DVC experiment's parent run."""
    exp = exp or dvc_experiment()
    run_id = experiment_run(experiment, exp, repo_root=repo_root)
    mlflow = _mlflow()
    now = int(time.time() * 1000)
    items = [mlflow.entities.Metric(mlflow_key(k), float(v), now, 0) for k, v in metrics.items()]
    for i in range(0, len(items), 1000):
        mlflow.MlflowClient().log_batch(run_id, metrics=items[i : i + 1000])
    return run_id


@contextlib.contextmanager
def start_run(
    experiment: str,
    run_name: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    repo_root: Path | None = None,
    *,
    nested: bool = False,
    exp: DvcExperiment | None = None,
) -> Iterator[RunHandle]:
    """Create a run with flattened ``params`` and git/DVC tags (``tags`` win); FAILED if the block raises.

    A top-level run (``nested=False``) is a child of its DVC experiment's parent run (``experiment_run``; ``exp``
    defaults to ``dvc_experiment()``) and its name carries the experiment's label: ``lora_fc · exp-1a2b3
    lora.rank=8``. ``nested``: a child of the active run (one run per training seed under its arm's run), named
    ``run_name`` plus the same label.
    """
    uri = configure(experiment, repo_root)
    mlflow = _mlflow()
    if nested and mlflow.active_run() is None:
        raise TrackingError("a nested MLflow run needs an active parent run; open the parent with start_run first")
    exp = exp or dvc_experiment()
    parent = None if nested else experiment_run(experiment, exp, _params_file_values(), repo_root)
    all_tags = {**git_tags(), "dvc.experiment": exp.name, **(tags or {})}
    with mlflow.start_run(run_name=f"{run_name} · {exp.label}", tags=all_tags, nested=nested,
                          parent_run_id=parent) as run:
        if params:
            mlflow.log_params(flatten_params(params))
        yield RunHandle(run.info.run_id, run.info.experiment_id, uri)


def _params_file_values(path: str | os.PathLike = "params.yaml") -> dict[str, Any]:
    """params.yaml as read (for the experiment run's params); empty when absent or unreadable."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def log_dataset(name: str, digest: str, source: str, context: str, tags: Mapping[str, str] | None = None) -> None:
    """Log a dataset as an input of the active run: ``name``, ``digest`` (≤ 36 chars, e.g. the manifest's md5) and
    ``source`` (an http(s) URL, or a description such as ``synthetic``, recorded as a code source)."""
    mlflow = _require_active_run()
    from mlflow.data.meta_dataset import MetaDataset

    if source.startswith(("http://", "https://")):
        from mlflow.data.http_dataset_source import HTTPDatasetSource

        src: Any = HTTPDatasetSource(source)
    else:
        from mlflow.data.code_dataset_source import CodeDatasetSource

        src = CodeDatasetSource({"source": source, **(tags or {})})
    dataset = MetaDataset(src, name=name, digest=digest[:36])
    try:
        mlflow.log_input(dataset, context=context)
    except mlflow.exceptions.MlflowException as e:
        # two processes (parallel queue workers) logging the same new dataset race in the store's check-then-insert;
        # the loser's retry finds the winner's row and only links this run to it
        if "UNIQUE constraint failed" not in str(e):
            raise
        mlflow.log_input(dataset, context=context)


@contextlib.contextmanager
def resume_run(run_id: str, repo_root: Path | None = None, *, missing_ok: bool = False) -> Iterator[RunHandle | None]:
    """Reopen an existing run (e.g. the attack stage logging into its variant's training run).

    A run not in the current store is a TrackingError, or with ``missing_ok`` yields None (nothing is opened).
    """
    uri = _connect(repo_root)
    mlflow = _mlflow()
    try:
        mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        if missing_ok:
            yield None
            return
        raise TrackingError(
            f"MLflow run '{run_id}' not found in {uri}; rerun the train stage or point MLFLOW_TRACKING_URI "
            f"at the store that has it"
        ) from None
    with mlflow.start_run(run_id=run_id) as run:
        yield RunHandle(run.info.run_id, run.info.experiment_id, uri)


def log_into_run(run_file: str | os.PathLike, metrics: Mapping[str, float], repo_root: Path | None = None) -> bool:
    """Log ``metrics`` into the run named by ``run_file`` (``write_run_id``), e.g. attack results into the training
    run of that model.

    A run that is not in the current store (the model was trained while logging elsewhere: the repo's ``mlflow.db``
    before a tracking server was set, or another server) is skipped with one line on stderr, and False is returned:
    the stage's own outputs (metrics/*.json, results/) still hold the numbers.
    """
    import sys

    run_id = read_run_id(run_file)
    with resume_run(run_id, repo_root, missing_ok=True) as run:
        if run is None:
            print(f"MLflow: run {run_id} of {run_file} is not in {tracking_uri(repo_root)} (its model was trained "
                  f"while logging elsewhere); these metrics are in the stage's metrics file only", file=sys.stderr)
            return False
        log_metrics(metrics)
    return True


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


def log_prepared_dataset(prepared_dir: str | os.PathLike, source: str, url: str | None, context: str) -> None:
    """Log a prepared split folder (``data/prepared/target``) as a dataset input of the active run.

    Digest: the md5 of its ``manifest.csv`` (one row per image with its pixel hash), so the UI shows when two runs
    saw different data. ``source``: params ``data.source`` (``tiny-imagenet``: its ``url``; ``synthetic``: made by
    robustlora.data.synthetic).
    """
    import hashlib

    prepared_dir = Path(prepared_dir)
    manifest = prepared_dir / "manifest.csv"
    if not manifest.is_file():
        raise TrackingError(f"{manifest} not found; run the preprocess stage that writes it")
    info = read_json(prepared_dir / "info.json") if (prepared_dir / "info.json").is_file() else {}
    counts = info.get("counts") or {}
    what = "tiny-imagenet-200" if source == "tiny-imagenet" else "synthetic tiny-imagenet"
    name = f"{what} {prepared_dir.name} ({info.get('classes', '?')} classes)"
    tags = {"split_counts": ", ".join(f"{k}={v}" for k, v in counts.items()), "folder": prepared_dir.as_posix()}
    log_dataset(name, hashlib.md5(manifest.read_bytes()).hexdigest(),
                url if source == "tiny-imagenet" and url else f"robustlora.data.synthetic ({source})", context, tags)
