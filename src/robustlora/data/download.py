"""Fetch the Tiny ImageNet archive safely: streamed, retried, resumed, md5-verified, extracted without escapes.

`fetch_archive` accepts an http(s) URL, a file:// URL or a plain local path (for offline machines that already
hold the zip). The destination only ever appears complete and verified: bytes go to a temporary sibling that is
renamed onto `dest` after the md5, zip and member checks pass, and is deleted on any failure.
"""

from __future__ import annotations

import errno
import http.client
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable

from tqdm import tqdm

from robustlora.errors import DownloadError
from robustlora.io import atomic_path, file_digest

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"

CHUNK_BYTES = 1 << 20  # 1 MiB: large enough to be fast, small enough to never hold the archive in memory
LOCAL_HINT = "put a local path or file:// URL to the zip in data.url"
OFFLINE_HINT = f"this machine may be offline; {LOCAL_HINT} instead"


class _Transient(Exception):
    """A failure worth retrying: reset connection, truncated body, timeout, HTTP 5xx."""


class _RangeRefused(_Transient):
    """HTTP 416: the partial file cannot be resumed, so the next try starts from byte 0."""


def _log(message: str) -> None:
    # stderr: stdout may be parsed by whoever runs the stage
    print(f"[download] {message}", file=sys.stderr, flush=True)


def _unsafe_reason(name: str) -> str | None:
    """Why a zip member name could escape the extraction folder, or None if it is safe."""
    # Windows treats backslash as a separator, so judge the name as Windows would
    posix = name.replace("\\", "/")
    if posix.startswith("/"):
        return "absolute path"  # also catches \\server\share UNC names
    if re.match(r"^[A-Za-z]:", posix):
        return "drive-letter path"
    if ".." in PurePosixPath(posix).parts:
        return "'..' component"
    if "\x00" in name:
        return "NUL byte in name"
    return None


def check_zip_members(zip_path: str | os.PathLike, *, name: str | None = None) -> None:
    """Raise ValueError if any member of the zip could land outside the folder it is extracted into.

    Refuses absolute names (`/etc/x`, `C:\\x`, `\\\\server\\x`), `..` components and backslash variants of both.
    `name` is how the archive is called in the error (default: its path).
    """
    label = name or str(zip_path)
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            reason = _unsafe_reason(info.filename)
            if reason:
                raise ValueError(
                    f"unsafe member {info.filename!r} in archive {label} ({reason}); "
                    "refusing to use it: the archive is corrupt or malicious, get it from a trusted source"
                )


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    # the upper 16 bits of external_attr hold the unix st_mode when the zip was made on unix
    return stat.S_ISLNK(info.external_attr >> 16)


def safe_extract(zip_path: str | os.PathLike, target_dir: str | os.PathLike) -> Path:
    """Extract a zip into `target_dir` (which must not exist or be empty); return `target_dir`.

    Members are checked first (`check_zip_members`), symlinks are refused, and every resolved destination must lie
    inside the folder. Extraction happens in a temporary sibling folder renamed into place only when complete.
    """
    zip_path, target = Path(zip_path), Path(target_dir)
    check_zip_members(zip_path)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"extraction target {target} already exists and is not empty; delete it or pick another")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        root = tmp.resolve()
        with zipfile.ZipFile(zip_path) as zf:
            for info in zf.infolist():
                _extract_member(zf, info, root, zip_path)
        if target.exists():
            target.rmdir()  # an empty folder; renaming a folder onto another is not portable
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, root: Path, zip_path: Path) -> None:
    """Write one member under `root`, refusing symlinks and anything that resolves outside `root`."""
    if _is_symlink(info):
        raise ValueError(f"symlink member {info.filename!r} in archive {zip_path}; refusing to extract it")
    dest = (root / info.filename).resolve()
    if not dest.is_relative_to(root):
        raise ValueError(f"member {info.filename!r} in archive {zip_path} resolves outside the target folder")
    if info.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(info) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, CHUNK_BYTES)


