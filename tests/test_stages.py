"""The stage commands: help texts, one-line errors, nothing half-written."""

import os
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT

STAGES = ["download", "preprocess", "validate", "pretrain", "train", "attack", "report"]


def run_stage(name, *args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH="")
    return subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("name", STAGES)
def test_help(name):
    result = run_stage(name, "--help")
    assert result.returncode == 0, result.stderr
    assert "--params" in result.stdout and "Usage" in result.stdout


def _params(tmp_path, **changes):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        raw[section][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_bad_param_is_one_line_naming_the_key(tmp_path):
    result = run_stage("preprocess", "--params", _params(tmp_path, **{"data.holdout": 0.9}), "--raw", tmp_path / "raw",
                       "--out", tmp_path / "p")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: params.yaml: data.holdout must be in [0, 0.5), got 0.9"
    assert not (tmp_path / "p").exists()


def test_unknown_variant_is_one_line(tmp_path):
    result = run_stage("train", "nope", "--params", ROOT / "params.yaml", "--prepared", tmp_path, "--backbone",
                       tmp_path / "b.pt", "--out", tmp_path / "m", "--metrics", tmp_path / "m.json", "--plots", tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: params.yaml: no variant 'nope' under variants (have: ")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--results-dir", "x"], "error: report.py: Missing option '--autoattack'. (see --help)"),
    (["--bogus", "1"], "error: report.py: No such option: --bogus"),
])
def test_a_command_line_mistake_is_one_line_naming_the_option(args, message):
    result = run_stage("report", *args)
    assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_archive_is_one_line(tmp_path):
    result = run_stage("preprocess", "--params", ROOT / "params.yaml", "--raw", tmp_path / "raw", "--out", tmp_path / "p")
    assert result.returncode == 1
    assert "tiny-imagenet-200.zip: archive not found (run the download stage first)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreachable_download_is_one_line_and_leaves_nothing(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    params = _params(tmp_path, **{"data.source": "tiny-imagenet", "data.url": f"http://127.0.0.1:{port}/t.zip"})
    raw = yaml.safe_load(params.read_text())
    raw["model"]["weights"] = "imagenet"
    params.write_text(yaml.safe_dump(raw))
    result = run_stage("download", "--params", params, "--out", tmp_path / "raw")
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr and "offline" in result.stderr
    assert list((tmp_path / "raw").glob("*.zip*")) == []


def test_curves_have_the_robust_column_only_for_adversarial_training(tmp_path):
    import importlib.util

    import pandas as pd

    spec = importlib.util.spec_from_file_location("_common", ROOT / "stages" / "_common.py")  # not on sys.path
    _common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(_common)

    history = [{"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.8, "holdout_accuracy": 0.7, "lr": 0.1,
                "epoch_seconds": 2.0, "holdout_robust_accuracy": 0.3}]
    _common.write_curves(tmp_path / "plain.csv", history)
    _common.write_curves(tmp_path / "at" / "seed_0.csv", history, robust=True)
    assert list(pd.read_csv(tmp_path / "plain.csv").columns) == ["epoch", "train_loss", "train_accuracy",
                                                                 "holdout_accuracy", "lr"]
    robust = pd.read_csv(tmp_path / "at" / "seed_0.csv")
    assert list(robust.columns) == ["epoch", "train_loss", "train_accuracy", "holdout_accuracy",
                                    "holdout_robust_accuracy", "lr"]
    assert robust.iloc[0].to_dict() == {"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.8, "holdout_accuracy": 0.7,
                                        "holdout_robust_accuracy": 0.3, "lr": 0.1}


def _load_common():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_common", ROOT / "stages" / "_common.py")  # not on sys.path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_queued_worker_shares_the_cores_with_the_others_unless_the_user_chose(tmp_path, monkeypatch):
    import json

    _common = _load_common()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", _common.THREADS_ENV):
        monkeypatch.setenv(name, "0")  # restored after the test
        monkeypatch.delenv(name)
    repo = tmp_path / "repo"
    executor = repo / ".dvc" / "tmp" / "exps" / "tmpab12cd"  # where DVC runs a queued experiment
    executor.mkdir(parents=True)
    for rev, status in (("a1", 2), ("b2", 2), ("c3", 1), ("d4", 3), ("e5", 0)):  # running x2, preparing, done, queued
        info = repo / ".dvc" / "tmp" / "exps" / "run" / rev / f"{rev}.run"
        info.parent.mkdir(parents=True)
        info.write_text(json.dumps({"status": status, "root_dir": str(executor)}))
    assert _common.running_workers(executor) == 3 and _common.running_workers(repo) is None
    assert _common.size_threads(executor, cpus=16) == 5
    assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "5"
    assert _common.size_threads(executor, cpus=2) is None  # the user's (here: the earlier) OMP_NUM_THREADS wins
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert _common.size_threads(executor, cpus=2) == 1  # never below one thread
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert _common.size_threads(repo, cpus=2) is None and "OMP_NUM_THREADS" not in os.environ  # plain dvc repro
    monkeypatch.setenv(_common.THREADS_ENV, "3")
    assert _common.size_threads(repo, cpus=2) == 3 and os.environ["OMP_NUM_THREADS"] == "3"


