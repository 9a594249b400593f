"""Text normalization and the output vocabulary of the model (with the CTC blank).

Normalization, applied to every transcript before training and scoring:
- Unicode NFKD, accents stripped ("café" -> "cafe"), lower case;
- numbers are read as words (``numbers="words"``, the default, used by training and scoring
  alike), with num2words' English: cardinals ("42" -> "forty two", "1,000" -> "one thousand",
  "105" -> "one hundred and five": num2words' "and" is kept, as most readers say it), ordinals
  ("1st" -> "first", "22nd" -> "twenty second"), decimals ("3.5" -> "three point five", the
  digits after the point one by one), currency ("$1,000" -> "one thousand dollars", "$5.50" ->
  "five dollars fifty cents"; also euros and pounds), percent ("50%" -> "fifty percent") and years
  (a plain four-digit number from 1100 to 1999: "1999" -> "nineteen ninety nine", "1900" ->
  "nineteen hundred"; 2000 on are cardinals: "2024" -> "two thousand and twenty four").
  A digit string with a leading zero ("007") or of more than MAX_CARDINAL_DIGITS digits without
  separators (phone and account numbers) is read digit by digit ("0800" -> "zero eight zero
  zero"), and ``numbers="digits"`` reads every digit so. Hyphens and commas of num2words' output
  become spaces like all punctuation. Digits are never dropped;
- apostrophes inside words are kept ("don't"), all other punctuation and symbols become a space;
- letters of other scripts are kept, so that training can count and report them;
- runs of whitespace collapse to one space, and the ends are trimmed.

The vocabulary is one of two kinds (``Vocabulary.kind``):
- "chars": the blank plus single characters (the default: space, a-z and the apostrophe);
- "bpe": the blank plus the pieces of a SentencePiece BPE model (``asr.tokens`` trains one). The
  serialized SentencePiece model travels with the vocabulary, so that any machine holding a
  config can encode training text exactly as the model was built for.
The text of a sequence of output ids (repeats collapsed, blanks dropped) is ``join_symbols``:
the symbols are concatenated (for BPE the word boundary "▁" becoming a space), then runs of spaces
collapse to one and the ends are trimmed, so the text of any output is normalized text.
Characters the vocabulary cannot spell are skipped by ``Vocabulary.encode``, which counts them.
"""
from __future__ import annotations

import base64
import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable

BLANK = "<blank>"
DEFAULT_CHARS = " abcdefghijklmnopqrstuvwxyz'"  # 28 symbols; the blank is index 0 in front of them
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NUMBER_READINGS = ("words", "digits")  # normalize_text(numbers=...): numbers as words, or digit by digit
MAX_CARDINAL_DIGITS = 6  # a longer plain digit string ("5551234") is read digit by digit
YEARS = range(1100, 2000)  # plain four-digit numbers read as years: "1999" -> "nineteen ninety nine"
# currency sign -> (unit, units, hundredth, hundredths)
CURRENCIES = MappingProxyType({
    "$": ("dollar", "dollars", "cent", "cents"),
    "€": ("euro", "euros", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
})
# a number: an optional currency sign, digits (thousands separated by commas, or plain), an optional
# decimal part, then an optional ordinal suffix or percent sign
_NUMBER = re.compile(
    r"(?P<currency>[$€£]\s?)?(?P<integer>\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.(?P<fraction>\d+))?"
    r"(?:(?P<ordinal>st|nd|rd|th)(?![a-z])|(?P<percent>\s?%))?"
)
TOKENIZERS = ("chars", "bpe")  # the values of Vocabulary.kind (and of the .tflite's decoding.tokenizer)
WORD_BOUNDARY = "\u2581"  # "▁": SentencePiece's mark of a word start; it decodes to a space
DERIVED_KEYS = ("kind", "symbols")  # written by Vocabulary.to_dict for readers, recomputed on load
# normalize_text's ASCII path: every ASCII character but a-z and the apostrophe becomes a space
_ASCII_TO_SPACE = MappingProxyType(
    str.maketrans({chr(i): " " for i in range(128) if not (chr(i).islower() or chr(i) == "'")})
)


def normalize_text(text: str, numbers: str = "words") -> str:
    """Apply the normalization described in the module docstring; ``numbers`` is "words" (the
    default: cardinals, ordinals, currency, ...) or "digits" (every digit a word of its own).
    ASCII text (most corpora) takes a path four times faster with the same result: NFKD and
    accent stripping change no ASCII character, and the only ASCII letters left after
    lower-casing are a-z."""
    if numbers not in NUMBER_READINGS:
        raise ValueError(f"numbers must be one of {', '.join(NUMBER_READINGS)}, got {numbers!r}")
    ascii_only = text.isascii()
    if not ascii_only:
        text = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in text if not unicodedata.combining(c))
    text = text.lower().replace("\u2019", "'").replace("`", "'")
    if numbers == "digits":
        text = re.sub(r"\d", lambda m: f" {DIGIT_WORDS[int(m.group())]} ", text)
    else:
        text = _NUMBER.sub(lambda m: f" {_number_words(m)} ", text)
    if "'" in text:
        text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)  # quotes, not apostrophes inside words
    if ascii_only:
        text = text.translate(_ASCII_TO_SPACE)
    else:
        text = "".join(c if c == "'" or unicodedata.category(c)[0] == "L" else " " for c in text)
    return " ".join(text.split())


