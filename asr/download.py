"""Resumable, verified downloads and safe archive extraction for corpus preparation.

``download(url, dest)`` streams into ``dest.part`` and renames it onto ``dest`` only once the
body is complete (and, with ``md5``, verified), so ``dest`` never holds a half file:

* an existing ``dest`` (with a matching md5, when one is given) is returned without any request;
* an existing ``dest.part`` of N bytes is resumed with ``Range: bytes=N-``: a 206 answer is
  appended, a 200 answer (server ignores Range) restarts from zero, a 416 answer means the
  partial is already whole or is corrupt: it is kept if its size (or md5) proves it whole,
  otherwise discarded and fetched again from scratch;
* connection errors, timeouts, truncated bodies (fewer bytes than Content-Length) and HTTP 5xx
  are retried with exponential backoff (``backoff * 2**attempt`` seconds); any other HTTP
  error fails at once with ``DownloadError``;
* an md5 mismatch on the finished file discards it and downloads once more from scratch;
  a second mismatch raises ``DownloadError``.

``safe_extract(archive, target)`` unpacks .tar, .tar.gz/.tgz, .tar.bz2 (any compression
tarfile reads) and .zip archives. Every member is checked before anything is written: absolute
names, ``..`` escapes, symlinks or hardlinks resolving outside ``target`` (following links
made earlier in the same archive and links already on disk), device files and FIFOs are
refused with ``UnsafeArchiveError``; a refused archive writes nothing at all. Free disk space
is checked before extracting, and tar members additionally go through tarfile's ``"data"``
filter as defence in depth.

``fetch_and_extract`` chains both and leaves a done-marker in ``target``, so a rerun of a
recipe skips corpora that are already in place. Several may run in parallel threads: each
download can draw its progress bar on its own line (``position``), and extractions into a
shared folder can be serialized with one ``extract_lock``.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import posixpath
import re
import shutil
import ssl
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Callable, ContextManager
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

log = logging.getLogger(__name__)

# Bytes read from the network (and from disk when hashing) per step.
STREAM_CHUNK = 1 << 16
# Suffix of the partial file a download streams into, next to its destination.
PART_SUFFIX = ".part"
# Prefix of the default done-marker file fetch_and_extract writes into the target folder.
MARKER_PREFIX = ".done-"
# User-Agent sent with every request (some mirrors refuse urllib's default).
USER_AGENT = "asr-downloader/1.0 (+urllib)"
# Free space kept in reserve when extracting: a fixed cushion in bytes ...
SPACE_MARGIN_BYTES = 16 << 20
# ... plus this fraction of the archive's total uncompressed size.
SPACE_MARGIN_FRACTION = 0.02
# Most symlinks followed while resolving one archive path (like the kernel's SYMLOOP_MAX).
MAX_LINK_HOPS = 40
# Errors raised while talking to the server that are worth another attempt.
NETWORK_ERRORS = (ConnectionError, TimeoutError, http.client.HTTPException, ssl.SSLError)
# Content-Range of a 416 answer: "bytes */<complete length>".
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")
# Content-Range of a 206 answer: "bytes <first>-<last>/<complete length or *>".
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
# Names a Windows drive ("C:..."); refused in archives like absolute paths.
_DRIVE = re.compile(r"^[A-Za-z]:")


class DownloadError(RuntimeError):
    """A download that cannot complete; the message names the URL and the reason."""


class UnsafeArchiveError(ValueError):
    """An archive member that would escape the target or is a special file; names the member."""


class DiskSpaceError(OSError):
    """Too little free space in the target folder to extract an archive."""


class _Retry(Exception):
    """A failed attempt worth repeating (network error, timeout, truncated body, HTTP 5xx)."""


# --------------------------------------------------------------------------- downloading


def md5sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex md5 digest of the file at ``path``, read ``chunk`` bytes at a time."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: str | os.PathLike, md5: str | None = None, retries: int = 5,
             backoff: float = 1.0, timeout: float = 60, progress: bool = True, *,
             sleep: Callable[[float], None] | None = None, position: int | None = None) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``) and return ``dest`` as a Path.

    ``retries`` is the number of extra attempts after the first, each preceded by a pause of
    ``backoff * 2**attempt`` seconds (``sleep`` defaults to ``time.sleep``; tests pass a no-op).
    ``timeout`` is the socket timeout per request; ``progress`` shows a tqdm bar per file, on
    screen line ``position`` (tqdm's argument) when several downloads run side by side.
    Raises DownloadError on an HTTP 4xx, when the attempts run out, or when the md5 still
    mismatches after one fresh re-download; no ``dest`` is left behind in those cases.
    """
    dest = Path(dest)
    md5 = md5.lower() if md5 else None
    if dest.is_file() and (md5 is None or md5sum(dest) == md5):
        log.debug("%s: already present", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        dest.unlink()  # present but with the wrong md5
    part = dest.with_name(dest.name + PART_SUFFIX)
    opts = dict(retries=retries, backoff=backoff, timeout=timeout, progress=progress,
                sleep=sleep or time.sleep, md5=md5, position=position)
    got = None
    for fresh in (False, True):
        _fetch_with_retries(url, part, dest.name, **opts)
        got = md5sum(part) if md5 else None
        if got == md5:
            os.replace(part, dest)
            return dest
        part.unlink()
        if not fresh:
            log.warning("%s: md5 mismatch (expected %s, got %s); downloading again",
                        url, md5, got)
    raise DownloadError(f"{url}: md5 mismatch after re-download: expected {md5}, got {got}")


def _fetch_with_retries(url: str, part: Path, name: str, *, retries: int, backoff: float,
                        timeout: float, progress: bool, sleep: Callable[[float], None],
                        md5: str | None, position: int | None = None) -> None:
    """Complete ``part`` from ``url``, retrying transient failures with exponential backoff."""
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, name, timeout=timeout, progress=progress, md5=md5,
                        position=position)
            return
        except _Retry as err:
            if attempt == retries:
                raise DownloadError(
                    f"{url}: failed after {retries + 1} attempt(s): {err}") from None
            delay = backoff * 2 ** attempt
            log.warning("%s: %s; retry %d/%d in %.1f s", url, err, attempt + 1, retries, delay)
            sleep(delay)


