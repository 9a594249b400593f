"""asr.corpora.librispeech_lm against a miniature openslr resource 11 (tests/librispeech_fixture
.build_lm_layout) served by tests/http_server.FileServer on 127.0.0.1: verified download, md5
sources, checksum failure, resume after a cut connection and after a kill, free space; the
lower-cased ARPA (counts, sections, errors) and the word lexicon. No test sleeps."""
from __future__ import annotations

import gzip
import hashlib
import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from asr.corpora import librispeech_lm as lm
from asr.corpora.librispeech import FetchOptions
from asr.corpora.librispeech_lm import (DEFAULT_FILES, FULL_4GRAM, LEXICON, LM_FILES,
                                        OPENSLR_11_URL, PRUNED_3GRAM, VOCAB, ArpaError,
                                        LMDownloadError, download_lm, lm_checksums,
                                        lowercase_arpa, prepare_lm, vocab_lexicon)
from asr.download import DiskSpaceError

try:  # tests/ as a package or as a plain folder on sys.path
    from tests.http_server import FileServer
    from tests.librispeech_fixture import arpa_text, build_lm_layout, corrupt
except ImportError:
    from http_server import FileServer
    from librispeech_fixture import arpa_text, build_lm_layout, corrupt

REPO_ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["ONE FIVE THREE", "ONE TWO", "FIVE FIVE ONE TWO THREE", "HE DIDN'T SAY ONE WORD",
         "SHE SAID TWO WORDS"]
ALL = [PRUNED_3GRAM, FULL_4GRAM, VOCAB, LEXICON]
# Enough extra vocabulary that the vocabulary file spans several download blocks (64 KiB).
MANY_WORDS = ["".join(p) for p in itertools.product("ABCDEFGHIJKLMNOPQRSTUVWXYZ", repeat=4)][:40000]


@pytest.fixture
def mirror(tmp_path):
    """Resource 11 in miniature at http://127.0.0.1:PORT/resources/11."""
    www = tmp_path / "www"
    layout = build_lm_layout(www / "resources", TEXTS, extra_words=MANY_WORDS)
    with FileServer(www) as server:
        yield SimpleNamespace(server=server, folder=layout["folder"], md5=layout["md5"],
                              url=server.url("resources/11"), words=layout["words"])


@pytest.fixture
def opts(sleeps):
    return FetchOptions(progress=False, sleep=sleeps.append, retries=2)


def file_requests(server) -> list[str]:
    return [r.path for r in server.requests if not r.path.endswith("md5sum.txt")]


# --------------------------------------------------------------------------- the table


def test_published_table_covers_the_issue_files_with_sizes_and_md5():
    assert set(DEFAULT_FILES) == {PRUNED_3GRAM, VOCAB, LEXICON}
    for name in ALL:
        f = LM_FILES[name]
        assert len(f.md5) == 32 and int(f.md5, 16) >= 0 and f.size > 0, f
    assert LM_FILES[FULL_4GRAM].size == 1355172078 and LM_FILES[PRUNED_3GRAM].size == 34094057


def test_openslr_url_uses_the_published_md5_without_any_request(tmp_path):
    md5s = lm_checksums(ALL, OPENSLR_11_URL, None, tmp_path)
    assert md5s == {n: LM_FILES[n].md5 for n in ALL}
    assert not list(tmp_path.iterdir())


def test_md5_sources_mirror_list_then_local_file_override(mirror, tmp_path, opts):
    md5_file = tmp_path / "local.txt"
    md5_file.write_text(f"{'0' * 32}  {VOCAB}\n")
    md5s = lm_checksums(ALL + ["extra.txt"], mirror.url, md5_file, tmp_path / "d", opts)
    assert md5s[PRUNED_3GRAM] == mirror.md5[PRUNED_3GRAM] != LM_FILES[PRUNED_3GRAM].md5
    assert md5s[VOCAB] == "0" * 32 and md5s["extra.txt"] is None
    published = {n: LM_FILES[n].md5 for n in ALL}
    (mirror.folder / "md5sum.txt").write_text("<html>not found</html>\n")  # not a list
    assert lm_checksums(ALL, mirror.url, None, tmp_path / "e", opts) == published
    assert not (tmp_path / "e" / "md5sum-11.txt").exists()  # fetched afresh next time
    (mirror.folder / "md5sum.txt").unlink()  # a mirror without a list: the published values
    assert lm_checksums(ALL, mirror.url, None, tmp_path / "f", opts) == published


