"""LibriSpeech (openslr resources 12 and 31): parallel verified download and JSONL manifests.

Parts and sets. ``PARTS`` lists the seven parts of resource 12 (train-clean-100,
train-clean-360, train-other-500, dev-clean, dev-other, test-clean, test-other) and the two of
Mini LibriSpeech, resource 31 (train-clean-5, dev-clean-2). ``SETS`` names groups of them:
"mini", "eval" and "960". ``resolve_parts`` turns names and sets into parts.

Layout. Archive ``<part>.tar.gz`` lives at ``{base_url}/{resource}/<part>.tar.gz`` and unpacks
to ``LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` plus one
``<speaker>-<chapter>.trans.txt`` per chapter (lines ``<utterance id> UPPER CASE TEXT``);
resource 12 archives also carry ``LibriSpeech/SPEAKERS.TXT`` (``ID | SEX | SUBSET | MINUTES |
NAME``, comment lines start with ``;``).

``download(dest, parts)`` contract:
* archives go to ``dest/archives/``, their contents to ``dest`` (``dest/LibriSpeech/<part>``);
  with ``keep_archives=False`` an archive is deleted once its part is extracted;
* every archive is checked against an md5: from ``md5_file`` when given (lines ``<md5>
  <file name>``, as openslr's ``md5sum.txt``), else from the built-in ``OPENSLR_MD5`` table
  when ``base_url`` is openslr's own, else from ``{base_url}/{resource}/md5sum.txt``, fetched
  into ``dest/archives/``. A part without an md5 fails unless ``allow_unverified=True``;
* parts download in ``jobs`` threads, each with its own progress bar; asr.download resumes
  partial files with HTTP Range, retries with backoff, re-downloads once on an md5 mismatch and
  refuses unsafe archive members; extraction is serialized (parts share LibriSpeech/*.TXT);
* a done-marker ``dest/.done-<part>.tar.gz`` is written per extracted part, and a part with a
  marker and its folder is skipped without any request (a marker without its folder is
  dropped and the part fetched again);
* a failed part does not stop the others: the rest finish, then ``PartsFailedError`` lists
  every failed part with its reason.

``prepare(corpus_dir, out_dir, parts)`` contract: for each part, ``out_dir/<part>.jsonl``
(asr.manifest: id, audio, duration in seconds, text as in the transcript, speaker, and gender
when SPEAKERS.TXT is present), utterances sorted by id, written atomically, then a marker
``out_dir/.<part>.done`` with the utterance count. A part whose manifest matches its marker is
skipped ("already prepared"); an interrupted run leaves no marker, so the next run prepares
that part again from scratch. Transcript lines without audio, unreadable or truncated audio,
audio without a transcript line and missing part folders are printed and written to
``out_dir/<part>.problems.txt``; such utterances are left out.

Why not pooch: pooch (1.9) streams every attempt into a fresh temporary file that it deletes on
failure and sends no Range header, so it cannot resume a partial multi-gigabyte archive;
asr.download can.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import soundfile as sf
from tqdm import tqdm

from asr.download import MARKER_PREFIX, DownloadError, download as fetch, fetch_and_extract
from asr.manifest import Utterance, write_manifest

log = logging.getLogger(__name__)

# openslr's primary server; mirrors (https://us.openslr.org/resources, ...) have the same layout.
DEFAULT_BASE_URL = "https://www.openslr.org/resources"
# Top folder inside every archive, holding the part folders and SPEAKERS.TXT.
CORPUS_FOLDER = "LibriSpeech"
# Speaker list inside CORPUS_FOLDER: "ID |SEX| SUBSET |MINUTES| NAME", ';' starts a comment.
SPEAKERS_FILE = "SPEAKERS.TXT"
# Suffix of every part's archive, on the server and in dest/archives/.
ARCHIVE_SUFFIX = ".tar.gz"
# Folder under dest that holds the archives and fetched md5 lists.
ARCHIVE_FOLDER = "archives"
# Name of the md5 list openslr publishes in each resource folder.
MD5_LIST = "md5sum.txt"
# Parts downloaded side by side by default.
DEFAULT_JOBS = 4
# Most threads reading audio headers in prepare() by default (capped by the CPU count).
DEFAULT_PREPARE_JOBS = 8
# Problems printed per part; all of them go to the problems file.
PROBLEMS_SHOWN = 5
# One md5 list line: 32 hex digits, whitespace, optional '*' (binary mode), the file name.
_MD5_LINE = re.compile(r"^([0-9a-fA-F]{32})\s+\*?(\S.*?)\s*$")
# LibriSpeech utterance id: <speaker>-<chapter>-<utterance>, all digits.
_UTT_ID = re.compile(r"^(\d+)-(\d+)-(\d+)$")


class LibriSpeechError(ValueError):
    """Unknown part names, a malformed md5 list or SPEAKERS.TXT, missing part folders."""


class PartsFailedError(DownloadError):
    """Some parts failed to download or extract; ``failures`` maps each to its reason."""

    def __init__(self, failures: dict[str, str], total: int):
        self.failures = dict(failures)
        lines = "\n".join(f"  {part}: {why}" for part, why in failures.items())
        super().__init__(f"{len(failures)} of {total} LibriSpeech part(s) failed:\n{lines}")


@dataclass(frozen=True)
class Part:
    """One downloadable part: its openslr resource number and approximate archive size."""
    name: str
    resource: int
    size_mb: int  # as listed on openslr.org (6.3G -> 6300)


PARTS: dict[str, Part] = {p.name: p for p in (
    Part("train-clean-100", 12, 6300),
    Part("train-clean-360", 12, 23000),
    Part("train-other-500", 12, 30000),
    Part("dev-clean", 12, 337),
    Part("dev-other", 12, 314),
    Part("test-clean", 12, 346),
    Part("test-other", 12, 328),
    Part("train-clean-5", 31, 332),  # Mini LibriSpeech
    Part("dev-clean-2", 31, 126),
)}

# Named groups of parts accepted wherever part names are.
SETS: dict[str, tuple[str, ...]] = {
    "mini": ("train-clean-5", "dev-clean-2"),
    "eval": ("dev-clean", "dev-other", "test-clean", "test-other"),
    "960": ("train-clean-100", "train-clean-360", "train-other-500",
            "dev-clean", "dev-other", "test-clean", "test-other"),
}

# md5 of the archives on openslr.org, used only with DEFAULT_BASE_URL and no md5_file. Taken
# from PaddlePaddle/PaddleSpeech's recipes: data/librispeech/librispeech.py (resource 12) and
# dataset/mini_librispeech/mini_librispeech.py (resource 31).
OPENSLR_MD5: dict[str, str] = {
    "train-clean-100": "2a93770f6d5c6c964bc36631d331a522",
    "train-clean-360": "c0e676e450a7ff2f54aeade5171606fa",
    "train-other-500": "d1a0fd59409feb2c614ce4d30c387708",
    "dev-clean": "42e2234ba48799c1f50f24a7926300a1",
    "dev-other": "c8d0bcc9cca99d4f8b62fcc847357931",
    "test-clean": "32fa31d27d2e1cad72775fee3f4849a9",
    "test-other": "fb5a50374b501bb3bac4815ee91d3135",
    "train-clean-5": "5df7d4e78065366204ca6845bb08f490",
    "dev-clean-2": "6d7ab67ac6a1d2c993d050e16d61080d",
}


@dataclass(frozen=True)
class FetchOptions:
    """How each HTTP download behaves (see asr.download.download)."""
    retries: int = 5  # extra attempts after the first
    backoff: float = 1.0  # seconds; attempt n waits backoff * 2**n
    timeout: float = 60.0  # socket timeout per request, seconds
    progress: bool = True  # tqdm bars
    sleep: Callable[[float], None] | None = None  # time.sleep when None; tests pass a recorder
    check_space: bool = True  # free-space check before extracting

    def download_kwargs(self) -> dict:
        """Keyword arguments for asr.download.download."""
        return dict(retries=self.retries, backoff=self.backoff, timeout=self.timeout,
                    progress=self.progress, sleep=self.sleep)


@dataclass(frozen=True)
class Entry:
    """One utterance found on disk: id, audio path, transcript text, speaker id."""
    id: str
    audio: Path
    text: str
    speaker: str


@dataclass
class PartScan:
    """What scan_part found in one part folder: usable entries and problem lines."""
    entries: list[Entry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- names and URLs


def resolve_parts(names: str | Iterable[str]) -> list[str]:
    """Parts named by ``names`` (part names or SETS keys; a string may hold several separated
    by spaces or commas), each once, in the order given. Raises LibriSpeechError on an unknown
    name, listing the known parts and sets."""
    if isinstance(names, str):
        names = names.replace(",", " ").split()
    out: list[str] = []
    for name in names:
        if name not in PARTS and name not in SETS:
            sets = "; ".join(f"{k} = {' '.join(v)}" for k, v in SETS.items())
            raise LibriSpeechError(f"unknown LibriSpeech part or set {name!r}; parts: "
                                   f"{', '.join(PARTS)}; sets: {sets}")
        out += [p for p in SETS.get(name, (name,)) if p not in out]
    if not out:
        raise LibriSpeechError("no LibriSpeech part given")
    return out


def archive_name(part: str) -> str:
    """File name of a part's archive, e.g. 'dev-clean.tar.gz'."""
    return f"{part}{ARCHIVE_SUFFIX}"


