"""Run a params overlay (e.g. configs/paper.yaml) as one DVC experiment: `dvc exp run -S key=value ...`.

    python tools/preset.py configs/paper.yaml -n paper [--queue] [--dry-run]

Every leaf of the overlay becomes one `-S` (lists and null as YAML flow values; a key params.yaml lacks, such as a new
variant's, as `+key=value`), so the experiment's params are params.yaml with the overlay on top, recorded by DVC like
any `-S` sweep. Unknown keys are refused before anything
runs (one line naming the key); so are merged params that do not load (robustlora.config).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf; a list is one leaf."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


def flow(value: Any) -> str:
    """A value as DVC's -S takes it (YAML flow style: null, 8/255, [0, 1, 2])."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


NEW_OK = ("variants",)  # sections whose new keys are new entries (a variant), not typos


def merged(base: dict, overlay: dict, path: str = "") -> dict:
    """params.yaml with the overlay on top; a key the base lacks is refused (ValueError naming it), except a new
    entry of a NEW_OK section (a new variant)."""
    out = dict(base)
    for key, value in overlay.items():
        if key not in base:
            if path in NEW_OK:
                out[key] = value
                continue
            raise ValueError(f"unknown params key {key!r}")
        if isinstance(value, dict) and isinstance(base[key], dict):
            try:
                out[key] = merged(base[key], value, f"{path}.{key}" if path else key)
            except ValueError as e:
                raise ValueError(str(e).replace("key '", f"key '{key}.", 1)) from None
        else:
            out[key] = value
    return out


def set_args(overlay_path: Path, params_path: Path = ROOT / "params.yaml") -> list[str]:
    """The `-S key=value` arguments of an overlay, after checking it against params.yaml."""
    from robustlora.config import parse_params

    overlay = yaml.safe_load(overlay_path.read_text()) or {}
    base = yaml.safe_load(params_path.read_text())
    try:
        parse_params(merged(base, overlay))
    except ValueError as e:
        raise SystemExit(f"error: {overlay_path}: {e}") from None
    return [arg for key, value in overrides(overlay, base) for arg in ("-S", f"{key}={flow(value)}")]


def overrides(overlay: dict, base: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(key, value) per leaf of the overlay; a subtree params.yaml lacks (a new variant) as ONE '+key' with the
    whole mapping (Hydra's grammar for adding a key)."""
    for key, value in overlay.items():
        if key not in base:
            yield f"+{prefix}{key}", value
        elif isinstance(value, dict) and isinstance(base[key], dict):
            yield from overrides(value, base[key], f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    overlay, rest = Path(argv[0]), argv[1:]
    if not overlay.is_file():
        print(f"error: {overlay}: no such overlay file", file=sys.stderr)
        return 2
    dry = "--dry-run" in rest
    rest = [a for a in rest if a != "--dry-run"]
    cmd = [sys.executable, "-m", "dvc", "exp", "run", *rest, *set_args(overlay)]
    print(" ".join(cmd[1:]))
    return 0 if dry else subprocess.call(cmd, cwd=ROOT)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
