"""The library's imports run one way: no module imports from a layer above its own, and no import cycle.

Layers, lowest first (a module may import its own layer and those below it):
  base (errors, io, layout, formatting, stats) < config < data < models < attacks < training < evaluation
  < defences < analysis < reporting < tracking
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "robustlora"
LAYERS = ("base", "stats", "config", "data", "models", "attacks", "training", "evaluation", "defences", "analysis",
          "reporting", "tracking")


def layer_of(module: str) -> str:
    """'robustlora.analysis.compare' -> 'analysis'; a top-level module such as 'robustlora.io' -> 'base'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "base"


def module_name(path: Path, src: Path = SRC) -> str:
    rel = path.relative_to(src).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(path: Path, src: Path = SRC) -> set[str]:
    """The robustlora modules a file imports, also inside functions (relative imports resolved)."""
    me = module_name(path, src)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("robustlora")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("robustlora"):
                for alias in node.names:  # `from robustlora.x import y` imports module x.y when y is one
                    sub = f"{base}.{alias.name}"
                    out.add(sub if _exists(sub, src) else base)
    return out


def _exists(module: str, src: Path = SRC) -> bool:
    p = src / Path(*module.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def violations(src: Path = SRC) -> list[str]:
    found = []
    for path in sorted((src / "robustlora").rglob("*.py")):
        me = module_name(path, src)
        for other in sorted(imports(path, src)):
            if LAYERS.index(layer_of(other)) > LAYERS.index(layer_of(me)):
                found.append(f"{me} ({layer_of(me)}) imports {other} ({layer_of(other)})")
    return found


def cycles(src: Path = SRC) -> list[list[str]]:
    """Import cycles between modules (a package's __init__ counts as a module)."""
    graph = {module_name(p, src): {m for m in imports(p, src) if _exists(m, src)}
             for p in (src / "robustlora").rglob("*.py")}
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_module_imports_a_higher_layer() -> None:
    assert violations() == []


def test_no_import_cycle() -> None:
    assert cycles() == []


def test_every_package_is_a_layer() -> None:
    packages = {p.parent.name for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE}
    assert packages <= set(LAYERS), f"add the new package to LAYERS in its place: {packages - set(LAYERS)}"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for pkg in ("robustlora", "robustlora/models", "robustlora/reporting"):
        (tmp_path / pkg).mkdir(parents=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "robustlora" / "reporting" / "figures.py").write_text("")
    return tmp_path


def test_a_lower_layer_importing_a_higher_one_is_caught(tree: Path) -> None:
    (tree / "robustlora" / "models" / "lora.py").write_text(
        "def f():\n    from robustlora.reporting.figures import g\n")  # lazy imports count too
    assert violations(tree) == ["robustlora.models.lora (models) imports robustlora.reporting.figures (reporting)"]


def test_a_relative_import_is_resolved(tree: Path) -> None:
    (tree / "robustlora" / "models" / "lora.py").write_text("from ..reporting import figures\n")
    assert violations(tree) == ["robustlora.models.lora (models) imports robustlora.reporting.figures (reporting)"]


def test_a_cycle_is_caught(tree: Path) -> None:
    (tree / "robustlora" / "models" / "a.py").write_text("from robustlora.models import b\n")
    (tree / "robustlora" / "models" / "b.py").write_text("from robustlora.models.a import f\n")
    assert cycles(tree) == [["robustlora.models.a", "robustlora.models.b", "robustlora.models.a"]]
