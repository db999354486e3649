"""MLflow runs and DVC experiments: the only modules that import mlflow or dvc.

``from robustlora import tracking`` gives the run API: the stages record what they log in a
:class:`~robustlora.tracking.record.Recorder` while they work and publish it after writing their outputs (results
first, logging second; mlflow is imported only then); ``start_run`` / ``resume_run`` / ``log_*`` log directly into an
active run (notebooks, tests). Inside: :mod:`~robustlora.tracking.store` (where the MLflow store lives),
:mod:`~robustlora.tracking.params` (configs as MLflow params), :mod:`~robustlora.tracking.dvc` (the DVC experiment
and provenance tags), :mod:`~robustlora.tracking.runs` (the runs themselves); ``robustlora.tracking.experiments``
reads a sweep's experiments from DVC.
"""

from robustlora.errors import TrackingError
from robustlora.tracking.dvc import DvcExperiment, dvc_experiment, git_tags, params_diff
from robustlora.tracking.params import flatten_params
from robustlora.tracking.record import Recorder, RunRecord
from robustlora.tracking.runs import (
    experiment_run,
    log_artifact,
    log_dataset,
    log_epoch,
    log_into_run,
    log_metrics,
    log_prepared_dataset,
    log_to_experiment_run,
    read_run_id,
    read_run_ref,
    resume_run,
    search_runs,
    start_run,
    write_run_id,
)
from robustlora.tracking.store import configure, find_repo_root, tracking_uri

__all__ = [
    "TrackingError", "DvcExperiment", "Recorder", "RunRecord", "read_run_ref", "configure", "dvc_experiment", "experiment_run", "find_repo_root",
    "flatten_params", "git_tags", "log_artifact", "log_dataset", "log_epoch", "log_into_run", "log_metrics",
    "log_prepared_dataset", "log_to_experiment_run", "params_diff", "read_run_id", "resume_run", "search_runs",
    "start_run", "tracking_uri", "write_run_id",
]