def archive_url(part: str, base_url: str = DEFAULT_BASE_URL) -> str:
    """URL of a part's archive: {base_url}/{resource}/{part}.tar.gz."""
    return f"{base_url.rstrip('/')}/{PARTS[part].resource}/{archive_name(part)}"


def md5_list_url(resource: int, base_url: str = DEFAULT_BASE_URL) -> str:
    """URL of the md5 list of one openslr resource: {base_url}/{resource}/md5sum.txt."""
    return f"{base_url.rstrip('/')}/{resource}/{MD5_LIST}"


def download_marker(dest: str | os.PathLike, part: str) -> Path:
    """Done-marker of a downloaded and extracted part: dest/.done-<part>.tar.gz."""
    return Path(dest) / f"{MARKER_PREFIX}{archive_name(part)}"


# --------------------------------------------------------------------------- checksums


def parse_md5_list(path: str | os.PathLike) -> dict[str, str]:
    """{file name: md5} from an md5sum-style list ("<md5>  <file name>" per line; blank lines
    and '#' comments skipped). Raises LibriSpeechError naming ``path:line`` for a malformed
    line or a file listed twice with different sums."""
    path = Path(path)
    table: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            m = _MD5_LINE.match(line.strip())
            if not m:
                raise LibriSpeechError(f"{path}:{lineno}: not an md5 list line (expected "
                                       f"'<32 hex digits>  <file name>'): {line.strip()[:80]!r}")
            md5, name = m.group(1).lower(), Path(m.group(2)).name
            if table.get(name, md5) != md5:
                raise LibriSpeechError(f"{path}:{lineno}: {name} listed twice with different "
                                       f"md5 ({table[name]} and {md5})")
            table[name] = md5
    return table