def _digits(digits: str) -> str:
    """"0800" -> "zero eight zero zero"."""
    return " ".join(DIGIT_WORDS[int(d)] for d in digits)


def _read_as_digits(integer: str) -> bool:
    """Whether a written integer is read digit by digit: no thousands commas, and a leading
    zero or more than MAX_CARDINAL_DIGITS digits."""
    return "," not in integer and ((len(integer) > 1 and integer[0] == "0") or len(integer) > MAX_CARDINAL_DIGITS)


def _cardinal(integer: str) -> str:
    """Words of a written non-negative integer (thousands commas allowed)."""
    from num2words import num2words

    return _digits(integer) if _read_as_digits(integer) else num2words(int(integer.replace(",", "")), lang="en")


def _number_words(m: re.Match) -> str:
    """Words of one _NUMBER match (their hyphens and commas are removed by normalize_text)."""
    from num2words import num2words

    integer, fraction, ordinal = m.group("integer"), m.group("fraction"), m.group("ordinal")
    plain = integer.replace(",", "")
    sign = (m.group("currency") or "").strip()
    unit = units = ""
    if sign:
        unit, units, cent, cents = CURRENCIES[sign]
        if fraction is None or len(fraction) <= 2:  # an amount: units and hundredths
            amount, hundredths = int(plain), int((fraction or "0").ljust(2, "0"))
            words = [f"{_cardinal(integer)} {unit if amount == 1 else units}"] if amount or not hundredths else []
            if hundredths:
                words.append(f"{num2words(hundredths, lang='en')} {cent if hundredths == 1 else cents}")
            return " ".join(words)
    if fraction is not None:
        words = f"{_cardinal(integer)} point {_digits(fraction)}"
    elif ordinal and not _read_as_digits(integer):
        words, ordinal = num2words(int(plain), lang="en", to="ordinal"), None
    elif "," not in integer and len(plain) == 4 and int(plain) in YEARS:
        words = num2words(int(plain), lang="en", to="year")
    else:
        words = _cardinal(integer)
    tail = [units if sign else "", "percent" if m.group("percent") else "", ordinal or ""]
    return " ".join([words] + [t for t in tail if t])


def join_symbols(symbols: Iterable[str], word_boundary: str | None = None) -> str:
    """Text of one utterance's output symbols (repeats already collapsed, blanks dropped): the
    symbols concatenated, each ``word_boundary`` (BPE pieces; None for characters) replaced by a
    space, then runs of spaces collapsed to one and the ends trimmed. asr.runtime applies this
    to .tflite outputs, whatever rule text the file's metadata states."""
    text = "".join(symbols)
    if word_boundary is not None:
        text = text.replace(word_boundary, " ")
    return " ".join(word for word in text.split(" ") if word)


