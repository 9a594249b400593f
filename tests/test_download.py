"""asr.download against a local Range-capable HTTP server with injected faults, and
safe_extract against hand-built malicious archives. No test really sleeps."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import tarfile
import zipfile
from pathlib import Path

import pytest

from asr.download import (DiskSpaceError, DownloadError, UnsafeArchiveError, download,
                          fetch_and_extract, md5sum, safe_extract)

try:  # tests/ as a package or as a plain folder on sys.path
    from tests.http_server import FileServer
except ImportError:
    from http_server import FileServer

PAYLOAD = bytes(range(256)) * 400 + b"tail"  # 102404 bytes, position-dependent content
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


@pytest.fixture
def server(tmp_path):
    """A FileServer over tmp_path/www holding data.bin (PAYLOAD)."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "data.bin").write_bytes(PAYLOAD)
    with FileServer(www) as srv:
        yield srv


def fetch(server, dest, sleeps, **kw):
    kw.setdefault("progress", False)
    return download(server.url("data.bin"), dest, sleep=sleeps.append, **kw)


# --------------------------------------------------------------------------- download


def test_md5sum_matches_hashlib(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(PAYLOAD)
    assert md5sum(p, chunk=1000) == PAYLOAD_MD5


def test_download_verifies_md5_and_second_call_makes_no_request(server, tmp_path, sleeps):
    dest = tmp_path / "out" / "data.bin"
    assert fetch(server, dest, sleeps, md5=PAYLOAD_MD5) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("data.bin.part").exists()
    assert server.statuses == [200] and server.ranges == [None]

    assert fetch(server, dest, sleeps, md5=PAYLOAD_MD5.upper()) == dest
    assert fetch(server, dest, sleeps) == dest
    assert len(server.requests) == 1
    assert sleeps == []


def test_existing_dest_with_wrong_md5_is_replaced(server, tmp_path, sleeps):
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"stale")
    fetch(server, dest, sleeps, md5=PAYLOAD_MD5)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 1


def test_cut_download_resumes_with_range_from_cut_point(server, tmp_path, sleeps):
    dest = tmp_path / "data.bin"
    server.cut_after(30000)
    fetch(server, dest, sleeps, md5=PAYLOAD_MD5)
    assert server.ranges == [None, "bytes=30000-"]
    assert server.statuses == [200, 206]
    assert sleeps == [1.0]
    assert dest.read_bytes() == PAYLOAD


def test_partial_left_by_failed_call_is_resumed_by_next_call(server, tmp_path, sleeps):
    dest = tmp_path / "data.bin"
    server.cut_after(12345)
    with pytest.raises(DownloadError, match="truncated"):
        fetch(server, dest, sleeps, retries=0)
    part = tmp_path / "data.bin.part"
    assert part.read_bytes() == PAYLOAD[:12345] and not dest.exists()

    fetch(server, dest, sleeps, md5=PAYLOAD_MD5)
    assert server.ranges == [None, "bytes=12345-"]
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path, sleeps):
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(b"\xff" * 5000)  # garbage: must not survive
    server.ignore_range()
    fetch(server, dest, sleeps)
    assert server.ranges == ["bytes=5000-"] and server.statuses == [200]
    assert dest.read_bytes() == PAYLOAD


def test_416_with_complete_partial_keeps_it(server, tmp_path, sleeps):
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD)
    fetch(server, dest, sleeps, md5=PAYLOAD_MD5)
    assert server.ranges == [f"bytes={len(PAYLOAD)}-"] and server.statuses == [416]
    assert dest.read_bytes() == PAYLOAD


def test_416_with_oversized_partial_restarts_cleanly(server, tmp_path, sleeps):
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD + b"junk")
    fetch(server, dest, sleeps)
    assert server.ranges == [f"bytes={len(PAYLOAD) + 4}-", None]
    assert server.statuses == [416, 200]
    assert dest.read_bytes() == PAYLOAD


def test_5xx_twice_then_success_retries_with_backoff(server, tmp_path, sleeps):
    dest = tmp_path / "data.bin"
    server.fail_next(2, status=500)
    fetch(server, dest, sleeps, backoff=0.5)
    assert server.statuses == [500, 500, 200]
    assert len(server.requests) == 3
    assert sleeps == [0.5, 1.0]  # backoff * 2**attempt
    assert dest.read_bytes() == PAYLOAD


def test_5xx_exhausting_retries_fails_naming_url(server, tmp_path, sleeps):
    dest = tmp_path / "data.bin"
    server.fail_next(10, status=503)
    url = server.url("data.bin")
    with pytest.raises(DownloadError, match="3 attempt") as info:
        fetch(server, dest, sleeps, retries=2)
    assert url in str(info.value) and "503" in str(info.value)
    assert server.statuses == [503, 503, 503]
    assert sleeps == [1.0, 2.0]
    assert not dest.exists()


def test_404_fails_at_once_naming_url_and_status(server, tmp_path, sleeps):
    url = server.url("missing.bin")
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "missing.bin", sleep=sleeps.append, progress=False)
    assert url in str(info.value) and "404" in str(info.value)
    assert len(server.requests) == 1 and sleeps == []
    assert not (tmp_path / "missing.bin").exists()


