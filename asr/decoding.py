"""CTC decoding: one interface for greedy and beam search (no TensorFlow anywhere on this path).

- ``greedy_ids`` and friends: the best path in pure numpy (training's dev WER uses them).
- ``DecoderConfig``: how to decode (``kind`` greedy|beam, beam size, LM weight, word score,
  N-best, lexicon and LM files, hotwords); ``resolve`` merges what the user gave over what the
  model ships (``ModelDecoding``: its decoder.json, word list and LM; in a .tflite, the metadata
  keys decoding.decoder, decoding.lexicon, decoding.lm_arpa).
- ``Decoder.decode(log_probs, offset)`` -> ``Hypothesis`` list (text, score, timed words):
  greedy, or beam search (asr.beam over flashlight-text), then word times and confidence from
  the best path (asr.alignment).

Shapes:
    log_probs [batch, frames, vocab_size] or [frames, vocab_size], any real scores
    lengths   [batch] true output frames of each row
    path      [frames] one token id per output frame (blanks included)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np


def greedy_ids(scores: np.ndarray, blank: int = 0) -> list[int]:
    """Best path of one utterance's scores [frames, vocab]: argmax per frame, repeats
    collapsed, blanks dropped."""
    return collapse_path(np.asarray(scores).argmax(axis=-1), blank)


def collapse_path(path, blank: int = 0) -> list[int]:
    """Token ids of a per-frame path [frames]: repeats collapsed, blanks dropped (CTC's rule)."""
    best = np.asarray(path, dtype=np.int64)
    if best.size == 0:
        return []
    keep = np.ones(best.shape, dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    return [int(i) for i in best[keep & (best != blank)]]


def greedy_decode_batch(scores: np.ndarray, lengths, blank: int = 0) -> list[list[int]]:
    """Greedy ids for each row of a padded batch [batch, frames, vocab], cut at ``lengths``."""
    return [greedy_ids(scores[b, : int(n)], blank) for b, n in enumerate(lengths)]


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax."""
    x = np.asarray(x, dtype=np.float32)
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


# ---- one interface for greedy and beam search --------------------------------------------------

DECODERS = ("greedy", "beam")
DEFAULT_BEAM = 50  # hypotheses kept per frame
NONE = "none"  # --lexicon none / --lm none: leave out what the model ships


class DecoderError(ValueError):
    """Decoder settings or files that cannot be used; one line naming the file or value."""


@dataclass(frozen=True)
class DecoderConfig:
    """How log-probabilities become text. ``lexicon`` and ``lm`` are file paths; "" means the
    model's own (what it ships, if anything) and NONE means without. ``hotwords``: ((words,
    ...), boost) phrases (asr.hotwords)."""

    kind: str = "greedy"
    beam: int = DEFAULT_BEAM
    lm_weight: float = 0.0
    word_score: float = 0.0
    nbest: int = 1
    lexicon: str = ""
    lm: str = ""
    hotwords: tuple = ()

    def __post_init__(self):
        if self.kind not in DECODERS:
            raise DecoderError(f"--decoder {self.kind!r}: choose one of {', '.join(DECODERS)}")
        if not isinstance(self.beam, int) or self.beam < 1:
            raise DecoderError(f"--beam {self.beam!r}: the beam must be a positive integer")
        if not isinstance(self.nbest, int) or not 1 <= self.nbest <= self.beam:
            raise DecoderError(f"--nbest {self.nbest!r}: must be from 1 to the beam ({self.beam})")
        for name in ("lm_weight", "word_score"):
            if not math.isfinite(float(getattr(self, name))):
                raise DecoderError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: must be a finite number")
        object.__setattr__(self, "hotwords", tuple((tuple(w), float(b)) for w, b in self.hotwords))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hotwords"] = [[" ".join(w), b] for w, b in self.hotwords]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DecoderConfig":
        d = dict(d)
        d["hotwords"] = tuple((tuple(p.split()), b) for p, b in d.get("hotwords", ()))
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}})


@dataclass(frozen=True)
class ModelDecoding:
    """What a model ships for decoding: ``defaults`` (DecoderConfig fields: how the model is
    decoded when the user says nothing), its word list, and its LM: a file (``lm``), or the
    ARPA text of a .tflite's metadata (``lm_text``), written to a file only when a beam search
    first needs it (``lm_file``), so that greedy decoding and start-up never write it."""

    defaults: dict
    words: tuple[str, ...] | None = None
    lm: str | None = None
    lm_text: str | None = field(default=None, repr=False)

    def lm_file(self) -> str | None:
        """The LM's path (None without one); ``lm_text`` goes to a temporary file the first
        time, removed when the process exits (KenLM reads files)."""
        if self.lm or not self.lm_text:
            return self.lm
        import atexit
        import os
        import tempfile

        fd, path = tempfile.mkstemp(prefix="asr-lm-", suffix=".arpa")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self.lm_text)
        atexit.register(lambda name=path: os.path.exists(name) and os.remove(name))
        object.__setattr__(self, "lm", path)  # written once: later decoders reuse it
        return path


@dataclass(frozen=True)
class Hypothesis:
    text: str
    score: float
    words: tuple = ()  # asr.transcript.Word, times in seconds from the file's start


def resolve(shipped: ModelDecoding | None, **given) -> DecoderConfig:
    """The DecoderConfig of a command: the model's defaults, overridden by what the user gave
    (``given``: DecoderConfig fields; None = not given). ``decoder="greedy"`` ignores the rest."""
    fields_ = dict(shipped.defaults) if shipped else {}
    fields_.update({k: v for k, v in given.items() if v is not None})
    return DecoderConfig.from_dict(fields_)


class Decoder:
    """``decode(log_probs, offset)`` -> hypotheses (``config.nbest``, best first), each with
    its words timed (asr.alignment) and scored.

    ``symbols``/``blank``/``word_boundary``: the model's decoding rule (asr.runtime.decoding_rule);
    ``vocabulary`` (asr.text.Vocabulary) spells words of a word list or hotwords; ``shipped``:
    the model's own lexicon and LM."""

    def __init__(self, config: DecoderConfig, symbols: list[str], blank: int, word_boundary: str | None,
                 vocabulary=None, shipped: ModelDecoding | None = None):
        self.config, self.symbols, self.blank, self.word_boundary = config, list(symbols), blank, word_boundary
        self.vocabulary = vocabulary if vocabulary is not None else self._chars_vocabulary()
        self.search = None
        if config.kind == "beam":
            self.search = self._beam(config, shipped)

    def _spell(self, word: str) -> list[int]:
        from asr.lexicon import spell

        if self.vocabulary is None:
            raise DecoderError(f"cannot spell {word!r}: this model's file does not carry its tokenizer; "
                               f"give spellings in the lexicon (word<TAB>tokens)")
        return spell(word, self.vocabulary)

    def _beam(self, config: DecoderConfig, shipped: ModelDecoding | None):
        from asr.beam import BeamSearch, lm_path

        lexicon = None
        if config.lexicon and config.lexicon != NONE:
            from asr.lexicon import read_lexicon

            lexicon = read_lexicon(config.lexicon, self.vocabulary)
        elif not config.lexicon and shipped and shipped.words:
            lexicon = {w: [self._spell(w)] for w in shipped.words}
        lm = None
        if config.lm and config.lm != NONE:
            lm = lm_path(config.lm)
        elif not config.lm and shipped and shipped.lm_file():
            lm = shipped.lm_file()
        if lm and lexicon is None:
            lexicon = self._lm_lexicon(lm)
        elif lm:
            self._check_lm_words(lm)
        separator = self._separator()
        return BeamSearch(self.symbols, self.blank, separator, lexicon, lm, config.lm_weight, config.word_score,
                          config.beam, config.hotwords, self._spell)

    def _chars_vocabulary(self):
        from asr.text import Vocabulary

        if self.word_boundary is not None:
            return None
        units = [s for i, s in enumerate(self.symbols) if i != self.blank]
        return Vocabulary(chars="".join(units), blank=self.blank)

    def _separator(self) -> int | None:
        mark = " " if self.word_boundary is None else self.word_boundary
        return self.symbols.index(mark) if mark in self.symbols else None

    def _lm_lexicon(self, lm: str) -> dict | None:
        """A word LM given without a lexicon: its vocabulary is the lexicon. A token LM (its
        words are the model's symbols): None, lexicon-free search."""
        from asr.lexicon import LexiconError
        from asr.lm import SPECIAL_WORDS, TOKEN_SEPARATOR, arpa_vocabulary

        vocab = arpa_vocabulary(lm)
        if vocab is None:
            raise DecoderError(f"{lm}: a KenLM binary file needs --lexicon (its vocabulary cannot be read)")
        words = [w for w in vocab if w not in SPECIAL_WORDS]
        tokens = set(self.symbols) | {TOKEN_SEPARATOR}
        if words and all(w in tokens for w in words):
            return None
        lexicon = {}
        for w in words:
            try:
                lexicon[w] = [self._spell(w)]
            except (LexiconError, DecoderError) as err:
                raise DecoderError(f"{lm}: {err}") from None
        return lexicon

    def _check_lm_words(self, lm: str) -> None:
        """DecoderError naming ``lm`` when one of its words has a character the model cannot spell."""
        from asr.lm import SPECIAL_WORDS, arpa_vocabulary

        vocab = arpa_vocabulary(lm) or []
        alphabet = getattr(self.vocabulary, "_alphabet", None) or set("".join(self.symbols))
        for w in vocab:
            if w in SPECIAL_WORDS:
                continue
            missing = [c for c in w if c not in alphabet]
            if missing:
                raise DecoderError(f"{lm}: the word {w!r} uses {missing[0]!r}, which the model's vocabulary does not have")

    def decode(self, log_probs: np.ndarray, offset: float = 0.0) -> list[Hypothesis]:
        """Hypotheses of one utterance's log-probabilities [frames, vocab]; word times are
        seconds from the file's start (``offset``: the utterance's start in it)."""
        from asr.alignment import word_times
        from asr.text import join_symbols

        log_probs = np.asarray(log_probs, dtype=np.float32)
        if self.search is None:
            path = log_probs.argmax(axis=-1).tolist() if log_probs.size else []
            found = [(None, float(log_probs.max(axis=-1).sum()) if log_probs.size else 0.0, path)]
        else:
            found = self.search.search(log_probs, self.config.nbest)
        out = []
        for words, score, path in found:
            timed = word_times(path, log_probs, self.symbols, self.blank, self.word_boundary, offset=offset)
            if words is not None and len(words) == len(timed):  # lexicon words, the path's times
                timed = [replace(t, text=w) for t, w in zip(timed, words)]
            text = " ".join(words) if words is not None else join_symbols(
                (self.symbols[i] for i in collapse_path(path, self.blank)), self.word_boundary)
            out.append(Hypothesis(text=text, score=score, words=tuple(timed)))
        return out


