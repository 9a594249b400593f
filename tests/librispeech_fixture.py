"""An offline LibriSpeech mirror for tests, built in a few seconds from real speech.

    mirror = build_mirror(root, {"test-clean": 3, "dev-clean-2": 4}, librispeech_dir, fsdd_dir)
    # root/12/test-clean.tar.gz, root/31/dev-clean-2.tar.gz, root/{12,31}/md5sum.txt
    mirror["utterances"]["test-clean"]   # sorted utterance ids in that archive

Every archive is laid out like the real one: ``LibriSpeech/<part>/<spk>/<chapter>/
<spk>-<chapter>-<utt>.flac`` with one ``<spk>-<chapter>.trans.txt`` per chapter (upper-case
text); resource 12 archives also hold ``LibriSpeech/SPEAKERS.TXT`` in the real format, covering
every speaker of the mirror. test-clean holds the five real LibriSpeech utterances of
``librispeech_dir``; every part gets ``n`` generated utterances: 2-5 FSDD digit recordings of
one speaker, resampled to 16 kHz, joined by short silences, transcript the digit words ("ONE
FIVE THREE"). The five FSDD speakers map to numeric ids; each part uses two of them with two
chapters each. Everything is deterministic for a seed, archives included (zero mtimes).

``build_lm_layout(root, texts)`` adds openslr resource 11 in miniature: ``root/11/`` holds
3-gram.pruned.1e-7.arpa.gz (a real 3-gram) and 4-gram.arpa.gz (a real 4-gram), both upper case
like the originals and estimated from ``texts`` (``arpa_text``: absolute discounting with
backoff, normalized), librispeech-vocab.txt, librispeech-lexicon.txt (letters as "phones") and
md5sum.txt.

Helpers for fault tests: ``write_md5_list`` (re-publish after replacing an archive),
``corrupt`` (bytes that no longer match md5sum.txt), ``hostile_archive`` (a member with "..",
an absolute member, a symlink leading out), ``truncate`` (a FLAC cut short). A plain module:
import it from any test.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import io
import math
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from asr.corpora.librispeech import ARCHIVE_SUFFIX, CORPUS_FOLDER, MD5_LIST, PARTS, SPEAKERS_FILE
from asr.text import DIGIT_WORDS

try:  # tests/ as a package or as a plain folder on sys.path
    from tests.test_download import add_tar
except ImportError:
    from test_download import add_tar

# Sample rate of LibriSpeech audio, Hz.
RATE = 16000
# FSDD recordings' sample rate, Hz.
FSDD_RATE = 8000
# FSDD recordings per digit and speaker (index 0-49).
FSDD_INDICES = 50
# Digits per generated utterance: at least, at most.
MIN_DIGITS, MAX_DIGITS = 2, 5
# Silence between digits, seconds: at least, at most.
MIN_PAUSE, MAX_PAUSE = 0.10, 0.30
# FSDD speakers used by each part, and chapters per speaker.
SPEAKERS_PER_PART, CHAPTERS_PER_SPEAKER = 2, 2
# The FSDD speakers of ../shared/data/fsdd, in id order.
FSDD_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "yweweler")
# Sex written to the mini SPEAKERS.TXT for speakers in id order: fixture values, alternating so
# both appear; they say nothing about the real people.
FIXTURE_SEXES = ("F", "M")
# Kinds of hostile archive hostile_archive can build.
HOSTILE_KINDS = ("dotdot", "absolute", "symlink")


def speaker_id(part: str, fsdd_speaker: str) -> str:
    """Numeric LibriSpeech-style id of an FSDD speaker within one part (ids differ per part, as
    LibriSpeech speakers never span parts): 100 * (part's index in PARTS + 1) + speaker index."""
    return str(100 * (list(PARTS).index(part) + 1) + FSDD_SPEAKERS.index(fsdd_speaker))


def build_mirror(root: str | Path, parts: dict[str, int], librispeech_dir: str | Path,
                 fsdd_dir: str | Path, seed: int = 0) -> dict:
    """Write root/<resource>/<part>.tar.gz for each part (``n`` generated utterances; the real
    ones too for test-clean) and root/<resource>/md5sum.txt. Returns {"root", "archives" {part:
    path}, "md5" {part: md5}, "utterances" {part: sorted ids}, "texts" {id: text}, "sexes"
    {speaker id: sex}}."""
    root = Path(root)
    files = {part: _generated(part, n, Path(fsdd_dir), seed) for part, n in parts.items()}
    if "test-clean" in files:
        files["test-clean"].update(_real(Path(librispeech_dir), "test-clean"))
    speakers = sorted({(_speaker(name), part) for part, f in files.items() for name in f},
                      key=lambda s: int(s[0]))
    sexes = {spk: FIXTURE_SEXES[i % len(FIXTURE_SEXES)] for i, (spk, _) in enumerate(speakers)}
    speakers_txt = _speakers_txt(speakers, sexes).encode()
    mirror = {"root": root, "archives": {}, "md5": {}, "utterances": {}, "texts": {},
              "sexes": sexes}
    for part, members in files.items():
        if PARTS[part].resource == 12:
            members[f"{CORPUS_FOLDER}/{SPEAKERS_FILE}"] = speakers_txt
        path = root / str(PARTS[part].resource) / f"{part}{ARCHIVE_SUFFIX}"
        write_tar(path, members)
        mirror["archives"][part] = path
        texts = _texts(members)
        mirror["utterances"][part] = sorted(texts)
        mirror["texts"].update(texts)
    for resource in {PARTS[p].resource for p in parts}:
        mirror["md5"].update(write_md5_list(root, resource))
    return mirror


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    """A gzipped tar of ``members`` (archive name -> bytes) with their folders, sorted, with
    zero timestamps so that equal content gives equal bytes."""
    folders = {str(p) for name in members for p in Path(name).parents if str(p) != "."}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name in sorted(folders | set(members)):
            if name in members:
                add_tar(tf, name, members[name], mode=0o644)
            else:
                add_tar(tf, name, type=tarfile.DIRTYPE, mode=0o755)
    return path


def write_md5_list(root: str | Path, resource: int) -> dict[str, str]:
    """Write root/<resource>/md5sum.txt ("<md5>  <file name>") for the archives there; return
    {part: md5}."""
    folder = Path(root) / str(resource)
    sums = {p.name: hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.glob(f"*{ARCHIVE_SUFFIX}"))}
    (folder / MD5_LIST).write_text("".join(f"{md5}  {name}\n" for name, md5 in sums.items()))
    return {name[: -len(ARCHIVE_SUFFIX)]: md5 for name, md5 in sums.items()}


