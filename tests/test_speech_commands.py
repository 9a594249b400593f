"""asr.corpora.speech_commands: which_set against hand-computed hashes, the verified, resumable
download of a v0.02-layout archive (tests/speech_commands_fixture.py, real clips) served on
127.0.0.1, and manifests from the official lists or from which_set. No test sleeps."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from asr.corpora import speech_commands as sc
from asr.download import DiskSpaceError, DownloadError
from asr.manifest import read_manifest

try:  # tests/ as a package or as a plain folder on sys.path
    from tests.conftest import DATA_DIR, _require
    from tests.http_server import FileServer
    from tests.speech_commands_fixture import build_archive, speakers_by_split
except ImportError:
    from conftest import DATA_DIR, _require
    from http_server import FileServer
    from speech_commands_fixture import build_archive, speakers_by_split

SOURCE = DATA_DIR / "speech-commands"
WORDS = ("yes", "no", "up")
# Real speakers of ../shared/data/speech-commands (all in the official test set, so their
# which_set percentages lie in [10, 20)), picked so that which_set at the fixture's
# percentages (validation < 13 <= testing < 16 <= training) fills every split:
# 189cbabe 10.13 and 1b4c9b89 12.19 -> dev; 1acc97de 13.73 -> test; the rest >= 16 -> train.
SPEAKERS = ("189cbabe", "1b4c9b89", "1acc97de", "18f8afd5", "0cb74144", "03401e93")
PERCENTAGES = (13, 3)  # (validation, testing) of the fixture's lists
NOISE = 3


@pytest.fixture(scope="session")
def source() -> Path:
    return _require(SOURCE)


@pytest.fixture(scope="session")
def built(source, tmp_path_factory):
    """The archive, built once per test run; tests serve or unpack private copies."""
    return build_archive(source, tmp_path_factory.mktemp("sc") / sc.ARCHIVE_NAME, WORDS, SPEAKERS,
                         noise=NOISE, validation_percentage=PERCENTAGES[0],
                         testing_percentage=PERCENTAGES[1])


@pytest.fixture
def served(built, tmp_path):
    """(server, url, archive path being served): a private copy under tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()
    shutil.copyfile(built["path"], www / sc.ARCHIVE_NAME)
    with FileServer(www) as server:
        yield server, server.url(sc.ARCHIVE_NAME), www / sc.ARCHIVE_NAME


@pytest.fixture
def corpus(built, tmp_path):
    """A private unpacked copy of the archive (the folder prepare reads)."""
    from asr.download import safe_extract

    safe_extract(built["path"], tmp_path / "corpus")
    return tmp_path / "corpus"


def by_hand(name: str, validation: float = 10, testing: float = 10) -> str:
    """which_set recomputed from its definition: SHA-1 of the speaker id mod 2**27, scaled
    by 100 / (2**27 - 1)."""
    speaker = Path(name).name.split("_nohash_")[0]
    value = int(hashlib.sha1(speaker.encode()).hexdigest(), 16) % 2 ** 27 * 100.0 / (2 ** 27 - 1)
    return "validation" if value < validation else "testing" if value < validation + testing else "training"


# --------------------------------------------------------------------------- which_set


def test_which_set_matches_sha1_computed_by_hand():
    names = ["yes/189cbabe_nohash_0.wav", "1acc97de_nohash_4.wav", "bobby_nohash_1.wav",
             "right/bb05582b_nohash_3.wav", "a/b/c/0a7c2a8d_nohash_12.wav", "plain.wav"]
    for name in names:
        for pct in ((10, 10), (13, 3), (50, 25), (0, 0)):
            assert sc.which_set(name, *pct) == by_hand(name, *pct), (name, pct)
    # SHA-1 mod 2**27: "189cbabe" 13,591,017 -> 10.126 %, "1acc97de" 18,431,530 -> 13.733 %
    assert int(hashlib.sha1(b"189cbabe").hexdigest(), 16) % 2 ** 27 == 13591017
    assert int(hashlib.sha1(b"1acc97de").hexdigest(), 16) % 2 ** 27 == 18431530
    assert sc.which_set("189cbabe_nohash_0.wav", 10.126, 0) == "training"
    assert sc.which_set("189cbabe_nohash_0.wav", 10.127, 0) == "validation"
    assert sc.which_set("x/189cbabe_nohash_0.wav") == "testing"
    assert sc.which_set("1acc97de_nohash_0.wav", 13, 3) == "testing"
    # only the speaker counts: the word folder and the clip number do not
    assert {sc.which_set(f"{w}/0cb74144_nohash_{n}.wav") for w in WORDS for n in range(5)} == {"testing"}
    assert sc.which_set("0cb74144_nohash_0.wav", 19, 0) == "training"


