"""MLflow runs: one run per trained variant (a child per seed), reopened by its attack stages, all grouped under
one parent run per DVC experiment; metrics, artifacts and dataset inputs logged into them; run ids kept beside the
models. Where the store lives is :mod:`robustlora.tracking.store`'s.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from robustlora import layout
from robustlora.errors import TrackingError
from robustlora.io import file_digest, read_json, write_json
from robustlora.tracking.dvc import DvcExperiment, dvc_experiment, git_tags
from robustlora.tracking.params import MAX_PARAM_LENGTH, flatten_params, mlflow_key
from robustlora.tracking.store import configure, connect, import_mlflow, tracking_uri

if TYPE_CHECKING:
    import pandas as pd

RUN_KEY_TAG = "robustlora.run_key"  # a run later stages reopen (see robustlora.tracking.record)
GROUP_TAG = "dvc.group"  # the key of a DVC experiment's parent run (see experiment_run)


@dataclass(frozen=True)
class RunHandle:
    """The MLflow run a stage is logging into."""

    run_id: str
    experiment_id: str
    tracking_uri: str


def experiment_run(experiment: str, exp: DvcExperiment, params: Mapping[str, Any] | None = None,
                   repo_root: Path | None = None) -> str:
    """The id of ``exp``'s parent run in ``experiment``, created on first use (FINISHED; children attach to it).

    Every stage of one DVC experiment finds the same run by its ``dvc.group`` tag; ``params`` (params.yaml) are logged
    on it once, so the UI compares experiments by any param (``lora.rank``) and by the report's headline metrics.
    """
    configure(experiment, repo_root)
    mlflow = import_mlflow()
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
    mlflow = import_mlflow()
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
    mlflow = import_mlflow()
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
        if not lost_insert_race(e):
            raise
        mlflow.log_input(dataset, context=context)


# what the stores say when another process inserted the same row first: SQLite, PostgreSQL, MySQL
_UNIQUE_VIOLATIONS = ("UNIQUE constraint failed", "duplicate key value violates unique constraint", "Duplicate entry")


def lost_insert_race(error: BaseException) -> bool:
    """Whether a store error is a unique-key violation (another process inserted the same row first), in the words
    of the store behind the server: SQLite's, PostgreSQL's or MySQL's."""
    return any(words in str(error) for words in _UNIQUE_VIOLATIONS)


@contextlib.contextmanager
def resume_run(run_id: str, repo_root: Path | None = None, *, missing_ok: bool = False) -> Iterator[RunHandle | None]:
    """Reopen an existing run (e.g. the attack stage logging into its variant's training run).

    A run not in the current store is a TrackingError, or with ``missing_ok`` yields None (nothing is opened). Any
    other error of the store (a server that went away, a locked database) is a TrackingError naming the URI, never
    taken for a missing run.
    """
    uri = connect(repo_root)
    mlflow = import_mlflow()
    try:
        mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise TrackingError(f"tracking server {uri}: {reason}") from None
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
    """Log ``metrics`` into the run named by ``run_file`` (``write_run_id``, or a stage's run key file), e.g. attack
    results into the training run of that model.

    A run that is not in the current store (the model was trained while logging elsewhere: the repo's ``mlflow.db``
    before a tracking server was set, or another server) is skipped with one line on stderr, and False is returned:
    the stage's own outputs (metrics/*.json, results/) still hold the numbers. Other store errors are raised.
    """
    import sys

    kind, run_id = read_run_ref(run_file)
    if kind == "run_key":  # a key file of the stages: the run carries the key as a tag
        connect(repo_root)
        client = import_mlflow().MlflowClient()
        found = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                   filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_id}'", max_results=1)
        run_id = found[0].info.run_id if found else None
    with contextlib.ExitStack() as stack:
        run = stack.enter_context(resume_run(run_id, repo_root, missing_ok=True)) if run_id else None
        if run is None:
            print(f"MLflow: the run of {run_file} is not in {tracking_uri(repo_root)} (its model was trained "
                  f"while logging elsewhere); these metrics are in the stage's metrics file only", file=sys.stderr)
            return False
        log_metrics(metrics)
    return True


