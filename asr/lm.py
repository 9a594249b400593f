"""N-gram language models for beam-search decoding (``asr lm``): build, check, read the vocabulary.

``build_lm(texts, order, out)`` estimates an interpolated modified Kneser-Ney model (Chen &
Goodman 1998) of normalized sentences and writes it as ARPA text. KenLM's ``lmplz`` does the work
when it is installed (``find_lmplz``, or a path given; tools/build_lmplz.sh builds it), always with
``--discount_fallback`` so that small corpora lacking a count-of-count get the fallback
discounts; otherwise the built-in writer, asr.kneser_ney, does, holding all n-gram counts in
memory (a million sentences: about 1 GiB). The two give the same model (asr.kneser_ney states
the estimate, its fallback discounts and lmplz's one quirk); lmplz is faster and needs less
memory on big corpora. Input words ``<s> </s> <unk>`` are dropped, as lmplz reads them as spaces.

ARPA layout (plain UTF-8 text, or gzip when the name ends in ".gz"): a ``\\data\\`` header with
``ngram N=count`` lines, then the ``\\N-grams:`` sections, one ``log10(p)<TAB>words[<TAB>log10(backoff)]``
line per n-gram (no backoff on the highest order), then ``\\end\\``. ``<s>``'s probability is
never used (the built-in writer writes -99, lmplz 0); its backoff is.

``lm_command`` (the CLI) also writes, beside ``<stem>.arpa`` or ``<stem>.arpa.gz``, the vocabulary
``<stem>.vocab.txt``: the words of the model, one per line, sorted, without ``<s> </s> <unk>``.
A lexicon in the model's output symbols is not written here: it depends on the acoustic model
(see asr.lexicon, which spells these words).
"""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

from asr.kneser_ney import SPECIAL_WORDS, adjusted_counts, write_arpa
from asr.text import normalize_text

MIN_ORDER = 2  # KenLM loads nothing below a bigram model
MAX_ORDER = 6  # KenLM's default KENLM_MAX_ORDER (lmplz and the decoder's loader are built with it)
KENLM_BINARY_MAGIC = b"mmap lm http://kheafield.com/code"
GZIP_MAGIC = b"\x1f\x8b"
LMPLZ_MIN_MEMORY_MB = 256  # lmplz's -S: ten times the text's size within [this, half the RAM]
PROGRESS_MIN_BYTES = 1 << 20  # lm_command shows a progress bar for text files at least this big


UNITS = ("words", "chars")  # what lm_command counts: words, or characters (a token LM)
TOKEN_SEPARATOR = "|"  # the space of a character LM (an ARPA word cannot be a space)


class LMError(ValueError):
    """An LM file or LM build that cannot be used; the one-line message names the file."""


# ------------------------------------------------------------------------------ building


def _check_order(order: int) -> None:
    if isinstance(order, bool) or not isinstance(order, int) or not MIN_ORDER <= order <= MAX_ORDER:
        raise ValueError(f"LM order must be an integer from {MIN_ORDER} to {MAX_ORDER} "
                         f"(KenLM needs at least a bigram model), got {order!r}")


def _sentences(texts: Iterable[str], stats: Counter) -> Iterator[list[str]]:
    """The words of each non-empty sentence, special words dropped (lmplz reads them as spaces);
    counts "sentences" and "words" in ``stats``."""
    for text in texts:
        words = [w for w in text.split() if w not in SPECIAL_WORDS]
        if words:
            stats["sentences"] += 1
            stats["words"] += len(words)
            yield words


