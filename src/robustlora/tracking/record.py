"""Results first, logging second: what a stage logs to MLflow is recorded in memory while it works, and published in
one go after the stage has written its DVC outputs (:meth:`Recorder.publish`). The stages go one step further
(:meth:`Recorder.finish`): they write the record to the outbox and the report stage logs every stage's record in one
process (:mod:`robustlora.tracking.outbox`).

Nothing here imports mlflow until :meth:`Recorder.publish` (a stage pays MLflow's import and store set-up once, at its
end, off the path to its first result), and a tracking failure can never lose a result: the outputs are already on
disk when the store is opened. A failure while publishing is one :class:`~robustlora.errors.TrackingError`,
``tracking server <uri>: <reason>``, which the stage commands print as one line and exit 1 with; nothing is skipped
silently. A stage that fails before it publishes logs nothing (no FAILED runs): its outputs were not written either.

The runs a stage records keep the structure :func:`robustlora.tracking.start_run` gives: a top-level run is a child
of its DVC experiment's parent run, ``parent=`` makes a child of another recorded run (one run per training seed
under its arm's run). Runs that later stages reopen (the training runs the attack stages add their figures to) get a
run key: a random id written into a key file beside the model *before* logging (``{"run_key": ...}``, the same file
``layout.seed_run`` names) and set as the run's ``robustlora.run_key`` tag when it is logged; :meth:`Recorder.into`
finds the run by that tag at publish time. Key files written by older code (``{"run_id": ...}``) still work.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from robustlora.errors import TrackingError
from robustlora.io import write_json
from robustlora.tracking.runs import (RUN_KEY_TAG, _params_file_values, experiment_run, lost_insert_race,
                                     prepared_dataset, read_run_ref)

RECORD_TAG = "robustlora.record"  # one id per recorded run: logging an outbox entry twice finds the runs it created

_MAX_REASON = 300


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class RunRecord:
    """One MLflow run as recorded: created at publish time with the times it was recorded at."""

    name: str
    params: Mapping[str, Any]
    tags: dict[str, str]
    parent: RunRecord | None = None
    key: str | None = None
    start_ms: int = field(default_factory=_now_ms)
    end_ms: int | None = None
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)  # key, value, timestamp ms, step
    datasets: list[tuple[str, str, str, str, dict[str, str]]] = field(default_factory=list)
    artifacts: list[tuple[str, str | None, str | None]] = field(default_factory=list)  # path or name, dir, text
    record_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    run_id: str | None = None  # set once published

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Scalar metrics (tensors / numpy scalars are converted) at ``step``."""
        now = _now_ms()
        self.metrics.extend((k, float(v), now, int(step)) for k, v in metrics.items())

    def log_epoch(self, metrics: Mapping[str, float]) -> None:
        """One epoch of training (``training.loop.fit``'s ``on_epoch``) as ``epoch/<name>`` at step = its epoch."""
        self.log_metrics({f"epoch/{k}": v for k, v in metrics.items() if k != "epoch"}, step=int(metrics["epoch"]))

    def log_dataset(self, name: str, digest: str, source: str, context: str,
                    tags: Mapping[str, str] | None = None) -> None:
        """A dataset input: ``name``, ``digest`` (<= 36 chars), ``source`` (an http(s) URL or a description)."""
        self.datasets.append((name, digest[:36], source, context, dict(tags or {})))

    def log_prepared_dataset(self, prepared_dir: str | os.PathLike, source: str, url: str | None,
                             context: str) -> None:
        """A prepared split folder as a dataset input (see :func:`prepared_dataset`); read now, not at publish."""
        name, digest, src, tags = prepared_dataset(prepared_dir, source, url)
        self.log_dataset(name, digest, src, context, tags)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """A file to copy into the run's artifacts; it must exist (an output of the stage) when the run is logged."""
        path = Path(path)
        if not path.is_file():
            raise TrackingError(f"artifact '{path}' not found; write it before logging it")
        self.artifacts.append((str(path.resolve()), artifact_path, None))

    def log_text(self, name: str, text: str, artifact_path: str | None = None) -> None:
        """A small text artifact kept in memory (e.g. a resolved config) and written out only when it is logged."""
        self.artifacts.append((name, artifact_path, text))

    def write_key(self, path: str | os.PathLike) -> None:
        """Give the run a key and write it to ``path`` (beside its model), so later stages can find the run."""
        self.key = self.key or uuid.uuid4().hex
        write_json(path, {"run_key": self.key})

    def end(self) -> None:
        self.end_ms = _now_ms()


