"""robustlora.tracking (the run API) against a real sqlite MLflow store in tmp dirs (one store per module)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustlora import tracking

_ENV = ["MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID",
        "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "1")


def _git(cwd: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main", *args]
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _git_repo(path: Path) -> str:
    """A git repo with one commit at ``path``; returns the commit sha."""
    path.mkdir(parents=True, exist_ok=True)
    _git(path, "init", "-q")
    (path / "train.py").write_text("print('hi')\n")
    _git(path, "add", "train.py")
    _git(path, "commit", "-q", "-m", "init")
    return _git(path, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store root shared by the run tests (its sqlite schema is created once)."""
    return tmp_path_factory.mktemp("store")


# ---- store resolution -------------------------------------------------------------------------------------------

def test_tracking_uri_env_overrides_everything(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking.tracking_uri() == "http://mlflow.example:5000"
    assert tracking.tracking_uri(tmp_path) == "http://mlflow.example:5000"


def test_tracking_uri_defaults_to_dvc_root_then_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    repo.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert tracking.tracking_uri() == f"sqlite:///{elsewhere.resolve()}/mlflow.db"
    monkeypatch.setenv("DVC_ROOT", str(repo))
    assert tracking.tracking_uri() == f"sqlite:///{repo.resolve()}/mlflow.db"
    assert tracking.tracking_uri().startswith("sqlite:////")  # absolute path: four slashes
    assert tracking.tracking_uri(elsewhere) == f"sqlite:///{elsewhere.resolve()}/mlflow.db"


def test_repo_root_is_git_top_level_and_main_worktree(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    main = tmp_path / "main"
    _git_repo(main)
    (main / "sub").mkdir()
    _git(main, "worktree", "add", "-q", str(tmp_path / "wt"))
    monkeypatch.setenv("DVC_ROOT", str(main / "sub"))
    assert tracking.find_repo_root() == main.resolve()
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "wt"))
    assert tracking.find_repo_root() == main.resolve()


def test_executor_tempdir_maps_to_user_repo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # `dvc exp run --temp/--queue` runs in <repo>/.dvc/tmp/exps/tmpXXXX, a fresh git repo of its own
    user_repo = tmp_path / "user"
    _git_repo(user_repo)
    executor = user_repo / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    _git_repo(executor)
    monkeypatch.setenv("DVC_ROOT", str(executor))  # what DVC before Sept 2023 exported
    assert tracking.tracking_uri() == f"sqlite:///{user_repo.resolve()}/mlflow.db"
    monkeypatch.delenv("DVC_ROOT")
    (executor / "src").mkdir()
    monkeypatch.chdir(executor / "src")  # a stage started by hand inside the temp copy
    assert tracking.find_repo_root() == user_repo.resolve()


# ---- params and tags --------------------------------------------------------------------------------------------

def test_flatten_params() -> None:
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    cfg = {
        "lora": {"rank": 8, "alpha": 16.0, "targets": ["layer4.1.conv2", "fc"]},
        "attack": {"eps_255": (1, 2, 4), "steps": None},
        "data": {"source": "imagenette", "augment": False},
        "variants": [{"name": "full"}, {"name": "lora", "rank": 4}],
        "note": "x" * 10_000,
    }
    flat = tracking.flatten_params(cfg)
    assert flat == {
        "lora.rank": "8", "lora.alpha": "16.0", "lora.targets": "layer4.1.conv2,fc",
        "attack.eps_255": "1,2,4", "attack.steps": "None",
        "data.source": "imagenette", "data.augment": "False",
        "variants.0.name": "full", "variants.1.name": "lora", "variants.1.rank": "4",
        "note": "x" * MAX_PARAM_VAL_LENGTH,
    }
    assert tracking.flatten_params({"rank": 2}, prefix="lora.") == {"lora.rank": "2"}