def _open(url: str, offset: int, timeout: float):
    """Send the GET (with a Range header past ``offset``); map failures to _Retry/DownloadError.

    Returns the response, or the HTTPError itself for a 416 so the caller can inspect it.
    """
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as err:
        err.close()
        if err.code == 416 and offset:
            return err
        if err.code >= 500:
            raise _Retry(f"HTTP {err.code} {err.reason}") from None
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    except URLError as err:
        if isinstance(err.reason, OSError):  # refused, reset, DNS failure, timeout...
            raise _Retry(f"{type(err.reason).__name__}: {err.reason}") from None
        raise DownloadError(f"{url}: {err.reason}") from None
    except NETWORK_ERRORS as err:
        raise _Retry(f"{type(err).__name__}: {err}") from None


def _fetch_once(url: str, part: Path, name: str, *, timeout: float, progress: bool,
                md5: str | None, position: int | None = None) -> None:
    """One attempt: resume or restart ``part``; returns when its body is complete."""
    have = part.stat().st_size if part.exists() else 0
    resp = _open(url, have, timeout)
    if isinstance(resp, HTTPError):  # 416: the partial is at least as long as the file
        if _partial_is_whole(resp, part, have, md5):
            return
        log.warning("%s: server refused resuming at byte %d; restarting", url, have)
        part.unlink()
        _fetch_once(url, part, name, timeout=timeout, progress=progress, md5=md5,
                    position=position)
        return
    with resp:
        if resp.status == 206:
            match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != have:
                part.unlink()
                raise _Retry(f"server resumed at the wrong offset ({match and match.group(0)})")
        else:
            have = 0  # 200: the server ignored Range, start over
        length = resp.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        got = _stream(resp, part, have, expected, name, progress, position)
    if expected is not None and got < expected:
        raise _Retry(f"truncated body: {got} of {expected} bytes")


def _partial_is_whole(err: HTTPError, part: Path, have: int, md5: str | None) -> bool:
    """After a 416: is ``part`` already the complete file (by Content-Range size or md5)?"""
    match = _UNSATISFIED_RANGE.match(err.headers.get("Content-Range", "") if err.headers else "")
    if match:
        return int(match.group(1)) == have
    # No size given: keep it only if the md5 check that follows can judge it.
    return md5 is not None