def test_timeout_is_retried(server, tmp_path, sleeps):
    dest = tmp_path / "data.bin"
    server.stall_next(20.0)  # far past the timeout, so load cannot blur the two
    fetch(server, dest, sleeps, timeout=3.0)
    assert len(server.requests) == 2 and sleeps == [1.0]
    assert dest.read_bytes() == PAYLOAD


def test_connection_refused_is_retried_then_fails(tmp_path, sleeps):
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.bin"
    with pytest.raises(DownloadError, match="2 attempt") as info:
        download(url, tmp_path / "x.bin", retries=1, sleep=sleeps.append, progress=False)
    assert url in str(info.value) and sleeps == [1.0]


def test_md5_mismatch_redownloads_once_then_fails(server, tmp_path, sleeps):
    dest = tmp_path / "data.bin"
    wrong = hashlib.md5(b"something else").hexdigest()
    with pytest.raises(DownloadError, match="md5") as info:
        fetch(server, dest, sleeps, md5=wrong)
    msg = str(info.value)
    assert wrong in msg and PAYLOAD_MD5 in msg and server.url("data.bin") in msg
    assert server.ranges == [None, None]  # the second fetch starts from scratch
    assert not dest.exists() and not (tmp_path / "data.bin.part").exists()


def test_corrupt_partial_is_healed_by_md5_redownload(server, tmp_path, sleeps):
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(b"\x00" * 1000)  # wrong prefix, resumable
    fetch(server, dest, sleeps, md5=PAYLOAD_MD5)
    assert server.ranges == ["bytes=1000-", None]
    assert dest.read_bytes() == PAYLOAD


def test_progress_bar_names_the_file(server, tmp_path, sleeps, capsys):
    fetch(server, tmp_path / "data.bin", sleeps, progress=True)
    assert "data.bin" in capsys.readouterr().err


# --------------------------------------------------------------------------- safe_extract


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def add_tar(tf: tarfile.TarFile, name: str, data: bytes = b"x", **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data) if attrs.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else 0
    for k, v in attrs.items():
        setattr(info, k, v)
    tf.addfile(info, io.BytesIO(data) if info.size else None)


def make_tar(path: Path, members: list[dict], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for m in members:
            add_tar(tf, **m)
    return path


@pytest.fixture
def sandbox(tmp_path):
    """(archives folder, target folder inside sandbox/): escapes land in sandbox/ or tmp_path."""
    archives = tmp_path / "archives"
    archives.mkdir()
    target = tmp_path / "sandbox" / "target"
    target.mkdir(parents=True)
    return archives, target


SYM, LNK = tarfile.SYMTYPE, tarfile.LNKTYPE
UNSAFE_TARS = {
    "dotdot": [{"name": "../evil.txt"}],
    "nested-dotdot": [{"name": "a/../../evil.txt"}],
    "absolute": [{"name": "/abs.txt"}],
    "symlink-escape": [{"name": "link", "type": SYM, "linkname": "../../outside"}],
    "symlink-absolute": [{"name": "link", "type": SYM, "linkname": "/etc/passwd"}],
    "hardlink-escape": [{"name": "hl", "type": LNK, "linkname": "../outside.txt"}],
    # each link alone stays inside, but e -> s/.. with s -> . resolves to target/..
    "symlink-chain": [{"name": "s", "type": SYM, "linkname": "."},
                      {"name": "e", "type": SYM, "linkname": "s/.."}],
    # a file written through a symlink made earlier in the same archive
    "write-through-link": [{"name": "sub", "type": tarfile.DIRTYPE},
                           {"name": "sub/up", "type": SYM, "linkname": ".."},
                           {"name": "sub/up/../evil.txt"}],  # lexically sub/evil.txt
    "char-device": [{"name": "dev", "type": tarfile.CHRTYPE}],
    "fifo": [{"name": "fifo", "type": tarfile.FIFOTYPE}],
}


@pytest.mark.parametrize("case", sorted(UNSAFE_TARS))
def test_safe_extract_refuses_unsafe_tar_and_writes_nothing(sandbox, tmp_path, case):
    archives, target = sandbox
    bad = UNSAFE_TARS[case]
    archive = make_tar(archives / f"{case}.tar.gz", [{"name": "good.txt"}] + bad, "w:gz")
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeArchiveError) as info:
        safe_extract(archive, target)
    assert repr(bad[-1]["name"]) in str(info.value)
    assert snapshot(tmp_path) == before  # nothing outside target, nor inside it
    assert list(target.iterdir()) == []


def test_safe_extract_refuses_without_creating_missing_target(tmp_path):
    archive = make_tar(tmp_path / "bad.tar", [{"name": "ok"}, {"name": "../evil.txt"}])
    with pytest.raises(UnsafeArchiveError, match="evil"):
        safe_extract(archive, tmp_path / "new" / "target")
    assert snapshot(tmp_path) == {"bad.tar"}