def _fetch_md5_lists(resources: set[int], base_url: str, folder: Path,
                     opts: FetchOptions) -> tuple[dict[str, str], dict[int, str]]:
    """Fetch and parse {base_url}/{resource}/md5sum.txt for each resource into ``folder``.
    Returns ({file name: md5}, {resource: why its list is unusable})."""
    table: dict[str, str] = {}
    errors: dict[int, str] = {}
    for resource in sorted(resources):
        local = folder / f"md5sum-{resource}.txt"
        try:
            fetch(md5_list_url(resource, base_url), local, **opts.download_kwargs())
            table.update(parse_md5_list(local))
        except LibriSpeechError as err:
            local.unlink(missing_ok=True)  # fetch it afresh next time
            errors[resource] = str(err)
        except DownloadError as err:
            errors[resource] = f"md5 list unavailable: {err}"
    return table, errors


def _md5_source(parts: list[str], base_url: str, md5_file: str | os.PathLike | None,
                folder: Path, opts: FetchOptions) -> tuple[dict[str, str], str, dict[int, str]]:
    """({file name: md5}, where it came from, {resource: why its list is unusable}):
    ``md5_file``, else OPENSLR_MD5 for DEFAULT_BASE_URL, else the lists fetched from
    ``base_url`` into ``folder``."""
    if md5_file is not None:
        return parse_md5_list(md5_file), str(md5_file), {}
    if base_url.rstrip("/") == DEFAULT_BASE_URL:
        table = {archive_name(p): md5 for p, md5 in OPENSLR_MD5.items()}
        return table, "the built-in openslr table", {}
    table, errors = _fetch_md5_lists({PARTS[p].resource for p in parts}, base_url, folder, opts)
    return table, f"{base_url.rstrip('/')}/<resource>/{MD5_LIST}", errors


