"""Tokens files: the output vocabulary a model is trained with (``asr train --tokens FILE``).

``build_tokens(manifests, out_path, kind, vocab_size)`` reads the transcripts of the training
manifests, normalizes them (asr.text.normalize_text) and writes the vocabulary as JSON:
- kind "chars": the default character vocabulary (blank, space, a-z, apostrophe); characters
  of the transcripts outside it are reported (training skips and counts them);
- kind "bpe": a SentencePiece BPE model trained on the transcripts. ``vocab_size`` counts
  SentencePiece's pieces including <unk>; <unk> is not a model output (the blank takes its
  place), so the model has exactly ``vocab_size`` outputs. Every character of the training
  transcripts gets a piece (character coverage 1.0, no byte fallback); characters of other
  text that have none are skipped and counted by ``Vocabulary.encode``, as with characters.
  Transcripts too few for ``vocab_size`` give fewer pieces (SentencePiece's soft limit), which
  is reported; a size below the number of distinct characters is an error.

A build is idempotent: the file records a fingerprint of the normalized transcripts and the
settings, and an unchanged one is left alone. Otherwise the file is written anew, atomically.

File layout:
    {"format": "asr-tokens", "version": 1, "kind": "chars" | "bpe",
     "settings": {...}, "corpus": {"manifests": [file names], "transcripts": N, "texts_sha256"},
     "fingerprint": sha256 of version, settings and texts, "vocabulary": Vocabulary.to_dict()}
"""
from __future__ import annotations

import hashlib
import io
import json
import random
from collections import Counter
from pathlib import Path
from types import MappingProxyType
from typing import Callable

from asr.text import DEFAULT_CHARS, TOKENIZERS, WORD_BOUNDARY, Vocabulary, normalize_text

TOKENS_FORMAT = "asr-tokens"
TOKENS_VERSION = 1
DEFAULT_VOCAB_SIZE = 500  # BPE pieces including <unk> = model outputs including the blank
MAX_SENTENCES = 1_000_000  # transcripts given to the BPE trainer; a seeded sample above this
SAMPLE_SEED = 0  # the sample's random seed
MAX_SENTENCE_BYTES = 1 << 16  # SentencePiece silently skips longer sentences (its default is 4192)

# SentencePiece trainer settings; vocab_size comes from the caller. Transcripts arrive normalized,
# so its own normalization is off ("identity" keeps the model small: no character map).
# One thread and no shuffling (the sample is drawn here, seeded) make the model deterministic.
SENTENCEPIECE_SETTINGS = MappingProxyType({
    "model_type": "bpe",
    "normalization_rule_name": "identity",
    "character_coverage": 1.0,
    "byte_fallback": False,
    "unk_id": 0,  # the only special piece; the blank takes its place among the outputs
    "bos_id": -1,
    "eos_id": -1,
    "pad_id": -1,
    "hard_vocab_limit": False,  # a corpus too small for vocab_size gives fewer pieces, not an error
    "num_threads": 1,
    "input_sentence_size": 0,
    "shuffle_input_sentence": False,
    "max_sentence_length": MAX_SENTENCE_BYTES,
    "minloglevel": 2,  # errors only: the trainer's progress lines would flood the training log
})


class TokensError(ValueError):
    """A tokens file that cannot be used, or settings that cannot produce one."""


def read_transcripts(manifests) -> list[str]:
    """Normalized transcripts of every utterance of ``manifests``, in order (empty ones kept)."""
    from asr.manifest import read_manifest

    return [normalize_text(u.text) for m in manifests for u in read_manifest(m)]


def train_bpe(texts: list[str], vocab_size: int = DEFAULT_VOCAB_SIZE, max_sentences: int = MAX_SENTENCES,
              seed: int = SAMPLE_SEED) -> Vocabulary:
    """A BPE vocabulary (blank at 0) trained with SentencePiece on normalized ``texts``.

    Above ``max_sentences`` non-empty texts, a sample seeded with ``seed`` is used. Raises
    TokensError when there is no text or ``vocab_size`` is below what the characters need."""
    import sentencepiece

    sentences = [t for t in texts if t]
    if not sentences:
        raise TokensError("no transcripts to train a BPE model on (all are empty)")
    # each distinct character is a piece, the space as the word boundary, plus <unk>
    chars = {c for t in sentences for c in set(t)} | {" "}
    needed = len(chars) + 1
    if vocab_size < needed:
        raise TokensError(
            f"vocab_size {vocab_size} is too small for these transcripts: BPE needs at least {needed} "
            f"({len(chars) - 1} distinct characters, the word boundary {WORD_BOUNDARY!r} and <unk>, whose "
            "place the blank takes); use a larger vocab_size, or kind 'chars'"
        )
    if len(sentences) > max_sentences:
        sentences = random.Random(seed).sample(sentences, max_sentences)
    proto = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.Train(
            sentence_iterator=iter(sentences), model_writer=proto, vocab_size=vocab_size, **SENTENCEPIECE_SETTINGS
        )
    except RuntimeError as err:
        raise TokensError(f"SentencePiece could not train a BPE model of {vocab_size} pieces: {err}") from None
    return Vocabulary.from_sentencepiece(proto.getvalue())


