"""File I/O in one place: atomic output (write to a temporary sibling, rename only when complete), JSON, and the
digest of a file's bytes. A full disk or a read-only folder is an OutputError naming the output, never a traceback
or a half-written file."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from robustlora.errors import OutputError

# errors of the file system an output goes to, not of the data written: they become one line naming the output
_WRITE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                 errno.EROFS: "read-only file system", errno.EFBIG: "file too large for its file system",
                 errno.EACCES: "permission denied", errno.EPERM: "permission denied"}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched,
    so a killed or failed stage never leaves a half-written output behind. A full disk, a read-only or forbidden
    folder (while writing, wherever in the exception's chain) is an :class:`~robustlora.errors.OutputError`:
    ``<path>: no space left on device (...)``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    except OSError as e:
        raise _output_error(path, e) or e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give outputs the usual permissions
        os.replace(tmp_path, path)
    except BaseException as e:
        error = _output_error(path, e)  # before the unlink: the disk is still as full as the writer found it
        tmp_path.unlink(missing_ok=True)
        if error is not None:
            raise error from None
        raise


def reserve(path: str | os.PathLike, shown: str | os.PathLike | None = None) -> None:
    """Allocate the blocks of a file created at its full size but sparse (a memory map's ``w+``) now: pages of a map
    written on a full disk kill the process with SIGBUS, where this raises. No room is an OutputError naming
    ``shown`` (the output the file becomes; default ``path``). A file system without fallocate is left as it is."""
    path = Path(path)
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return
            error = _output_error(Path(shown) if shown is not None else path, e, space_of=path.parent)
            if error is not None:
                raise error from None
            raise


def _output_error(path: Path, exc: BaseException, space_of: Path | None = None) -> OutputError | None:
    """The OutputError for a file-system error anywhere in ``exc``'s chain (torch and pyarrow wrap them), else None;
    ``space_of``: the folder whose file system ran full (default: ``path``'s)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            what = _WRITE_ERRNOS[exc.errno]
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return OutputError(f"{path}: {what} ({_space(space_of or path.parent)}); free some space or write "
                                   "the output elsewhere, then re-run")
            return OutputError(f"{path}: {what}; make {path.parent} writable or write the output elsewhere")
        exc = exc.__cause__ or exc.__context__
    return None


def _space(folder: Path) -> str:
    """'0 B free of 2.0 MiB': the free and total space of the file system holding ``folder``."""
    import shutil

    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return "file system full"
    return f"{_mib(usage.free)} free of {_mib(usage.total)}"


def _mib(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MiB" if n < 2 ** 30 else f"{n / 2 ** 30:.1f} GiB"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (``sha256`` or ``md5``), read in 1 MiB blocks so a large file never sits in memory."""
    h = hashlib.new(algorithm, usedforsecurity=False) if algorithm == "md5" else hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