# --------------------------------------------------------------------------- download


def test_download_verifies_every_file_and_rerun_makes_no_request(mirror, tmp_path, opts, capsys):
    got = download_lm(tmp_path / "lm", mirror.url, ALL, options=opts)
    assert list(got) == ALL
    for name, path in got.items():
        assert path == tmp_path / "lm" / name
        assert path.read_bytes() == (mirror.folder / name).read_bytes()
    assert "downloaded and verified" in capsys.readouterr().out
    before = len(mirror.server.requests)
    assert download_lm(tmp_path / "lm", mirror.url, ALL, options=opts) == got
    assert len(mirror.server.requests) == before


def test_checksum_failure_names_the_file_and_the_others_complete(mirror, tmp_path, opts):
    corrupt(mirror.folder / PRUNED_3GRAM)  # md5sum.txt still lists the good bytes
    with pytest.raises(LMDownloadError, match="md5 mismatch") as err:
        download_lm(tmp_path / "lm", mirror.url, [PRUNED_3GRAM, VOCAB], options=opts)
    assert list(err.value.failures) == [PRUNED_3GRAM]
    assert PRUNED_3GRAM in str(err.value) and "1 of 2" in str(err.value)
    assert not (tmp_path / "lm" / PRUNED_3GRAM).exists()
    assert file_requests(mirror.server).count(f"/resources/11/{PRUNED_3GRAM}") == 2
    assert (tmp_path / "lm" / VOCAB).read_bytes() == (mirror.folder / VOCAB).read_bytes()


def test_cut_connection_leaves_a_partial_that_the_next_call_resumes(mirror, tmp_path, sleeps):
    cut = 70000
    lm_checksums([VOCAB], mirror.url, None, tmp_path / "lm")  # the md5 list first, kept
    mirror.server.cut_after(cut)
    with pytest.raises(LMDownloadError, match="truncated"):
        download_lm(tmp_path / "lm", mirror.url, [VOCAB],
                    options=FetchOptions(progress=False, sleep=sleeps.append, retries=0))
    part = tmp_path / "lm" / f"{VOCAB}.part"
    assert part.stat().st_size == cut and not (tmp_path / "lm" / VOCAB).exists()
    mirror.server.clear_log()
    download_lm(tmp_path / "lm", mirror.url, [VOCAB],
                options=FetchOptions(progress=False, sleep=sleeps.append))
    assert [r.range for r in mirror.server.requests if r.path.endswith(VOCAB)] == [f"bytes={cut}-"]
    assert (tmp_path / "lm" / VOCAB).read_bytes() == (mirror.folder / VOCAB).read_bytes()
    assert not part.exists()


