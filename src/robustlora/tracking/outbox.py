"""The outbox: what the stages recorded for MLflow, kept on disk until it is logged.

A stage writes its DVC outputs, then its :class:`~robustlora.tracking.record.Recorder` as one JSON entry under
``<repo>/.robustlora/outbox/`` (:meth:`Recorder.finish`), and is done: it never imports mlflow. The report stage, the
pipeline's last, logs every entry of its DVC experiment in the order they were written, its own last, in one process
(one MLflow import and one store connection instead of one per stage: about 5 s per stage on 2 CPU cores), and
removes each entry once it is logged. Why: the runs are the same as if each stage had logged them itself (the times,
run keys and provenance tags are captured when recorded), but a tracking outage can no longer fail or lose a
training or attack stage: only the report (seconds) fails, with one line naming the server, and the entries wait.

- ``python stages/publish.py`` (``record.publish_pending``) logs whatever waits (every experiment's entries), e.g. after the server is back; so
  does the next report run, for its own experiment.
- ``ROBUSTLORA_LOG_EACH_STAGE=1``: every stage logs its entry (and its experiment's older ones) as it ends, for a
  long run watched live in the MLflow UI; a tracking failure then ends that stage with the one-line error, its
  outputs written and its entry kept.
- A stage that runs again replaces its own entry if that was not logged yet (its outputs were replaced too).
- Logging twice is harmless: an entry whose logging was interrupted finds the runs it already created by their
  ``robustlora.record`` tag, and MLflow drops metric points it already has (same key, value, time and step).

Queued and temporary experiments (``dvc exp run --queue/--temp``) write to the user's repository (``DVC_ROOT``, as the
SQLite store does), so an entry outlives its executor's temp copy; two workers log only their own experiment's
entries, claimed by an atomic rename, so none is logged twice at once.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from robustlora.errors import TrackingError
from robustlora.io import write_json

OUTBOX = Path(".robustlora") / "outbox"
EACH_STAGE_ENV = "ROBUSTLORA_LOG_EACH_STAGE"
VERSION = 1
CLAIM = ".claim-"


def outbox_dir(repo_root: Path | None = None) -> Path:
    """``<repo>/.robustlora/outbox`` of ``repo_root`` (default: the user's repository, see ``find_repo_root``)."""
    from robustlora.tracking.store import find_repo_root

    return Path(repo_root if repo_root is not None else find_repo_root()) / OUTBOX


def log_each_stage() -> bool:
    return os.environ.get(EACH_STAGE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", name)[:80] or "stage"


def write_entry(entry: dict[str, Any], repo_root: Path | None = None) -> Path:
    """Write ``entry`` (``Recorder.to_entry``) atomically; an older, unlogged entry of the same stage in the same
    DVC experiment is removed (the stage ran again and replaced its outputs)."""
    folder = outbox_dir(repo_root)
    folder.mkdir(parents=True, exist_ok=True)
    for old in _entries(folder):
        data = read_entry(old)
        if data and data.get("stage") == entry["stage"] and data.get("group") == entry["group"]:
            old.unlink(missing_ok=True)
    path = folder / f"{time.time_ns():020d}-{os.getpid()}-{_safe(entry['stage'])}.json"
    write_json(path, entry)
    return path


def _entries(folder: Path) -> list[Path]:
    """Unclaimed entries, plus claims whose process is gone (killed while logging), oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        if path.suffix == ".json" and not path.name.startswith("."):
            found.append(path)
        elif CLAIM in path.name and not _alive(path.name.rsplit(CLAIM, 1)[1]):
            found.append(path)
    return sorted(found, key=lambda p: p.name)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def read_entry(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == VERSION else None


def pending(repo_root: Path | None = None, group: str | None = None) -> list[Path]:
    """The entries waiting to be logged (of one DVC experiment's ``group`` key, else all), oldest first."""
    folder = outbox_dir(repo_root)
    out = []
    for path in _entries(folder):
        data = read_entry(path)
        if data is None and not path.exists():  # another worker claimed or logged it since the listing
            continue
        if data is None:
            raise TrackingError(f"{path}: not an outbox entry this version can read; move it away and re-run the "
                                "stage that wrote it")
        if group is None or data.get("group") == group:
            out.append(path)
    return out


def waiting_line(repo_root: Path | None = None) -> str | None:
    """One line on what waits in the outbox (None: nothing), for the stages and `stages/publish.py`."""
    try:
        n = len(pending(repo_root))
    except TrackingError as e:
        return str(e)
    if not n:
        return None
    return (f"MLflow: {n} recorded stage(s) wait in {outbox_dir(repo_root)}; the report stage logs them, or now: "
            "python stages/publish.py")
