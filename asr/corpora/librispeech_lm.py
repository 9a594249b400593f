"""LibriSpeech language models (openslr resource 11): verified download, and the lower-cased
ARPA and word lexicon that the beam decoder reads.

``LM_FILES`` lists the resource-11 files this module knows, with size in bytes and md5.
``DEFAULT_FILES``: the pruned 3-gram the recipe decodes with, the vocabulary its lexicon is made
from, and the phonetic lexicon (kept beside them; a character or BPE model cannot use phonemes).
The 4-gram (1.36 GB compressed) is optional.

``download_lm(dest, base_url, files)`` contract:
* each file goes to ``dest/<name>`` through asr.download: a partial ``<name>.part`` resumes with
  an HTTP Range request, transient failures are retried with backoff, an md5 mismatch is
  downloaded once more and then fails, a file present with the right md5 costs no request;
* md5s come from, in rising precedence: the built-in ``LM_FILES`` table (the published values;
  every true mirror serves the same bytes), ``{base_url}/md5sum.txt`` when ``base_url`` is not
  openslr.org's own (fetched into ``dest``; without a usable one, the table applies), and
  ``md5_file`` (lines ``<md5>  <name>``). A file without an md5 fails unless
  ``allow_unverified``; free space in ``dest`` is checked against the published sizes first;
* a failed file does not stop the others: ``LMDownloadError`` lists every failure at the end.

``lowercase_arpa(src, dst)`` streams an ARPA file (gzipped or plain) into ``dst`` with every
word lower-cased (resource 11 is upper case, our normalized text lower case), keeping the
``\\data\\`` header and ``\\N-grams:`` sections, and checks each section's n-gram count against
the header (a truncated file is an ``ArpaError``); ``dst`` appears only when complete.
``vocab_lexicon(vocab, dst)`` writes the decoder's word lexicon from ``librispeech-vocab.txt``.

    python -m asr.corpora.librispeech_lm download --dest DIR [--files NAME ...] [--url URL]
    python -m asr.corpora.librispeech_lm prepare --lm-dir DIR --out DIR [--arpa NAME]
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from asr.corpora.librispeech import (DEFAULT_BASE_URL, MD5_LIST, FetchOptions, LibriSpeechError,
                                     parse_md5_list)
from asr.download import SPACE_MARGIN_BYTES, DiskSpaceError, DownloadError, download as fetch
from asr.text import normalize_text

# openslr resource 11: "LibriSpeech language models, vocabulary and G2P models".
RESOURCE = 11
OPENSLR_11_URL = f"{DEFAULT_BASE_URL}/{RESOURCE}"
PRUNED_3GRAM = "3-gram.pruned.1e-7.arpa.gz"
FULL_4GRAM = "4-gram.arpa.gz"
VOCAB = "librispeech-vocab.txt"
LEXICON = "librispeech-lexicon.txt"
# Characters (in whole lines) that lowercase_arpa reads per step.
ARPA_BATCH_CHARS = 1 << 23
# The name of the decoder lexicon prepare_lm writes.
LEXICON_OUT = "lexicon.txt"
_NGRAM_COUNT = re.compile(r"^ngram\s+(\d+)\s*=\s*(\d+)\s*$")
_SECTION = re.compile(r"^\\(\d+)-grams:\s*$")


class LMDownloadError(DownloadError):
    """Some resource-11 files failed; ``failures`` maps each file name to its reason."""

    def __init__(self, failures: dict[str, str], total: int):
        self.failures = dict(failures)
        lines = "\n".join(f"  {name}: {why}" for name, why in failures.items())
        super().__init__(f"{len(failures)} of {total} LibriSpeech LM file(s) failed:\n{lines}")


class ArpaError(ValueError):
    """A malformed or truncated ARPA file; the message names the file and the line."""


@dataclass(frozen=True)
class LMFile:
    """One file of resource 11: name, size in bytes, md5 and what it is."""
    name: str
    size: int
    md5: str
    what: str


# Sizes: Kaldi's egs/librispeech/s5/local/download_lm.sh (its ``sizes`` table, which that script
# checks every download against). md5: the FILE2MD5 table of sdrobert/pytorch-database-prep,
# librispeech.py, which checks every download against it; its resource-12 entries equal
# OPENSLR_MD5 of asr/corpora/librispeech.py (from PaddleSpeech), and its entry for
# librispeech-lm-norm.txt.gz equals the md5 that other, independent recipes check. Neither table
# was re-measured on openslr.org's files for this module.
LM_FILES: dict[str, LMFile] = {f.name: f for f in (
    LMFile(PRUNED_3GRAM, 34094057, "9a0f1325bcaf3a0f7b7be4be10823c2a",
           "3-gram ARPA pruned with threshold 1e-7 (Kaldi's tgmed)"),
    LMFile("3-gram.pruned.3e-7.arpa.gz", 13654242, "8f67ec741827742eee05799ab7605b50",
           "3-gram ARPA pruned with threshold 3e-7 (Kaldi's tgsmall)"),
    LMFile("3-gram.arpa.gz", 759636181, "74cbb837e582378c26c602e1c8cbcb9c",
           "3-gram ARPA, unpruned (Kaldi's tglarge)"),
    LMFile(FULL_4GRAM, 1355172078, "6abdcd5b055bd482e4f9defe91d40408",
           "4-gram ARPA, unpruned (Kaldi's fglarge)"),
    LMFile(VOCAB, 1737588, "bf3cc7a50112831ed8b0afa40cae96a5",
           "the 200,000 words of the LMs, one per line, upper case"),
    LMFile(LEXICON, 5627646, "28f72663f6bfed7cd346283c064c315b",
           "phonetic lexicon (CMUdict phones, G2P for the rest)"),
)}
DEFAULT_FILES: tuple[str, ...] = (PRUNED_3GRAM, VOCAB, LEXICON)


# --------------------------------------------------------------------------- download


def lm_checksums(names: Iterable[str], base_url: str, md5_file: str | os.PathLike | None,
                 folder: Path, options: FetchOptions = FetchOptions()) -> dict[str, str | None]:
    """{name: md5 or None} for ``names`` from the sources of the module docstring."""
    table = {name: f.md5 for name, f in LM_FILES.items()}
    if base_url.rstrip("/") != OPENSLR_11_URL:
        local = folder / f"md5sum-{RESOURCE}.txt"
        try:
            fetch(f"{base_url.rstrip('/')}/{MD5_LIST}", local, **options.download_kwargs())
            table.update(parse_md5_list(local))
        except (DownloadError, LibriSpeechError) as err:  # absent or not an md5 list
            local.unlink(missing_ok=True)
            print(f"note: no usable {MD5_LIST} at {base_url} ({err}); using the published md5s")
    if md5_file is not None:
        table.update(parse_md5_list(md5_file))
    return {name: table.get(name) for name in names}


def download_lm(dest: str | os.PathLike, base_url: str = OPENSLR_11_URL,
                files: Iterable[str] = DEFAULT_FILES, md5_file: str | os.PathLike | None = None,
                *, allow_unverified: bool = False,
                options: FetchOptions = FetchOptions()) -> dict[str, Path]:
    """Download and verify ``files`` of resource 11 from ``base_url`` (the folder holding them)
    into ``dest``; return {name: path}. See the module docstring. Raises LMDownloadError after
    the other files finished when some failed, DiskSpaceError before any download when the
    known sizes do not fit."""
    names = list(dict.fromkeys(files))
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    md5s = lm_checksums(names, base_url, md5_file, dest, options)
    failures: dict[str, str] = {}
    for name in names:
        if md5s[name] is None and not allow_unverified:
            failures[name] = (f"no md5 known for {name} (give a list with md5_file=/--md5-file, "
                              f"or allow unverified downloads)")
    _check_space(dest, [n for n in names if n not in failures], md5s)
    out: dict[str, Path] = {}
    for name in names:
        if name in failures:
            continue
        if md5s[name] is None:
            print(f"{name}: WARNING: downloading without checksum")
        try:
            out[name] = fetch(f"{base_url.rstrip('/')}/{name}", dest / name, md5=md5s[name],
                              **options.download_kwargs())
        except DownloadError as err:
            failures[name] = str(err)
            continue
        print(f"{name}: {'downloaded and verified' if md5s[name] else 'downloaded'}: {out[name]}")
    if failures:
        raise LMDownloadError({n: failures[n] for n in names if n in failures}, len(names))
    return out


def _check_space(dest: Path, names: list[str], md5s: dict[str, str | None]) -> None:
    """Raise DiskSpaceError when the published sizes of the files still to fetch do not fit."""
    need = 0
    for name in names:
        path, known = dest / name, LM_FILES.get(name)
        if known is None or md5s[name] != known.md5:
            continue  # another file than the published one: its size is unknown
        if path.is_file() and path.stat().st_size == known.size:
            continue
        part = path.with_name(path.name + ".part")
        need += max(known.size - (part.stat().st_size if part.is_file() else 0), 0)
    free = shutil.disk_usage(dest).free
    if need and need + SPACE_MARGIN_BYTES > free:
        raise DiskSpaceError(f"{dest}: the LM files need {need} bytes (plus a margin), "
                             f"but only {free} are free")


# --------------------------------------------------------------------------- ARPA


def open_text(path: str | os.PathLike, mode: str = "rt"):
    """Open a text file, gzipped (by its magic bytes when reading, by a .gz name when writing)
    or plain, as UTF-8."""
    path = Path(path)
    if "r" in mode:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
    else:
        gz = path.name.endswith(".gz")
    return (gzip.open if gz else open)(path, mode, encoding="utf-8")


def lowercase_arpa(src: str | os.PathLike, dst: str | os.PathLike) -> dict[int, int]:
    """Stream the ARPA ``src`` (gzipped or plain) into ``dst`` (gzipped when its name ends in
    .gz) with its words lower-cased; return {order: n-gram count}. Header and section lines are
    kept; log probabilities and backoff weights are copied as they are (lower-casing leaves
    numbers such as -1.2e-05 unchanged in value). Raises ArpaError (and leaves no ``dst``) when
    the file has no ``\\data\\`` header, sections out of order, a section whose n-gram count
    differs from the header, a first entry with the wrong number of words, or no ``\\end\\``.
    Words that differ only in case would merge: the resource-11 files are all upper case."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        with open_text(src) as fin, open_text(tmp, "wt") as fout:
            counts = _ArpaCopy(src).run(fin, fout)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return counts