class Recorder:
    """The MLflow runs and figures of one stage, kept in memory until :meth:`publish` (module docstring)."""

    def __init__(self, experiment: str, repo_root: Path | None = None) -> None:
        self.experiment = experiment
        self.repo_root = repo_root
        self.runs: list[RunRecord] = []
        self.into_runs: list[tuple[Path, dict[str, float]]] = []
        self.experiment_metrics: dict[str, float] = {}
        self.context: dict[str, Any] | None = None  # the DVC experiment and provenance, as recorded (outbox entries)
        self._into_refs: list[tuple[str, str]] | None = None  # the key files' run refs, as read when recorded
        self._times: dict[str, int] = {}

    def run(self, name: str, params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None,
            parent: RunRecord | None = None) -> RunRecord:
        """Record a new run (``parent``: a child of that recorded run, else of the DVC experiment's run)."""
        record = RunRecord(name, dict(params or {}), dict(tags or {}), parent)
        self.runs.append(record)
        return record

    def into(self, run_file: str | os.PathLike, metrics: Mapping[str, float]) -> None:
        """Log ``metrics`` into the existing run a key file names (e.g. an attack's figures into the training run)."""
        self.into_runs.append((Path(run_file), {k: float(v) for k, v in metrics.items()}))
        self._times.setdefault(f"into:{len(self.into_runs) - 1}", _now_ms())

    def log_to_experiment(self, metrics: Mapping[str, float]) -> None:
        """Metrics for the DVC experiment's parent run (e.g. the report's headline figures)."""
        self.experiment_metrics.update({k: float(v) for k, v in metrics.items()})
        self._times.setdefault("experiment", _now_ms())

    # ---- the outbox: record now, log later (robustlora.tracking.outbox) -------------------------------------------

    def finish(self, stage: str | None = None, *, flush: bool = False) -> str | None:
        """A stage's last step, after its outputs: write the record to the outbox; log it (with its DVC
        experiment's older entries) when ``flush`` (the report stage) or ``ROBUSTLORA_LOG_EACH_STAGE`` is set, else
        print one line saying it waits. Returns the tracking URI when something was logged."""
        from robustlora.tracking import outbox

        if not self.empty:
            outbox.write_entry(self.to_entry(stage), self.repo_root)
        if not (flush or outbox.log_each_stage()):
            if not self.empty:
                print(f"MLflow: recorded in {outbox.outbox_dir(self.repo_root)}; the report stage logs it (or now: "
                      "python stages/publish.py)")
            return None
        group = (self.context or self._capture())["exp"]["group"]
        logged, uri = publish_pending(self.repo_root, group)
        line = outbox.waiting_line(self.repo_root)
        if line:
            print(line)
        if logged and flush and uri:
            from robustlora.tracking.store import ui_line

            link = ui_line(self.experiment, uri)
            if link:
                print(link)
        return uri if logged else None

    def _capture(self) -> dict[str, Any]:
        """The DVC experiment, params.yaml and provenance tags of the process that recorded (cached)."""
        if self.context is None:
            from robustlora.tracking.dvc import dvc_experiment, git_tags

            exp = dvc_experiment()
            self.context = {
                "exp": {"name": exp.name, "baseline_rev": exp.baseline_rev, "commit": exp.commit,
                        "swept": dict(exp.swept), "group": exp.key},
                "params": _params_file_values(),
                "tags": {**git_tags(), "mlflow.source.name": sys.argv[0] if sys.argv and sys.argv[0] else "python"},
            }
        return self.context

    def to_entry(self, stage: str | None = None) -> dict[str, Any]:
        """The record as one JSON-able outbox entry; key files named by :meth:`into` are read now."""
        from robustlora.tracking.outbox import VERSION
        from robustlora.tracking.params import flatten_params

        ctx = self._capture()
        index = {id(r): i for i, r in enumerate(self.runs)}
        stage = stage or os.environ.get("DVC_STAGE") or " ".join(r.name for r in self.runs[:1]) or "stage"
        return {
            "version": VERSION, "stage": stage, "group": ctx["exp"]["group"], "experiment": self.experiment,
            "recorded_ms": _now_ms(), "context": ctx,
            "runs": [{"name": r.name, "params": flatten_params(r.params), "tags": r.tags,
                      "parent": index[id(r.parent)] if r.parent is not None else None, "key": r.key,
                      "start_ms": r.start_ms, "end_ms": r.end_ms, "metrics": [list(m) for m in r.metrics],
                      "datasets": [list(d) for d in r.datasets], "artifacts": [list(a) for a in r.artifacts],
                      "record_id": r.record_id} for r in self.runs],
            "into": [{"file": str(path), "ref": list(read_run_ref(path)), "metrics": metrics,
                      "ms": self._times.get(f"into:{i}", _now_ms())}
                     for i, (path, metrics) in enumerate(self.into_runs)],
            "experiment_metrics": self.experiment_metrics,
            "experiment_ms": self._times.get("experiment", _now_ms()),
        }

    @classmethod
    def from_entry(cls, data: Mapping[str, Any], repo_root: Path | None = None) -> Recorder:
        """The Recorder an outbox entry holds (params already flat), ready to :meth:`publish`."""
        rec = cls(data["experiment"], repo_root)
        rec.context = data["context"]
        for r in data["runs"]:
            run = RunRecord(r["name"], r["params"], r["tags"], rec.runs[r["parent"]] if r["parent"] is not None
                            else None, r["key"], r["start_ms"], r["end_ms"],
                            [tuple(m) for m in r["metrics"]], [tuple(d) for d in r["datasets"]],
                            [tuple(a) for a in r["artifacts"]], r["record_id"])
            rec.runs.append(run)
        rec.into_runs = [(Path(i["file"]), i["metrics"]) for i in data["into"]]
        rec._into_refs = [tuple(i["ref"]) for i in data["into"]]
        rec._times = {f"into:{n}": i["ms"] for n, i in enumerate(data["into"])}
        rec.experiment_metrics = dict(data["experiment_metrics"])
        rec._times["experiment"] = data["experiment_ms"]
        return rec

    @property
    def empty(self) -> bool:
        return not (self.runs or self.into_runs or self.experiment_metrics)

    def publish(self, *, tried: bool = False) -> str | None:
        """Open the store once and log everything recorded; returns the tracking URI (None: nothing to log).

        Call it after the stage's outputs are written. Any failure is a one-line TrackingError naming the URI.
        ``tried``: an earlier attempt may have created some of the runs; they are found by their record id.
        """
        if self.empty:
            return None
        from robustlora.tracking.store import import_mlflow, tracking_uri

        uri = tracking_uri(self.repo_root)
        quiet = [logging.getLogger(n) for n in ("urllib3", "mlflow", "alembic")]
        levels = [lg.level for lg in quiet]
        try:
            import_mlflow()  # (configures its loggers on import)
            for lg in quiet:  # HTTP retries and store set-up would print lines of their own
                lg.setLevel(logging.ERROR)
            _publish(self, uri, tried)
        except TrackingError as e:
            if str(e).startswith("tracking server"):
                raise
            raise _failure(uri, e) from None
        except Exception as e:  # the store's own errors (MlflowException, sqlalchemy, requests, OSError)
            raise _failure(uri, e) from None
        finally:
            for lg, level in zip(quiet, levels):
                lg.setLevel(level)
        return uri


