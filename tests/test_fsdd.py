"""The FSDD corpus stages: download from a local HTTP server, and manifest preparation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

from conftest import REPO_ROOT
from http_server import FileServer

SPEAKER = "jackson"


def release_archive(path, fsdd_dir, speaker: str, count: int | None = None):
    """A v1.0.10-layout .tar.gz holding one speaker's recordings (the first ``count``)."""
    files = sorted(fsdd_dir.glob(f"*_{speaker}_*.wav"))[:count]
    with tarfile.open(path, "w:gz") as tar:
        for f in files:
            tar.add(f, arcname=f"free-spoken-digit-dataset-1.0.10/recordings/{f.name}")
    return path


def run_asr(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "asr", *map(str, args)], capture_output=True, text=True, env=env)


def test_download_stage_fetches_checks_and_unpacks(fsdd_dir, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    release_archive(www / "v1.0.10.tar.gz", fsdd_dir, SPEAKER)
    with FileServer(www) as server:
        out = run_asr("download", "fsdd", "--dest", tmp_path / "data", "--url", server.url("v1.0.10.tar.gz"))
        assert out.returncode == 0, out.stderr
        recordings = tmp_path / "data" / "free-spoken-digit-dataset-1.0.10" / "recordings"
        assert len(list(recordings.glob(f"*_{SPEAKER}_*.wav"))) == 500
        assert (recordings / f"3_{SPEAKER}_7.wav").read_bytes() == (fsdd_dir / f"3_{SPEAKER}_7.wav").read_bytes()
        requests = len(server.requests)
        again = run_asr("download", "fsdd", "--dest", tmp_path / "data", "--url", server.url("v1.0.10.tar.gz"))
        assert again.returncode == 0 and len(server.requests) == requests  # done-marker: nothing fetched


def test_download_stage_refuses_an_incomplete_release(fsdd_dir, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    release_archive(www / "v1.0.10.tar.gz", fsdd_dir, SPEAKER, count=120)
    with FileServer(www) as server:
        out = run_asr("download", "fsdd", "--dest", tmp_path / "data", "--url", server.url("v1.0.10.tar.gz"))
    assert out.returncode == 2
    assert "not a complete FSDD" in out.stderr and f"speaker {SPEAKER}: 120 recordings, expected 500" in out.stderr


def test_prepare_writes_splits_and_deterministic_connected_digits(fsdd_dir, tmp_path):
    from asr.corpora import fsdd
    from asr.manifest import read_manifest

    counts = {"train": 3, "dev": 2, "test": 2, "test_seen": 2}
    summary = fsdd.prepare(fsdd_dir, tmp_path / "a", heldout_speaker="lucas", seed=7, connected=counts)
    fsdd.prepare(fsdd_dir, tmp_path / "b", heldout_speaker="lucas", seed=7, connected=counts)
    speakers = len(summary["speakers"])
    split = tmp_path / "a" / "split"
    test = read_manifest(split / "test.jsonl")
    assert len(test) == 10 * 5 * speakers and all(int(u.id.split("_")[2]) < 5 for u in test)
    assert all(5 <= int(u.id.split("_")[2]) < 10 for u in read_manifest(split / "dev.jsonl"))
    assert all(int(u.id.split("_")[2]) >= 10 for u in read_manifest(split / "train.jsonl"))
    heldout_test = read_manifest(tmp_path / "a" / "heldout" / "test.jsonl")
    assert {u.speaker for u in heldout_test} == {"lucas"}
    heldout_train = read_manifest(tmp_path / "a" / "heldout" / "train.jsonl")
    assert "lucas" not in {u.speaker for u in heldout_train}
    assert all(int(u.id.split("_")[2]) >= 10 for u in heldout_train)
    seen = read_manifest(tmp_path / "a" / "heldout" / "test_seen.jsonl")  # the trained speakers' test recordings
    assert len(seen) == 10 * 5 * (speakers - 1) and "lucas" not in {u.speaker for u in seen}
    assert all(int(u.id.split("_")[2]) < 5 for u in seen)
    assert len(read_manifest(tmp_path / "a" / "heldout" / "test_seen_connected.jsonl")) == 2 * (speakers - 1)
    connected = read_manifest(split / "test_connected.jsonl")
    assert len(connected) == counts["test"] * speakers
    assert all(1 <= len(u.text.split()) <= 7 for u in connected)
    other = read_manifest(tmp_path / "b" / "split" / "test_connected.jsonl")
    assert [u.text for u in connected] == [u.text for u in other]  # deterministic by seed
    assert all((tmp_path / "a" / "audio").rglob("*.wav"))
    assert json.loads((tmp_path / "a" / "prepare.json").read_text())["heldout_speaker"] == "lucas"


def test_prepare_refuses_an_unknown_heldout_speaker(fsdd_dir, tmp_path):
    from asr.corpora import fsdd

    with pytest.raises(fsdd.CorpusError, match="held-out speaker 'theo' not in the data"):
        fsdd.prepare(fsdd_dir, tmp_path / "m", heldout_speaker="theo")
