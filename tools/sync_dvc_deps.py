"""Write into dvc.yaml, per stage, exactly the repository code that stage imports (transitively, lazy imports and
parent packages' ``__init__.py`` included), so a change to one module re-runs only the stages that run it.

    python tools/sync_dvc_deps.py          # rewrite dvc.yaml's code deps in place (comments and order kept)
    python tools/sync_dvc_deps.py --check  # exit 1 if they are not what the imports say

tests/test_dvc_deps.py runs the same computation and fails when a stage imports a module its deps miss.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _module_file(name: str, root: Path) -> Path | None:
    parts = name.split(".")
    candidate = root / "src" / Path(*parts).with_suffix(".py")
    if candidate.is_file():
        return candidate
    init = root / "src" / Path(*parts) / "__init__.py"
    return init if init.is_file() else None


def imported_files(script: Path, root: Path) -> set[str]:
    """Repository files a stage script runs, transitively: stages/_*.py helpers, and src/robustlora modules with the
    ``__init__.py`` of every package above them (Python runs those first).

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
                elif name == "robustlora" or name.startswith("robustlora."):
                    parts = name.split(".")
                    for i in range(1, len(parts) + 1):  # the package's parents run first
                        found = _module_file(".".join(parts[:i]), root)
                        if found is not None:
                            todo.append(found)
    return seen


def stage_scripts(dvc_yaml: Path) -> dict[str, str]:
    """Stage name -> its stage script (a foreach stage through its `do` template)."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        cmd = stage.get("do", stage)["cmd"]
        out[name] = next(tok for tok in cmd.split() if tok.startswith("stages/") and tok.endswith(".py"))
    return out


def code_deps(script: str, root: Path) -> list[str]:
    """The code deps of a stage as dvc.yaml lists them: its script first, then the rest sorted."""
    files = imported_files(root / script, root) - {script}
    return [script, *sorted(files, key=lambda f: (not f.startswith("stages/"), f))]


_STAGE = re.compile(r"^  (\w+):\s*$")
_CODE_DEP = re.compile(r"^(\s+)- (stages/\S+\.py|src/robustlora/\S+\.py)\s*$")


def synced(text: str, root: Path, scripts: dict[str, str]) -> str:
    """dvc.yaml's text with each stage's code deps replaced by what its imports say; everything else kept."""
    out: list[str] = []
    stage = None
    written: set[str] = set()
    for line in text.splitlines(keepends=True):
        m = _STAGE.match(line)
        if m:
            stage = m.group(1)
        dep = _CODE_DEP.match(line)
        if dep and stage in scripts:
            if stage not in written:
                written.add(stage)
                out.extend(f"{dep.group(1)}- {f}\n" for f in code_deps(scripts[stage], root))
            continue
        out.append(line)
    return "".join(out)


def main(argv: list[str]) -> int:
    dvc_yaml = ROOT / "dvc.yaml"
    text = dvc_yaml.read_text()
    new = synced(text, ROOT, stage_scripts(dvc_yaml))
    if "--check" in argv:
        if new != text:
            print("dvc.yaml: code deps differ from the stages' imports; run python tools/sync_dvc_deps.py")
            return 1
        return 0
    if new != text:
        dvc_yaml.write_text(new)
        print("dvc.yaml: code deps rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