def _stream(resp, part: Path, have: int, expected: int | None, name: str,
            progress: bool, position: int | None = None) -> int:
    """Append (``have`` > 0) or write the body of ``resp`` to ``part``; return bytes received."""
    got = 0
    total = have + expected if expected is not None else None
    with open(part, "ab" if have else "wb") as f, \
            tqdm(total=total, initial=have, desc=name, unit="B", unit_scale=True,
                 unit_divisor=1024, disable=not progress, leave=False,
                 position=position) as bar:
        while True:
            try:
                block = resp.read(STREAM_CHUNK)
            except NETWORK_ERRORS as err:
                raise _Retry(f"{type(err).__name__} after {got} bytes: {err}") from None
            if not block:
                break
            f.write(block)
            got += len(block)
            bar.update(len(block))
    return got


# --------------------------------------------------------------------------- extraction


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike,
                 check_space: bool = True) -> list[str]:
    """Extract a tar (plain, gz, bz2, xz) or zip ``archive`` into ``target``; return member names.

    All members are vetted first (see the module docstring): UnsafeArchiveError names the
    first offending member and nothing is written. With ``check_space``, DiskSpaceError is
    raised when the uncompressed size plus a margin exceeds the free space at ``target``.
    """
    archive, target = Path(archive), Path(target)
    root = os.path.realpath(target)
    if _is_zip(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            _vet_zip(archive, infos, root)
            if check_space:
                _check_space(archive, target, sum(i.file_size for i in infos))
            target.mkdir(parents=True, exist_ok=True)
            zf.extractall(target, members=infos)
            return [i.filename for i in infos]
    with tarfile.open(archive, "r:*") as tf:
        members = tf.getmembers()
        _vet_tar(archive, members, root)
        if check_space:
            _check_space(archive, target, sum(m.size for m in members if m.isfile()))
        target.mkdir(parents=True, exist_ok=True)
        try:
            tf.extractall(target, members=members, filter="data")
        except tarfile.FilterError as err:  # defence in depth: the vetting should catch all
            raise _refuse(archive, err.tarinfo.name, str(err)) from None
        return [m.name for m in members]


def _is_zip(archive: Path) -> bool:
    """Zip by name, else by content; tar suffixes win over zip sniffing."""
    name = archive.name.lower()
    if name.endswith(".zip"):
        return True
    if re.search(r"\.(tar|tgz|tbz2?|txz)(\.\w+)?$", name):
        return False
    if not tarfile.is_tarfile(archive):
        if not zipfile.is_zipfile(archive):
            raise ValueError(f"{archive}: neither a tar nor a zip archive")
        return True
    return False


def _refuse(archive: Path, member: str, why: str) -> UnsafeArchiveError:
    """The error for an unsafe member: one line naming the archive, the member and why."""
    return UnsafeArchiveError(f"{archive}: refusing member {member!r}: {why}")


def _vet_zip(archive: Path, infos: list[zipfile.ZipInfo], root: str) -> None:
    """Refuse absolute zip member names and names that escape ``root`` (via .. or links on disk)."""
    for info in infos:
        name = info.filename
        if _is_absolute(name):
            raise _refuse(archive, name, "absolute path")
        if _resolve(name, {}, root, follow_last=True) is None:
            raise _refuse(archive, name, "path escapes the target folder")


def _vet_tar(archive: Path, members: list[tarfile.TarInfo], root: str) -> None:
    """Refuse unsafe tar members, simulating the links the archive creates in extraction order."""
    links: dict[str, str] = {}  # resolved location (relative to root) -> symlink text
    for m in members:
        if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            raise _refuse(archive, m.name, "device file, FIFO or other special member")
        if _is_absolute(m.name):
            raise _refuse(archive, m.name, "absolute path")
        loc = _resolve(m.name, links, root, follow_last=not (m.issym() or m.islnk()))
        if loc is None:
            raise _refuse(archive, m.name, "path escapes the target folder")
        if loc == "" and not m.isdir():
            raise _refuse(archive, m.name, "member would replace the target folder")
        if m.issym() or m.islnk():
            _vet_link(archive, m, loc, links, root)


def _vet_link(archive: Path, m: tarfile.TarInfo, loc: str, links: dict[str, str],
              root: str) -> None:
    """Refuse a symlink/hardlink whose target is absolute or resolves outside ``root``."""
    kind = "symlink" if m.issym() else "hardlink"
    if not m.linkname or _is_absolute(m.linkname):
        raise _refuse(archive, m.name, f"{kind} to absolute path {m.linkname!r}")
    # Symlink text is relative to the link's folder; hardlink names to the archive root.
    base = posixpath.dirname(loc) if m.issym() else ""
    if _resolve(posixpath.join(base, m.linkname), links, root, follow_last=True) is None:
        raise _refuse(archive, m.name, f"{kind} to {m.linkname!r} points outside the target")
    if m.issym():
        links[loc] = m.linkname


def _is_absolute(name: str) -> bool:
    """Absolute POSIX or Windows path (leading slash or backslash, or a drive letter)."""
    return name.startswith(("/", "\\")) or bool(_DRIVE.match(name))


def _resolve(rel: str, links: dict[str, str], root: str, follow_last: bool) -> str | None:
    """Resolve ``rel`` under ``root`` as the kernel would, following symlinks from ``links``
    (made earlier by the archive) or already on disk. Returns the path relative to ``root``
    ("" for root itself), or None if it leaves ``root`` or loops."""
    pending = rel.split("/")[::-1]  # a stack: the next component is at the end
    done: list[str] = []
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not done:
                return None
            done.pop()
            continue
        done.append(part)
        if not follow_last and not any(p not in ("", ".") for p in pending):
            break
        link = _link_at(done, links, root)
        if link is None:
            continue
        hops += 1
        if hops > MAX_LINK_HOPS:
            return None
        done.pop()
        if os.path.isabs(link):  # only links found on disk can be absolute here
            inside = os.path.relpath(os.path.normpath(link), root)
            if inside == ".." or inside.startswith("../"):
                return None
            done.clear()
            link = inside
        pending.extend(link.split("/")[::-1])
    return "/".join(done)


def _link_at(done: list[str], links: dict[str, str], root: str) -> str | None:
    """Text of the symlink at ``done`` (archive-made first, then on disk), or None."""
    key = "/".join(done)
    if key in links:
        return links[key]
    path = os.path.join(root, *done)
    return os.readlink(path) if os.path.islink(path) else None


def _check_space(archive: Path, target: Path, total: int) -> None:
    """Raise DiskSpaceError if ``total`` bytes plus the margin do not fit at ``target``."""
    where = target
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    need = total + int(total * SPACE_MARGIN_FRACTION) + SPACE_MARGIN_BYTES
    if need > free:
        raise DiskSpaceError(f"{archive}: extracting needs {need} bytes (with margin) "
                             f"in {target}, but only {free} are free")


# --------------------------------------------------------------------------- both


def fetch_and_extract(url: str, archive_path: str | os.PathLike, target: str | os.PathLike,
                      md5: str | None = None, marker: str | os.PathLike | None = None,
                      extract_lock: ContextManager | None = None, **kw) -> Path:
    """Download ``url`` to ``archive_path``, extract it into ``target``, write a done-marker.

    The marker defaults to ``target/.done-<archive name>``; when it already exists nothing is
    downloaded or extracted. ``extract_lock`` (e.g. a threading.Lock shared by parallel calls
    into one ``target``) is held while extracting and writing the marker, not while
    downloading. ``check_space`` goes to safe_extract, other keywords (retries, backoff,
    timeout, progress, sleep, position) to download. Returns the marker path.
    """
    archive_path, target = Path(archive_path), Path(target)
    marker = Path(marker) if marker else target / f"{MARKER_PREFIX}{archive_path.name}"
    if marker.exists():
        log.info("%s: already extracted into %s (marker %s)", url, target, marker)
        return marker
    check_space = kw.pop("check_space", True)
    download(url, archive_path, md5=md5, **kw)
    with extract_lock or contextlib.nullcontext():
        names = safe_extract(archive_path, target, check_space=check_space)
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(marker.name + ".tmp")
        tmp.write_text(f"url: {url}\nmd5: {md5 or '-'}\nmembers: {len(names)}\n",
                       encoding="utf-8")
        os.replace(tmp, marker)
    log.info("%s: extracted %d member(s) into %s", url, len(names), target)
    return marker
