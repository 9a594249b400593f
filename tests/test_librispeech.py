"""asr.corpora.librispeech against an offline mirror (tests/librispeech_fixture.py) served by
tests/http_server.FileServer on 127.0.0.1: parallel verified download, resume, checksum and
archive faults, retries, md5 sources; manifests, problem reports and re-runs. No test sleeps."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import soundfile as sf

from asr.corpora import librispeech as ls
from asr.corpora.librispeech import (DEFAULT_BASE_URL, OPENSLR_MD5, PARTS, SETS, FetchOptions,
                                     LibriSpeechError, PartsFailedError, download, prepare)
from asr.download import safe_extract
from asr.manifest import read_manifest

try:  # tests/ as a package or as a plain folder on sys.path
    from tests.http_server import FileServer
    from tests.librispeech_fixture import (HOSTILE_KINDS, build_mirror, corrupt, hostile_archive,
                                           truncate, write_md5_list)
except ImportError:
    from http_server import FileServer
    from librispeech_fixture import (HOSTILE_KINDS, build_mirror, corrupt, hostile_archive,
                                     truncate, write_md5_list)

REPO_ROOT = Path(__file__).resolve().parents[1]
# Generated utterances per part in the mirror (test-clean also holds the 5 real ones).
MIRROR_PARTS = {"test-clean": 3, "dev-clean-2": 4, "train-clean-5": 5}
ALL = list(MIRROR_PARTS)
MINI = ["dev-clean-2", "train-clean-5"]
# Where the mirror is served: a mirror's path, not the server's root.
MIRROR_PATH = "openslr/resources"


@pytest.fixture(scope="session")
def built_mirror(tmp_path_factory, librispeech_dir, fsdd_dir):
    """The mirror, built once per session; tests serve a private copy."""
    return build_mirror(tmp_path_factory.mktemp("mirror"), MIRROR_PARTS, librispeech_dir,
                        fsdd_dir)


@pytest.fixture
def mirror(built_mirror, tmp_path):
    """A copy of the mirror served at http://127.0.0.1:PORT/openslr/resources."""
    www = tmp_path / "www"
    root = www / MIRROR_PATH
    shutil.copytree(built_mirror["root"], root)
    archives = {p: root / a.relative_to(built_mirror["root"])
                for p, a in built_mirror["archives"].items()}
    with FileServer(www) as server:
        yield SimpleNamespace(server=server, root=root, base_url=server.url(MIRROR_PATH),
                              archives=archives, md5=built_mirror["md5"],
                              utterances=built_mirror["utterances"],
                              texts=built_mirror["texts"], sexes=built_mirror["sexes"])


def paths(server) -> list[str]:
    return [r.path for r in server.requests]


def archive_path(part: str) -> str:
    return f"/{MIRROR_PATH}/{PARTS[part].resource}/{part}.tar.gz"


def flac_ids(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.rglob("*.flac"))


def snapshot(root: Path, skip: Path | None = None) -> set[str]:
    """Paths under root, leaving out those under ``skip``."""
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if skip is None or not (p == skip or skip in p.parents)}


# --------------------------------------------------------------------------- names and md5


def test_resolve_parts_expands_sets_in_order_without_duplicates():
    assert ls.resolve_parts("mini") == ["train-clean-5", "dev-clean-2"]
    assert ls.resolve_parts(["dev-clean", "eval"]) == list(SETS["eval"])
    assert ls.resolve_parts("960, mini") == list(SETS["960"]) + list(SETS["mini"])
    assert len(SETS["960"]) == 7 and all(PARTS[p].resource == 12 for p in SETS["960"])
    assert all(PARTS[p].resource == 31 for p in SETS["mini"])


