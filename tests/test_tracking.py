"""robustlora.tracking against a real sqlite MLflow store in tmp dirs (one store per module: schema setup is slow)."""

from __future__ import annotations

import socket
import subprocess
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

    assert run.tracking_uri == f"sqlite:///{store.resolve()}/mlflow.db"
    client = MlflowClient(run.tracking_uri)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "train-lora"
    assert got.data.params == {"lora.rank": "4", "lora.targets": "fc", "train.lr": "0.001"}
    history = client.get_metric_history(run.run_id, "train.loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(0, 1.0), (1, 0.5), (2, 1 / 3)]
    assert [m.value for m in client.get_metric_history(run.run_id, "train.acc")] == [0.0, 0.5, 1.0]
    tags = got.data.tags
    assert tags["git.commit"] == sha and tags["dvc.exp_name"] == "bushy-pine" and tags["variant"] == "lora"

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