# ---- what a model ships for decoding ------------------------------------------------------------

DECODER_FILE = "decoder.json"  # in a model directory: the DecoderConfig fields it is decoded with
LEXICON_FILE = "lexicon.txt"  # its word list (asr.lexicon format)
LM_FILE = "lm.arpa"  # its small word LM
# .tflite metadata keys (under "decoding"): the same three, so that one file is the whole contract
META_DECODER, META_LEXICON, META_LM = "decoder", "lexicon", "lm_arpa"


def shipped_from_dir(model_dir) -> ModelDecoding | None:
    """The decoder defaults, word list and LM a model directory ships (None when it ships no
    decoder.json)."""
    import json
    from pathlib import Path

    model_dir = Path(model_dir)
    if not (model_dir / DECODER_FILE).is_file():
        return None
    defaults = json.loads((model_dir / DECODER_FILE).read_text(encoding="utf-8"))
    words = None
    if (model_dir / LEXICON_FILE).is_file():
        from asr.lexicon import lexicon_words

        words = tuple(lexicon_words(model_dir / LEXICON_FILE))
    lm = str(model_dir / LM_FILE) if (model_dir / LM_FILE).is_file() else None
    return ModelDecoding(defaults, words, lm)


def shipped_from_metadata(metadata: dict, path="model") -> ModelDecoding | None:
    """The same from a .tflite's metadata (the LM as its text: ModelDecoding.lm_file)."""
    decoding = metadata.get("decoding") or {}
    if META_DECODER not in decoding:
        return None
    defaults = decoding[META_DECODER]
    if not isinstance(defaults, dict):
        raise DecoderError(f"{path}: the metadata's 'decoding.{META_DECODER}' is not an object")
    words = decoding.get(META_LEXICON)
    if words is not None and (not isinstance(words, list) or not all(isinstance(w, str) for w in words)):
        raise DecoderError(f"{path}: the metadata's 'decoding.{META_LEXICON}' is not a list of words")
    return ModelDecoding(defaults, tuple(words) if words else None, lm_text=decoding.get(META_LM) or None)