def checksums(parts: list[str], base_url: str, md5_file: str | os.PathLike | None,
              folder: Path, allow_unverified: bool,
              opts: FetchOptions) -> tuple[dict[str, str | None], dict[str, str]]:
    """The md5 of each part's archive (None: none known, and ``allow_unverified``) and the
    parts that cannot proceed ({part: reason}). Sources as in _md5_source."""
    table, source, list_errors = _md5_source(parts, base_url, md5_file, folder, opts)
    found: dict[str, str | None] = {}
    failed: dict[str, str] = {}
    for part in parts:
        md5 = table.get(archive_name(part))
        if md5 is None:
            why = list_errors.get(PARTS[part].resource,
                                  f"no md5 for {archive_name(part)} in {source}")
            if not allow_unverified:
                failed[part] = f"{why} (give a local md5 list: asr download --md5-file, or md5_file=)"
                continue
            _say(f"{part}: WARNING: downloading without checksum ({why})")
        found[part] = md5
    return found, failed


# --------------------------------------------------------------------------- download


def download(dest: str | os.PathLike, parts: str | Iterable[str],
             base_url: str = DEFAULT_BASE_URL, jobs: int = DEFAULT_JOBS,
             md5_file: str | os.PathLike | None = None, *, allow_unverified: bool = False,
             keep_archives: bool = True, options: FetchOptions = FetchOptions()) -> list[Path]:
    """Download, verify and extract ``parts`` into ``dest``; return dest/LibriSpeech/<part>
    for each, in order. See the module docstring for the contract. Raises LibriSpeechError
    for unknown parts or a malformed ``md5_file`` (before any download), PartsFailedError
    after the other parts finished when some failed."""
    names = resolve_parts(parts)
    if jobs < 1:
        raise LibriSpeechError(f"jobs must be at least 1, got {jobs}")
    dest = Path(dest)
    todo = [part for part in names if not _already_downloaded(dest, part)]
    if todo:
        folder = dest / ARCHIVE_FOLDER
        md5s, failures = checksums(todo, base_url, md5_file, folder, allow_unverified, options)
        failures.update(_download_parallel(md5s, dest, base_url, jobs, keep_archives, options))
        if failures:
            raise PartsFailedError({p: failures[p] for p in todo if p in failures}, len(names))
    return [dest / CORPUS_FOLDER / part for part in names]