def build_lm_layout(root: str | Path, texts, extra_words=("ZEBRA", "QUILT")) -> dict:
    """Write root/11/ in the layout of openslr resource 11 from ``texts`` (upper-case
    sentences): two gzipped ARPA files, the vocabulary (every word of ``texts`` plus
    ``extra_words``, sorted), a lexicon and md5sum.txt. Returns {"folder", "md5" {name: md5},
    "words" (the vocabulary), "orders" {ARPA name: order}}."""
    folder = Path(root) / "11"
    folder.mkdir(parents=True, exist_ok=True)
    sentences = [t.split() for t in texts if t.split()]
    words = sorted({w for s in sentences for w in s} | set(extra_words))
    orders = {"3-gram.pruned.1e-7.arpa.gz": 3, "4-gram.arpa.gz": 4}
    for name, order in orders.items():
        with open(folder / name, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            gz.write(arpa_text(sentences, order, vocab=words).encode())
    (folder / "librispeech-vocab.txt").write_text("".join(f"{w}\n" for w in words))
    (folder / "librispeech-lexicon.txt").write_text("".join(f"{w}\t{' '.join(w)}\n" for w in words))
    sums = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.name != MD5_LIST}
    (folder / MD5_LIST).write_text("".join(f"{md5}  {name}\n" for name, md5 in sums.items()))
    return {"folder": folder, "md5": sums, "words": words, "orders": orders}