def publish_pending(repo_root: Path | None = None, group: str | None = None) -> tuple[int, str | None]:
    """Log the waiting entries (of ``group``, else all), oldest first; returns (entries logged, tracking URI).

    Each entry is claimed by renaming it first (a parallel worker skips it), removed once logged, and put back,
    marked as tried, when logging fails: the one-line TrackingError naming the URI is raised after that.
    """
    from robustlora.tracking import outbox
    from robustlora.tracking.store import tracking_uri

    paths = outbox.pending(repo_root, group)
    if not paths:
        return 0, None
    uri = tracking_uri(repo_root)
    done = 0
    for path in paths:
        claimed = path.with_name(path.name.split(outbox.CLAIM)[0] + f"{outbox.CLAIM}{os.getpid()}")
        try:
            os.replace(path, claimed) if outbox.CLAIM in path.name else os.rename(path, claimed)
        except FileNotFoundError:
            continue  # another worker took it
        data = outbox.read_entry(claimed)
        if data is None:
            continue
        rec = Recorder.from_entry(data, repo_root)
        try:
            uri = rec.publish(tried=bool(data.get("tried")) or outbox.CLAIM in path.name) or uri
        except BaseException:
            data["tried"] = True
            write_json(claimed, data)
            os.replace(claimed, claimed.with_name(claimed.name.split(outbox.CLAIM)[0]))
            raise
        claimed.unlink(missing_ok=True)
        done += 1
    return done, uri


def _failure(uri: str, e: BaseException) -> TrackingError:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    reason = (lines[0] if lines else type(e).__name__)[:_MAX_REASON]
    return TrackingError(f"tracking server {uri}: {reason} (the stage's outputs are written; its MLflow runs are not "
                         "all logged)")