def _require_active_run() -> Any:
    """The mlflow module, refusing to log outside a run (mlflow would silently start a new one)."""
    mlflow = import_mlflow()
    if mlflow.active_run() is None:
        raise TrackingError("no active MLflow run; log inside `with start_run(...)` or `with resume_run(...)`")
    return mlflow


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log scalar metrics (tensors/numpy scalars are converted) at ``step`` (MLflow uses 0 when None)."""
    _require_active_run().log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_epoch(metrics: Mapping[str, float]) -> None:
    """Log one epoch of training (robustlora.training.loop.fit's ``on_epoch``) as ``epoch/<name>`` at step = its
    ``epoch`` number, so the UI draws the training curves."""
    log_metrics({f"epoch/{k}": v for k, v in metrics.items() if k != "epoch"}, step=int(metrics["epoch"]))


def log_artifact(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    """Copy a file (checkpoint, resolved config, figure) into the active run's artifacts."""
    path = Path(path)
    if not path.is_file():
        raise TrackingError(f"artifact '{path}' not found; write it before logging it")
    _require_active_run().log_artifact(str(path), artifact_path=artifact_path)


def write_run_id(path: str | os.PathLike, run_id: str) -> None:
    """Store the run id beside a model (``robustlora.layout.seed_run`` / ``variant_run``), atomically."""
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
    connect(repo_root)
    return import_mlflow().search_runs(experiment_names=[experiment], filter_string=filter_string,
                                       output_format="pandas")


def log_prepared_dataset(prepared_dir: str | os.PathLike, source: str, url: str | None, context: str) -> None:
    """Log a prepared split folder (``data/prepared/target``) as a dataset input of the active run (name, digest and
    source: :func:`robustlora.tracking.record.prepared_dataset`)."""
    name, digest, src, tags = prepared_dataset(prepared_dir, source, url)
    log_dataset(name, digest, src, context, tags)


def read_run_ref(path: str | os.PathLike) -> tuple[str, str]:
    """``("run_key", key)`` or, for a file older code wrote, ``("run_id", id)``; a missing or malformed file is a
    TrackingError naming it."""
    path = Path(path)
    if not path.is_file():
        raise TrackingError(f"run key file '{path}' not found; run the train stage that writes it first")
    data = read_json(path)
    for kind in ("run_key", "run_id"):
        if isinstance(data, dict) and isinstance(data.get(kind), str):
            return kind, data[kind]
    raise TrackingError(f"run key file '{path}' has no 'run_key' string; rerun the train stage to rewrite it")


def prepared_dataset(prepared_dir: str | os.PathLike, source: str, url: str | None
                     ) -> tuple[str, str, str, dict[str, str]]:
    """(name, digest, source, tags) of a prepared split folder (``data/prepared/target``) as a dataset input.

    Digest: the md5 of its ``manifest.csv`` (one row per image with its pixel hash), so the UI shows when two runs
    saw different data. ``source``: params ``data.source`` (``tiny-imagenet``: its ``url``; ``synthetic``: made by
    robustlora.data.synthetic).
    """
    prepared_dir = Path(prepared_dir)
    manifest = prepared_dir / layout.MANIFEST
    if not manifest.is_file():
        raise TrackingError(f"{manifest} not found; run the preprocess stage that writes it")
    info = read_json(prepared_dir / layout.DATA_INFO) if (prepared_dir / layout.DATA_INFO).is_file() else {}
    counts = info.get("counts") or {}
    what = "tiny-imagenet-200" if source == "tiny-imagenet" else "synthetic tiny-imagenet"
    name = f"{what} {prepared_dir.name} ({info.get('classes', '?')} classes)"
    tags = {"split_counts": ", ".join(f"{k}={v}" for k, v in counts.items()), "folder": prepared_dir.as_posix()}
    src = url if source == "tiny-imagenet" and url else f"robustlora.data.synthetic ({source})"
    return name, file_digest(manifest, "md5"), src, tags