def test_unknown_part_is_a_clear_error_before_any_request(mirror, tmp_path, opts):
    dest = tmp_path / "dest"
    with pytest.raises(LibriSpeechError, match="'dev-clena'") as info:
        download(dest, ["dev-clean", "dev-clena"], mirror.base_url, options=opts)
    assert "train-clean-100" in str(info.value) and "mini" in str(info.value)
    assert mirror.server.requests == [] and not dest.exists()
    with pytest.raises(LibriSpeechError, match="'bogus'"):
        prepare(tmp_path, tmp_path / "out", "bogus")


def test_builtin_md5_table_covers_every_part_and_needs_no_request(tmp_path, opts):
    assert set(OPENSLR_MD5) == set(PARTS)
    assert all(len(v) == 32 and int(v, 16) >= 0 for v in OPENSLR_MD5.values())
    md5s, failed = ls.checksums(list(PARTS), DEFAULT_BASE_URL, None, tmp_path, False, opts)
    assert md5s == OPENSLR_MD5 and failed == {}
    assert list(tmp_path.iterdir()) == []  # nothing fetched


def test_archive_urls_follow_the_openslr_layout():
    assert ls.archive_url("dev-clean") == "https://www.openslr.org/resources/12/dev-clean.tar.gz"
    assert (ls.archive_url("train-clean-5", "https://us.openslr.org/resources/")
            == "https://us.openslr.org/resources/31/train-clean-5.tar.gz")
    assert ls.md5_list_url(31) == "https://www.openslr.org/resources/31/md5sum.txt"


def test_md5_list_parse_error_names_file_and_line(mirror, tmp_path, opts):
    bad = tmp_path / "sums.txt"
    bad.write_text(f"{mirror.md5['dev-clean-2']}  dev-clean-2.tar.gz\n\nnot-a-sum  x.tar.gz\n")
    with pytest.raises(LibriSpeechError, match=f"{bad}:3: not an md5 list line"):
        download(tmp_path / "dest", MINI, mirror.base_url, md5_file=bad, options=opts)
    assert mirror.server.requests == []
    bad.write_text("0" * 32 + "  a.tar.gz\n" + "1" * 32 + " *a.tar.gz\n")
    with pytest.raises(LibriSpeechError, match=f"{bad}:2: a.tar.gz listed twice"):
        ls.parse_md5_list(bad)


# --------------------------------------------------------------------------- download


def test_parallel_download_verified_extracted_and_rerun_makes_no_request(mirror, tmp_path,
                                                                        sleeps, capsys):
    dest = tmp_path / "dest"
    options = FetchOptions(progress=True, sleep=sleeps.append)
    folders = download(dest, ALL, mirror.base_url, jobs=3, options=options)
    assert folders == [dest / "LibriSpeech" / p for p in ALL]
    for part in ALL:
        assert flac_ids(folders[ALL.index(part)]) == mirror.utterances[part]
        got = (dest / "archives" / f"{part}.tar.gz").read_bytes()
        assert got == mirror.archives[part].read_bytes()
        marker = ls.download_marker(dest, part)
        assert f"md5: {mirror.md5[part]}" in marker.read_text()  # checked against md5sum.txt
    assert (dest / "LibriSpeech" / "SPEAKERS.TXT").is_file()
    assert sorted(paths(mirror.server)) == sorted(
        [f"/{MIRROR_PATH}/12/md5sum.txt", f"/{MIRROR_PATH}/31/md5sum.txt"]
        + [archive_path(p) for p in ALL])
    assert set(mirror.server.statuses) == {200} and sleeps == []
    out = capsys.readouterr()
    assert all(f"{p}.tar.gz" in out.err for p in ALL)  # one progress bar per archive
    assert all(f"{p}: downloaded and verified" in out.out for p in ALL)

    mirror.server.clear_log()
    assert download(dest, ALL, mirror.base_url, jobs=3, options=options) == folders
    assert mirror.server.requests == []
    out = capsys.readouterr().out
    for part in ALL:
        marker = ls.download_marker(dest, part)
        assert f"{part}: already downloaded and extracted (marker {marker})" in out


