"""robustlora.data.download against a real localhost HTTP server that can truncate, stall and fail on request."""

from __future__ import annotations

import hashlib
import io
import random
import re
import socket
import stat
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from robustlora.data import download
from robustlora.data.download import DownloadError, check_zip_members, fetch_archive, safe_extract
from robustlora.io import file_digest

FAST = dict(retries=3, timeout=2.0, backoff=0.01, progress=False)
UNSAFE_NAMES = [
    "../evil.txt",
    "ok/../../evil.txt",
    "/etc/evil.txt",
    "C:\\evil.txt",
    "C:evil.txt",
    "\\\\server\\share\\evil.txt",
    "..\\evil.txt",
    "a\\..\\..\\evil.txt",
]


def make_zip(members: dict[str, bytes]) -> bytes:
    """A zip holding `members` verbatim (names are not sanitised by ZipFile.writestr)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def archive() -> bytes:
    rng = random.Random(0)
    return make_zip({
        "tiny-imagenet-200/wnids.txt": b"n01443537\nn01629819\n",
        "tiny-imagenet-200/train/n01443537/images/a.JPEG": rng.randbytes(30_000),
        "tiny-imagenet-200/val/images/b.JPEG": rng.randbytes(30_000),
    })


@dataclass
class FakeServer:
    """What the handler serves, what it should do per request, and what it saw."""

    payload: bytes
    url: str = ""
    plan: list[str] = field(default_factory=list)  # behaviour of successive requests, then `default`
    default: str = "ok"
    ranges: bool = False  # honour Range requests with 206
    requests: list[str | None] = field(default_factory=list)  # Range header of each request
    statuses: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        fake: FakeServer = self.server.fake  # type: ignore[attr-defined]
        with fake.lock:
            fake.requests.append(self.headers.get("Range"))
            behaviour = fake.plan.pop(0) if fake.plan else fake.default
        if behaviour.isdigit():
            fake.statuses.append(int(behaviour))
            self.send_error(int(behaviour))
            return
        body, start, status = fake.payload, 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if fake.ranges and match:
            start, status = int(match.group(1)), 206
        if behaviour == "wrong206":  # claims to resume but sends the file from byte 0
            start, status = 0, 206
        part = body[start:]
        fake.statuses.append(status)
        self.send_response(status)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(part)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        if behaviour == "truncate":  # promise len(part) bytes, send half, hang up
            self.wfile.write(part[: len(part) // 2])
            self.close_connection = True
        elif behaviour == "stall":  # send half, then go silent until the test ends
            self.wfile.write(part[: len(part) // 2])
            self.wfile.flush()
            fake.release.wait(10)
        else:
            self.wfile.write(part)


@pytest.fixture
def server(archive: bytes, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # localhost must not go through a proxy
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    fake = FakeServer(archive, url=f"http://127.0.0.1:{httpd.server_port}/tiny-imagenet-200.zip")
    httpd.fake = fake  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_archive_md5_is_the_md5_of_its_bytes_read_in_blocks(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(3 * (1 << 20) + 17)  # several of file_digest's 1 MiB blocks, and a remainder
    (tmp_path / "f").write_bytes(data)
    assert file_digest(tmp_path / "f", "md5") == hashlib.md5(data).hexdigest()
    assert file_digest(tmp_path / "f") == hashlib.sha256(data).hexdigest()  # the default: what checks model weights


def test_constants() -> None:
    assert download.TINY_IMAGENET_URL == "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
    assert download.TINY_IMAGENET_MD5 == "90528d7ca1a48142e341f4ef8d21d0de"


def test_http_success_verifies_and_leaves_no_temp(server: FakeServer, archive: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "raw" / "tiny-imagenet-200.zip"
    out = fetch_archive(server.url, dest, hashlib.md5(archive).hexdigest(), **FAST)
    assert out == dest
    assert dest.read_bytes() == archive
    assert listing(dest.parent) == [dest.name]
    assert server.requests == [None]


def test_verified_archive_is_not_fetched_again(server: FakeServer, archive: bytes, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    dest, md5 = tmp_path / "a.zip", hashlib.md5(archive).hexdigest()
    fetch_archive(server.url, dest, md5, **FAST)
    fetch_archive(server.url, dest, md5.upper(), **FAST)
    assert len(server.requests) == 1
    assert "skipping" in capsys.readouterr().err


def test_existing_archive_with_wrong_md5_is_replaced(server: FakeServer, archive: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "a.zip"
    dest.write_bytes(b"stale partial download")
    fetch_archive(server.url, dest, hashlib.md5(archive).hexdigest(), **FAST)
    assert dest.read_bytes() == archive
    assert len(server.requests) == 1


def test_md5_none_skips_verification_and_refetches(server: FakeServer, archive: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "a.zip"
    fetch_archive(server.url, dest, None, **FAST)
    fetch_archive(server.url, dest, None, **FAST)  # nothing to verify an existing file against
    assert dest.read_bytes() == archive
    assert len(server.requests) == 2


def test_md5_mismatch_names_both_sums_and_leaves_nothing(server: FakeServer, archive: bytes, tmp_path: Path) -> None:
    wrong, real = "0" * 32, hashlib.md5(archive).hexdigest()
    with pytest.raises(DownloadError, match=rf"md5 mismatch for {re.escape(server.url)}: expected {wrong}, got {real}"):
        fetch_archive(server.url, tmp_path / "a.zip", wrong, **FAST)
    assert listing(tmp_path) == []


def test_non_zip_body_is_refused(server: FakeServer, tmp_path: Path) -> None:
    server.payload = b"<html>captive portal</html>"
    with pytest.raises(DownloadError, match=r"not a zip archive .*<html>"):
        fetch_archive(server.url, tmp_path / "a.zip", None, **FAST)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("ranges, statuses", [(True, [200, 206]), (False, [200, 200])])
def test_interrupted_transfer_is_resumed_or_restarted(server: FakeServer, archive: bytes, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, ranges: bool,
                                                      statuses: list[int]) -> None:
    monkeypatch.setattr(download, "CHUNK_BYTES", 4096)  # several chunks per response
    server.ranges, server.plan = ranges, ["truncate"]
    dest = tmp_path / "a.zip"
    fetch_archive(server.url, dest, hashlib.md5(archive).hexdigest(), **FAST)
    assert dest.read_bytes() == archive
    assert server.requests == [None, f"bytes={len(archive) // 2}-"]
    assert server.statuses == statuses
    assert listing(tmp_path) == ["a.zip"]


def test_resume_at_wrong_offset_restarts(server: FakeServer, archive: bytes, tmp_path: Path) -> None:
    server.ranges, server.plan = True, ["truncate", "wrong206"]
    fetch_archive(server.url, tmp_path / "a.zip", hashlib.md5(archive).hexdigest(), **FAST)
    assert (tmp_path / "a.zip").read_bytes() == archive
    assert server.requests == [None, f"bytes={len(archive) // 2}-", None]


def test_range_not_satisfiable_restarts_from_zero(server: FakeServer, archive: bytes, tmp_path: Path) -> None:
    server.ranges, server.plan = True, ["truncate", "416"]
    fetch_archive(server.url, tmp_path / "a.zip", hashlib.md5(archive).hexdigest(), **FAST)
    assert (tmp_path / "a.zip").read_bytes() == archive
    assert server.requests == [None, f"bytes={len(archive) // 2}-", None]
    assert server.statuses == [200, 416, 200]


@pytest.mark.parametrize("ranges", [True, False])
def test_always_interrupted_fails_after_all_tries(server: FakeServer, archive: bytes, tmp_path: Path,
                                                  ranges: bool) -> None:
    server.ranges, server.default = ranges, "truncate"
    with pytest.raises(DownloadError, match=rf"{re.escape(server.url)} failed after 3 tries: truncated body"):
        fetch_archive(server.url, tmp_path / "a.zip", hashlib.md5(archive).hexdigest(), **FAST)
    assert len(server.requests) == 3
    assert listing(tmp_path) == []


def test_stalled_transfer_times_out_and_is_retried(server: FakeServer, archive: bytes, tmp_path: Path) -> None:
    server.ranges, server.plan = True, ["stall"]
    start = time.monotonic()
    fetch_archive(server.url, tmp_path / "a.zip", hashlib.md5(archive).hexdigest(), **{**FAST, "timeout": 0.3})
    assert time.monotonic() - start < 3.0
    assert (tmp_path / "a.zip").read_bytes() == archive
    assert server.statuses == [200, 206]


def test_http_404_is_not_retried(server: FakeServer, tmp_path: Path) -> None:
    server.default = "404"
    with pytest.raises(DownloadError, match=rf"{re.escape(server.url)} failed: HTTP 404"):
        fetch_archive(server.url, tmp_path / "a.zip", None, **FAST)
    assert len(server.requests) == 1
    assert listing(tmp_path) == []


def test_http_503_once_is_retried(server: FakeServer, archive: bytes, tmp_path: Path) -> None:
    server.plan = ["503"]
    fetch_archive(server.url, tmp_path / "a.zip", hashlib.md5(archive).hexdigest(), **FAST)
    assert server.statuses == [503, 200]
    assert (tmp_path / "a.zip").read_bytes() == archive


def test_http_503_always_fails_after_all_tries(server: FakeServer, tmp_path: Path) -> None:
    server.default = "503"
    with pytest.raises(DownloadError, match=r"failed after 3 tries: HTTP 503"):
        fetch_archive(server.url, tmp_path / "a.zip", None, **FAST)
    assert len(server.requests) == 3


def test_unreachable_server_fails_fast_with_offline_hint(tmp_path: Path) -> None:
    with socket.socket() as sock:  # grab a free port, then close it so nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/tiny-imagenet-200.zip"
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch_archive(url, tmp_path / "a.zip", None, progress=False)  # default backoff: 1 s, 2 s if it retried
    assert time.monotonic() - start < 1.0
    message = str(info.value)
    assert url in message and "offline" in message and "file://" in message and "\n" not in message
    assert listing(tmp_path) == []


@pytest.mark.parametrize("as_url", [False, True])
def test_local_path_and_file_url_are_copied_and_verified(archive: bytes, tmp_path: Path, as_url: bool) -> None:
    src = tmp_path / "have" / "tiny-imagenet-200.zip"
    src.parent.mkdir()
    src.write_bytes(archive)
    dest = tmp_path / "raw" / "a.zip"
    url = src.as_uri() if as_url else str(src)
    assert fetch_archive(url, dest, hashlib.md5(archive).hexdigest(), progress=False) == dest
    assert dest.read_bytes() == archive and src.read_bytes() == archive
    assert listing(dest.parent) == ["a.zip"]
    with pytest.raises(DownloadError, match="md5 mismatch"):
        fetch_archive(url, tmp_path / "raw" / "b.zip", "f" * 32, progress=False)
    assert listing(dest.parent) == ["a.zip"]


def test_malformed_md5_is_refused_before_fetching(server: FakeServer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"md5 'abc' is not 32 hex characters; fix data.md5"):
        fetch_archive(server.url, tmp_path / "a.zip", "abc", **FAST)
    assert server.requests == []


def test_missing_local_file_and_unknown_scheme_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"local archive .*nope\.zip.* not found"):
        fetch_archive(str(tmp_path / "nope.zip"), tmp_path / "a.zip", None)
    with pytest.raises(DownloadError, match=r"unsupported URL scheme 'ftp'"):
        fetch_archive("ftp://example.org/a.zip", tmp_path / "a.zip", None)
    assert listing(tmp_path) == []


def test_progress_bar_only_when_asked(server: FakeServer, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    fetch_archive(server.url, tmp_path / "a.zip", None, **{**FAST, "progress": True})
    assert "a.zip:" in capsys.readouterr().err  # tqdm prints "<desc>: xx%|###|"
    fetch_archive(server.url, tmp_path / "b.zip", None, **FAST)
    assert "b.zip:" not in capsys.readouterr().err


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_check_zip_members_refuses_escaping_names(tmp_path: Path, name: str) -> None:
    zpath = tmp_path / "evil.zip"
    zpath.write_bytes(make_zip({"fine.txt": b"ok", name: b"pwned"}))
    with pytest.raises(ValueError, match=rf"unsafe member {re.escape(repr(name))} in archive {re.escape(str(zpath))}"):
        check_zip_members(zpath)


def test_check_zip_members_accepts_ordinary_names(tmp_path: Path) -> None:
    zpath = tmp_path / "ok.zip"
    zpath.write_bytes(make_zip({"a/": b"", "a/b/c.txt": b"1", "a..b/x.txt": b"2", "./d.txt": b"3"}))
    check_zip_members(zpath)  # must not raise: '..' inside a name is not a parent reference


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_safe_extract_refuses_escaping_names(tmp_path: Path, name: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    zpath = tmp_path / "evil.zip"
    zpath.write_bytes(make_zip({"fine.txt": b"ok", name: b"pwned"}))
    with pytest.raises(ValueError, match="unsafe member"):
        safe_extract(zpath, work / "out")
    assert listing(work) == []  # no target, no temp folder
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["evil.zip", "work"]


def test_safe_extract_checks_resolved_paths_even_without_name_check(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "check_zip_members", lambda *args, **kwargs: None)  # second line of defence only
    work = tmp_path / "work"
    work.mkdir()
    zpath = tmp_path / "evil.zip"
    zpath.write_bytes(make_zip({"../../evil.txt": b"pwned"}))
    with pytest.raises(ValueError, match="resolves outside the target folder"):
        safe_extract(zpath, work / "out")
    assert listing(work) == [] and listing(tmp_path) == ["evil.zip", "work"]


def test_safe_extract_refuses_symlink_members(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    zpath = tmp_path / "link.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("fine.txt", b"ok")
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ValueError, match="symlink member 'link'"):
        safe_extract(zpath, tmp_path / "out")
    assert listing(tmp_path) == ["link.zip"]


def test_safe_extract_writes_members_and_renames_into_place(archive: bytes, tmp_path: Path) -> None:
    zpath = tmp_path / "a.zip"
    zpath.write_bytes(archive)
    target = tmp_path / "data"
    assert safe_extract(zpath, target) == target
    with zipfile.ZipFile(zpath) as zf:
        for name in zf.namelist():
            assert (target / name).read_bytes() == zf.read(name)
    assert listing(tmp_path) == ["a.zip", "data"]
    with pytest.raises(FileExistsError, match="not empty"):
        safe_extract(zpath, target)


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/evil.txt"])
def test_fetch_archive_refuses_unsafe_archive(server: FakeServer, tmp_path: Path, name: str) -> None:
    server.payload = make_zip({name: b"pwned"})
    with pytest.raises(ValueError, match=rf"unsafe member .* in archive {re.escape(server.url)}"):
        fetch_archive(server.url, tmp_path / "a.zip", hashlib.md5(server.payload).hexdigest(), **FAST)
    assert listing(tmp_path) == []