def _local_source(url: str) -> Path | None:
    """The filesystem path for a file:// URL or plain path, None for http(s); raise for other schemes."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("http", "https"):
        return None
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise DownloadError(f"file URL {url} names host {parts.netloc!r}; use file:///absolute/path/to.zip")
        return Path(urllib.request.url2pathname(parts.path))
    if parts.scheme == "" or re.match(r"^[A-Za-z]$", parts.scheme):  # a one-letter scheme is a Windows drive
        return Path(url).expanduser()
    raise DownloadError(f"unsupported URL scheme {parts.scheme!r} in {url}; use http(s)://, file:// or a local path")


def _progress_bar(total: int | None, initial: int, desc: str, progress: bool | None) -> tqdm:
    # progress=None lets tqdm decide: quiet when stderr is not a terminal (DVC logs, CI)
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=None if progress is None else not progress, leave=False)


def _copy_stream(src: BinaryIO, out: BinaryIO, bar: tqdm) -> int:
    """Copy src to out in chunks, updating the bar; return the bytes copied. Read errors become _Transient."""
    # read1 returns what has arrived instead of waiting for a full chunk, so a stall loses no received bytes
    read = getattr(src, "read1", src.read)
    copied = 0
    while True:
        try:
            chunk = read(CHUNK_BYTES)
        except (OSError, http.client.HTTPException) as err:  # reset, timeout, incomplete chunked body
            raise _Transient(f"connection failed after {copied} bytes: {_describe(err)}") from err
        if not chunk:
            return copied
        out.write(chunk)
        copied += len(chunk)
        bar.update(len(chunk))


def _describe(err: BaseException) -> str:
    """A short one-line description of a network error."""
    reason = getattr(err, "reason", None)
    if isinstance(reason, BaseException):
        err = reason
    if isinstance(err, TimeoutError):
        return "timed out"
    return f"{type(err).__name__}: {err}".splitlines()[0]


def _is_unreachable(err: urllib.error.URLError) -> bool:
    """True when the host refused, has no address or no route: retrying within seconds will not help."""
    reason = err.reason
    if isinstance(reason, (ConnectionRefusedError, socket.gaierror)):
        return True
    return isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH)


def _open(url: str, have: int, timeout: float) -> http.client.HTTPResponse:
    """GET `url` asking for bytes from `have` on; classify failures as retryable (_Transient) or not."""
    headers = {"User-Agent": "robustlora-download/1", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416:  # our partial file no longer matches the server's
            raise _RangeRefused("HTTP 416 range not satisfiable") from err
        if err.code >= 500:
            raise _Transient(f"HTTP {err.code} {err.reason}") from err
        raise DownloadError(f"download of {url} failed: HTTP {err.code} {err.reason} (not retried; check data.url)") \
            from err
    except urllib.error.URLError as err:
        if _is_unreachable(err):
            raise DownloadError(f"cannot reach {url}: {_describe(err)}; {OFFLINE_HINT}") from err
        raise _Transient(_describe(err)) from err
    except (OSError, http.client.HTTPException) as err:  # reset or timeout while reading the status line
        raise _Transient(_describe(err)) from err


def _http_attempt(url: str, tmp: Path, timeout: float, progress: bool | None, desc: str) -> None:
    """One GET, resuming from the bytes already in `tmp` when the server honours Range; raise on failure."""
    have = tmp.stat().st_size
    try:
        response = _open(url, have, timeout)
    except _RangeRefused:
        tmp.write_bytes(b"")  # start over on the next try
        raise
    with response:
        start = have if response.status == 206 else 0  # a 200 means the server ignored Range: start over
        if start and _range_start(response) != have:
            tmp.write_bytes(b"")  # resumed at the wrong offset: appending would corrupt the file
            raise _Transient(f"server resumed at {response.headers.get('Content-Range')!r}, not byte {have}")
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        with open(tmp, "ab" if start else "wb") as out, \
                _progress_bar(None if expected is None else start + expected, start, desc, progress) as bar:
            copied = _copy_stream(response, out, bar)
    if expected is not None and copied < expected:
        raise _Transient(f"truncated body: got {copied} of {expected} bytes")


def _range_start(response: http.client.HTTPResponse) -> int | None:
    """The first byte offset of a 206 response (from `Content-Range: bytes a-b/n`), None if unparseable."""
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _download_http(url: str, tmp: Path, *, retries: int, timeout: float, backoff: float,
                   progress: bool | None, desc: str) -> None:
    """Download `url` into `tmp`, retrying transient failures with exponential backoff (seconds)."""
    for attempt in range(1, retries + 1):
        try:
            _http_attempt(url, tmp, timeout, progress, desc)
            return
        except _Transient as err:
            if attempt == retries:
                raise DownloadError(f"download of {url} failed after {retries} tries: {err}; "
                                    f"try again later or {LOCAL_HINT}") from err
            delay = backoff * 2 ** (attempt - 1)
            _log(f"try {attempt}/{retries} of {url} failed ({err}); retrying in {delay:.2f}s")
            time.sleep(delay)


def _copy_local(src: Path, url: str, tmp: Path, progress: bool | None, desc: str) -> None:
    """Stream a local archive into `tmp`."""
    if not src.is_file():
        raise DownloadError(f"local archive {src} (from data.url={url}) not found; download it or fix data.url")
    with open(src, "rb") as f, open(tmp, "wb") as out, \
            _progress_bar(src.stat().st_size, 0, desc, progress) as bar:
        _copy_stream(f, out, bar)


def _verify(path: Path, url: str, md5: str | None, is_zip: bool = True) -> None:
    """Raise unless `path` has the expected md5 (when given), is a zip, and has only safe member names."""
    if md5 is not None:
        actual = file_digest(path, "md5")
        if actual != md5.lower():
            raise DownloadError(f"md5 mismatch for {url}: expected {md5}, got {actual}; "
                                "the download is corrupt or data.md5 is wrong")
    if not is_zip:
        return
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(16)
        raise DownloadError(f"{url} is not a zip archive (starts with {head!r}); check data.url")
    check_zip_members(path, name=url)


def fetch_archive(url: str, dest: Path, md5: str | None, *, retries: int = 3, timeout: float = 30.0,
                  backoff: float = 1.0, progress: bool | None = None, is_zip: bool = True,
                  check: Callable[[Path], None] | None = None) -> Path:
    """Fetch the zip at `url` (http(s), file:// or local path) to `dest`, verified; return `dest`.

    `is_zip=False` fetches any file (no zip checks); `check(tmp_path)` may raise to refuse the bytes (e.g. a sha256
    test) before they are renamed onto `dest`.
    Skips the fetch when `dest` already has the expected md5. `md5=None` skips verification (and so never trusts an
    existing `dest`). Transient HTTP failures are retried `retries` times in total, sleeping `backoff`, 2*`backoff`,
    ... seconds and resuming with a Range request when the server allows; `timeout` is per socket operation, in
    seconds. `progress=None` shows a bar only on a terminal. On any failure nothing new is left at `dest`.
    """
    if retries < 1:
        raise ValueError(f"retries must be >= 1, got {retries}")
    if md5 is not None and not re.fullmatch(r"[0-9a-fA-F]{32}", md5):
        raise ValueError(f"md5 {md5!r} is not 32 hex characters; fix data.md5 (or set it to null to skip the check)")
    dest = Path(dest)
    if dest.is_file() and md5 is not None:
        if file_digest(dest, "md5") == md5.lower():
            _log(f"{dest} already present with md5 {md5}; skipping download")
            return dest
        _log(f"{dest} exists but its md5 is not {md5}; fetching it again")
    source = _local_source(url)
    desc = dest.name
    with atomic_path(dest, suffix=".part") as tmp:
        if source is None:
            _download_http(url, tmp, retries=retries, timeout=timeout, backoff=backoff, progress=progress, desc=desc)
        else:
            _copy_local(source, url, tmp, progress, desc)
        _verify(tmp, url, md5, is_zip)
        if check is not None:
            check(tmp)
    _log(f"fetched {url} -> {dest} ({dest.stat().st_size} bytes{', md5 verified' if md5 else ', md5 not checked'})")
    return dest
