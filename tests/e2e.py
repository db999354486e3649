"""The tiny study the end-to-end modules share: built once per test session (by whichever xdist worker gets there
first, under a file lock), then copied for each module, so the modules can run on both workers at once."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from filelock import FileLock

from conftest import ROOT

TINY = {
    "data": {"classes": 3, "holdout": 0.2,
             "synthetic": {"source_classes": 4, "target_classes": 3, "source_train_per_class": 12,
                           "source_val_per_class": 3, "target_train_per_class": 10, "target_val_per_class": 4,
                           "test_images": 0, "image_size": 32}},
    "model": {"input_size": 16},
    "pretrain": {"max_epochs": 1, "batch_size": 16},
    "train": {"max_epochs": 2, "batch_size": 16, "patience": 1, "seeds": [0, 1]},
    "attack": {"n_images": 10, "batch_size": 10, "eps": ["2/255", "8/255"], "pgd": {"steps": 2, "sanity_eps": 0.5},
               "convergence": {"n_images": 4, "steps_factor": 2, "restarts": 2, "eps": ["8/255"]}},
    "autoattack": {"n_images": 6, "batch_size": 6, "n_iter": 2, "n_target_classes": 2, "eps": ["8/255"],
                   "sanity_eps": 1.0},
    "blackbox": {"square": {"n_images": 4, "queries": 5, "eps": ["8/255"], "sanity_eps": 1.0},
                 "hopskipjump": {"n_images": 2, "max_iter": 1, "max_eval": 10, "init_eval": 5, "init_size": 5},
                 "boundary": {"n_images": 2, "max_iter": 3, "num_trial": 2, "sample_size": 2, "init_size": 5},
                 "zoo": {"n_images": 2, "max_iter": 2, "nb_parallel": 8}},
    "transfer": {"n_images": 6, "eps": ["8/255"]},
    "squeeze": {"n_images": 4, "adaptive": {"steps": 2}},   # at report.eps
    "switching": {"n_images": 4, "cost_batch_size": 4, "cost_repeats": 2},
    "report": {"eps": "8/255", "n_boot": 200},
}
VARIANTS = ["pretrained", "baseline", "lora_fc", "lora_fc_conv1", "lora_fc_conv1_at"]  # the last: adversarial
SEEDS = [0, 1]
BLACKBOX = ["square", "hopskipjump", "boundary", "zoo"]
CROSS_ARM = {"autoattack", "blackbox", "transfer", "defences"}  # the stages that attack every arm


def _merge(base, changes):
    for k, v in changes.items():
        if isinstance(v, dict):
            _merge(base.setdefault(k, {}), v)
        else:
            base[k] = v
    return base


def sh(args, cwd, env, timeout=600, stdout_only=False):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout if stdout_only else result.stdout + result.stderr


def _ran(log):
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage '")}


def _build(root: Path, env: dict) -> str:
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(ROOT / name, root / name)
    for folder in ("stages", "src"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = _merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    params["variants"] = {name: params["variants"][name] for name in VARIANTS}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q", "-b", "main"], root, env)
    sh([sys.executable, "-m", "dvc", "init", "-q"], root, env)
    sh([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], root, env)
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-qm", "tiny study"], root, env)
    log = sh([sys.executable, "-m", "dvc", "repro"], root, env)
    sh(["git", "add", "-A"], root, env)  # as a user would: commit the results, then sweep
    sh(["git", "commit", "-qm", "results"], root, env)
    return log


def environment() -> dict:
    """The subprocesses' environment: this interpreter's tools first, no MLflow / DVC settings of the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t", PYTHONPATH="",
               MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1")
    return env


def study(tmp_path_factory, name: str) -> tuple[Path, dict, str]:
    """(a private copy of the tiny study after `dvc repro` and a commit, the environment, the repro's log)."""
    env = environment()
    shared = tmp_path_factory.getbasetemp().parent / "tiny-study"  # common to every xdist worker of this session
    with FileLock(str(shared) + ".lock"):
        if not (shared / ".built").is_file():
            shutil.rmtree(shared, ignore_errors=True)
            shared.mkdir()
            (shared / ".repro.log").write_text(_build(shared, env))
            (shared / ".built").touch()
    root = tmp_path_factory.mktemp(name) / "study"
    shutil.copytree(shared, root, symlinks=True, ignore=shutil.ignore_patterns(".built", ".repro.log"))
    return root, env, (shared / ".repro.log").read_text()