class _ArpaCopy:
    """The state of one lowercase_arpa pass: where in the file it is, and the counts so far."""

    def __init__(self, src: Path):
        self.src = src
        self.line = 0  # lines read so far
        self.header: dict[int, int] = {}  # order -> count announced in \data\
        self.found: dict[int, int] = {}  # order -> n-grams read
        self.state = "preamble"  # preamble, data, a section order (int), end
        self.check_fields = 0  # the order of the section whose first entry is still unchecked

    def fail(self, why: str) -> ArpaError:
        return ArpaError(f"{self.src}:{self.line}: {why}")

    def run(self, fin: io.TextIOBase, fout: io.TextIOBase) -> dict[int, int]:
        while True:
            batch = fin.readlines(ARPA_BATCH_CHARS)
            if not batch:
                break
            text = "".join(batch)
            if isinstance(self.state, int) and "\\" not in text:
                self._entries(batch)  # the bulk: n-gram lines only, counted in C
            else:
                for line in batch:
                    self._one(line)
            fout.write(text.lower())
        if self.state != "end":
            raise self.fail("no \\end\\ line: the file is truncated")
        return dict(self.found)

    def _entries(self, batch: list[str]) -> None:
        blank = batch.count("\n") + batch.count("\r\n")
        if self.check_fields:
            first = next((x for x in batch if x.strip()), None)
            if first is not None:
                self._check_entry(first, self.line + batch.index(first) + 1)
        self.found[self.state] += len(batch) - blank
        self.line += len(batch)

    def _one(self, line: str) -> None:
        self.line += 1
        text = line.strip()
        if text.startswith("\\"):
            self._marker(text)
        elif self.state == "data":
            m = _NGRAM_COUNT.match(text)
            if m:
                self.header[int(m.group(1))] = int(m.group(2))
            elif text:
                raise self.fail(f"expected 'ngram N=COUNT' in the header, got {text[:80]!r}")
        elif isinstance(self.state, int):
            if text:
                if self.check_fields:
                    self._check_entry(line, self.line)
                self.found[self.state] += 1
        elif self.state == "end" and text:
            raise self.fail(f"text after \\end\\: {text[:80]!r}")

    def _marker(self, text: str) -> None:
        """A line starting with a backslash: \\data\\, \\N-grams: or \\end\\."""
        if self.state == "preamble" and text == "\\data\\":
            self.state = "data"
            return
        if self.state == "preamble":
            raise self.fail(f"expected \\data\\, got {text[:80]!r}")
        self._close_section()
        m = _SECTION.match(text)
        if m:
            order = int(m.group(1))
            expected = len(self.found) + 1
            if order != expected or order not in self.header:
                raise self.fail(f"section \\{order}-grams: found where \\{expected}-grams: "
                                f"(announced orders {sorted(self.header)}) was expected")
            self.state, self.check_fields, self.found[order] = order, order, 0
        elif text == "\\end\\" and len(self.found) == len(self.header) and self.header:
            self.state = "end"
        else:
            raise self.fail(f"unexpected {text[:80]!r} (sections read: {sorted(self.found)}, "
                            f"announced: {sorted(self.header)})")

    def _close_section(self) -> None:
        if isinstance(self.state, int) and self.found[self.state] != self.header[self.state]:
            raise self.fail(f"\\{self.state}-grams: holds {self.found[self.state]} entries, the "
                            f"header announces {self.header[self.state]}")

    def _check_entry(self, line: str, lineno: int) -> None:
        fields = line.split()
        order = self.check_fields
        if len(fields) not in (order + 1, order + 2):
            raise ArpaError(f"{self.src}:{lineno}: a {order}-gram entry needs a log probability, "
                            f"{order} word(s) and an optional backoff, got {line.strip()[:80]!r}")
        self.check_fields = 0