def test_every_speaker_of_the_official_test_set_hashes_to_testing(source):
    speakers = {p.name.split("_nohash_")[0] for p in source.glob("*/*_nohash_*.wav")}
    assert len(speakers) > 100
    assert {sc.which_set(f"{s}_nohash_0.wav") for s in speakers} == {"testing"}


# --------------------------------------------------------------------------- download


def test_download_verifies_extracts_and_rerun_makes_no_request(served, built, tmp_path, opts):
    server, url, _ = served
    target = sc.download(tmp_path / "dest", url, built["sha256"], built["size"], options=opts)
    assert target == tmp_path / "dest" / sc.CORPUS_FOLDER
    for rel in built["splits"]:
        assert (target / rel).read_bytes() == (SOURCE / rel).read_bytes()
    assert sorted(p.name for p in (target / "_background_noise_").glob("*.wav")) == built["noise"]
    assert (target / sc.VALIDATION_LIST).is_file() and (target / sc.TESTING_LIST).is_file()
    marker = (target / f".done-{sc.ARCHIVE_NAME}").read_text()
    assert f"sha256: {built['sha256']}" in marker and f"url: {url}" in marker
    assert server.statuses == [200]
    server.clear_log()
    sc.download(tmp_path / "dest", url, built["sha256"], built["size"], options=opts)
    assert server.requests == []


def test_cut_connection_resumes_from_the_bytes_received(served, built, tmp_path, opts, sleeps):
    server, url, _ = served
    cut = built["size"] // 3
    server.cut_after(cut)
    target = sc.download(tmp_path / "dest", url, built["sha256"].upper(), built["size"], options=opts)
    assert server.ranges == [None, f"bytes={cut}-"] and server.statuses == [200, 206]
    assert sleeps == [1.0]
    assert (tmp_path / "dest" / sc.ARCHIVE_NAME).read_bytes() == built["path"].read_bytes()
    assert (target / "yes").is_dir()


def test_corrupt_archive_is_fetched_again_then_fails_clearly(served, built, tmp_path, opts):
    server, url, path = served
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError) as info:
        sc.download(dest, url, built["sha256"], built["size"], options=opts)
    msg = str(info.value)
    assert "corrupt download" in msg and f"sha256 mismatch: expected {built['sha256']}" in msg
    assert hashlib.sha256(bytes(data)).hexdigest() in msg and "nothing was extracted" in msg
    assert server.statuses == [200, 200]  # one fresh re-download, then the error
    assert not (dest / sc.CORPUS_FOLDER).exists() and list(dest.iterdir()) == []


def test_mirror_url_is_held_to_the_published_checksum(served, tmp_path, capsys, monkeypatch):
    server, url, _ = served  # the fixture archive is not the real 2.4 GB one
    monkeypatch.setattr(sc, "_check_free_space", lambda folder, size: None)  # 2.4 GB need not fit
    assert sc.main(["download", "--dest", str(tmp_path / "dest"), "--url", url]) == 2
    err = capsys.readouterr().err
    assert f"size mismatch: expected {sc.ARCHIVE_SIZE} bytes" in err and url in err
    assert not (tmp_path / "dest" / sc.CORPUS_FOLDER).exists()


