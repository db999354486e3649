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