def test_safe_extract_refuses_escape_through_existing_symlink_on_disk(sandbox, tmp_path):
    archives, target = sandbox
    (target / "door").symlink_to(tmp_path)  # left over, pointing outside
    archive = make_tar(archives / "a.tar", [{"name": "door/evil.txt"}])
    with pytest.raises(UnsafeArchiveError, match="door/evil.txt"):
        safe_extract(archive, target)
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("name", ["../evil.txt", "/abs.txt", "a/../../evil.txt"])
def test_safe_extract_refuses_unsafe_zip(sandbox, tmp_path, name):
    archives, target = sandbox
    archive = archives / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("good.txt", b"ok")
        zf.writestr(zipfile.ZipInfo(name), b"evil")
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeArchiveError, match="refusing member"):
        safe_extract(archive, target)
    assert snapshot(tmp_path) == before


GOOD_MEMBERS = [
    {"name": "corpus", "type": tarfile.DIRTYPE, "mode": 0o755},
    {"name": "corpus/a.txt", "data": b"alpha"},
    {"name": "corpus/sub/b.txt", "data": b"beta"},
    {"name": "corpus/sub/link.txt", "type": SYM, "linkname": "../a.txt"},
    {"name": "corpus/hard.txt", "type": LNK, "linkname": "corpus/a.txt"},
]
GOOD_NAMES = [m["name"] for m in GOOD_MEMBERS]


def check_good_tree(target: Path) -> None:
    assert (target / "corpus" / "a.txt").read_bytes() == b"alpha"
    assert (target / "corpus" / "sub" / "b.txt").read_bytes() == b"beta"
    assert (target / "corpus" / "sub" / "link.txt").read_bytes() == b"alpha"
    assert (target / "corpus" / "hard.txt").read_bytes() == b"alpha"


@pytest.mark.parametrize("suffix,mode", [(".tar.gz", "w:gz"), (".tgz", "w:gz"),
                                         (".tar.bz2", "w:bz2"), (".tar", "w")])
def test_safe_extract_good_tar(sandbox, tmp_path, suffix, mode):
    archives, target = sandbox
    archive = make_tar(archives / f"good{suffix}", GOOD_MEMBERS, mode)
    assert safe_extract(archive, target) == GOOD_NAMES
    check_good_tree(target)
    assert snapshot(tmp_path / "sandbox") == {"target"} | {f"target/{n}" for n in
                                                          ["corpus", "corpus/sub"] + GOOD_NAMES}


def test_safe_extract_good_zip(sandbox):
    archives, target = sandbox
    archive = archives / "good.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("corpus/", b"")
        zf.writestr("corpus/a.txt", b"alpha")
        zf.writestr("corpus/sub/../b.txt", b"beta")  # stays inside: allowed
    assert safe_extract(archive, target) == ["corpus/", "corpus/a.txt", "corpus/sub/../b.txt"]
    assert (target / "corpus" / "a.txt").read_bytes() == b"alpha"


def test_safe_extract_checks_free_space_first(sandbox, tmp_path, monkeypatch):
    archives, target = sandbox
    archive = make_tar(archives / "big.tar", [{"name": "f.bin", "data": b"z" * 1000}])
    usage = shutil.disk_usage(target)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=5000))
    with pytest.raises(DiskSpaceError, match="free"):
        safe_extract(archive, target)
    assert list(target.iterdir()) == []
    assert safe_extract(archive, target, check_space=False) == ["f.bin"]


# --------------------------------------------------------------------------- fetch_and_extract


def test_fetch_and_extract_writes_marker_and_skips_second_time(server, tmp_path, sleeps,
                                                               caplog):
    archive = make_tar(server.root / "corpus.tar.gz", GOOD_MEMBERS, "w:gz")
    md5 = md5sum(archive)
    url = server.url("corpus.tar.gz")
    dl, target = tmp_path / "dl" / "corpus.tar.gz", tmp_path / "data"
    marker = fetch_and_extract(url, dl, target, md5=md5, progress=False, sleep=sleeps.append)
    assert marker == target / ".done-corpus.tar.gz" and marker.is_file()
    check_good_tree(target)
    assert len(server.requests) == 1

    shutil.rmtree(target / "corpus")
    os.remove(dl)
    with caplog.at_level("INFO", logger="asr.download"):
        assert fetch_and_extract(url, dl, target, md5=md5, progress=False) == marker
    assert len(server.requests) == 1  # no HTTP request
    assert not (target / "corpus").exists() and not dl.exists()
    assert "already extracted" in caplog.text


def test_fetch_and_extract_custom_marker(server, tmp_path, sleeps):
    make_tar(server.root / "c.tar", [{"name": "x.txt"}])
    marker = tmp_path / "markers" / "c.ok"
    got = fetch_and_extract(server.url("c.tar"), tmp_path / "c.tar", tmp_path / "out",
                            marker=marker, progress=False, sleep=sleeps.append)
    assert got == marker and marker.is_file() and (tmp_path / "out" / "x.txt").is_file()