def _already_downloaded(dest: Path, part: str) -> bool:
    """True (and says so) when the part's marker and folder exist; a marker whose folder is
    gone is removed so that the part is fetched again."""
    marker = download_marker(dest, part)
    if not marker.exists():
        return False
    if (dest / CORPUS_FOLDER / part).is_dir():
        _say(f"{part}: already downloaded and extracted (marker {marker})")
        return True
    _say(f"{part}: marker {marker} found but no {CORPUS_FOLDER}/{part}/; downloading again")
    marker.unlink()
    return False


def _download_parallel(md5s: dict[str, str | None], dest: Path, base_url: str, jobs: int,
                       keep_archives: bool, options: FetchOptions) -> dict[str, str]:
    """Run _download_part for each part in ``jobs`` threads; return {part: reason} of failures."""
    lock = threading.Lock()  # one extraction at a time: parts share LibriSpeech/*.TXT
    lines: queue.SimpleQueue[int] = queue.SimpleQueue()  # free progress-bar lines
    for line in range(jobs):
        lines.put(line)

    def work(part: str) -> Path:
        line = lines.get()
        try:
            return _download_part(part, md5s[part], dest, base_url, keep_archives, options,
                                  lock, line)
        finally:
            lines.put(line)

    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="librispeech") as pool:
        futures = {part: pool.submit(work, part) for part in md5s}
    failures = {}
    for part, future in futures.items():
        try:
            future.result()
        except Exception as err:  # any failure of one part is reported, the others go on
            failures[part] = f"{type(err).__name__}: {err}"
            _say(f"{part}: FAILED: {err}")
    return failures


def _download_part(part: str, md5: str | None, dest: Path, base_url: str, keep_archives: bool,
                   options: FetchOptions, lock: threading.Lock, line: int) -> Path:
    """Fetch, verify and extract one part (extraction under ``lock``); return its folder."""
    archive = dest / ARCHIVE_FOLDER / archive_name(part)
    marker = download_marker(dest, part)
    fetch_and_extract(archive_url(part, base_url), archive, dest, md5=md5, marker=marker,
                      extract_lock=lock, check_space=options.check_space, position=line,
                      **options.download_kwargs())
    folder = dest / CORPUS_FOLDER / part
    if not folder.is_dir():
        marker.unlink()
        raise LibriSpeechError(f"{archive}: extracted, but it holds no {CORPUS_FOLDER}/{part}/")
    if not keep_archives:
        archive.unlink(missing_ok=True)
    _say(f"{part}: downloaded{' and verified' if md5 else ''}, extracted into {folder}")
    return folder


# --------------------------------------------------------------------------- prepare


def corpus_root(corpus_dir: str | os.PathLike) -> Path:
    """The folder holding the part folders: corpus_dir/LibriSpeech, or corpus_dir itself when
    it is that folder (has no LibriSpeech/ inside)."""
    corpus_dir = Path(corpus_dir)
    inner = corpus_dir / CORPUS_FOLDER
    return inner if inner.is_dir() else corpus_dir


def parse_speakers(path: str | os.PathLike) -> dict[str, str]:
    """{speaker id: sex ('F'/'M')} from SPEAKERS.TXT. Data lines are "ID |SEX| SUBSET |MINUTES|
    NAME" (the name may itself hold '|'); ';' starts a comment. Raises LibriSpeechError naming
    ``path:line`` for a line without a numeric id and a sex."""
    path = Path(path)
    sexes: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith(";"):
                continue
            fields = [x.strip() for x in line.split("|", 4)]
            if len(fields) < 2 or not fields[0].isdigit() or not fields[1]:
                raise LibriSpeechError(f"{path}:{lineno}: expected 'ID | SEX | SUBSET | MINUTES "
                                       f"| NAME', got {line.strip()[:80]!r}")
            sexes[fields[0]] = fields[1]
    return sexes