def build_lm(texts: Iterable[str], order: int, out: Path, lmplz: str | None | bool = None) -> dict:
    """Write the modified Kneser-Ney ARPA model of ``texts`` (normalized sentences, words
    separated by spaces; empty ones skipped) at ``out`` (gzip when it ends in ".gz"), atomically.

    ``lmplz``: None uses ``find_lmplz()``'s lmplz if there is one, else the built-in writer; False
    forces the built-in writer; True requires lmplz; a string is the lmplz executable. Returns
    {"order", "ngrams": [count per order, unigrams first], "sentences", "words",
    "engine": "lmplz" | "builtin"}. ValueError for a bad order, LMError for no text or a failed
    lmplz run."""
    _check_order(order)
    out = Path(out)
    exe = _find_lmplz(lmplz)
    stats: Counter = Counter()
    tmp = out.with_name(out.name + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if exe is None:
            ngrams = _builtin_arpa(_sentences(texts, stats), order, tmp, stats)
        else:
            ngrams = _lmplz_arpa(exe, _sentences(texts, stats), order, tmp, stats)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"order": order, "ngrams": ngrams, "sentences": stats["sentences"], "words": stats["words"],
            "engine": "builtin" if exe is None else "lmplz"}


def find_lmplz() -> str | None:
    """The ``lmplz`` on PATH, else the one beside this Python (the virtual environment's bin
    folder, where tools/build_lmplz.sh installs it), else None."""
    found = shutil.which("lmplz")
    if found is None:
        beside = Path(sys.executable).parent / "lmplz"
        found = str(beside) if os.access(beside, os.X_OK) and beside.is_file() else None
    return found


def _find_lmplz(lmplz: str | None | bool) -> str | None:
    """The lmplz executable to run for build_lm's ``lmplz``, or None for the built-in writer."""
    if lmplz is False:
        return None
    if lmplz is None or lmplz is True:
        found = find_lmplz()
        if found is None and lmplz is True:
            raise LMError("lmplz: not found on PATH nor in the virtual environment (tools/build_lmplz.sh builds it)")
        return found
    found = shutil.which(str(lmplz))
    if found is None:
        raise LMError(f"{lmplz}: lmplz executable not found")
    return found


def _open_write(path: Path, gz: bool):
    """A text stream writing ``path`` (gzip without a timestamp when ``gz``, so builds repeat)."""
    if gz:
        return io.TextIOWrapper(gzip.GzipFile(path, "wb", compresslevel=6, mtime=0), encoding="utf-8")
    return open(path, "w", encoding="utf-8")