def arpa_text(sentences: list[list[str]], order: int, discount: float = 0.5, vocab=()) -> str:
    """A valid ARPA back-off LM of ``order`` from word lists: add-one unigrams (over the words
    of ``sentences``, those of ``vocab`` and <unk>), higher orders with absolute ``discount``
    and back-off weights that normalize every context's distribution; "<s>" gets -99 like
    SRILM and KenLM write it."""
    grams: list[Counter] = [Counter() for _ in range(order + 1)]
    for words in sentences:
        seq = ["<s>", *words, "</s>"]
        for n in range(1, order + 1):
            grams[n].update(tuple(seq[i:i + n]) for i in range(len(seq) - n + 1))
    grams[1].update({(w,): 0 for w in vocab})
    context_total: Counter = Counter()
    for n in range(2, order + 1):
        for g, c in grams[n].items():
            context_total[g[:-1]] += c
    unigrams = {g[0]: c for g, c in grams[1].items() if g[0] != "<s>"} | {"<unk>": 0}
    total, size = sum(unigrams.values()), len(unigrams)

    @functools.lru_cache(maxsize=None)
    def prob(w: str, h: tuple) -> float:
        if not h:
            return (unigrams.get(w, 0) + 1) / (total + size)
        c = grams[len(h) + 1].get((*h, w), 0)
        if c:
            return (c - discount) / context_total[h]
        return backoff(h) * prob(w, h[1:])

    @functools.lru_cache(maxsize=None)
    def backoff(h: tuple) -> float:
        seen = [g[-1] for g in grams[len(h) + 1] if g[:-1] == h]
        if not seen:
            return 1.0
        left = 1 - sum((grams[len(h) + 1][(*h, w)] - discount) / context_total[h] for w in seen)
        return left / max(1 - sum(prob(w, h[1:]) for w in seen), 1e-9)

    lines = ["\\data\\"] + [f"ngram {n}={len(grams[n]) + (n == 1)}" for n in range(1, order + 1)]
    for n in range(1, order + 1):
        lines += ["", f"\\{n}-grams:"]
        entries = sorted(grams[n]) + ([("<unk>",)] if n == 1 else [])
        for g in entries:
            p = -99.0 if g == ("<s>",) else math.log10(prob(g[-1], g[:-1]))
            bo = f"\t{math.log10(backoff(g)):.6f}" if n < order and g in context_total else ""
            lines.append(f"{p:.6f}\t{' '.join(g)}{bo}")
    return "\n".join(lines + ["", "\\end\\", ""])


def corrupt(path: str | Path, nbytes: int = 64) -> None:
    """Invert ``nbytes`` bytes in the middle of ``path`` (same size, different md5)."""
    data = bytearray(Path(path).read_bytes())
    mid = len(data) // 2
    data[mid:mid + nbytes] = bytes(b ^ 0xFF for b in data[mid:mid + nbytes])
    Path(path).write_bytes(bytes(data))