def _publish(rec: Recorder, uri: str, tried: bool = False) -> None:
    from robustlora.tracking.dvc import DvcExperiment, dvc_experiment, git_tags
    from robustlora.tracking.params import flatten_params, mlflow_key
    from robustlora.tracking.store import import_mlflow

    if rec.context is None:  # logged by the process that recorded it
        exp, params_file, base_tags = dvc_experiment(), _params_file_values(), git_tags()
    else:  # an outbox entry: the experiment and provenance as they were when the stage ran
        exp, params_file, base_tags = DvcExperiment(**rec.context["exp"]), rec.context["params"], rec.context["tags"]
    top = experiment_run(rec.experiment, exp, params_file, rec.repo_root)  # connects, once
    mlflow = import_mlflow()
    from mlflow.entities import Metric, Param
    from mlflow.tracking.context import registry

    client = mlflow.MlflowClient()
    experiment_id = client.get_run(top).info.experiment_id
    base_tags = {**base_tags, "dvc.experiment": exp.name}
    for run in rec.runs:
        tags = {**base_tags, **run.tags, "mlflow.parentRunId": run.parent.run_id if run.parent else top,
                RECORD_TAG: run.record_id}
        if run.key:
            tags[RUN_KEY_TAG] = run.key
        found = (client.search_runs([experiment_id], filter_string=f"tags.`{RECORD_TAG}` = '{run.record_id}'",
                                    max_results=1) if tried else [])
        if found:  # created by an attempt that failed later: complete it
            run.run_id = found[0].info.run_id
        else:
            created = client.create_run(experiment_id, start_time=run.start_ms, tags=registry.resolve_tags(tags),
                                        run_name=f"{run.name} · {exp.label}")
            run.run_id = created.info.run_id
        params = [Param(k, v) for k, v in flatten_params(run.params).items()]
        metrics = [Metric(k, v, ts, step) for k, v, ts, step in run.metrics]
        for i in range(0, len(params), 100):  # MLflow's batch limits
            client.log_batch(run.run_id, params=params[i : i + 100])
        for i in range(0, len(metrics), 1000):
            client.log_batch(run.run_id, metrics=metrics[i : i + 1000])
        for dataset in run.datasets:
            _log_dataset(client, run.run_id, *dataset)
        _log_artifacts(client, run.run_id, run.artifacts)
        client.set_terminated(run.run_id, "FINISHED", end_time=run.end_ms or _now_ms())
    refs = rec._into_refs or [read_run_ref(path) for path, _ in rec.into_runs]
    for i, ((run_file, metrics), ref) in enumerate(zip(rec.into_runs, refs)):
        run_id = _find_run(client, experiment_id, run_file, uri, ref)
        if run_id is not None:
            now = rec._times.get(f"into:{i}", _now_ms())
            client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
    if rec.experiment_metrics:
        now = rec._times.get("experiment", _now_ms())
        items = [Metric(mlflow_key(k), v, now, 0) for k, v in rec.experiment_metrics.items()]
        for i in range(0, len(items), 1000):
            client.log_batch(top, metrics=items[i : i + 1000])


def _log_artifacts(client: Any, run_id: str, artifacts: list[tuple[str, str | None, str | None]]) -> None:
    for what, artifact_path, text in artifacts:
        if text is None:
            client.log_artifact(run_id, what, artifact_path=artifact_path)
            continue
        with tempfile.TemporaryDirectory() as tmp:  # never into the stage's outputs, which DVC tracks
            path = Path(tmp) / what
            path.write_text(text)
            client.log_artifact(run_id, str(path), artifact_path=artifact_path)


def _log_dataset(client: Any, run_id: str, name: str, digest: str, source: str, context: str,
                 tags: Mapping[str, str]) -> None:
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    if source.startswith(("http://", "https://")):
        from mlflow.data.http_dataset_source import HTTPDatasetSource

        src: Any = HTTPDatasetSource(source)
    else:
        from mlflow.data.code_dataset_source import CodeDatasetSource

        src = CodeDatasetSource({"source": source, **tags})
    entity = MetaDataset(src, name=name, digest=digest)._to_mlflow_entity()
    inputs = [DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])]
    try:
        client.log_inputs(run_id, datasets=inputs)
    except MlflowException as e:
        # two processes (parallel queue workers) logging the same new dataset race in the store's check-then-insert;
        # the loser's retry finds the winner's row and only links this run to it
        if not lost_insert_race(e):
            raise
        client.log_inputs(run_id, datasets=inputs)


def _find_run(client: Any, experiment_id: str, run_file: Path, uri: str, ref: tuple[str, str]) -> str | None:
    """The run a key file names (``ref``: by its key tag, or an older file's run id); None, with one line on stderr,
    when it is not in this store (its model was trained while logging elsewhere)."""
    from mlflow.exceptions import MlflowException

    kind, value = ref
    if kind == "run_key":
        found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{value}'",
                                   max_results=1)
        run_id = found[0].info.run_id if found else None
    else:
        try:
            run_id = client.get_run(value).info.run_id
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            run_id = None
    if run_id is None:
        print(f"MLflow: the run of {run_file} ({kind} {value}) is not in {uri} (its model was trained while logging "
              "elsewhere); these metrics are in the stage's metrics file only", file=sys.stderr)
    return run_id
