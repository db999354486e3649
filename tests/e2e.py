"""The tiny study the end-to-end modules share: built once per test session (by whichever xdist worker gets there
first, under a file lock), then copied for each module, so the modules can run on both workers at once.

Cheap to copy: DVC links its outputs to one cache outside the study (`cache.dir` in `.dvc/config.local`, `cache.type`
reflink, else hardlink, committed in `.dvc/config`), so a module's copy, a `dvc exp run --temp` and every queue
executor link the ~45 MB model files instead of copying them; only a clone with its own cache (the remote round
trip's "second machine") copies them. Every subprocess runs one intra-op thread (`environment()`): on 2 cores the
study builds beside a worker running the unit tests, and the sweep runs two queue workers.
"""

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
    "attack": {"n_images": 10, "batch_size": 10, "eps": ["2/255", "8/255"], "full_eps": ["8/255"], "grid_images": 6,
               "pgd": {"steps": 2, "sanity_eps": 0.5, "target_steps": 2},
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
# one intra-op thread per process: tiny tensors gain nothing from more, and on 2 cores a second thread only fights the
# other test worker (or the other queue worker) for its core
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


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


def _build(root: Path, cache: Path, env: dict) -> str:
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(ROOT / name, root / name)
    for folder in ("stages", "src"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # the default params with the documented defences overlay (the adversarial arm and the switching system) on top
    params = _merge(yaml.safe_load((ROOT / "params.yaml").read_text()),
                    yaml.safe_load((ROOT / "configs" / "defences.yaml").read_text()))
    params = _merge(params, TINY)
    params["variants"] = {name: params["variants"][name] for name in VARIANTS}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q", "-b", "main"], root, env)
    sh([sys.executable, "-m", "dvc", "init", "-q"], root, env)
    # what `dvc config core.analytics false`, `dvc config cache.type reflink,hardlink,copy` and `dvc config --local
    # cache.dir <cache>` write, without three more DVC start-ups: outputs are links into the cache, never copies (in
    # .dvc/config, committed: every clone and queue executor links too), and the cache is shared by the copies
    (root / ".dvc" / "config").write_text('[core]\n    analytics = false\n[cache]\n    type = "reflink,hardlink,copy"\n')
    (root / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {cache}\n")
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-qm", "tiny study"], root, env)
    # ~19 stage processes: a few minutes, many more on a crowded machine (the limit only stops a hung build)
    log = sh([sys.executable, "-m", "dvc", "repro"], root, env, timeout=1800)
    # a stage's outputs stay the files it wrote (DVC copied them into the cache): link them, so the copies link too
    sh([sys.executable, "-m", "dvc", "checkout", "--relink"], root, env)
    sh(["git", "add", "-A"], root, env)  # as a user would: commit the results, then sweep
    sh(["git", "commit", "-qm", "results"], root, env)
    return log


def environment() -> dict:
    """The subprocesses' environment: this interpreter's tools first, no MLflow / DVC settings of the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t", PYTHONPATH="",
               MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1", **THREADS)
    return env


def _link_or_copy(src: str, dst: str) -> None:
    """A read-only file with other links (an output DVC linked from its cache) is linked, anything else copied:
    DVC never writes into such a file (it replaces or unprotects it first), so the copies share it safely."""
    st = os.stat(src)
    if st.st_nlink > 1 and not st.st_mode & 0o222:
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


def study(tmp_path_factory, name: str) -> tuple[Path, dict, str]:
    """(a private copy of the tiny study after `dvc repro` and a commit, the environment, the repro's log)."""
    env = environment()
    base = tmp_path_factory.getbasetemp()
    base = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # common to every xdist worker
    shared, cache = base / "tiny-study", base / "tiny-study-cache"
    with FileLock(str(shared) + ".lock"):
        if not (shared / ".built").is_file():
            shutil.rmtree(shared, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
            shared.mkdir()
            (shared / ".repro.log").write_text(_build(shared, cache, env))
            (shared / ".built").touch()
    root = tmp_path_factory.mktemp(name) / "study"
    shutil.copytree(shared, root, symlinks=True, ignore=shutil.ignore_patterns(".built", ".repro.log"),
                    copy_function=_link_or_copy)
    return root, env, (shared / ".repro.log").read_text()