@pytest.mark.parametrize("name, args, absent", [
    ("preprocess", ["--raw", "raw", "--out", "prepared"], {"torch", "mlflow"}),
    ("report", ["--results-dir", "r", "--autoattack", "a", "--blackbox-dir", "b", "--transfer", "t", "--defences-dir",
                "d", "--defences-metrics", "m", "--train-metrics-dir", "m", "--histories-dir", "h", "--prepared", "p",
                "--out", "o", "--summary", "s"], {"torch", "mlflow"}),
    ("attack", ["lora_fc", "--prepared", "p", "--models", "m", "--results", "r", "--metrics", "m", "--plots", "p"],
     {"mlflow", "great_expectations", "art"}),
])
def test_a_stage_starts_its_work_without_mlflow(tmp_path, name, args, absent):
    """Up to its first real work a stage imports what that work needs: never mlflow (it logs after its outputs)."""
    env = dict(os.environ, PYTHONPATH="", ROBUSTLORA_STARTUP_PROBE="1")
    result = subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py"), *args], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    seconds, loaded = line.removeprefix("startup ").split(" loaded: ")
    assert float(seconds) > 0 and not set(loaded.split(",")) & absent, line
    assert list(tmp_path.iterdir()) == []  # it stopped before touching anything


def test_a_tracking_failure_keeps_the_outputs_and_is_one_line(tmp_path):
    """Results first, logging second: with the tracking server gone, pretrain still writes its backbone, metrics and
    curves. Logging each stage as it ends (ROBUSTLORA_LOG_EACH_STAGE), it then ends with one line naming the server
    (exit 1), not a traceback and not a silent skip; what it recorded waits in the outbox, and `stages/publish.py`
    logs it once a store answers (by default the stages only record, and the report stage logs: tests/test_outbox.py)."""
    import socket

    from e2e import TINY, _merge

    (tmp_path / "stages").mkdir()  # a copy of the stages beside this src, so the checkpoint goes under tmp_path
    for script in (ROOT / "stages").glob("*.py"):
        (tmp_path / "stages" / script.name).write_text(script.read_text())
    (tmp_path / "src").symlink_to(ROOT / "src")
    params = tmp_path / "params.yaml"
    tiny = {k: TINY[k] for k in ("data", "model", "pretrain")}  # the sections these three stages run on
    params.write_text(yaml.safe_dump(_merge(yaml.safe_load((ROOT / "params.yaml").read_text()), tiny)))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH="", MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}", ROBUSTLORA_LOG_EACH_STAGE="1")

    def stage(name, *args):
        return subprocess.run([sys.executable, str(tmp_path / "stages" / f"{name}.py"), *map(str, args), "--params",
                               params], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)

    for name, args in (("download", ["--out", "raw"]), ("preprocess", ["--raw", "raw", "--out", "prepared"])):
        assert stage(name, *args).returncode == 0, name
    result = stage("pretrain", "--prepared", "prepared", "--out", "backbone.pt", "--metrics", "pretrain.json",
                   "--plots", "pretrain.csv")
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: tracking server http://127.0.0.1:{port}: not reachable"), line
    assert "pretrain: {" in result.stdout  # the work was done ...
    for out in ("backbone.pt", "pretrain.json", "pretrain.csv"):  # ... and its outputs written before logging
        assert (tmp_path / out).stat().st_size > 0, out
    assert not list((tmp_path / "checkpoints").rglob("*.pt"))  # the resume checkpoint is gone: the work is complete
    (waiting,) = (tmp_path / ".robustlora" / "outbox").glob("*pretrain.json")  # what it recorded, kept

    def publish(**changes):
        return subprocess.run([sys.executable, str(tmp_path / "stages" / "publish.py")], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300, env={**env, **changes})

    result = publish()  # the server is still gone: one line again, and the record still waits
    assert result.returncode == 1 and result.stderr.strip().startswith(f"error: tracking server http://127.0.0.1:{port}")
    assert len(result.stderr.strip().splitlines()) == 1 and waiting.is_file()
    env.pop("MLFLOW_TRACKING_URI")  # a store that answers: the repository's own sqlite file
    result = publish()
    assert result.returncode == 0 and "logged 1 recorded stage(s) into sqlite:///" in result.stdout, result.stderr
    assert not waiting.exists()
    import sqlite3

    names = {n.split(" · ")[0] for (n,) in sqlite3.connect(tmp_path / "mlflow.db").execute("select name from runs")}
    assert "pretrain" in names