def test_git_tags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sha = _git_repo(tmp_path / "repo")
    monkeypatch.setenv("DVC_EXP_NAME", "sunny-cats")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    tags = tracking.git_tags(tmp_path / "repo")
    assert tags["git.commit"] == sha and tags["git.dirty"] == "false"
    assert tags["dvc.exp_name"] == "sunny-cats" and tags["dvc.exp_baseline_rev"] == "abc123"
    (tmp_path / "repo" / "train.py").write_text("print('changed')\n")
    assert tracking.git_tags(tmp_path / "repo")["git.dirty"] == "true"
    # not a repo, then no git at all: no git tags, no error
    assert "git.commit" not in tracking.git_tags(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert tracking.git_tags(tmp_path / "repo") == {"dvc.exp_name": "sunny-cats", "dvc.exp_baseline_rev": "abc123"}


# ---- runs ---------------------------------------------------------------------------------------------------------

def test_run_logs_params_metrics_tags_and_checkpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, store: Path
) -> None:
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    code = tmp_path / "code"
    sha = _git_repo(code)
    monkeypatch.chdir(code)  # the code being run; the store is elsewhere
    monkeypatch.setenv("DVC_EXP_NAME", "bushy-pine")
    ckpt = tmp_path / "lora.pt"
    torch.save({"fc.weight": torch.arange(6.0).reshape(2, 3)}, ckpt)
    cfg = {"lora": {"rank": 4, "targets": ["fc"]}, "train": {"lr": 0.001}}

    with tracking.start_run("robustness", "train-lora", params=cfg, tags={"variant": "lora"}, repo_root=store) as run:
        for step in range(3):
            tracking.log_metrics({"train.loss": 1.0 / (step + 1), "train.acc": torch.tensor(0.5 * step)}, step=step)
        tracking.log_artifact(ckpt, artifact_path="checkpoint")
        for epoch in (1, 2):  # what training.loop.fit hands its on_epoch
            tracking.log_epoch({"epoch": epoch, "train_loss": 1.0 / epoch, "lr": 0.1})

    assert run.tracking_uri == f"sqlite:///{store.resolve()}/mlflow.db"
    client = MlflowClient(run.tracking_uri)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "train-lora · bushy-pine"
    assert got.data.params == {"lora.rank": "4", "lora.targets": "fc", "train.lr": "0.001"}
    history = client.get_metric_history(run.run_id, "train.loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(0, 1.0), (1, 0.5), (2, 1 / 3)]
    assert [m.value for m in client.get_metric_history(run.run_id, "train.acc")] == [0.0, 0.5, 1.0]
    epochs = sorted(client.get_metric_history(run.run_id, "epoch/train_loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in epochs] == [(1, 1.0), (2, 0.5)] and "epoch/epoch" not in got.data.metrics
    tags = got.data.tags
    assert tags["git.commit"] == sha and tags["dvc.exp_name"] == "bushy-pine" and tags["variant"] == "lora"
    # a child of its DVC experiment's parent run, in an experiment the UI opens on its runs
    top = client.get_run(tags["mlflow.parentRunId"])
    assert top.data.tags["level"] == "experiment" and top.info.run_name == "bushy-pine"
    assert top.info.status == "FINISHED" and top.data.tags["dvc.experiment"] == "bushy-pine"
    experiment = client.get_experiment(got.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    # artifacts live beside the store, not under the cwd (a DVC temp dir would delete them)
    assert got.info.artifact_uri.startswith((store.resolve() / "mlartifacts").as_uri())
    assert not (code / "mlruns").exists()
    local = download_artifacts(run_id=run.run_id, artifact_path="checkpoint/lora.pt", dst_path=str(tmp_path / "dl"),
                               tracking_uri=run.tracking_uri)
    assert Path(local).read_bytes() == ckpt.read_bytes()

    # the attack stage reopens the same run through the run-id file
    run_id_file = tmp_path / "models" / "lora.run_id.json"
    tracking.write_run_id(run_id_file, run.run_id)
    with tracking.resume_run(tracking.read_run_id(run_id_file), repo_root=store) as resumed:
        tracking.log_metrics({"attack.fgsm.acc": 0.25})
    assert resumed.run_id == run.run_id and resumed.experiment_id == run.experiment_id
    got = client.get_run(run.run_id)
    assert got.data.metrics["attack.fgsm.acc"] == 0.25 and got.info.status == "FINISHED"
    assert got.data.params["lora.rank"] == "4"  # still the same run

    frame = tracking.search_runs("robustness", repo_root=store)
    row = frame[frame["run_id"] == run.run_id].iloc[0]
    assert row["params.lora.rank"] == "4" and row["metrics.attack.fgsm.acc"] == 0.25
    assert tracking.search_runs("no-such-experiment", repo_root=store).empty


def test_failed_block_marks_run_failed(store: Path) -> None:
    from mlflow import MlflowClient

    with pytest.raises(ValueError, match="boom"):
        with tracking.start_run("robustness", "crashes", repo_root=store) as run:
            raise ValueError("boom")
    assert MlflowClient(run.tracking_uri).get_run(run.run_id).info.status == "FAILED"


def test_logging_outside_a_run_and_unknown_run_are_refused(store: Path, tmp_path: Path) -> None:
    tracking.configure("robustness", repo_root=store)
    with pytest.raises(tracking.TrackingError, match="no active MLflow run"):
        tracking.log_metrics({"acc": 1.0})
    with pytest.raises(tracking.TrackingError, match="0123456789abcdef.*not found"):
        with tracking.resume_run("0123456789abcdef", repo_root=store):
            pass
    with tracking.start_run("robustness", "missing-artifact", repo_root=store):
        with pytest.raises(tracking.TrackingError, match="nope.pt"):
            tracking.log_artifact(tmp_path / "nope.pt")


def test_run_id_file_errors(tmp_path: Path) -> None:
    with pytest.raises(tracking.TrackingError, match="missing.run_id.json.*not found"):
        tracking.read_run_id(tmp_path / "missing.run_id.json")
    (tmp_path / "bad.json").write_text('{"id": 3}\n')
    with pytest.raises(tracking.TrackingError, match="bad.json.*run_id"):
        tracking.read_run_id(tmp_path / "bad.json")


def test_unreachable_server_fails_fast_naming_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # grab a free port, then close it so nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.monotonic()
    with pytest.raises(tracking.TrackingError) as err:
        tracking.configure("robustness")
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert uri in message and "not reachable" in message and "\n" not in message


# ---- one parent run per DVC experiment ---------------------------------------------------------------------------

def test_params_diff_flattens_and_names_changed_added_and_removed_keys() -> None:
    before = {"lora": {"rank": 4, "alpha": 1.0}, "variants": {"lora_fc": {"targets": ["fc"]}}, "gone": 1}
    after = {"lora": {"rank": 8, "alpha": 1.0}, "variants": {"lora_fc": {"targets": "layer4"}}, "new": {"x": 2}}
    assert tracking.params_diff(before, after) == {"lora.rank": "8", "variants.lora_fc.targets": "layer4",
                                                   "new.x": "2", "gone": "∅"}
    assert tracking.params_diff(before, before) == {}
    # MLflow refuses '+' in names: keys are made valid, values kept
    assert tracking.flatten_params({"sets": {"fc+conv1": ["fc", "conv1"]}}) == {"sets.fc_conv1": "fc,conv1"}


def test_dvc_experiment_from_env_and_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").write_text("lora:\n  rank: 4\ntrain:\n  seeds: [0, 1]\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "params.yaml")
    _git(repo, "commit", "-q", "-m", "base")
    base = _git(repo, "rev-parse", "HEAD")
    # a plain `dvc repro` at a clean commit: the workspace, nothing swept
    exp = tracking.dvc_experiment(repo / "params.yaml")
    assert exp.name == f"workspace@{base[:7]}" and exp.swept == {} and exp.label == exp.name
    # `dvc exp run -S lora.rank=8 -S train.seeds=[0,1,2]`: DVC's name, the params changed against the baseline
    (repo / "params.yaml").write_text("lora:\n  rank: 8\ntrain:\n  seeds: [0, 1, 2]\n")
    monkeypatch.setenv("DVC_EXP_NAME", "tidy-moss")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", base)
    exp = tracking.dvc_experiment(repo / "params.yaml")
    assert exp.swept == {"lora.rank": "8", "train.seeds": "0,1,2"} and exp.baseline_rev == base
    assert exp.label == "tidy-moss lora.rank=8, train.seeds=0,1,2" and exp.key == "exp:tidy-moss"
    # a workspace run with hand edits is its own group, apart from the clean one
    monkeypatch.delenv("DVC_EXP_NAME")
    monkeypatch.delenv("DVC_EXP_BASELINE_REV")
    edited = tracking.dvc_experiment(repo / "params.yaml")
    assert edited.key != tracking.DvcExperiment(f"workspace@{base[:7]}", base, base, {}).key


def test_every_stage_of_one_experiment_finds_the_same_parent_run(store: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    exp = tracking.DvcExperiment("calm-lake", "a" * 40, "b" * 40, {"lora.rank": "2"})
    first = tracking.experiment_run("grouping", exp, {"lora": {"rank": 2}}, repo_root=store)
    assert tracking.experiment_run("grouping", exp, repo_root=store) == first
    other = tracking.experiment_run("grouping", tracking.DvcExperiment("wild-fern", None, None, {}), repo_root=store)
    assert other != first
    with tracking.start_run("grouping", "lora_fc", {"a": 1}, repo_root=store, exp=exp) as arm:
        with tracking.start_run("grouping", "lora_fc/seed_0", nested=True, repo_root=store, exp=exp) as seed:
            pass
    tracking.log_to_experiment_run("grouping", {"lora_fc/pgd_robust_acc": 0.25}, exp=exp, repo_root=store)
    client = MlflowClient(arm.tracking_uri)
    top, arm_run, seed_run = (client.get_run(r) for r in (first, arm.run_id, seed.run_id))
    assert arm_run.data.tags["mlflow.parentRunId"] == first and seed_run.data.tags["mlflow.parentRunId"] == arm.run_id
    assert arm_run.info.run_name == "lora_fc · calm-lake lora.rank=2"
    assert seed_run.info.run_name == "lora_fc/seed_0 · calm-lake lora.rank=2"
    assert top.info.run_name == "calm-lake lora.rank=2" and top.data.params == {"lora.rank": "2"}
    assert top.data.tags["swept.lora.rank"] == "2" and top.data.tags["dvc.exp_baseline_rev"] == "a" * 40
    assert top.data.metrics["lora_fc/pgd_robust_acc"] == 0.25


def test_dataset_is_logged_as_an_input(store: Path, tmp_path: Path) -> None:
    import hashlib

    from mlflow import MlflowClient

    prepared = tmp_path / "target"
    prepared.mkdir()
    (prepared / "manifest.csv").write_text("split,index,label,pixel_hash\ntrain,0,0,abc\n")
    (prepared / "info.json").write_text('{"classes": 10, "counts": {"train": 1}}')
    with tracking.start_run("datasets", "seed", repo_root=store,
                            exp=tracking.DvcExperiment("x", None, None, {})) as run:
        tracking.log_prepared_dataset(prepared, "tiny-imagenet", "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                                      "training")
    (entry,) = MlflowClient(run.tracking_uri).get_run(run.run_id).inputs.dataset_inputs
    assert entry.dataset.name == "tiny-imagenet-200 target (10 classes)"
    assert entry.dataset.digest == hashlib.md5((prepared / "manifest.csv").read_bytes()).hexdigest()
    assert "cs231n.stanford.edu" in entry.dataset.source and entry.tags[0].value == "training"
    with pytest.raises(tracking.TrackingError, match="manifest.csv not found"):
        with tracking.start_run("datasets", "seed", repo_root=store, exp=tracking.DvcExperiment("x", None, None, {})):
            tracking.log_prepared_dataset(tmp_path, "synthetic", None, "training")


def test_a_dataset_logged_by_two_processes_at_once_is_linked_not_lost(store: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two queue workers log the same new dataset: the store's insert fails for the slower one; it retries."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    real, calls = mlflow.log_input, []

    def racing(dataset, context=None, **kw):
        calls.append(dataset.name)
        if len(calls) == 1:  # what the server answered in the queued sweep when the other worker won the race
            raise MlflowException("BAD_REQUEST: (sqlite3.IntegrityError) UNIQUE constraint failed: "
                                  "datasets.experiment_id, datasets.name, datasets.digest")
        return real(dataset, context=context, **kw)

    monkeypatch.setattr(mlflow, "log_input", racing)
    exp = tracking.DvcExperiment("x", None, None, {})
    with tracking.start_run("datasets", "seed", repo_root=store, exp=exp) as run:
        tracking.log_dataset("target", "d" * 32, "synthetic", "training")
    assert calls == ["target", "target"]
    (entry,) = MlflowClient(run.tracking_uri).get_run(run.run_id).inputs.dataset_inputs
    assert entry.dataset.name == "target"
    monkeypatch.setattr(mlflow, "log_input", lambda *a, **k: (_ for _ in ()).throw(MlflowException("other")))
    with pytest.raises(MlflowException, match="other"):  # any other store error still stops the stage
        with tracking.start_run("datasets", "seed", repo_root=store, exp=exp):
            tracking.log_dataset("target", "d" * 32, "synthetic", "training")


@pytest.mark.parametrize("answer", [
    "BAD_REQUEST: (sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name",
    # the tracking server on PostgreSQL, in the queued sweep of tests/test_pipeline_sweep.py (2026-12-03)
    'BAD_REQUEST: (psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "dataset_pk"',
])
def test_a_recorded_dataset_another_worker_inserted_first_is_linked_on_retry(store: Path, monkeypatch, answer) -> None:
    """The report stage publishes recorded runs with MlflowClient.log_inputs: a queue worker that loses the dataset
    insert race (in the words of SQLite or PostgreSQL) retries and links its run; any other error stops it."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from robustlora.tracking import record

    exp = tracking.DvcExperiment("x", None, None, {})
    with tracking.start_run("datasets", "seed", repo_root=store, exp=exp) as run:
        pass
    client = MlflowClient(run.tracking_uri)
    real, calls = client.log_inputs, []

    def racing(run_id, datasets=None, **kw):
        calls.append(run_id)
        if len(calls) == 1:
            raise MlflowException(answer)
        return real(run_id, datasets=datasets, **kw)

    monkeypatch.setattr(client, "log_inputs", racing)
    record._log_dataset(client, run.run_id, "target", "d" * 32, "synthetic", "training", {})
    assert len(calls) == 2
    (entry,) = client.get_run(run.run_id).inputs.dataset_inputs
    assert entry.dataset.name == "target"
    monkeypatch.setattr(client, "log_inputs", lambda *a, **k: (_ for _ in ()).throw(MlflowException("other")))
    with pytest.raises(MlflowException, match="other"):
        record._log_dataset(client, run.run_id, "target", "d" * 32, "synthetic", "training", {})


def test_logging_into_a_run_of_another_store_is_skipped_with_one_line(store: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    from mlflow import MlflowClient

    exp = tracking.DvcExperiment("x", None, None, {})
    with tracking.start_run("elsewhere", "seed", repo_root=store, exp=exp) as run:
        pass
    tracking.write_run_id(tmp_path / "here.run.json", run.run_id)
    assert tracking.log_into_run(tmp_path / "here.run.json", {"pgd/eps_8/asr": 0.5}, repo_root=store)
    assert MlflowClient(run.tracking_uri).get_run(run.run_id).data.metrics["pgd/eps_8/asr"] == 0.5
    tracking.write_run_id(tmp_path / "gone.run.json", "f" * 32)  # trained while logging into another store
    assert not tracking.log_into_run(tmp_path / "gone.run.json", {"pgd/eps_8/asr": 0.5}, repo_root=store)
    err = _ours(capsys.readouterr().err)
    assert len(err) == 1 and f"the run of {tmp_path / 'gone.run.json'} is not in" in err[0]


def _ours(err: str) -> list[str]:
    """stderr's lines without MLflow's own notes on creating a new store (a test that runs first makes it)."""
    return [line for line in err.strip().splitlines() if "mlflow.store.db.utils" not in line]


def test_a_store_error_is_not_taken_for_a_missing_run(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only 'no such run' skips; a store that fails (a server gone, a locked database) is an error naming it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    exp = tracking.DvcExperiment("x", None, None, {})
    with tracking.start_run("elsewhere", "seed", repo_root=store, exp=exp) as run:
        pass

    def broken(run_id):
        raise MlflowException("database is locked\n(details)", error_code="INTERNAL_ERROR")

    monkeypatch.setattr(mlflow, "get_run", broken)
    with pytest.raises(tracking.TrackingError) as err:
        with tracking.resume_run(run.run_id, repo_root=store, missing_ok=True):
            pass
    assert str(err.value) == f"tracking server {run.tracking_uri}: database is locked"


# ---- results first, logging second: the stages' Recorder ------------------------------------------------------------

def _record_training(rec: tracking.Recorder, models: Path, prepared: Path) -> tuple:
    """What the train stage records for one arm with one seed (two epochs, a config artifact, the dataset)."""
    arm = rec.run("lora_fc", {"variant": {"rank": 4}}, {"stage": "train@lora_fc", "level": "arm"})
    seed = rec.run("lora_fc/seed_0", {"seed": 0}, {"stage": "train@lora_fc", "level": "seed", "seed": "0"},
                   parent=arm)
    seed.log_prepared_dataset(prepared, "synthetic", None, "training")
    for epoch, loss in ((1, 0.5), (2, 0.25)):
        seed.log_epoch({"epoch": epoch, "train_loss": loss})
    seed.log_metrics({"val_accuracy": 0.75})
    seed.log_text("lora_fc.seed_0.config.json", '{"seed": 0}\n', "config")
    (models.parent / "report.md").write_text("# report\n")
    seed.log_artifact(models.parent / "report.md", "report")  # a file the stage wrote: copied when published
    seed.write_key(models / "seed_0.run.json")
    seed.end()
    arm.log_metrics({"mean/val_accuracy": 0.75})
    arm.write_key(models / "run.json")
    arm.end()
    return arm, seed


def _prepared(tmp_path: Path) -> Path:
    prepared = tmp_path / "target"
    prepared.mkdir()
    (prepared / "manifest.csv").write_text("split,index,label,pixel_hash\ntrain,0,0,abc\n")
    (prepared / "info.json").write_text('{"classes": 3, "counts": {"train": 1}}')
    return prepared


def test_recorder_logs_after_the_work_with_the_structure_of_start_run(store: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_EXP_NAME", "quiet-pond")
    models = tmp_path / "models"
    rec = tracking.Recorder("recorded", repo_root=store)
    arm, seed = _record_training(rec, models, _prepared(tmp_path))
    # the key files (DVC outputs) exist before anything is logged, and name no run id
    key = json.loads((models / "seed_0.run.json").read_text())["run_key"]
    assert seed.run_id is None and len(key) == 32
    assert rec.publish() == f"sqlite:///{store.resolve()}/mlflow.db"

    client = MlflowClient(f"sqlite:///{store.resolve()}/mlflow.db")
    arm_run, seed_run = client.get_run(arm.run_id), client.get_run(seed.run_id)
    top = client.get_run(arm_run.data.tags["mlflow.parentRunId"])
    assert top.data.tags["level"] == "experiment" and top.info.run_name == "quiet-pond"
    assert seed_run.data.tags["mlflow.parentRunId"] == arm.run_id
    assert seed_run.info.run_name == "lora_fc/seed_0 · quiet-pond" and seed_run.info.status == "FINISHED"
    assert seed_run.data.tags["seed"] == "0" and seed_run.data.tags["dvc.experiment"] == "quiet-pond"
    assert seed_run.data.tags["robustlora.run_key"] == key and "mlflow.user" in seed_run.data.tags
    assert seed_run.data.params == {"seed": "0"} and arm_run.data.params == {"variant.rank": "4"}
    epochs = sorted(client.get_metric_history(seed.run_id, "epoch/train_loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in epochs] == [(1, 0.5), (2, 0.25)]
    assert seed_run.info.start_time <= epochs[0].timestamp <= seed_run.info.end_time  # recorded times, kept
    (entry,) = seed_run.inputs.dataset_inputs
    assert entry.dataset.name == "synthetic tiny-imagenet target (3 classes)" and entry.tags[0].value == "training"
    local = download_artifacts(run_id=seed.run_id, artifact_path="config/lora_fc.seed_0.config.json",
                               dst_path=str(tmp_path / "dl"), tracking_uri=client.tracking_uri)
    assert Path(local).read_text() == '{"seed": 0}\n'
    local = download_artifacts(run_id=seed.run_id, artifact_path="report/report.md", dst_path=str(tmp_path / "dl"),
                               tracking_uri=client.tracking_uri)
    assert Path(local).read_text() == "# report\n"
    with pytest.raises(tracking.TrackingError, match="nope.md.*not found"):
        seed.log_artifact(tmp_path / "nope.md")

    # a later stage (an attack) finds both runs by their key files, and adds the experiment's figures
    later = tracking.Recorder("recorded", repo_root=store)
    later.into(models / "seed_0.run.json", {"pgd/eps_8/asr": 0.5})
    later.into(models / "run.json", {"mean/pgd/eps_8/asr": 0.5})
    later.log_to_experiment({"lora_fc/pgd_robust_acc": 0.25})
    later.publish()
    assert client.get_run(seed.run_id).data.metrics == {"epoch/train_loss": 0.25, "val_accuracy": 0.75,
                                                        "pgd/eps_8/asr": 0.5}
    assert client.get_run(arm.run_id).data.metrics["mean/pgd/eps_8/asr"] == 0.5
    assert client.get_run(top.info.run_id).data.metrics == {"lora_fc/pgd_robust_acc": 0.25}
    assert tracking.log_into_run(models / "seed_0.run.json", {"extra": 1.0}, repo_root=store)  # the direct API too
    assert client.get_run(seed.run_id).data.metrics["extra"] == 1.0


def test_recording_imports_no_mlflow() -> None:
    """A stage records while it works and pays mlflow's import only when it publishes, after its outputs."""
    code = ("import sys; from pathlib import Path; from robustlora import tracking\n"
            "rec = tracking.Recorder('x'); run = rec.run('a', {'p': 1}, {'t': 'v'})\n"
            "run.log_epoch({'epoch': 1, 'loss': 0.5}); run.log_text('c.json', '{}'); rec.into(Path('k.json'), {'m': 1})\n"
            "print(sorted(m for m in ('mlflow', 'torch', 'pandas') if m in sys.modules))")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root / "src")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_publish_failure_is_one_line_naming_the_uri(store: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    monkeypatch.chdir(tmp_path)
    with socket.socket() as sock:  # a port nobody listens on: the server went away
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    rec = tracking.Recorder("recorded")
    _record_training(rec, tmp_path / "models", _prepared(tmp_path))
    with pytest.raises(tracking.TrackingError) as err:
        rec.publish()
    message = str(err.value)
    assert message.startswith(f"tracking server http://127.0.0.1:{port}: not reachable") and "\n" not in message
    assert (tmp_path / "models" / "seed_0.run.json").is_file()  # what the stage wrote is kept

    # the store fails halfway (after the arm's run was created): still one line naming the store, never skipped
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    calls = []
    real = MlflowClient.create_run

    def failing(self, *args, **kwargs):
        calls.append(kwargs.get("run_name", "").split(" · ")[0])
        if calls[-1] == "lora_fc/seed_0":
            raise MlflowException("INTERNAL_ERROR: disk I/O error\n  traceback lines")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "create_run", failing)
    rec.repo_root = store
    with pytest.raises(tracking.TrackingError) as err:
        rec.publish()
    assert str(err.value).startswith(f"tracking server sqlite:///{store.resolve()}/mlflow.db: INTERNAL_ERROR: disk "
                                     "I/O error (the stage's outputs are written")
    assert "\n" not in str(err.value) and calls[-2:] == ["lora_fc", "lora_fc/seed_0"]


def test_into_a_run_the_store_lacks_is_one_line_and_the_rest_is_logged(store: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    from mlflow import MlflowClient

    rec = tracking.Recorder("recorded", repo_root=store)
    run = rec.run("switching", {}, {"stage": "defences"})
    run.log_metrics({"worst": 0.5})
    run.end()
    (tmp_path / "gone.run.json").write_text('{"run_key": "0123456789abcdef0123456789abcdef"}')
    tracking.write_run_id(tmp_path / "old.run.json", "f" * 32)  # a file older code wrote: a run id
    rec.into(tmp_path / "gone.run.json", {"pgd/eps_8/asr": 0.5})
    rec.into(tmp_path / "old.run.json", {"pgd/eps_8/asr": 0.5})
    rec.publish()
    err = _ours(capsys.readouterr().err)
    assert len(err) == 2 and all("is not in sqlite:///" in line for line in err)
    assert str(tmp_path / "gone.run.json") in err[0] and str(tmp_path / "old.run.json") in err[1]
    assert MlflowClient(f"sqlite:///{store.resolve()}/mlflow.db").get_run(run.run_id).data.metrics == {"worst": 0.5}
    (tmp_path / "bad.run.json").write_text('{"id": 3}')
    with pytest.raises(tracking.TrackingError, match="bad.run.json.*run_key"):
        tracking.read_run_ref(tmp_path / "bad.run.json")