# --------------------------------------------------------------------------- lexicon


def vocab_lexicon(vocab: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """Write the beam decoder's word lexicon ``dst`` from ``librispeech-vocab.txt``: one word per
    line, lower-cased, in the vocabulary's order, each once; return {"words": n, "dropped": [...]}.

    The decoder's lexicon lists the words it may output, each spelled by the model's own
    tokenizer (a line is a word, or ``word<TAB>tok tok ...`` with a spelling given). The
    official ``librispeech-lexicon.txt`` spells words in phonemes, which a character or BPE CTC
    model does not emit, so the lexicon here is the vocabulary of the LMs, lower-cased like our
    normalized text; the decoder spells each word with the model's tokenizer. A word that text
    normalization would change (characters other than a-z and the apostrophe) is dropped and
    listed, since no normalized reference could contain it."""
    words: dict[str, None] = {}
    dropped: list[str] = []
    with open_text(vocab) as f:
        for line in f:
            for word in line.split()[:1]:
                low = word.lower()
                if normalize_text(low) == low:
                    words.setdefault(low)
                else:
                    dropped.append(word)
    if not words:
        raise ValueError(f"{vocab}: no words")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.write_text("".join(f"{w}\n" for w in words), encoding="utf-8")
    os.replace(tmp, dst)
    return {"words": len(words), "dropped": dropped}


def arpa_out_name(name: str) -> str:
    """The file prepare_lm writes for a resource-11 ARPA: '4-gram.arpa.gz' -> '4-gram.arpa'."""
    return name[:-3] if name.endswith(".gz") else name


def prepare_lm(lm_dir: str | os.PathLike, out_dir: str | os.PathLike,
               arpa: str = PRUNED_3GRAM) -> dict:
    """From the downloaded ``lm_dir``: ``out_dir/<arpa without .gz>`` (lower-cased, plain text)
    and ``out_dir/lexicon.txt`` (vocab_lexicon); return a summary, also written to
    ``out_dir/<arpa without .gz>.json`` (e.g. 3-gram.pruned.1e-7.arpa.json)."""
    lm_dir, out_dir = Path(lm_dir), Path(out_dir)
    lm_out, lex_out = out_dir / arpa_out_name(arpa), out_dir / LEXICON_OUT
    counts = lowercase_arpa(lm_dir / arpa, lm_out)
    lex = vocab_lexicon(lm_dir / VOCAB, lex_out)
    summary = {"lm": str(lm_out), "ngrams": {str(k): v for k, v in counts.items()},
               "lexicon": str(lex_out), "words": lex["words"], "dropped_words": lex["dropped"]}
    lm_out.with_name(f"{lm_out.name}.json").write_text(json.dumps(summary, indent=1) + "\n",
                                                       encoding="utf-8")
    print(f"{lm_out}: {', '.join(f'{v} {k}-grams' for k, v in counts.items())}; "
         f"{lex_out}: {lex['words']} words ({len(lex['dropped'])} dropped)")
    return summary


def main(argv: list[str] | None = None) -> int:
    """The command line of the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m asr.corpora.librispeech_lm",
                                     description="LibriSpeech LMs (openslr resource 11)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("download", help="download and verify resource-11 files (resumable)")
    p.add_argument("--dest", required=True, type=Path)
    p.add_argument("--url", default=OPENSLR_11_URL, help="the resource-11 folder (a mirror's)")
    p.add_argument("--files", nargs="+", default=list(DEFAULT_FILES), metavar="NAME",
                   help=f"known: {', '.join(LM_FILES)}")
    p.add_argument("--md5-file", type=Path, default=None, help="local md5 list")
    p.add_argument("--allow-unverified", action="store_true")
    p = sub.add_parser("prepare", help="lower-cased ARPA and word lexicon for the decoder")
    p.add_argument("--lm-dir", required=True, type=Path, help="the download folder")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--arpa", default=PRUNED_3GRAM, help="the ARPA to prepare")
    args = parser.parse_args(argv)
    try:
        if args.command == "download":
            download_lm(args.dest, args.url, args.files, args.md5_file,
                        allow_unverified=args.allow_unverified)
        else:
            prepare_lm(args.lm_dir, args.out, args.arpa)
    except (DownloadError, OSError, ValueError) as err:  # ArpaError, LibriSpeechError too
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
