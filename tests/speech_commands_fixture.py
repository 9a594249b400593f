"""A Speech Commands v0.02-layout archive for tests, built in a second from real clips.

    built = build_archive(source, path, words=("yes", "no"), speakers=("189cbabe", ...))
    built["sha256"], built["size"]     # of the written .tar.gz
    built["splits"]                    # {"<word>/<file>.wav": "train"|"dev"|"test"}

``source`` is a folder in the corpus layout (``<word>/<speaker>_nohash_<n>.wav``), e.g.
``../shared/data/speech-commands`` (real clips from the official test set, whose noise clips sit
in ``_silence_/``). The archive holds, like the real one, members named ``./...``: the chosen
clips under ``./<word>/``, noise clips under ``./_background_noise_/`` (from the source's
``_silence_/`` or ``_background_noise_/``) with a README.md, a LICENSE, and
``./validation_list.txt`` / ``./testing_list.txt`` made with ``which_set`` at the given
percentages (every clip listed in neither is train). Deterministic: sorted members, zero mtimes.
A plain module: import it from any test.
"""
from __future__ import annotations

import gzip
import hashlib
import tarfile
from pathlib import Path

from asr.corpora.speech_commands import (NOISE_FOLDER, SPLITS, TESTING_LIST, VALIDATION_LIST,
                                         speaker_of, which_set)

try:  # tests/ as a package or as a plain folder on sys.path
    from tests.test_download import add_tar
except ImportError:
    from test_download import add_tar

# Folders of the source that hold noise clips, in the order looked for.
SOURCE_NOISE_FOLDERS = ("_silence_", NOISE_FOLDER)
# Text files the real archive carries beside the clips (contents here are placeholders).
EXTRA_FILES = {"LICENSE": b"CC BY 4.0 (test fixture)\n",
               f"{NOISE_FOLDER}/README.md": b"background noise (test fixture)\n"}


def pick_clips(source: Path, words, speakers, per_speaker: int) -> list[str]:
    """Sorted ``<word>/<file>.wav`` of ``source``: for each word, the first ``per_speaker``
    clips of each speaker in ``speakers``."""
    picked = []
    for word in words:
        for speaker in speakers:
            picked += [f"{word}/{p.name}" for p in
                       sorted((source / word).glob(f"{speaker}_nohash_*.wav"))[:per_speaker]]
    return sorted(picked)


def build_archive(source: str | Path, path: str | Path, words, speakers, noise: int = 3,
                  per_speaker: int = 2, validation_percentage: float = 10,
                  testing_percentage: float = 10) -> dict:
    """Write the archive described in the module docstring to ``path``. Returns {"path",
    "sha256", "size", "splits" {"<word>/<file>.wav": split name}, "noise" [noise file names],
    "percentages" (validation, testing)}."""
    source, path = Path(source), Path(path)
    clips = pick_clips(source, words, speakers, per_speaker)
    splits = {rel: SPLITS[which_set(rel, validation_percentage, testing_percentage)] for rel in clips}
    folder = next((source / f for f in SOURCE_NOISE_FOLDERS if (source / f).is_dir()), None)
    noise_files = sorted(folder.glob("*.wav"))[:noise] if folder else []
    members = {rel: (source / rel).read_bytes() for rel in clips}
    members.update({f"{NOISE_FOLDER}/{p.name}": p.read_bytes() for p in noise_files})
    members.update(EXTRA_FILES)
    for name, split in ((VALIDATION_LIST, "dev"), (TESTING_LIST, "test")):
        members[name] = "".join(f"{rel}\n" for rel in clips if splits[rel] == split).encode()
    write_archive(path, members)
    data = path.read_bytes()
    return {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
            "splits": splits, "noise": [p.name for p in noise_files],
            "percentages": (validation_percentage, testing_percentage)}


def write_archive(path: Path, members: dict[str, bytes]) -> Path:
    """A gzipped tar of ``members`` (name -> bytes), every name under "./" with its folders,
    sorted, zero timestamps (equal content gives equal bytes)."""
    folders = {str(p) for name in members for p in Path(name).parents if str(p) != "."}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tf:
        add_tar(tf, ".", type=tarfile.DIRTYPE, mode=0o755)
        for name in sorted(folders | set(members)):
            if name in members:
                add_tar(tf, f"./{name}", members[name], mode=0o644)
            else:
                add_tar(tf, f"./{name}", type=tarfile.DIRTYPE, mode=0o755)
    return path


def speakers_by_split(splits: dict[str, str]) -> dict[str, set[str]]:
    """{split: speaker ids} of a ``splits`` table as build_archive returns it."""
    out: dict[str, set[str]] = {}
    for rel, split in splits.items():
        out.setdefault(split, set()).add(speaker_of(rel))
    return out