def build_tokens(
    manifests,
    out_path,
    kind: str = "chars",
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    *,
    max_sentences: int = MAX_SENTENCES,
    seed: int = SAMPLE_SEED,
    log: Callable[[str], None] = print,
) -> Vocabulary:
    """Build the vocabulary of ``kind`` ("chars" or "bpe") from the transcripts of
    ``manifests`` and write it to ``out_path`` (see the module docstring); return it.

    When ``out_path`` already holds a vocabulary built from the same transcripts and
    settings, it is loaded and returned, and nothing is written. ``log`` gets one line per
    event (built, up to date, characters outside the default set, fewer pieces than asked)."""
    from asr.checkpoint import write_json

    if kind not in TOKENIZERS:
        raise TokensError(f"kind must be one of {', '.join(TOKENIZERS)}, got {kind!r}")
    out_path = Path(out_path)
    manifests = [Path(m) for m in manifests]
    if not manifests:
        raise TokensError("no manifests given: the vocabulary is built from the training transcripts")
    texts = read_transcripts(manifests)
    if kind == "bpe":
        settings = {"kind": kind, "vocab_size": int(vocab_size), "max_sentences": int(max_sentences), "seed": int(seed)}
    else:
        settings = {"kind": kind, "chars": DEFAULT_CHARS}
    texts_sha256 = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()
    fingerprint = hashlib.sha256(
        json.dumps([TOKENS_VERSION, settings, texts_sha256], sort_keys=True).encode("utf-8")
    ).hexdigest()

    if out_path.exists():
        previous = _read_tokens_json(out_path) if out_path.is_file() else None
        if previous is None or previous.get("format") != TOKENS_FORMAT:
            raise TokensError(f"{out_path} exists and is not a tokens file; not overwriting it")
        if previous.get("fingerprint") == fingerprint:
            vocab = load_tokens(out_path)
            log(f"{out_path}: up to date ({vocab.kind}, {vocab.size} outputs, same transcripts and settings); "
                "not rebuilt")
            return vocab
        log(f"{out_path}: transcripts or settings changed; rebuilding")

    outside, default = Counter(), Vocabulary()
    for t in texts:
        default.encode(t, outside)
    if kind == "bpe":
        vocab = train_bpe(texts, vocab_size, max_sentences, seed)
        if vocab.size < vocab_size:
            log(f"{out_path}: the transcripts support only {vocab.size} of the {vocab_size} outputs asked for; "
                f"the vocabulary has {vocab.size}")
        if outside:
            log(f"{out_path}: characters outside {DEFAULT_CHARS!r} have pieces of their own: {_counts(outside)}")
    else:
        vocab = Vocabulary()
        if outside:
            log(f"{out_path}: characters outside the vocabulary (training skips them): {_counts(outside)}")
    data = {
        "format": TOKENS_FORMAT,
        "version": TOKENS_VERSION,
        "kind": vocab.kind,
        "settings": settings,
        "corpus": {"manifests": [m.name for m in manifests], "transcripts": len(texts), "texts_sha256": texts_sha256},
        "fingerprint": fingerprint,
        "vocabulary": vocab.to_dict(),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(out_path, data)  # a temporary file renamed into place
    log(f"{out_path}: wrote a {vocab.kind} vocabulary of {vocab.size} outputs from {len(texts)} transcripts")
    return vocab


def load_tokens(path) -> Vocabulary:
    """The Vocabulary of a tokens file written by ``build_tokens``; TokensError says why not."""
    path = Path(path)
    if not path.is_file():
        raise TokensError(f"{path}: tokens file not found")
    data = _read_tokens_json(path)
    if data is None or data.get("format") != TOKENS_FORMAT:
        raise TokensError(f"{path}: not a tokens file (expected JSON with format {TOKENS_FORMAT!r}, "
                          "written by asr.tokens.build_tokens)")
    if data.get("version") != TOKENS_VERSION:
        raise TokensError(f"{path}: tokens file version {data.get('version')!r}, this asr reads {TOKENS_VERSION}")
    try:
        return Vocabulary.from_dict(data["vocabulary"])
    except (KeyError, TypeError, ValueError) as err:
        raise TokensError(f"{path}: bad vocabulary ({err})") from None


def _read_tokens_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _counts(counter: Counter, limit: int = 20) -> str:
    """The most common items of ``counter`` as "'x'xN, ..."."""
    shown = ", ".join(f"{c!r}x{n}" for c, n in counter.most_common(limit))
    return shown + (f" and {len(counter) - limit} more" if len(counter) > limit else "")