KILLED_DOWNLOAD = """\
import os, signal, sys
import asr.download


class KillingBar:  # the progress bar: updated after each block is written
    def __init__(self, *args, desc="", **kwargs):
        self.desc = desc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        if not self.desc.startswith("md5sum"):
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 after the first block of a file


asr.download.tqdm = KillingBar
from asr.corpora.librispeech_lm import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_download_resumes_with_a_range_request(mirror, tmp_path):
    dest = tmp_path / "lm"
    args = ["download", "--dest", str(dest), "--url", mirror.url, "--files", VOCAB]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", KILLED_DOWNLOAD, *args], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    have = (dest / f"{VOCAB}.part").stat().st_size
    assert 0 < have < (mirror.folder / VOCAB).stat().st_size
    mirror.server.clear_log()
    proc = subprocess.run([sys.executable, "-m", "asr.corpora.librispeech_lm", *args], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [r.range for r in mirror.server.requests if r.path.endswith(VOCAB)] == [f"bytes={have}-"]
    assert hashlib.md5((dest / VOCAB).read_bytes()).hexdigest() == mirror.md5[VOCAB]


def test_file_without_md5_needs_permission(mirror, tmp_path, opts, capsys):
    (mirror.folder / "notes.txt").write_text("not in any md5 list\n")
    with pytest.raises(LMDownloadError, match="no md5 known for notes.txt"):
        download_lm(tmp_path / "lm", mirror.url, ["notes.txt"], options=opts)
    assert file_requests(mirror.server) == []
    got = download_lm(tmp_path / "lm", mirror.url, ["notes.txt"], allow_unverified=True,
                      options=opts)
    assert got["notes.txt"].read_text() == "not in any md5 list\n"
    assert "without checksum" in capsys.readouterr().out


def test_too_little_space_for_the_published_sizes_fails_before_downloading(mirror, tmp_path, opts,
                                                                           monkeypatch):
    (mirror.folder / "md5sum.txt").unlink()  # the published md5s, so the published sizes apply
    monkeypatch.setattr(lm.shutil, "disk_usage",
                        lambda p: SimpleNamespace(total=1 << 40, used=0, free=100 << 20))
    with pytest.raises(DiskSpaceError, match="need"):
        download_lm(tmp_path / "lm", mirror.url, [FULL_4GRAM], options=opts)
    assert file_requests(mirror.server) == []


# --------------------------------------------------------------------------- ARPA


def read_arpa(path: Path) -> tuple[dict[int, int], dict[int, list[list[str]]]]:
    """(header counts, {order: entries as field lists}) of a plain or gzipped ARPA."""
    header, sections, order = {}, {}, 0
    with lm.open_text(path) as f:
        for line in f:
            text = line.strip()
            if text.startswith("ngram "):
                n, count = text[6:].split("=")
                header[int(n)] = int(count)
            elif text.endswith("-grams:"):
                order = int(text[1:].split("-")[0])
                sections[order] = []
            elif text == "\\end\\":
                order = 0
            elif text and order:
                sections[order].append(line.rstrip("\n").split("\t"))
    return header, sections


@pytest.mark.parametrize("batch", [lm.ARPA_BATCH_CHARS, 200])
@pytest.mark.parametrize("dst_name", ["lower.arpa", "lower.arpa.gz"])
def test_lowercase_arpa_keeps_header_sections_counts_and_numbers(mirror, tmp_path, monkeypatch,
                                                                 batch, dst_name):
    monkeypatch.setattr(lm, "ARPA_BATCH_CHARS", batch)  # 200: many batches, both code paths
    src = mirror.folder / FULL_4GRAM
    counts = lowercase_arpa(src, tmp_path / dst_name)
    header, sections = read_arpa(tmp_path / dst_name)
    up_header, up_sections = read_arpa(src)
    assert counts == header == up_header == {n: len(up_sections[n]) for n in (1, 2, 3, 4)}
    for n in header:
        assert [[f.lower() for f in e] for e in up_sections[n]] == sections[n]
    words = {w for e in sections[1] for w in e[1].split()}
    assert "didn't" in words and "<unk>" in words and "<s>" in words
    assert not any(w != w.lower() for w in words)
    text = lm.open_text(tmp_path / dst_name).read()
    assert text.startswith("\\data\\\n") and text.rstrip().endswith("\\end\\")
    assert not list(tmp_path.glob(".*.tmp"))


def arpa_with(tmp_path: Path, edit) -> Path:
    text = arpa_text([t.split() for t in TEXTS], 2)
    path = tmp_path / "bad.arpa.gz"
    path.write_bytes(gzip.compress(edit(text).encode()))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda t: t[: t.index("\\2-grams:") + 40], "truncated"),
    (lambda t: t.replace("ngram 2=", "ngram 2=1"), "the header announces"),
    (lambda t: t.replace("\\data\\", "data"), "expected \\\\data"),
    (lambda t: t.replace("\\2-grams:", "\\3-grams:"), "section"),
    (lambda t: t.replace("\\end\\", "\\end\\\nmore"), "after"),
    (lambda t: t.replace("-0.", "-0.5 x y z -0.", 1), "entry needs"),
])
def test_malformed_arpa_is_a_clear_error_and_leaves_no_file(tmp_path, edit, message):
    src = arpa_with(tmp_path, edit)
    with pytest.raises(ArpaError, match=message) as err:
        lowercase_arpa(src, tmp_path / "out.arpa")
    assert str(src) in str(err.value)
    assert not (tmp_path / "out.arpa").exists() and not list(tmp_path.glob(".*.tmp"))


def test_lowercased_arpa_loads_in_kenlm_and_knows_lowercase_words(mirror, tmp_path):
    kenlm = pytest.importorskip("flashlight.lib.text.decoder.kenlm")
    from flashlight.lib.text.dictionary import Dictionary

    words = Dictionary()
    for w in ("<unk>", "one", "five", "three"):
        words.add_entry(w)

    def score(path: Path) -> float:
        model = kenlm.KenLM(str(path), words)
        state, total = model.start(False), 0.0
        for w in ("one", "five", "three"):
            state, s = model.score(state, words.get_index(w))
            total += s
        return total

    upper = tmp_path / "upper.arpa"
    upper.write_bytes(gzip.decompress((mirror.folder / PRUNED_3GRAM).read_bytes()))
    lowercase_arpa(mirror.folder / PRUNED_3GRAM, tmp_path / "lower.arpa")
    # "ONE FIVE THREE" is a training sentence: lower-cased, the LM knows it well; the
    # upper-case original sees three unknown words
    assert score(tmp_path / "lower.arpa") > score(upper) + 3


# --------------------------------------------------------------------------- lexicon


def test_vocab_lexicon_lowercases_dedups_and_drops_unspellable_words(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("ONE\nDIDN'T\n\nCAFÉ\nONE\nA-B\nZEBRA\n", encoding="utf-8")
    got = vocab_lexicon(vocab, tmp_path / "lexicon.txt")
    assert (tmp_path / "lexicon.txt").read_text() == "one\ndidn't\nzebra\n"
    assert got == {"words": 3, "dropped": ["CAFÉ", "A-B"]}


def test_prepare_lm_writes_the_decoder_files(mirror, tmp_path, opts):
    download_lm(tmp_path / "lm", mirror.url, options=opts)
    summary = prepare_lm(tmp_path / "lm", tmp_path / "out")
    assert summary["lm"] == str(tmp_path / "out" / "3-gram.pruned.1e-7.arpa")
    assert set(summary["ngrams"]) == {"1", "2", "3"}
    lexicon = (tmp_path / "out" / "lexicon.txt").read_text().split()
    assert lexicon == [w.lower() for w in mirror.words] and summary["words"] == len(lexicon)
    assert (tmp_path / "out" / "3-gram.pruned.1e-7.arpa.json").is_file()


def test_command_line_download_prepare_and_error(mirror, tmp_path, capsys):
    assert lm.main(["download", "--dest", str(tmp_path / "lm"), "--url", mirror.url,
                    "--files", FULL_4GRAM, VOCAB]) == 0
    assert lm.main(["prepare", "--lm-dir", str(tmp_path / "lm"), "--out", str(tmp_path / "out"),
                    "--arpa", FULL_4GRAM]) == 0
    assert (tmp_path / "out" / "4-gram.arpa").is_file()
    missing = tmp_path / "none"
    assert lm.main(["prepare", "--lm-dir", str(missing), "--out", str(tmp_path / "x")]) == 1
    assert "error:" in capsys.readouterr().err
