"""dvc.yaml's deps are complete (every module a stage imports is a dependency) and dvc.lock matches the code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from sync_dvc_deps import imported_files, synced, stage_scripts  # noqa: E402


def _stages(dvc_yaml: Path) -> dict[str, dict]:
    """Stage name -> definition; a foreach stage is checked through its `do` template."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def missing_deps(dvc_yaml: Path, root: Path) -> dict[str, list[str]]:
    """Per stage, the imported repository files that no dep (the file or a folder above it) covers."""
    out = {}
    for name, stage in _stages(dvc_yaml).items():
        script = next(tok for tok in stage["cmd"].split() if tok.startswith("stages/") and tok.endswith(".py"))
        deps = [str(d).rstrip("/") for d in stage.get("deps", [])]
        covered = lambda f: any(f == d or f.startswith(d + "/") for d in deps)  # noqa: E731
        missing = sorted(f for f in imported_files(root / script, root) if not covered(f))
        if missing:
            out[name] = missing
    return out


def test_every_imported_module_is_a_dependency() -> None:
    assert missing_deps(ROOT / "dvc.yaml", ROOT) == {}


def test_the_check_catches_a_missing_dependency(tmp_path: Path) -> None:
    # a copy of the real pipeline whose train stage forgets one module it imports
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    train = stages["stages"]["train"]["do"]
    forgotten = ("src/robustlora/training/__init__.py", "src/robustlora/training/loop.py",
                 "src/robustlora/training/optim.py", "src/robustlora/training/study.py")
    train["deps"] = [d for d in train["deps"] if d not in forgotten]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(stages))
    assert missing_deps(tmp_path / "dvc.yaml", ROOT) == {"train": list(forgotten)}
    # the optimizer is found transitively: the stage imports the loop, which imports it
    assert "robustlora.training.optim" not in (ROOT / "stages" / "train.py").read_text()


def test_lazy_imports_inside_functions_count(tmp_path: Path) -> None:
    (tmp_path / "stages").mkdir()
    (tmp_path / "src" / "robustlora").mkdir(parents=True)
    (tmp_path / "stages" / "s.py").write_text("def main():\n    from robustlora.a import f\n")
    (tmp_path / "src" / "robustlora" / "a.py").write_text("def f():\n    import robustlora.b\n")
    (tmp_path / "src" / "robustlora" / "b.py").write_text("")
    assert imported_files(tmp_path / "stages" / "s.py", tmp_path) == {
        "stages/s.py", "src/robustlora/a.py", "src/robustlora/b.py"}


def test_a_package_module_brings_every_parent_init(tmp_path: Path) -> None:
    # Python runs robustlora/__init__.py and robustlora/pkg/__init__.py before robustlora/pkg/mod.py
    (tmp_path / "stages").mkdir()
    (tmp_path / "src" / "robustlora" / "pkg").mkdir(parents=True)
    (tmp_path / "stages" / "s.py").write_text("from robustlora.pkg.mod import f\n")
    (tmp_path / "src" / "robustlora" / "__init__.py").write_text("")
    (tmp_path / "src" / "robustlora" / "pkg" / "__init__.py").write_text("")
    (tmp_path / "src" / "robustlora" / "pkg" / "mod.py").write_text("")
    assert imported_files(tmp_path / "stages" / "s.py", tmp_path) == {
        "stages/s.py", "src/robustlora/__init__.py", "src/robustlora/pkg/__init__.py", "src/robustlora/pkg/mod.py"}


def test_dvc_yaml_lists_exactly_the_code_each_stage_runs() -> None:
    # no stale dep either (a module no stage imports any more would re-run the stage for nothing)
    text = (ROOT / "dvc.yaml").read_text()
    assert synced(text, ROOT, stage_scripts(ROOT / "dvc.yaml")) == text, "run python tools/sync_dvc_deps.py"


def test_sync_adds_a_forgotten_module_and_keeps_the_rest(tmp_path: Path) -> None:
    text = (ROOT / "dvc.yaml").read_text()
    broken = text.replace("      - src/robustlora/data/validation.py\n", "", 1)
    assert broken != text
    assert synced(broken, ROOT, stage_scripts(ROOT / "dvc.yaml")) == text


def test_dvc_lock_matches_the_committed_code_and_params() -> None:
    """`dvc status` reports no stage whose code or params changed since dvc.lock was written.

    Data outputs may be absent (a fresh clone has no data/ or models/); only code and params are compared.
    """
    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")
    assert dvc, "dvc is not installed (pip install -e '.[test]')"
    env = os.environ | {"DVC_NO_ANALYTICS": "1"}
    result = subprocess.run([dvc, "status", "--json"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    stale = {}
    for stage, changes in json.loads(result.stdout or "{}").items():
        for change in changes if isinstance(changes, list) else []:
            if not isinstance(change, dict):
                continue
            code = {k: v for k, v in change.get("changed deps", {}).items()
                    if k.startswith(("stages/", "src/")) and v in ("modified", "new", "deleted")}
            params = change.get("changed params")
            if code or params:
                stale[stage] = {"code": code, "params": params}
    assert stale == {}, f"dvc.lock is stale; run `dvc repro` and commit dvc.lock: {stale}"
