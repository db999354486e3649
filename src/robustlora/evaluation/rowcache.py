"""Reuse of per-image rows across runs of a stage: a fingerprint of what one model's rows depend on, and the cache that
hands back the rows of an earlier run (its persisted parquet file) when their fingerprint matches.

The stages that attack every arm and seed (autoattack, blackbox, transfer, defences) keep their results file between
runs (``persist: true`` in dvc.yaml); a sweep that changes one arm then re-attacks that arm only. A fingerprint
covers the model file(s) by their bytes, the attack's settings, the attacked images' ids and the whole library's
code (every .py file of the package, subpackages included), so rows made by other code are never reused.

A stage killed mid-run loses no finished model's rows: with a ``spill`` folder (the stages use
``checkpoints/rows/<results path>``, outside DVC's outputs) each model's rows are written there, atomically, the moment
they are made; the rerun hands them back like the earlier run's (same fingerprint, so the same bytes as an
uninterrupted run), and the stage empties the folder once its outputs are written (:meth:`RowCache.done`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from robustlora.io import atomic_path, file_digest

__all__ = ["FINGERPRINT", "RowCache", "code_digest", "rows_fingerprint"]

FINGERPRINT = "fingerprint"  # the column that carries each row's rows_fingerprint


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over every source file of the package, subpackages included: results made by other code are never
    reused. Once per process (a stage fingerprints dozens of models; its code does not change while it runs)."""
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
    """Per-model rows of an earlier run of the same stage (its persisted parquet file, if any), reused when their
    fingerprint matches, and the rows a killed run of it had finished (``spill``). Rows carry a ``fingerprint`` column
    (FINGERPRINT); ``reused`` names the rows handed back from the earlier file, ``resumed`` those from the spill
    folder, in order."""

    def __init__(self, path: Path | None, spill: Path | None = None) -> None:
        self.previous = None
        if path is not None and Path(path).is_file():
            try:
                table = pd.read_parquet(path)
            except Exception:  # an unreadable earlier file is recomputed, not trusted
                table = None
            if table is not None and FINGERPRINT in table.columns:
                self.previous = table
        self.spill = Path(spill) if spill is not None else None
        self.reused: list[str] = []
        self.resumed: list[str] = []

    def get(self, key: str, fp: str) -> pd.DataFrame | None:
        """The earlier rows with fingerprint ``fp`` (``key`` names them in the log), or None."""
        if self.previous is not None:
            rows = self.previous[self.previous[FINGERPRINT] == fp]
            if not rows.empty:
                self.reused.append(key)
                return rows.reset_index(drop=True)
        spilled = self._spilled(fp)
        if spilled is not None and spilled.is_file():
            try:
                rows = pd.read_parquet(spilled)
            except Exception:  # a damaged file (it is written atomically, so only by other hands): recompute
                return None
            if FINGERPRINT in rows.columns and (rows[FINGERPRINT] == fp).all() and not rows.empty:
                self.resumed.append(key)
                return rows
        return None

    @staticmethod
    def tag(rows: pd.DataFrame, fp: str) -> pd.DataFrame:
        """``rows`` with a last column ``fingerprint`` = fp (in place)."""
        rows[FINGERPRINT] = fp
        return rows

    def rows(self, key: str, model_files: Sequence[Path], settings: Any, image_ids: np.ndarray,
             make: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        """One model's rows: the earlier (or spilled) ones when their :func:`rows_fingerprint` of (model_files,
        settings, image_ids) matches, else ``make()``'s, tagged with it and spilled. ``key`` names them in
        :attr:`reused` / :attr:`resumed`."""
        fp = rows_fingerprint(model_files, settings, image_ids)
        rows = self.get(key, fp)
        if rows is None:
            rows = self.tag(make(), fp)
            spilled = self._spilled(fp)
            if spilled is not None and not rows.empty:
                with atomic_path(spilled, suffix=".parquet") as tmp:
                    rows.to_parquet(tmp, index=False)
        return rows

    def is_new(self, rows: pd.DataFrame) -> bool:
        """Whether tagged ``rows`` were made for this run's outputs (here, or by a killed run of it: no figure of
        theirs was recorded), not handed back from the earlier file (whose runs got their figures when they were
        made)."""
        earlier = set(self.previous[FINGERPRINT]) if self.previous is not None else set()
        return not (FINGERPRINT in rows and set(rows[FINGERPRINT]) <= earlier)

    def done(self) -> None:
        """The stage's outputs are written: the spilled rows are in them, so the spill folder goes."""
        if self.spill is not None:
            shutil.rmtree(self.spill, ignore_errors=True)

    def _spilled(self, fp: str) -> Path | None:
        return self.spill / f"{fp}.parquet" if self.spill is not None else None