def truncate(path: str | Path, fraction: float = 0.5) -> None:
    """Cut a file to ``fraction`` of its size: a FLAC whose header promises more frames."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * fraction)])


def hostile_archive(path: str | Path, part: str, kind: str, outside: str | Path) -> Path:
    """A LibriSpeech-looking archive for ``part`` with one member that, extracted into a
    folder whose parent is ``outside``, would write ``outside/escaped-<kind>.txt``: "dotdot"
    (a "../" name), "absolute" (an absolute name), "symlink" (LibriSpeech/door -> "../..",
    then a file written through it)."""
    if kind not in HOSTILE_KINDS:
        raise ValueError(f"unknown hostile archive kind {kind!r}; known: {HOSTILE_KINDS}")
    chapter = f"{CORPUS_FOLDER}/{part}/19/198"
    escaped = f"escaped-{kind}.txt"
    with tarfile.open(path, "w:gz") as tf:
        for folder in (CORPUS_FOLDER, f"{CORPUS_FOLDER}/{part}", f"{CORPUS_FOLDER}/{part}/19",
                       chapter):
            add_tar(tf, folder, type=tarfile.DIRTYPE, mode=0o755)
        add_tar(tf, f"{chapter}/19-198.trans.txt", b"19-198-0000 HELLO\n")
        if kind == "dotdot":
            add_tar(tf, f"../{escaped}", b"evil")
        elif kind == "absolute":
            add_tar(tf, str(Path(outside).resolve() / escaped), b"evil")
        else:
            add_tar(tf, f"{CORPUS_FOLDER}/door", type=tarfile.SYMTYPE, linkname="../..")
            add_tar(tf, f"{CORPUS_FOLDER}/door/{escaped}", b"evil")
    return Path(path)


# --------------------------------------------------------------------------- content


def _generated(part: str, count: int, fsdd_dir: Path, seed: int) -> dict[str, bytes]:
    """``count`` digit-string utterances for ``part``: {archive name: bytes} (FLACs and
    transcripts), spread round-robin over its speakers and their chapters."""
    p_index = list(PARTS).index(part)
    rng = np.random.default_rng([seed, p_index])
    voices = [FSDD_SPEAKERS[(p_index + k) % len(FSDD_SPEAKERS)] for k in range(SPEAKERS_PER_PART)]
    chapters: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    for n in range(count):
        voice = voices[n % len(voices)]
        spk = speaker_id(part, voice)
        chapter = f"{spk}{(n // len(voices)) % CHAPTERS_PER_SPEAKER}"
        audio, words = _digit_string(voice, fsdd_dir, rng)
        chapters.setdefault((spk, chapter), []).append((words, _flac(audio)))
    members = {}
    for (spk, chapter), utts in chapters.items():
        folder = f"{CORPUS_FOLDER}/{part}/{spk}/{chapter}"
        lines = []
        for i, (words, flac) in enumerate(utts):
            uid = f"{spk}-{chapter}-{i:04d}"
            members[f"{folder}/{uid}.flac"] = flac
            lines.append(f"{uid} {words}\n")
        members[f"{folder}/{spk}-{chapter}.trans.txt"] = "".join(lines).encode()
    return members


def _digit_string(voice: str, fsdd_dir: Path, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """2-5 random recordings of one FSDD speaker at 16 kHz joined by silences; their words."""
    digits = rng.integers(0, 10, int(rng.integers(MIN_DIGITS, MAX_DIGITS + 1)))
    pieces = []
    for j, digit in enumerate(digits):
        wav = fsdd_dir / f"{digit}_{voice}_{int(rng.integers(0, FSDD_INDICES))}.wav"
        audio, rate = sf.read(str(wav), dtype="float32")
        if rate != FSDD_RATE:
            raise ValueError(f"{wav}: expected {FSDD_RATE} Hz, found {rate}")
        if j:
            pieces.append(np.zeros(int(rng.uniform(MIN_PAUSE, MAX_PAUSE) * RATE), np.float32))
        pieces.append(soxr.resample(audio, FSDD_RATE, RATE))
    return np.concatenate(pieces), " ".join(DIGIT_WORDS[d].upper() for d in digits)


def _flac(audio: np.ndarray) -> bytes:
    """16 kHz mono float samples as 16-bit FLAC bytes."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _real(librispeech_dir: Path, part: str) -> dict[str, bytes]:
    """The real LibriSpeech files of ``part`` under ``librispeech_dir``, by archive name."""
    folder = librispeech_dir / part
    return {f"{CORPUS_FOLDER}/{p.relative_to(librispeech_dir)}": p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.suffix in (".flac", ".txt")}


def _speaker(name: str) -> str:
    """Speaker id of an archive member under LibriSpeech/<part>/<speaker>/."""
    return name.split("/")[2]


def _texts(members: dict[str, bytes]) -> dict[str, str]:
    """{utterance id: text} from the transcripts among ``members``."""
    texts = {}
    for name, data in members.items():
        if name.endswith(".trans.txt"):
            for line in data.decode().splitlines():
                uid, _, text = line.partition(" ")
                texts[uid] = text
    return texts


def _speakers_txt(speakers: list[tuple[str, str]], sexes: dict[str, str]) -> str:
    """A mini SPEAKERS.TXT in LibriSpeech's format for (speaker id, part) pairs."""
    lines = ["; Speakers of the test mirror (sexes are fixture values)",
             ";ID  |SEX| SUBSET           |MINUTES| NAME"]
    for spk, part in speakers:
        lines.append(f"{spk:<5}| {sexes[spk]} | {part:<16} | {1.0:5.2f} | reader {spk}")
    return "\n".join(lines) + "\n"