def test_cut_download_resumes_from_the_bytes_received(mirror, tmp_path, opts, sleeps):
    dest, cut = tmp_path / "dest", 20000
    assert mirror.archives["train-clean-5"].stat().st_size > 2 * cut
    mirror.server.cut_after(cut)
    download(dest, "train-clean-5", mirror.base_url, md5_file=mirror.root / "31" / "md5sum.txt",
             options=opts)
    assert paths(mirror.server) == [archive_path("train-clean-5")] * 2
    assert mirror.server.ranges == [None, f"bytes={cut}-"]  # re-requests exactly the rest
    assert mirror.server.statuses == [200, 206] and sleeps == [1.0]
    got = dest / "archives" / "train-clean-5.tar.gz"
    assert got.read_bytes() == mirror.archives["train-clean-5"].read_bytes()
    assert flac_ids(dest / "LibriSpeech" / "train-clean-5") == mirror.utterances["train-clean-5"]


def test_corrupt_archive_is_redownloaded_once_then_fails_others_complete(mirror, tmp_path, opts,
                                                                         built_mirror):
    dest = tmp_path / "dest"
    corrupt(mirror.archives["dev-clean-2"])  # md5sum.txt still has the good sum
    with pytest.raises(PartsFailedError) as info:
        download(dest, ALL, mirror.base_url, jobs=3, options=opts)
    assert list(info.value.failures) == ["dev-clean-2"]
    msg = str(info.value)
    assert "1 of 3 LibriSpeech part(s) failed" in msg and "dev-clean-2: " in msg
    assert "md5 mismatch after re-download" in msg and mirror.md5["dev-clean-2"] in msg
    assert paths(mirror.server).count(archive_path("dev-clean-2")) == 2  # one re-download
    assert not ls.download_marker(dest, "dev-clean-2").exists()
    assert not (dest / "LibriSpeech" / "dev-clean-2").exists()
    assert not list((dest / "archives").glob("dev-clean-2.tar.gz*"))
    for part in ("test-clean", "train-clean-5"):
        assert ls.download_marker(dest, part).is_file()
        assert flac_ids(dest / "LibriSpeech" / part) == mirror.utterances[part]

    shutil.copyfile(built_mirror["archives"]["dev-clean-2"], mirror.archives["dev-clean-2"])
    mirror.server.clear_log()
    download(dest, ALL, mirror.base_url, jobs=3, options=opts)  # only the failed part is fetched
    assert paths(mirror.server) == [archive_path("dev-clean-2")]
    assert flac_ids(dest / "LibriSpeech" / "dev-clean-2") == mirror.utterances["dev-clean-2"]


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
def test_hostile_archive_is_refused_and_nothing_lands_outside(mirror, tmp_path, opts, kind):
    sandbox = tmp_path / "sandbox"
    dest = sandbox / "dest"
    sandbox.mkdir()
    (sandbox / "keep.txt").write_text("untouched")
    hostile_archive(mirror.archives["dev-clean-2"], "dev-clean-2", kind, outside=sandbox)
    write_md5_list(mirror.root, 31)  # the checksum matches: extraction must refuse it
    before = snapshot(sandbox)
    with pytest.raises(PartsFailedError) as info:
        download(dest, MINI, mirror.base_url, jobs=2, options=opts)
    assert list(info.value.failures) == ["dev-clean-2"]
    assert "UnsafeArchiveError" in info.value.failures["dev-clean-2"]
    assert "refusing member" in info.value.failures["dev-clean-2"]
    assert snapshot(sandbox, skip=dest) == before  # the parent folder is unchanged
    assert not list(tmp_path.rglob("escaped-*"))
    assert not (dest / "LibriSpeech" / "dev-clean-2").exists()
    assert not os.path.lexists(dest / "LibriSpeech" / "door")
    assert flac_ids(dest / "LibriSpeech" / "train-clean-5") == mirror.utterances["train-clean-5"]


