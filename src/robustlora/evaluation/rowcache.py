"""Reuse of per-image rows across runs of a stage: a fingerprint of what one model's rows depend on, and the cache that
hands back the rows of an earlier run (its persisted parquet file) when their fingerprint matches.

The stages that attack every arm and seed (autoattack, blackbox, transfer, defences) keep their results file between
runs (``persist: true`` in dvc.yaml); a sweep that changes one arm then re-attacks that arm only. A fingerprint
covers the model file(s) by their bytes, the attack's settings, the attacked images' ids and the whole library's
code (every .py file of the package, subpackages included), so rows made by other code are never reused.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from robustlora.io import file_digest

__all__ = ["FINGERPRINT", "RowCache", "code_digest", "rows_fingerprint"]

FINGERPRINT = "fingerprint"  # the column that carries each row's rows_fingerprint


def code_digest() -> str:
    """sha256 over every source file of the package, subpackages included: results made by other code are never
    reused."""
    h = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def rows_fingerprint(model_files: Sequence[Path], settings: Any, image_ids: np.ndarray) -> str:
    """What one model's rows of an attack depend on: the model file(s) (their bytes), the attack's settings (JSON),
    the attacked images' ids and the library's code; a sha256 hex digest."""
    h = hashlib.sha256()
    for path in model_files:
        stat = Path(path).stat()
        h.update(_file_digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns))
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(np.asarray(image_ids, dtype=np.int64).tobytes())
    h.update(code_digest().encode())
    return h.hexdigest()


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> bytes:
    """sha256 of a file (raw bytes), computed once per process for a given size and mtime (a stage fingerprints
    each model for several attacks or surrogates)."""
    return bytes.fromhex(file_digest(path, "sha256"))


class RowCache:
    """Per-model rows of an earlier run of the same stage (its persisted parquet file), reused when their fingerprint
    matches. Rows carry a ``fingerprint`` column (FINGERPRINT); ``reused`` names the rows handed back, in order."""

    def __init__(self, path: Path) -> None:
        self.previous = None
        if Path(path).is_file():
            try:
                table = pd.read_parquet(path)
            except Exception:  # an unreadable earlier file is recomputed, not trusted
                table = None
            if table is not None and FINGERPRINT in table.columns:
                self.previous = table
        self.reused: list[str] = []

    def get(self, key: str, fp: str) -> pd.DataFrame | None:
        """The earlier rows with fingerprint ``fp`` (``key`` names them in the log), or None."""
        if self.previous is None:
            return None
        rows = self.previous[self.previous[FINGERPRINT] == fp]
        if rows.empty:
            return None
        self.reused.append(key)
        return rows.reset_index(drop=True)

    @staticmethod
    def tag(rows: pd.DataFrame, fp: str) -> pd.DataFrame:
        """``rows`` with a last column ``fingerprint`` = fp (in place)."""
        rows[FINGERPRINT] = fp
        return rows

    def rows(self, key: str, model_files: Sequence[Path], settings: Any, image_ids: np.ndarray,
             make: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        """One model's rows: the earlier ones when their :func:`rows_fingerprint` of (model_files, settings,
        image_ids) matches, else ``make()``'s, tagged with it. ``key`` names them in :attr:`reused`."""
        fp = rows_fingerprint(model_files, settings, image_ids)
        rows = self.get(key, fp)
        return self.tag(make(), fp) if rows is None else rows

    def is_new(self, rows: pd.DataFrame) -> bool:
        """Whether tagged ``rows`` were made in this run, not handed back from the earlier file (whose runs got
        their figures when they were made)."""
        earlier = set(self.previous[FINGERPRINT]) if self.previous is not None else set()
        return not (FINGERPRINT in rows and set(rows[FINGERPRINT]) <= earlier)