def _sentencepiece(proto: bytes):
    """A SentencePieceProcessor for a serialized model; ValueError if it cannot be loaded."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(proto)
    except (RuntimeError, OSError) as err:
        raise ValueError(f"sp_model is not a valid SentencePiece model ({err})") from None
    return processor


def _output_pieces(processor) -> list[str]:
    """The pieces a model outputs, in SentencePiece id order: all but <unk> and control
    symbols (the blank stands in for them; text is never encoded to them)."""
    return [
        processor.IdToPiece(i)
        for i in range(processor.GetPieceSize())
        if not (processor.IsUnknown(i) or processor.IsControl(i) or processor.IsUnused(i))
    ]


@dataclass(frozen=True)
class Vocabulary:
    """Output symbols of the model: index ``blank`` is the CTC blank, the others are the
    characters of ``chars`` (kind "chars") or the SentencePiece ``pieces`` (kind "bpe").

    A BPE vocabulary has ``chars=""``, ``pieces`` (in model-output order, the blank left out)
    and ``sp_model`` (base64 of the serialized SentencePiece model, used by ``encode``); build
    one with ``from_sentencepiece`` or ``asr.tokens.build_tokens``. The processor is loaded
    once, when the vocabulary is made."""

    chars: str = DEFAULT_CHARS
    blank: int = 0
    pieces: tuple[str, ...] = field(default=(), repr=False)
    sp_model: str = field(default="", repr=False)

    def __post_init__(self):
        object.__setattr__(self, "pieces", tuple(self.pieces))
        units = self._check()
        symbols = list(units)
        symbols.insert(self.blank, BLANK)
        model_id = {u: i for i, u in enumerate(symbols) if i != self.blank}  # symbol -> output id
        cache = {"_symbols": tuple(symbols), "_index": model_id}
        if self.kind == "bpe":
            processor = _sentencepiece(base64.b64decode(self.sp_model))
            if _output_pieces(processor) != list(self.pieces):
                raise ValueError("pieces do not match the pieces of sp_model")
            # SentencePiece id -> output id; -1 for <unk> and control symbols
            cache["_sp"] = processor
            cache["_sp_to_output"] = [model_id.get(processor.IdToPiece(i), -1) for i in range(processor.GetPieceSize())]
            cache["_sp_unknown"] = processor.unk_id()
            # characters it can spell: those with a piece of their own, and the space (a boundary)
            cache["_alphabet"] = frozenset(p.replace(WORD_BOUNDARY, " ") for p in self.pieces if len(p) == 1) | {" "}
        for name, value in cache.items():
            object.__setattr__(self, name, value)  # not fields: no effect on ==, hash or to_dict

    def _check(self) -> tuple[str, ...]:
        """Validate the fields; return the output units (symbols without the blank)."""
        if not isinstance(self.blank, int) or isinstance(self.blank, bool):
            raise ValueError(f"blank must be an integer, got {self.blank!r}")
        if self.kind == "bpe":
            if self.chars:
                raise ValueError("a BPE vocabulary has no chars (chars must be empty when pieces or sp_model are set)")
            if not self.pieces or not self.sp_model:
                raise ValueError("a BPE vocabulary needs both pieces and sp_model")
            if not all(isinstance(p, str) and p for p in self.pieces) or BLANK in self.pieces:
                raise ValueError(f"pieces must be non-empty strings other than {BLANK!r}")
            units = self.pieces
        else:
            units = tuple(self.chars)
        if len(set(units)) != len(units):
            raise ValueError(f"vocabulary {'pieces' if self.kind == 'bpe' else 'characters'} must be unique")
        if not units:
            raise ValueError("a vocabulary needs at least one symbol besides the blank")
        if not 0 <= self.blank <= len(units):
            raise ValueError(f"blank must be in 0..{len(units)}, got {self.blank}")
        return units

    @classmethod
    def from_sentencepiece(cls, proto: bytes, blank: int = 0) -> "Vocabulary":
        """A BPE vocabulary of a serialized SentencePiece model: its pieces, <unk> and control
        symbols left out, with the blank at ``blank``."""
        pieces = _output_pieces(_sentencepiece(proto))
        return cls(chars="", blank=blank, pieces=tuple(pieces), sp_model=base64.b64encode(proto).decode("ascii"))

    @property
    def kind(self) -> str:
        """"chars" or "bpe" (TOKENIZERS)."""
        return "bpe" if self.pieces or self.sp_model else "chars"

    @property
    def word_boundary(self) -> str | None:
        """The symbol that ``join_symbols`` turns into a space: WORD_BOUNDARY for BPE, else None."""
        return WORD_BOUNDARY if self.kind == "bpe" else None

    @property
    def size(self) -> int:
        """Number of model outputs: the characters or pieces, plus the blank."""
        return len(self._symbols)

    @property
    def symbols(self) -> list[str]:
        """Output id -> symbol; the blank is BLANK."""
        return list(self._symbols)

    def encode(self, text: str, unknown: Counter | None = None) -> list[int]:
        """Normalized text -> label ids (never the blank). Characters the vocabulary cannot
        spell are skipped and counted in ``unknown`` when given."""
        if self.kind == "bpe":
            return self._encode_pieces(text, unknown)
        index = self._index
        try:
            return [index[c] for c in text]
        except KeyError:
            pass
        ids = []
        for c in text:
            if c in index:
                ids.append(index[c])
            elif unknown is not None:
                unknown[c] += 1
        return ids

    def _encode_pieces(self, text: str, unknown: Counter | None) -> list[int]:
        """SentencePiece encoding mapped to output ids; text with characters that have no piece
        (they would encode to <unk>) is encoded again without them."""
        ids = self._sp.EncodeAsIds(text)
        if self._sp_unknown in ids:
            alphabet = self._alphabet
            if unknown is not None:
                unknown.update(c for c in text if c not in alphabet)
            ids = self._sp.EncodeAsIds("".join(c for c in text if c in alphabet))
        table = self._sp_to_output
        return [table[i] for i in ids if table[i] >= 0]

    def decode(self, ids) -> str:
        """Label ids (already collapsed; blanks are dropped) -> text, by ``join_symbols``."""
        symbols = self._symbols
        return join_symbols((symbols[i] for i in ids if i != self.blank), self.word_boundary)

    def to_dict(self, derived: bool = True) -> dict:
        """The fields of this kind as JSON values: {"chars", "blank"} or {"blank", "pieces",
        "sp_model"}; ``derived`` adds "kind" and "symbols" (ignored by ``from_dict``)."""
        if self.kind == "bpe":
            d = {"blank": self.blank, "pieces": list(self.pieces), "sp_model": self.sp_model}
        else:
            d = {"chars": self.chars, "blank": self.blank}
        if derived:
            d.update(kind=self.kind, symbols=self.symbols)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        """Inverse of ``to_dict`` (either form); missing fields take their defaults (chars:
        DEFAULT_CHARS, or "" for a BPE vocabulary). ValueError names a bad key or value."""
        if not isinstance(d, dict):
            raise ValueError(f"a vocabulary must be a mapping, got {type(d).__name__}")
        names = ("chars", "blank", "pieces", "sp_model")
        unknown = sorted(set(d) - set(names) - set(DERIVED_KEYS))
        if unknown:
            raise ValueError(f"unknown vocabulary key(s): {', '.join(unknown)} (known: {', '.join(names)})")
        bpe = bool(d.get("pieces") or d.get("sp_model"))
        pieces = d.get("pieces", ())
        if not isinstance(pieces, (list, tuple)) or not all(isinstance(p, str) for p in pieces):
            raise ValueError("vocabulary pieces must be a list of strings")
        for key in ("chars", "sp_model"):
            if not isinstance(d.get(key, ""), str):
                raise ValueError(f"vocabulary {key} must be a string, got {d[key]!r}")
        vocab = cls(chars=d.get("chars", "" if bpe else DEFAULT_CHARS), blank=d.get("blank", 0),
                    pieces=tuple(pieces), sp_model=d.get("sp_model", ""))
        if d.get("kind", vocab.kind) != vocab.kind:
            raise ValueError(f"vocabulary kind {d['kind']!r} does not match its fields ({vocab.kind})")
        return vocab

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    def __reduce__(self):
        """Pickle the fields only (the cached SentencePiece processor is rebuilt on load)."""
        return (type(self), (self.chars, self.blank, self.pieces, self.sp_model))