def test_server_errors_twice_then_success_with_backoff(mirror, tmp_path, sleeps):
    mirror.server.fail_next(2, status=500)
    options = FetchOptions(progress=False, sleep=sleeps.append, backoff=0.25)
    download(tmp_path / "dest", "dev-clean-2", mirror.base_url, options=options)
    md5_list = f"/{MIRROR_PATH}/31/md5sum.txt"
    assert paths(mirror.server) == [md5_list] * 3 + [archive_path("dev-clean-2")]
    assert mirror.server.statuses == [500, 500, 200, 200]
    assert sleeps == [0.25, 0.5]  # backoff * 2**attempt, injected: no real sleep
    folder = tmp_path / "dest" / "LibriSpeech" / "dev-clean-2"
    assert flac_ids(folder) == mirror.utterances["dev-clean-2"]


def test_local_md5_file_unverified_parts_and_archive_removal(mirror, tmp_path, opts, capsys):
    sums = tmp_path / "my-sums.txt"
    sums.write_text(f"# local list\n{mirror.md5['dev-clean-2']}  dev-clean-2.tar.gz\n")
    dest = tmp_path / "dest"
    with pytest.raises(PartsFailedError, match="no md5 for train-clean-5.tar.gz in") as info:
        download(dest, MINI, mirror.base_url, md5_file=sums, keep_archives=False, options=opts)
    assert list(info.value.failures) == ["train-clean-5"]
    assert paths(mirror.server) == [archive_path("dev-clean-2")]  # no md5sum.txt request
    assert ls.download_marker(dest, "dev-clean-2").is_file()
    assert not (dest / "archives" / "dev-clean-2.tar.gz").exists()  # keep_archives=False

    folders = download(dest, MINI, mirror.base_url, md5_file=sums, allow_unverified=True,
                       options=opts)
    assert "train-clean-5: WARNING: downloading without checksum" in capsys.readouterr().out
    assert "md5: -" in ls.download_marker(dest, "train-clean-5").read_text()
    assert [flac_ids(f) for f in folders] == [mirror.utterances[p] for p in MINI]


def test_mirror_without_md5_list_needs_explicit_permission(mirror, tmp_path, opts):
    (mirror.root / "31" / "md5sum.txt").unlink()
    with pytest.raises(PartsFailedError, match="md5 list unavailable.*404"):
        download(tmp_path / "dest", "dev-clean-2", mirror.base_url, options=opts)
    assert not (tmp_path / "dest" / "LibriSpeech").exists()


# --------------------------------------------------------------------------- prepare


@pytest.fixture
def corpus(built_mirror, tmp_path):
    """The mirror's archives extracted into tmp_path/corpus (as download leaves them)."""
    root = tmp_path / "corpus"
    for archive in built_mirror["archives"].values():
        safe_extract(archive, root)
    return root


def test_prepare_writes_sorted_manifests_with_durations_speakers_genders(corpus, tmp_path,
                                                                        built_mirror):
    out = tmp_path / "manifests"
    summary = prepare(corpus, out, ALL, jobs=2, progress=False)
    assert {p: s["status"] for p, s in summary.items()} == dict.fromkeys(ALL, "prepared")
    for part in ALL:
        utts = read_manifest(out / f"{part}.jsonl", check_audio=True)
        assert [u.id for u in utts] == built_mirror["utterances"][part]  # sorted, complete
        assert summary[part]["utterances"] == len(utts) and summary[part]["problems"] == 0
        for u in utts:
            info = sf.info(u.audio)
            assert u.duration == pytest.approx(info.frames / info.samplerate, abs=1e-9)
            assert u.text == built_mirror["texts"][u.id] and u.text.isupper()
            assert u.speaker == u.id.split("-")[0]
            assert u.gender == built_mirror["sexes"][u.speaker]
            assert Path(u.audio).parent.name == u.id.split("-")[1]
        assert not (out / f"{part}.problems.txt").exists()
    real = {u.id: u for u in read_manifest(out / "test-clean.jsonl")}["1089-134691-0000"]
    assert real.text == "HE COULD WAIT NO LONGER" and real.duration > 1
    first = json.loads((out / "dev-clean-2.jsonl").read_text().splitlines()[0])
    assert set(first) == {"id", "audio", "duration", "text", "speaker", "gender"}
    assert not Path(first["audio"]).is_absolute()  # relative to the manifest's folder


