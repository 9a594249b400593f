"""Google Speech Commands v0.02 (Warden 2018, CC BY 4.0): verified download and JSONL manifests.

Layout. The archive unpacks (flat, members ``./...``) into ``<word>/<speaker>_nohash_<n>.wav``
(one-second 16 kHz mono 16-bit clips, 35 words), ``_background_noise_/*.wav`` (minute-long noise
recordings, a README.md) and the official lists ``validation_list.txt`` and ``testing_list.txt``
(``<word>/<file>.wav`` per line; a clip in neither is train). The speaker id is the file name up
to ``_nohash_``; the lists were made with ``which_set`` (a hash of that id): speaker-disjoint.

``download(dest, url, sha256, size, options)`` contract:
* the archive goes to ``dest/speech_commands_v0.02.tar.gz`` through asr.download (a partial
  ``.part`` resumes with HTTP Range, transient failures are retried with backoff), then its size
  and sha256 are checked: a mismatch discards it and downloads once more, a second mismatch
  raises DownloadError and leaves no archive and nothing extracted;
* only a verified archive is extracted (asr.download.safe_extract: unsafe members refused) into
  ``dest/speech_commands_v0.02/``, then a done-marker ``.done-speech_commands_v0.02.tar.gz``
  (url, sha256, member count) is written there; with the marker present nothing is fetched.

``prepare(data_dir, out_dir, words)`` writes into ``out_dir`` (asr.manifest JSONL):
    train.jsonl, dev.jsonl, test.jsonl   clips of each split (dev = the official validation
        list); id ``<word>-<file stem>``, audio, duration (s), text = normalize_text(word),
        speaker; sorted by id
    test_digits.jsonl, test_commands.jsonl   the test clips of the ten digits and of the ten
        command words (COMMAND_WORDS, the keyword-spotting task's), the groups reported apart
    noise.jsonl   ``_background_noise_`` (and ``_silence_``) clips: id ``<folder without its
        underscores>-<stem>`` (``background_noise-white_noise``), text "" and speaker "", kept
        for noise augmentation, never training utterances
    prepare.json  the summary dict ``prepare`` returns (see there)
Splits come from the two lists; when both are absent, from ``which_set`` of each file name.

    python -m asr.corpora.speech_commands download --dest DIR [--url URL]
    python -m asr.corpora.speech_commands prepare --data-dir DIR --out DIR [--words W ...]
        [--split-percentages DEV,TEST]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

from asr.corpora.librispeech import FetchOptions, durations
from asr.download import (MARKER_PREFIX, DiskSpaceError, DownloadError, download as fetch,
                          safe_extract)
from asr.manifest import Utterance, write_manifest
from asr.text import DIGIT_WORDS, normalize_text

VERSION = "0.02"
ARCHIVE_NAME = f"speech_commands_v{VERSION}.tar.gz"
ARCHIVE_URL = f"http://download.tensorflow.org/data/{ARCHIVE_NAME}"
# Published sha256 and size (bytes) of ARCHIVE_URL: TensorFlow Datasets' checksum file
# tensorflow_datasets/url_checksums/speech_commands.txt (github.com/tensorflow/datasets); the
# same sha256 is in torchaudio's datasets/speechcommands.py _CHECKSUMS.
ARCHIVE_SHA256 = "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58"
ARCHIVE_SIZE = 2428923189  # about 2.26 GiB
CORPUS_FOLDER = f"speech_commands_v{VERSION}"  # dest/<this> holds the unpacked archive
VALIDATION_LIST = "validation_list.txt"
TESTING_LIST = "testing_list.txt"
NOISE_FOLDER = "_background_noise_"
# Folders of noise clips that prepare lists in noise.jsonl: the corpus's own, and the
# "_silence_" folder of the separate test-set archive (clips cut from the same noise).
NOISE_FOLDERS = (NOISE_FOLDER, "_silence_")
NOHASH = "_nohash_"  # <speaker>_nohash_<n>.wav: which_set hashes only the part before it
CLIP_RE = re.compile(r"^.+?_nohash_\d+\.wav$")
# which_set: a speaker's SHA-1 is reduced modulo MAX_NUM_WAVS_PER_CLASS + 1 (= 2**27) and scaled
# by 100 / MAX_NUM_WAVS_PER_CLASS to a percentage in [0, 100], as TensorFlow's
# tensorflow/examples/speech_commands/input_data.py does.
MAX_NUM_WAVS_PER_CLASS = 2 ** 27 - 1  # 134,217,727
VALIDATION_PERCENTAGE = 10
TESTING_PERCENTAGE = 10
COMMAND_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
TEST_GROUPS = {"digits": DIGIT_WORDS, "commands": COMMAND_WORDS}  # test_<group>.jsonl
# which_set's partition names -> our split (manifest) names.
SPLITS = {"training": "train", "validation": "dev", "testing": "test"}
SHA_CHUNK = 1 << 20  # bytes read per step while hashing the archive
PROBLEMS_SHOWN = 5  # problems printed by prepare; all of them go to prepare.json


class SpeechCommandsError(ValueError):
    """A missing or malformed corpus folder, an unknown word, or an inconsistent split list."""


def which_set(filename: str, validation_percentage: float = VALIDATION_PERCENTAGE,
              testing_percentage: float = TESTING_PERCENTAGE) -> str:
    """The partition ("training", "validation" or "testing") of a clip file name (a path or a bare name), by
    the SHA-1 of its speaker id (the base name up to ``_nohash_``), exactly as Warden's
    speech_commands input_data.py: percentage = (int(sha1, 16) % (MAX_NUM_WAVS_PER_CLASS + 1))
    * (100 / MAX_NUM_WAVS_PER_CLASS); below ``validation_percentage`` is validation, below
    validation + ``testing_percentage`` testing, the rest training."""
    base_name = os.path.basename(filename)
    hash_name = re.sub(r"_nohash_.*$", "", base_name)
    hashed = hashlib.sha1(hash_name.encode("utf-8")).hexdigest()
    percentage = (int(hashed, 16) % (MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / MAX_NUM_WAVS_PER_CLASS)
    if percentage < validation_percentage:
        return "validation"
    if percentage < testing_percentage + validation_percentage:
        return "testing"
    return "training"


# --------------------------------------------------------------------------- download


def sha256sum(path: str | os.PathLike) -> str:
    """Hex sha256 digest of the file at ``path``, read SHA_CHUNK bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(SHA_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _mismatch(path: Path, sha256: str, size: int | None) -> str | None:
    """Why ``path`` is not the expected archive (size first: no hashing), or None."""
    got = path.stat().st_size
    if size is not None and got != size:
        return f"size mismatch: expected {size} bytes, got {got}"
    digest = sha256sum(path)
    return None if digest == sha256 else f"sha256 mismatch: expected {sha256}, got {digest}"


def _check_free_space(folder: Path, size: int) -> None:
    """Raise DiskSpaceError when the archive (``size`` bytes) cannot fit into ``folder``."""
    part = folder / f"{ARCHIVE_NAME}.part"
    need = size - (part.stat().st_size if part.exists() else 0)
    free = shutil.disk_usage(folder).free
    if need > free:
        raise DiskSpaceError(f"{folder}: the download needs {need} more bytes, only {free} free")


def fetch_verified(url: str, archive: Path, sha256: str, size: int | None,
                   options: FetchOptions = FetchOptions()) -> Path:
    """Download ``url`` to ``archive`` (resuming a partial one) and check its size and sha256;
    a bad archive is discarded and fetched once more, then DownloadError names both values."""
    sha256 = sha256.lower()
    why = None
    for attempt in range(2):
        if size is not None and not archive.exists():
            _check_free_space(archive.parent, size)
        fetch(url, archive, **options.download_kwargs())  # no request when archive exists
        why = _mismatch(archive, sha256, size)
        if why is None:
            return archive
        archive.unlink()
        print(f"{archive.name}: {why}" + ("; downloading again" if attempt == 0 else ""))
    raise DownloadError(f"{url}: corrupt download ({why}) twice; nothing was extracted")


def download(dest: str | os.PathLike, url: str = ARCHIVE_URL, sha256: str = ARCHIVE_SHA256,
             size: int | None = ARCHIVE_SIZE, options: FetchOptions = FetchOptions(), *,
             keep_archive: bool = True) -> Path:
    """Download, verify and extract the archive (see the module docstring); return the corpus
    folder dest/speech_commands_v0.02. A mirror ``url`` serves the same bytes, so the published
    ``sha256`` and ``size`` apply to it too (``size=None``: not checked)."""
    dest = Path(dest)
    target = dest / CORPUS_FOLDER
    marker = target / f"{MARKER_PREFIX}{ARCHIVE_NAME}"
    if marker.is_file():
        print(f"already downloaded and extracted: {target} (marker {marker.name})")
        return target
    dest.mkdir(parents=True, exist_ok=True)
    archive = fetch_verified(url, dest / ARCHIVE_NAME, sha256, size, options)
    names = safe_extract(archive, target, check_space=options.check_space)
    tmp = marker.with_name(f"{marker.name}.tmp")
    tmp.write_text(f"url: {url}\nsha256: {sha256.lower()}\nmembers: {len(names)}\n", encoding="utf-8")
    os.replace(tmp, marker)
    if not keep_archive:
        archive.unlink()
    print(f"downloaded, verified (sha256) and extracted {len(names)} members into {target}")
    return target


# --------------------------------------------------------------------------- prepare


def corpus_root(data_dir: str | os.PathLike) -> Path:
    """The folder holding the word folders: data_dir/speech_commands_v0.02 (a download's dest)
    when present, else data_dir. Raises SpeechCommandsError when it does not exist."""
    data_dir = Path(data_dir)
    inner = data_dir / CORPUS_FOLDER
    root = inner if inner.is_dir() else data_dir
    if not root.is_dir():
        raise SpeechCommandsError(f"{data_dir}: no such folder (download the corpus first: "
                                  f"asr download speech-commands --dest DIR)")
    return root


def read_list(path: Path) -> list[str]:
    """The ``<word>/<file>.wav`` lines of a split list. Raises SpeechCommandsError naming
    ``path:line`` for a line that is not of that form."""
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            rel = line.strip().removeprefix("./")
            if not rel:
                continue
            parts = rel.split("/")
            if len(parts) != 2 or not parts[1].endswith(".wav"):
                raise SpeechCommandsError(f"{path}:{lineno}: expected '<word>/<file>.wav', "
                                          f"got {line.strip()[:80]!r}")
            out.append(rel)
    return out


def _split_table(root: Path) -> dict[str, str] | None:
    """{"<word>/<file>.wav": "dev"|"test"} from the two lists, or None when both are absent."""
    lists = {"dev": root / VALIDATION_LIST, "test": root / TESTING_LIST}
    present = [split for split, path in lists.items() if path.is_file()]
    if not present:
        return None
    if len(present) == 1:
        missing = next(path for split, path in lists.items() if split not in present)
        raise SpeechCommandsError(f"{missing} is missing but its partner list is there; give both "
                                  f"official lists, or neither (splits are then made by which_set)")
    table: dict[str, str] = {}
    for split, path in lists.items():
        for rel in read_list(path):
            if table.setdefault(rel, split) != split:
                raise SpeechCommandsError(f"{rel} is in both {VALIDATION_LIST} and {TESTING_LIST}")
    return table


def scan(root: Path, words: Iterable[str] | None = None
         ) -> tuple[dict[str, list[Path]], list[Path], list[str]]:
    """({word: sorted clip paths}, sorted noise clip paths, problems) under ``root``. ``words``
    keeps only those word folders (SpeechCommandsError for one that is absent). Other folders
    starting with "_" and wav names not ``<speaker>_nohash_<n>.wav`` are left out as problems."""
    clips: dict[str, list[Path]] = {}
    noise: list[Path] = []
    problems: list[str] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        wavs = sorted(folder.glob("*.wav"))
        if folder.name in NOISE_FOLDERS:
            noise += wavs
        elif folder.name.startswith("_"):
            problems.append(f"{folder.name}/: not a word folder ({len(wavs)} clips left out)")
        elif wavs:
            clips[folder.name] = [w for w in wavs if CLIP_RE.match(w.name)]
            problems += [f"{folder.name}/{w.name}: not <speaker>_nohash_<n>.wav (left out)"
                         for w in wavs if not CLIP_RE.match(w.name)]
    if not clips:
        raise SpeechCommandsError(f"{root}: no word folders with clips (expected "
                                  f"<word>/<speaker>_nohash_<n>.wav)")
    if words is not None:
        words = list(dict.fromkeys(words))
        unknown = [w for w in words if w not in clips]
        if unknown:
            raise SpeechCommandsError(f"word(s) not in {root}: {', '.join(unknown)}; "
                                      f"available: {', '.join(clips)}")
        clips = {w: clips[w] for w in words}
    return clips, noise, problems


def speaker_of(path: str | os.PathLike) -> str:
    """The speaker id of a clip: its file name up to ``_nohash_``."""
    return os.path.basename(path).split(NOHASH)[0]


def _assign(clips: dict[str, list[Path]], table: dict[str, str] | None,
            percentages: tuple[float, float]) -> tuple[dict[str, list[tuple[str, Path]]], list[str]]:
    """({split: [(word, path)]}, problems): each clip's split from ``table`` (absent: train)
    or, without lists, from which_set; list entries of selected words with no clip are problems."""
    by_split: dict[str, list[tuple[str, Path]]] = {split: [] for split in SPLITS.values()}
    for word, paths in clips.items():
        for path in paths:
            rel = f"{word}/{path.name}"
            split = (table.get(rel, "train") if table is not None
                     else SPLITS[which_set(path.name, *percentages)])
            by_split[split].append((word, path))
    problems = []
    if table is not None:
        have = {f"{w}/{p.name}" for w, paths in clips.items() for p in paths}
        problems = [f"{rel}: in the {split} list but no such clip (left out)"
                    for rel, split in sorted(table.items())
                    if rel.split("/")[0] in clips and rel not in have]
    return by_split, problems


def _clip(item: tuple[str, Path], length: float) -> Utterance:
    """The utterance of one word clip: id <word>-<stem>, text = the normalized word."""
    word, path = item
    return Utterance(f"{word}-{path.stem}", str(path), round(length, 4), normalize_text(word),
                     speaker_of(path))


def _noise(path: Path, length: float) -> Utterance:
    """The noise.jsonl line of one noise clip: id <folder without its underscores>-<stem>
    (background_noise-white_noise, silence-1024), empty text and speaker."""
    return Utterance(f"{path.parent.name.strip('_')}-{path.stem}", str(path), round(length, 4), "", "")


def _utterances(items: list, make, problems: list[str], root: Path, jobs: int | None,
                progress: bool, desc: str) -> list[Utterance]:
    """``make(item, duration)`` for each item (a path, or a (word, path)) whose audio is
    readable; unreadable files become problems."""
    paths = [item if isinstance(item, Path) else item[1] for item in items]
    out = []
    for item, path, length in zip(items, paths, durations(paths, jobs, progress, desc)):
        if isinstance(length, str):
            problems.append(f"{path.relative_to(root)}: unreadable audio (left out): {length}")
        else:
            out.append(make(item, length))
    return out


def prepare(data_dir: str | os.PathLike, out_dir: str | os.PathLike,
            words: Iterable[str] | None = None, *,
            validation_percentage: float = VALIDATION_PERCENTAGE,
            testing_percentage: float = TESTING_PERCENTAGE, jobs: int | None = None,
            progress: bool = True) -> dict:
    """Write the manifests of the module docstring; return the summary (also prepare.json):
    {"root", "split_source": "lists"|"which_set", "words": [...], "utterances": {split: n},
    "per_word": {word: {split: n}}, "speakers": {split: n}, "speaker_overlap": {speaker:
    [splits]} (empty when the splits are speaker-disjoint), "noise": n, "problems": [...]}.
    The percentages go to which_set, used only when both lists are absent."""
    root, out_dir = corpus_root(data_dir), Path(out_dir)
    clips, noise_paths, problems = scan(root, words)
    table = _split_table(root)
    by_split, list_problems = _assign(clips, table, (validation_percentage, testing_percentage))
    problems += list_problems
    summary = {"root": str(root), "split_source": "lists" if table is not None else "which_set",
               "words": list(clips), "utterances": {}, "per_word": {w: {} for w in clips},
               "speakers": {}}
    speaker_splits: dict[str, set[str]] = defaultdict(set)
    for split, items in by_split.items():
        utts = sorted(_utterances(items, _clip, problems, root, jobs, progress, f"{split} audio"),
                      key=lambda u: u.id)
        write_manifest(out_dir / f"{split}.jsonl", utts)
        if split == "test":
            for group, group_words in TEST_GROUPS.items():
                write_manifest(out_dir / f"test_{group}.jsonl", [u for u in utts if u.text in group_words])
        summary["utterances"][split] = len(utts)
        summary["speakers"][split] = len({u.speaker for u in utts})
        per_word = Counter(u.id.split("-", 1)[0] for u in utts)  # ids are <word>-<stem>
        for word in clips:
            summary["per_word"][word][split] = per_word[word]
        for u in utts:
            speaker_splits[u.speaker].add(split)
    noise = _utterances(noise_paths, _noise, problems, root, jobs, progress, "noise")
    write_manifest(out_dir / "noise.jsonl", noise)
    summary["noise"] = len(noise)
    summary["speaker_overlap"] = {s: sorted(v) for s, v in sorted(speaker_splits.items()) if len(v) > 1}
    summary["problems"] = problems
    (out_dir / "prepare.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


# --------------------------------------------------------------------------- command line


def run_download(dest: str | os.PathLike, url: str | None = None, sha256: str | None = None) -> int:
    """``asr download speech-commands --dest DIR [--url URL [--sha256 HEX]]``: download() with
    the published checksum and size (also for a mirror ``url``), or with ``sha256`` (size then
    unchecked) for another archive; prints where the corpus is. Returns 0."""
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise SpeechCommandsError(f"--sha256 must be 64 hexadecimal digits, got {sha256!r}")
    checksum = {"sha256": sha256, "size": None} if sha256 else {}
    print(f"Speech Commands v{VERSION} in {download(dest, url or ARCHIVE_URL, **checksum)}")
    return 0


def parse_percentages(text: str | None) -> tuple[float, float]:
    """"DEV,TEST" (which_set's validation and testing percentages) -> (dev, test); None gives
    the corpus's (10, 10). SpeechCommandsError unless two numbers >= 0 summing to at most 100."""
    if text is None:
        return (VALIDATION_PERCENTAGE, TESTING_PERCENTAGE)
    try:
        dev, test = (float(v) for v in text.split(","))
    except ValueError:
        raise SpeechCommandsError(f"split percentages must be DEV,TEST (two numbers), got {text!r}") from None
    if dev < 0 or test < 0 or dev + test > 100:
        raise SpeechCommandsError(f"split percentages must be >= 0 and sum to at most 100, got {text!r}")
    return dev, test


def run_prepare(data_dir: str | os.PathLike, out: str | os.PathLike,
                words: Iterable[str] | None = None,
                percentages: tuple[float, float] = (VALIDATION_PERCENTAGE, TESTING_PERCENTAGE)) -> int:
    """``asr prepare speech-commands --data-dir DIR --out DIR [--words W ...]
    [--split-percentages DEV,TEST]``: prepare() (the percentages apply without official lists),
    then prints the counts, the problems (first few) and any speaker found in two splits.
    Returns 0, or 1 when a speaker is in two splits (the manifests are written all the same)."""
    s = prepare(data_dir, out, words, validation_percentage=percentages[0],
                testing_percentage=percentages[1])
    counts = ", ".join(f"{split} {n} ({s['speakers'][split]} speakers)"
                       for split, n in s["utterances"].items())
    print(f"prepared {len(s['words'])} words from {s['split_source']}: {counts}; "
          f"{s['noise']} noise clips -> {out}")
    more = [f"... {len(s['problems']) - PROBLEMS_SHOWN} more in {Path(out) / 'prepare.json'}"]
    for problem in s["problems"][:PROBLEMS_SHOWN] + more * (len(s["problems"]) > PROBLEMS_SHOWN):
        print(f"warning: {problem}", file=sys.stderr)
    if s["speaker_overlap"]:
        pairs = list(s["speaker_overlap"].items())[:PROBLEMS_SHOWN]
        shown = ", ".join(f"{speaker} ({'/'.join(splits)})" for speaker, splits in pairs)
        print(f"error: {len(s['speaker_overlap'])} speaker(s) in two splits: {shown}", file=sys.stderr)
        return 1
    print("no speaker is in two splits")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line of the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m asr.corpora.speech_commands",
                                     description=f"Speech Commands v{VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("download", help="download, verify (sha256) and unpack (resumable)")
    p.add_argument("--dest", required=True, type=Path)
    p.add_argument("--url", default=None, help="archive URL (a mirror); default: the release")
    p = sub.add_parser("prepare", help="train/dev/test and noise manifests")
    p.add_argument("--data-dir", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--words", nargs="+", default=None, help="only these words")
    p.add_argument("--split-percentages", default=None, metavar="DEV,TEST",
                   help="which_set's percentages when the official lists are absent (default 10,10)")
    args = parser.parse_args(argv)
    try:
        if args.command == "download":
            return run_download(args.dest, args.url)
        return run_prepare(args.data_dir, args.out, args.words, parse_percentages(args.split_percentages))
    except (DownloadError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