def test_too_little_space_for_the_archive_fails_before_any_request(served, built, tmp_path,
                                                                   opts, monkeypatch):
    server, url, _ = served
    monkeypatch.setattr(sc.shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
    with pytest.raises(DiskSpaceError, match=f"needs {built['size']} more bytes, only 1000 free"):
        sc.download(tmp_path / "dest", url, built["sha256"], built["size"], options=opts)
    assert server.requests == []


# --------------------------------------------------------------------------- prepare


def manifest_rels(path: Path) -> dict[str, str]:
    """{"<word>/<file>.wav": text} of a manifest's utterances."""
    return {f"{Path(u.audio).parent.name}/{Path(u.audio).name}": u.text for u in read_manifest(path)}


def test_prepare_splits_from_the_lists_speaker_disjoint_with_noise(corpus, built, tmp_path):
    out = tmp_path / "out"
    summary = sc.prepare(corpus, out, progress=False)
    assert summary["split_source"] == "lists" and summary["words"] == sorted(WORDS)
    expected = {split: {rel for rel, s in built["splits"].items() if s == split}
                for split in ("train", "dev", "test")}
    speakers = {}
    for split, rels in expected.items():
        assert rels, f"the fixture should fill {split}"
        utts = read_manifest(out / f"{split}.jsonl", check_audio=True)
        assert manifest_rels(out / f"{split}.jsonl") == {rel: rel.split("/")[0] for rel in rels}
        assert [u.id for u in utts] == sorted(u.id for u in utts)
        for u in utts:
            assert u.id == f"{Path(u.audio).parent.name}-{Path(u.audio).stem}"
            assert u.speaker == Path(u.audio).name.split("_nohash_")[0]
            assert 0.5 < u.duration <= 1.0
        speakers[split] = {u.speaker for u in utts}
        assert summary["utterances"][split] == len(rels)
        assert summary["speakers"][split] == len(speakers[split])
    assert speakers == speakers_by_split(built["splits"])
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not speakers[a] & speakers[b], f"speaker in {a} and {b}"
    assert summary["speaker_overlap"] == {} and summary["problems"] == []
    test = read_manifest(out / "test.jsonl")  # the digits and the ten command words apart
    assert [u.id for u in read_manifest(out / "test_commands.jsonl")] == [u.id for u in test if u.text in WORDS]
    assert read_manifest(out / "test_digits.jsonl") == []  # the fixture has no digit clips
    assert sum(summary["per_word"]["yes"].values()) == sum(r.startswith("yes/") for r in built["splits"])
    noise = read_manifest(out / "noise.jsonl", check_audio=True)
    assert sorted(Path(u.audio).name for u in noise) == built["noise"]
    assert all(u.text == "" and u.speaker == "" and u.id.startswith("background_noise-") for u in noise)
    assert summary["noise"] == NOISE
    assert json.loads((out / "prepare.json").read_text()) == json.loads(json.dumps(summary))


def test_without_lists_splits_come_from_which_set(corpus, built, tmp_path):
    (corpus / sc.VALIDATION_LIST).unlink()
    (corpus / sc.TESTING_LIST).unlink()
    summary = sc.prepare(corpus, tmp_path / "a", validation_percentage=PERCENTAGES[0],
                         testing_percentage=PERCENTAGES[1], progress=False)
    assert summary["split_source"] == "which_set"
    for split in ("train", "dev", "test"):
        assert set(manifest_rels(tmp_path / "a" / f"{split}.jsonl")) == \
            {rel for rel, s in built["splits"].items() if s == split}
    summary = sc.prepare(corpus, tmp_path / "b", progress=False)  # 10 % / 10 %: all official test
    assert summary["utterances"] == {"train": 0, "dev": 0, "test": len(built["splits"])}


def test_split_percentages_parse_and_reach_prepare(corpus, built, tmp_path, capsys):
    assert sc.parse_percentages(None) == (10, 10) and sc.parse_percentages("11,2") == (11.0, 2.0)
    for bad in ("11", "a,b", "-1,2", "60,50"):
        with pytest.raises(sc.SpeechCommandsError, match="split percentages"):
            sc.parse_percentages(bad)
    for name in (sc.VALIDATION_LIST, sc.TESTING_LIST):
        (corpus / name).unlink()
    out = tmp_path / "out"
    assert sc.main(["prepare", "--data-dir", str(corpus), "--out", str(out), "--split-percentages", "13,3"]) == 0
    # at (13, 3) which_set gives the fixture's own lists back
    assert {**{r: "train" for r in manifest_rels(out / "train.jsonl")},
            **{r: "dev" for r in manifest_rels(out / "dev.jsonl")},
            **{r: "test" for r in manifest_rels(out / "test.jsonl")}} == built["splits"]


def test_words_subset_and_a_download_folder_as_data_dir(corpus, built, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    corpus.rename(dest / sc.CORPUS_FOLDER)  # what download() leaves: dest/speech_commands_v0.02
    summary = sc.prepare(dest, tmp_path / "out", words=["up", "no", "up"], progress=False)
    assert summary["words"] == ["up", "no"] and set(summary["per_word"]) == {"up", "no"}
    got = {rel for split in ("train", "dev", "test")
           for rel in manifest_rels(tmp_path / "out" / f"{split}.jsonl")}
    assert got == {rel for rel in built["splits"] if not rel.startswith("yes/")}
    assert summary["problems"] == []  # list entries of words left out are no problem
    with pytest.raises(sc.SpeechCommandsError, match="word.s. not in .*: cat; available: no, up, yes"):
        sc.prepare(dest, tmp_path / "x", words=["yes", "cat"], progress=False)


def test_clear_errors_for_missing_folders_and_lists(corpus, tmp_path):
    with pytest.raises(sc.SpeechCommandsError, match="no such folder.*asr download speech-commands"):
        sc.prepare(tmp_path / "absent", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(sc.SpeechCommandsError, match="no word folders with clips"):
        sc.prepare(tmp_path / "empty", tmp_path / "out")
    (corpus / sc.TESTING_LIST).unlink()
    with pytest.raises(sc.SpeechCommandsError, match=f"{sc.TESTING_LIST} is missing but its partner"):
        sc.prepare(corpus, tmp_path / "out")
    (corpus / sc.TESTING_LIST).write_text("yes/a.wav\nnot a path\n")
    with pytest.raises(sc.SpeechCommandsError, match=f"{sc.TESTING_LIST}:2: expected '<word>/<file>.wav'"):
        sc.prepare(corpus, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_speaker_in_two_splits_and_missing_clips_are_reported(corpus, built, tmp_path, capsys):
    train = sorted(rel for rel, s in built["splits"].items() if s == "train")
    moved = train[0]  # one train clip of a speaker whose other clips stay in train
    with open(corpus / sc.TESTING_LIST, "a") as f:
        f.write(f"{moved}\nyes/ffffffff_nohash_0.wav\n")
    out = tmp_path / "out"
    assert sc.main(["prepare", "--data-dir", str(corpus), "--out", str(out)]) == 1
    summary = json.loads((out / "prepare.json").read_text())
    speaker = Path(moved).name.split("_nohash_")[0]
    assert summary["speaker_overlap"] == {speaker: ["test", "train"]}
    assert summary["problems"] == ["yes/ffffffff_nohash_0.wav: in the test list but no such clip (left out)"]
    captured = capsys.readouterr()
    assert f"1 speaker(s) in two splits: {speaker} (test/train)" in captured.err
    assert "warning: yes/ffffffff_nohash_0.wav" in captured.err


def test_cli_prepare_prints_counts(corpus, built, tmp_path, capsys):
    assert sc.run_prepare(corpus, tmp_path / "out", ["yes"]) == 0
    out = capsys.readouterr().out
    n = sum(rel.startswith("yes/") for rel in built["splits"])
    assert "prepared 1 words from lists" in out and f"{NOISE} noise clips" in out
    assert "no speaker is in two splits" in out
    assert sum(len(read_manifest(tmp_path / "out" / f"{s}.jsonl")) for s in ("train", "dev", "test")) == n


def test_cli_prepares_the_shared_clips_by_word(tmp_path):
    """asr prepare speech-commands on the shared test-set clips (no lists: which_set puts all 158
    speakers in test, as the official lists do)."""
    import subprocess
    import sys

    from conftest import DATA_DIR, REPO_ROOT

    folder = DATA_DIR / "speech-commands"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (real speech for tests)")
    out = subprocess.run([sys.executable, "-m", "asr", "prepare", "speech-commands", "--data-dir", str(folder),
                          "--out", str(tmp_path / "m"), "--words", "yes", "no"], capture_output=True, text=True,
                         cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    test = [json.loads(x) for x in (tmp_path / "m" / "test.jsonl").read_text().splitlines()]
    assert test and {u["text"] for u in test} == {"yes", "no"}
    assert not (tmp_path / "m" / "train.jsonl").read_text().strip()