def test_prepare_without_speakers_txt_writes_no_gender(built_mirror, tmp_path):
    corpus = tmp_path / "mini"
    for part in MINI:  # resource 31 archives carry no SPEAKERS.TXT
        safe_extract(built_mirror["archives"][part], corpus)
    prepare(corpus / "LibriSpeech", tmp_path / "out", "mini", progress=False)
    lines = (tmp_path / "out" / "train-clean-5.jsonl").read_text().splitlines()
    assert len(lines) == 5 and all("gender" not in json.loads(line) for line in lines)


def test_prepare_reports_problems_and_leaves_those_utterances_out(corpus, tmp_path, capsys):
    part = corpus / "LibriSpeech" / "train-clean-5"
    flacs = sorted(part.rglob("*.flac"))
    flacs[0].unlink()  # transcript line, no audio
    truncate(flacs[1], 0.5)  # header fine, audio cut short
    truncate(flacs[2], 0.01)  # not even a header
    stray = flacs[3].with_name("803-8030-0099.flac")
    shutil.copyfile(flacs[3], stray)  # audio without transcript line
    out = tmp_path / "out"
    summary = prepare(corpus, out, "train-clean-5", progress=False)["train-clean-5"]
    ids = [u.id for u in read_manifest(out / "train-clean-5.jsonl")]
    assert ids == sorted(p.stem for p in flacs[3:])
    assert summary["problems"] == 4 and summary["utterances"] == len(ids)
    problems = (out / "train-clean-5.problems.txt").read_text().splitlines()
    assert len(problems) == 4
    assert any(f"{flacs[0].stem}: audio file missing" in p for p in problems)
    assert sum("unreadable audio" in p for p in problems) == 2
    assert any(flacs[1].stem in p and "unreadable" in p for p in problems)
    assert any("803-8030-0099.flac: no transcript line" in p for p in problems)
    printed = capsys.readouterr().out
    assert "train-clean-5: 4 problem(s)" in printed and flacs[0].stem in printed