def bundle(config: dict) -> tuple[dict, list[str] | None, str | None]:
    """A decoder config (DecoderConfig fields, with file paths) as what a model ships: (defaults
    with the paths cleared, the lexicon's words, the LM's ARPA text). A KenLM binary LM cannot
    be shipped inside a model (DecoderError)."""
    import gzip
    from pathlib import Path

    config = DecoderConfig.from_dict(config).to_dict()
    words = lm_text = None
    if config["lexicon"] and config["lexicon"] != NONE:
        from asr.lexicon import lexicon_words

        words = lexicon_words(config["lexicon"])
    if config["lm"] and config["lm"] != NONE:
        path = Path(config["lm"])
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        if not raw.lstrip().startswith(b"\\data\\"):
            raise DecoderError(f"{path}: only an ARPA LM can be shipped inside a model")
        lm_text = raw.decode("utf-8")
    defaults = {**config, "lexicon": "" if words else config["lexicon"], "lm": "" if lm_text else config["lm"],
                "hotwords": []}
    return defaults, words, lm_text


def write_model_decoding(model_dir, config: dict) -> None:
    """Put a decoder config's lexicon and LM into a model directory (DECODER_FILE, LEXICON_FILE,
    LM_FILE), so that the model decodes with them by default."""
    import json
    from pathlib import Path

    model_dir = Path(model_dir)
    defaults, words, lm_text = bundle(config)
    for name in (LEXICON_FILE, LM_FILE):
        (model_dir / name).unlink(missing_ok=True)
    if words:
        from asr.lexicon import write_lexicon

        write_lexicon(words, model_dir / LEXICON_FILE)
    if lm_text:
        (model_dir / LM_FILE).write_text(lm_text, encoding="utf-8")
    (model_dir / DECODER_FILE).write_text(json.dumps(defaults, indent=1) + "\n", encoding="utf-8")


def model_decoder_config(model_dir) -> dict | None:
    """What a model directory ships as a decoder config with file paths (``bundle`` and
    ``write_model_decoding`` take it), or None when it ships no decoder."""
    from pathlib import Path

    shipped = shipped_from_dir(model_dir)
    if shipped is None:
        return None
    model_dir = Path(model_dir)
    config = dict(shipped.defaults)
    for key, name in (("lexicon", LEXICON_FILE), ("lm", LM_FILE)):
        if (model_dir / name).is_file():
            config[key] = str(model_dir / name)
    return config