def scan_part(folder: str | os.PathLike) -> PartScan:
    """Pair the transcript lines of one part folder with their .flac files.

    Returns entries sorted by id, and problems (one line each, paths relative to the folder's
    parent): malformed or duplicate transcript lines, lines whose .flac is missing, and .flac
    files no transcript line names. Audio is not opened here (see probe_duration)."""
    folder = Path(folder)
    scan, listed = PartScan(), set()
    for trans in sorted(folder.rglob("*.trans.txt")):
        where = trans.relative_to(folder.parent)
        with open(trans, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    _scan_line(line.strip(), f"{where}:{lineno}", trans.parent, scan, listed)
    for flac in sorted(folder.rglob("*.flac")):
        if flac not in listed:
            scan.problems.append(f"{flac.relative_to(folder.parent)}: no transcript line "
                                 f"names it (left out)")
    scan.entries.sort(key=lambda e: e.id)
    return scan


def _scan_line(line: str, where: str, chapter: Path, scan: PartScan, listed: set[Path]) -> None:
    """Add one transcript line to ``scan`` as an entry or a problem."""
    uid, _, text = line.partition(" ")
    m = _UTT_ID.match(uid)
    if not m:
        scan.problems.append(f"{where}: malformed line (expected '<speaker>-<chapter>-<n> "
                             f"TEXT'): {line[:80]!r}")
        return
    audio = chapter / f"{uid}.flac"
    if audio in listed:
        scan.problems.append(f"{where}: {uid} listed twice (second line left out)")
        return
    listed.add(audio)
    if not audio.is_file():
        scan.problems.append(f"{where}: {uid}: audio file missing: {audio.name} (left out)")
        return
    scan.entries.append(Entry(uid, audio, text.strip(), m.group(1)))


def probe_duration(path: str | os.PathLike) -> float:
    """Duration in seconds (frames / sample rate) of an audio file, after reading its last
    frame, so that a file cut short (its header promising more) raises instead of passing.
    Raises soundfile.LibsndfileError (a RuntimeError) or OSError for unreadable files."""
    with sf.SoundFile(str(path)) as f:
        if f.frames:
            f.seek(f.frames - 1)
            if len(f.read(1)) != 1:
                raise RuntimeError(f"last frame of {f.frames} unreadable (file cut short?)")
        return f.frames / f.samplerate


def _probe(path: Path) -> float | str:
    """probe_duration, or the reason as a string when the file is unreadable."""
    try:
        return probe_duration(path)
    except (RuntimeError, OSError) as err:
        return f"{type(err).__name__}: {err}"


def durations(paths: list[Path], jobs: int | None = None, progress: bool = True,
              desc: str = "durations") -> list[float | str]:
    """probe_duration of each path, read in ``jobs`` threads (default: up to
    DEFAULT_PREPARE_JOBS, capped by the CPU count), in order; a str is the reason a file
    is unreadable."""
    jobs = jobs or min(DEFAULT_PREPARE_JOBS, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=jobs) as pool, \
            tqdm(total=len(paths), desc=desc, unit="file", disable=not progress) as bar:
        out = []
        for result in pool.map(_probe, paths):
            out.append(result)
            bar.update()
    return out


def prepare(corpus_dir: str | os.PathLike, out_dir: str | os.PathLike,
            parts: str | Iterable[str], jobs: int | None = None,
            progress: bool = True) -> dict:
    """Write out_dir/<part>.jsonl for each part (see the module docstring); return
    {part: summary dict}. ``corpus_dir`` holds LibriSpeech/ (or is it). Parts whose folder is
    missing are reported and, after the others are prepared, raise LibriSpeechError."""
    names = resolve_parts(parts)
    root, out_dir = corpus_root(corpus_dir), Path(out_dir)
    speakers = root / SPEAKERS_FILE
    sexes = parse_speakers(speakers) if speakers.is_file() else {}
    if not sexes:
        _say(f"note: no {speakers}; manifests will have no gender")
    summary = {part: _prepare_part(root, part, out_dir, sexes, jobs, progress) for part in names}
    missing = [p for p in names if summary[p]["status"] == "missing"]
    if missing:
        raise LibriSpeechError(f"part folder(s) not found under {root}: {', '.join(missing)} "
                               f"(download them first); the other parts were prepared")
    return summary


def _prepare_part(root: Path, part: str, out_dir: Path, sexes: dict[str, str],
                  jobs: int | None, progress: bool) -> dict:
    """Prepare one part unless its manifest is already complete; return its summary."""
    manifest, marker = out_dir / f"{part}.jsonl", out_dir / f".{part}.done"
    problems_file = out_dir / f"{part}.problems.txt"
    done = _prepared_count(manifest, marker)
    if done is not None:
        _say(f"{part}: already prepared ({done} utterances in {manifest}, marker {marker})")
        return {"status": "already prepared", "utterances": done, "manifest": str(manifest)}
    folder = root / part
    if not folder.is_dir():
        _report(part, [f"part folder does not exist: {folder}"], problems_file)
        return {"status": "missing", "utterances": 0, "problems": 1,
                "problems_file": str(problems_file)}
    scan = scan_part(folder)
    utts = _utterances(scan, root, sexes, jobs, progress, f"{part} audio")
    write_manifest(manifest, utts)
    _report(part, scan.problems, problems_file)
    hours = sum(u.duration for u in utts) / 3600
    _write_atomic(marker, json.dumps({"part": part, "utterances": len(utts),
                                      "problems": len(scan.problems)}) + "\n")
    _say(f"{part}: {len(utts)} utterances, {hours:.2f} h -> {manifest}")
    return {"status": "prepared", "utterances": len(utts), "hours": hours,
            "problems": len(scan.problems), "manifest": str(manifest),
            "problems_file": str(problems_file) if scan.problems else None}


def _utterances(scan: PartScan, root: Path, sexes: dict[str, str], jobs: int | None,
                progress: bool, desc: str) -> list[Utterance]:
    """Utterances of ``scan``'s entries with their durations; unreadable audio becomes a
    problem in ``scan`` instead."""
    utts = []
    lengths = durations([e.audio for e in scan.entries], jobs, progress, desc)
    for entry, length in zip(scan.entries, lengths):
        if isinstance(length, str):
            scan.problems.append(f"{entry.audio.relative_to(root)}: unreadable audio, "
                                 f"{entry.id} left out: {length}")
            continue
        utts.append(Utterance(entry.id, str(entry.audio), length, entry.text, entry.speaker,
                              sexes.get(entry.speaker, "")))
    return utts


def _prepared_count(manifest: Path, marker: Path) -> int | None:
    """Utterance count from a part's marker when its manifest holds exactly that many lines,
    else None (not prepared, interrupted, or changed since)."""
    if not (marker.is_file() and manifest.is_file()):
        return None
    try:
        expected = int(json.loads(marker.read_text(encoding="utf-8"))["utterances"])
    except (ValueError, KeyError, TypeError):
        return None
    with open(manifest, encoding="utf-8") as f:
        lines = sum(1 for line in f if line.strip())
    if lines != expected:
        _say(f"{manifest}: {lines} lines but its marker says {expected}; preparing again")
        return None
    return expected


def _report(part: str, problems: list[str], problems_file: Path) -> None:
    """Print the first problems and write them all to ``problems_file`` (removed when none)."""
    if not problems:
        problems_file.unlink(missing_ok=True)
        return
    _write_atomic(problems_file, "".join(f"{p}\n" for p in problems))
    _say(f"{part}: {len(problems)} problem(s), all listed in {problems_file}:")
    for problem in problems[:PROBLEMS_SHOWN]:
        _say(f"  {problem}")
    if len(problems) > PROBLEMS_SHOWN:
        _say(f"  ... and {len(problems) - PROBLEMS_SHOWN} more")


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _say(message: str) -> None:
    """Print a progress message (without breaking tqdm bars) and log it."""
    tqdm.write(message)
    log.info(message)