def test_prepare_missing_part_folder_is_reported_after_the_others(corpus, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(LibriSpeechError, match="not found.*dev-other"):
        prepare(corpus, out, ["dev-other", "dev-clean-2"], progress=False)
    assert "does not exist" in (out / "dev-other.problems.txt").read_text()
    assert not (out / "dev-other.jsonl").exists()
    assert len(read_manifest(out / "dev-clean-2.jsonl")) == 4


def test_prepare_rerun_does_nothing_and_says_so(corpus, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    first = prepare(corpus, out, ALL, progress=False)
    stamps = {p: (out / f"{p}.jsonl").stat().st_mtime_ns for p in ALL}
    capsys.readouterr()
    monkeypatch.setattr(ls, "probe_duration", lambda path: pytest.fail("audio read on re-run"))
    again = prepare(corpus, out, ALL, progress=False)
    assert {p: s["status"] for p, s in again.items()} == dict.fromkeys(ALL, "already prepared")
    assert [s["utterances"] for s in again.values()] == [s["utterances"] for s in first.values()]
    assert {p: (out / f"{p}.jsonl").stat().st_mtime_ns for p in ALL} == stamps
    printed = capsys.readouterr().out
    assert all(f"{p}: already prepared" in printed for p in ALL)


KILL_SCRIPT = """
import os, signal, sys
from asr.corpora import librispeech
from asr.manifest import Utterance
limit, written, original = int(sys.argv[3]), [0], Utterance.to_json
def dying(self, *args, **kw):
    written[0] += 1
    if written[0] > limit:
        os.kill(os.getpid(), signal.SIGKILL)  # as a kill -9 halfway through a manifest
    return original(self, *args, **kw)
Utterance.to_json = dying
librispeech.prepare(sys.argv[1], sys.argv[2], ["dev-clean-2", "train-clean-5"], jobs=1,
                    progress=False)
"""


def test_prepare_killed_midway_then_rerun_completes_exactly(corpus, tmp_path, built_mirror,
                                                            capsys):
    out = tmp_path / "out"
    limit = len(built_mirror["utterances"]["dev-clean-2"]) + 2  # dies inside train-clean-5
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(corpus), str(out), str(limit)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (out / ".dev-clean-2.done").is_file() and not (out / ".train-clean-5.done").exists()
    assert (out / ".train-clean-5.jsonl.tmp").exists()  # the half-written manifest

    summary = prepare(corpus, out, MINI, progress=False)
    assert summary["dev-clean-2"]["status"] == "already prepared"
    assert summary["train-clean-5"]["status"] == "prepared"
    assert "dev-clean-2: already prepared" in capsys.readouterr().out
    for part in MINI:
        lines = (out / f"{part}.jsonl").read_text().splitlines()
        assert [json.loads(line)["id"] for line in lines] == built_mirror["utterances"][part]
    assert not list(out.glob(".*.tmp"))


def test_prepare_redoes_a_manifest_that_disagrees_with_its_marker(corpus, tmp_path, capsys,
                                                                  built_mirror):
    out = tmp_path / "out"
    prepare(corpus, out, "dev-clean-2", progress=False)
    manifest = out / "dev-clean-2.jsonl"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines[:2] + lines[:1]) + "\n")  # a lost and a doubled line
    summary = prepare(corpus, out, "dev-clean-2", progress=False)["dev-clean-2"]
    assert summary["status"] == "prepared"
    assert "3 lines but its marker says 4; preparing again" in capsys.readouterr().out
    assert [u.id for u in read_manifest(manifest)] == built_mirror["utterances"]["dev-clean-2"]


def test_parse_speakers_reads_the_real_format(tmp_path):
    path = tmp_path / "SPEAKERS.TXT"
    path.write_text("; comment\n;ID  |SEX| SUBSET           |MINUTES| NAME\n"
                    "14   | F | train-clean-360  | 25.03 | Kristin LeMoine\n"
                    "60   | M | train-clean-100  | 20.18 | |CBW|Simon\n\n")
    assert ls.parse_speakers(path) == {"14": "F", "60": "M"}
    path.write_text(";ID |SEX\n14 | F | x | 1 | A\nnonsense\n")
    with pytest.raises(LibriSpeechError, match=f"{path}:3: expected 'ID | SEX"):
        ls.parse_speakers(path)


def test_fetch_options_are_frozen():
    options = FetchOptions()
    with pytest.raises(AttributeError):
        options.retries = 1
    assert replace(options, retries=1).download_kwargs()["retries"] == 1


def test_marker_without_its_folder_extracts_again_from_the_kept_archive(mirror, tmp_path, opts,
                                                                        capsys):
    dest = tmp_path / "dest"
    download(dest, "dev-clean-2", mirror.base_url, options=opts)
    shutil.rmtree(dest / "LibriSpeech" / "dev-clean-2")
    mirror.server.clear_log()
    download(dest, "dev-clean-2", mirror.base_url, options=opts)
    assert "found but no LibriSpeech/dev-clean-2/; downloading again" in capsys.readouterr().out
    assert mirror.server.requests == []  # archive and md5 list were kept and still verify
    assert flac_ids(dest / "LibriSpeech" / "dev-clean-2") == mirror.utterances["dev-clean-2"]
