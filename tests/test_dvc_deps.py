"""dvc.yaml's deps are complete (every module a stage imports is a dependency) and dvc.lock matches the code."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def imported_files(script: Path, root: Path) -> set[str]:
    """Repository files a stage script imports, transitively: stages/_*.py helpers and src/robustlora/*.py.

    Every import statement counts, also those inside functions (the stages import lazily to keep --help fast).
    """
    seen: set[str] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        rel = path.relative_to(root).as_posix()
        if rel in seen:
            continue
        seen.add(rel)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if name.startswith("_") and (root / "stages" / f"{name}.py").is_file():
                    todo.append(root / "stages" / f"{name}.py")
                elif name.startswith("robustlora"):
                    parts = name.split(".")
                    candidate = root / "src" / Path(*parts).with_suffix(".py")
                    if candidate.is_file():
                        todo.append(candidate)
                    elif (root / "src" / Path(*parts) / "__init__.py").is_file():
                        todo.append(root / "src" / Path(*parts) / "__init__.py")
    return seen


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
    train["deps"] = [d for d in train["deps"] if d not in ("src/robustlora/study.py", "src/robustlora/train.py")]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(stages))
    assert missing_deps(tmp_path / "dvc.yaml", ROOT) == {
        "train": ["src/robustlora/study.py", "src/robustlora/train.py"]}
    # the training loop is found transitively: the stage itself imports study, which imports train
    assert "robustlora.train" not in (ROOT / "stages" / "train.py").read_text()


def test_lazy_imports_inside_functions_count(tmp_path: Path) -> None:
    (tmp_path / "stages").mkdir()
    (tmp_path / "src" / "robustlora").mkdir(parents=True)
    (tmp_path / "stages" / "s.py").write_text("def main():\n    from robustlora.a import f\n")
    (tmp_path / "src" / "robustlora" / "a.py").write_text("def f():\n    import robustlora.b\n")
    (tmp_path / "src" / "robustlora" / "b.py").write_text("")
    assert imported_files(tmp_path / "stages" / "s.py", tmp_path) == {
        "stages/s.py", "src/robustlora/a.py", "src/robustlora/b.py"}


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
                    if k.startswith(("stages/", "src/")) and v == "modified"}
            params = change.get("changed params")
            if code or params:
                stale[stage] = {"code": code, "params": params}
    assert stale == {}, f"dvc.lock is stale; run `dvc repro` and commit dvc.lock: {stale}"