def _lmplz_arpa(exe: str, sentences: Iterator[list[str]], order: int, tmp: Path, stats: Counter) -> list[int]:
    """Run lmplz on the sentences; write its ARPA at ``tmp``; return the n-gram counts."""
    gz = tmp.name.endswith(".gz.tmp")
    with tempfile.TemporaryDirectory(prefix="lmplz-", dir=tmp.parent) as work:  # beside the output: room for it
        text = Path(work) / "text.txt"
        with open(text, "w", encoding="utf-8") as f:
            for words in sentences:
                f.write(" ".join(words) + "\n")
        if not stats["sentences"]:
            raise LMError(f"{tmp.with_suffix('')}: no text to build an LM from")
        total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
        memory = min(max(LMPLZ_MIN_MEMORY_MB, 10 * text.stat().st_size // (1 << 20)), total_mb // 2)
        arpa = Path(work) / "lm.arpa"
        cmd = [exe, "-o", str(order), "--discount_fallback", "-S", f"{memory}M", "-T", work,
               "--text", str(text), "--arpa", str(arpa)]
        run = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if run.returncode != 0:
            lines = [line for line in run.stderr.splitlines() if line.strip()]
            raise LMError(f"{exe}: lmplz failed (exit {run.returncode}): {lines[-1] if lines else 'no message'}")
        with open(arpa, "rb") as src, (gzip.GzipFile(tmp, "wb", compresslevel=6, mtime=0) if gz
                                       else open(tmp, "wb")) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return _scan_arpa(tmp, full=False)[0]


def _builtin_arpa(sentences: Iterator[list[str]], order: int, tmp: Path, stats: Counter) -> list[int]:
    """Estimate the model in memory (asr.kneser_ney) and write its ARPA at ``tmp``; return the
    n-gram counts."""
    counts, ids = adjusted_counts(sentences, order)
    if not stats["sentences"]:
        raise LMError(f"{tmp.with_suffix('')}: no text to build an LM from")
    with _open_write(tmp, tmp.name.endswith(".gz.tmp")) as f:
        return write_arpa(counts, list(ids), f)


# ------------------------------------------------------------------------------ reading


def _open_text(path: Path):
    """A text stream of an ARPA file, plain or gzip (recognized by its magic bytes)."""
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == GZIP_MAGIC:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _is_kenlm_binary(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(KENLM_BINARY_MAGIC)) == KENLM_BINARY_MAGIC


def _scan_arpa(path: Path, full: bool) -> tuple[list[int], list[str]]:
    """Check an ARPA file's header, sections and counts; return (n-gram counts, unigram words).
    ``full`` also checks every line's fields (else only the unigrams' and the counts)."""
    path = Path(path)
    if not path.is_file():
        raise LMError(f"{path}: LM file not found")
    try:
        with _open_text(path) as f:
            return _parse_arpa(path, f, full)
    except UnicodeDecodeError:
        raise LMError(f"{path}: not an ARPA file (not UTF-8 text)") from None
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError, a cut gzip stream an EOFError
        raise LMError(f"{path}: unreadable LM file ({type(err).__name__}: {err})") from None


def _parse_arpa(path: Path, lines: Iterable[str], full: bool) -> tuple[list[int], list[str]]:
    counts: list[int] = []  # from the header
    found: list[int] = []  # lines of each section read so far
    words: list[str] = []
    started = ended = False
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if not started:
            if line != "\\data\\":
                raise LMError(f"{path}: not an ARPA file (no \\data\\ header)")
            started = True
        elif line.startswith("\\"):
            n = len(found)
            if n and found[-1] != counts[n - 1]:
                raise LMError(f"{path}: corrupt ARPA file: {found[-1]} {n}-grams where the header says {counts[n - 1]}")
            if line == "\\end\\":
                ended = True
                break
            if line != f"\\{n + 1}-grams:" or n >= len(counts):
                raise LMError(f"{path}: corrupt ARPA file: {line!r} where "
                              + (f"'\\{n + 1}-grams:'" if n < len(counts) else "'\\end\\'") + " should be")
            found.append(0)
        elif not found:  # the header
            key, _, value = line.partition("=")
            if key.split() != ["ngram", str(len(counts) + 1)] or not value.strip().isdigit():
                raise LMError(f"{path}: bad ARPA header line {line!r} (expected 'ngram {len(counts) + 1}=COUNT')")
            counts.append(int(value))
        else:
            n = len(found)
            found[-1] += 1
            if n == 1 or full:
                if "\t" in line:  # lmplz and this module: prob<TAB>words[<TAB>backoff]
                    parts = line.split("\t")
                    grams = parts[1].split() if len(parts) > 1 else []
                    fields = [parts[0], *grams, *parts[2:]]
                    ok = len(grams) == n and len(parts) <= 2 + (n < len(counts))
                else:
                    fields = line.split()
                    ok = len(fields) in (n + 1, n + 1 + (n < len(counts)))
                if not ok:
                    raise LMError(f"{path}: bad {n}-gram line {line!r}")
                try:
                    [float(x) for x in (fields[0], *fields[n + 1:])]
                except ValueError:
                    raise LMError(f"{path}: bad {n}-gram line {line!r} (its numbers are not numbers)") from None
                if n == 1:
                    words.append(fields[1])
    if not started:
        raise LMError(f"{path}: not an ARPA file (no \\data\\ header)")
    if not counts:
        raise LMError(f"{path}: ARPA header lists no n-gram counts")
    if not ended or len(found) != len(counts):
        where = f"in the {len(found)}-grams" if found else "after the header"
        raise LMError(f"{path}: truncated ARPA file (it ends {where}, without \\end\\)" if not ended else
                      f"{path}: corrupt ARPA file: \\end\\ after {len(found)} of {len(counts)} sections")
    return counts, words


def arpa_vocabulary(path: Path) -> list[str] | None:
    """The unigram words of an ARPA file (plain or gzip; ``<s> </s> <unk>`` included), in file
    order; None for a KenLM binary (its vocabulary is unknown without loading it). LMError for a
    missing, non-ARPA, truncated or miscounted file (every section's count is checked)."""
    path = Path(path)
    if path.is_file() and _is_kenlm_binary(path):
        return None
    return _scan_arpa(path, full=False)[1]


def check_lm(path: Path) -> None:
    """Validate an LM file: a KenLM binary (recognized by its magic bytes; KenLM checks the rest
    when it loads it), or an ARPA file (plain or gzip) whose header, sections, counts and every
    line's fields are checked. LMError names the path."""
    path = Path(path)
    if path.is_file() and _is_kenlm_binary(path):
        return  # its body is checked by KenLM when it loads the file
    _scan_arpa(path, full=True)


# ------------------------------------------------------------------------------ asr lm


def vocab_path(out: Path) -> Path:
    """Where ``lm_command`` writes the vocabulary of the LM ``out``: ``<stem>.vocab.txt``, the stem
    being the name without ".gz" and then ".arpa" (lm.arpa.gz -> lm.vocab.txt)."""
    out = Path(out)
    name = out.name[:-3] if out.name.endswith(".gz") else out.name
    name = name[:-5] if name.endswith(".arpa") else Path(name).stem
    return out.with_name(f"{name}.vocab.txt")


def _read_texts(files: list[Path], vocabulary: set) -> Iterator[str]:
    """Normalized lines of text files (one sentence a line) or .jsonl manifests (their "text"
    fields), with a progress bar over the bytes when there are many; adds words to ``vocabulary``."""
    from tqdm import tqdm

    files = [Path(p) for p in files]
    for p in files:
        if not p.is_file():
            raise LMError(f"{p}: text file not found")
    total = sum(p.stat().st_size for p in files)
    with tqdm(total=total, unit="B", unit_scale=True, desc="lm: counting", leave=False,
              disable=True if total < PROGRESS_MIN_BYTES else None) as bar:
        for p in files:
            yield from _file_texts(p, bar, vocabulary)


def _file_texts(p: Path, bar, vocabulary: set) -> Iterator[str]:
    """The normalized sentences of one text file or manifest (see ``_read_texts``)."""
    try:
        with open(p, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                bar.update(len(line.encode("utf-8")))
                if p.suffix == ".jsonl":
                    if not line.strip():
                        continue
                    try:
                        line = json.loads(line)["text"]
                    except (ValueError, KeyError, TypeError):
                        raise LMError(f"{p}:{number}: not a manifest line with a \"text\" field") from None
                    if not isinstance(line, str):
                        raise LMError(f"{p}:{number}: \"text\" is not a string")
                text = normalize_text(line)
                if text:
                    vocabulary.update(text.split())
                    yield text
    except UnicodeDecodeError:
        raise LMError(f"{p}: not UTF-8 text") from None


def as_characters(text: str) -> str:
    """A normalized sentence as the "words" of a character LM: "one two" -> "o n e | t w o"."""
    return " ".join(TOKEN_SEPARATOR if c == " " else c for c in text)


def lm_command(texts_files: list[Path], order: int, out: Path, lmplz: str | None | bool = None,
               units: str = "words") -> dict:
    """``asr lm``: normalize the lines of ``texts_files`` (plain text, one sentence a line, or .jsonl
    manifests), build the LM at ``out`` (``build_lm``) and write its vocabulary at ``vocab_path(out)``.
    ``units="chars"`` builds a character LM instead (``as_characters``: the space spelled
    TOKEN_SEPARATOR), for beam search without a lexicon; its vocabulary file lists the words of the
    text all the same. Returns build_lm's summary plus "arpa", "vocabulary" (paths) and
    "vocabulary_size"."""
    _check_order(order)
    if units not in UNITS:
        raise ValueError(f"units {units!r}: choose one of {', '.join(UNITS)}")
    seen: set = set()
    texts = _read_texts(texts_files, seen)
    if units == "chars":
        texts = (as_characters(t) for t in texts)
    summary = build_lm(texts, order, Path(out), lmplz)
    words = sorted(seen - set(SPECIAL_WORDS))
    vocab = vocab_path(out)
    tmp = vocab.with_name(vocab.name + ".tmp")
    tmp.write_text("".join(w + "\n" for w in words), encoding="utf-8")
    os.replace(tmp, vocab)
    return {**summary, "arpa": str(out), "vocabulary": str(vocab), "vocabulary_size": len(words)}
