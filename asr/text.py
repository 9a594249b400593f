"""Text normalization and the character vocabulary (with the CTC blank).

Normalization, applied to every transcript before training and scoring:
- Unicode NFKD, accents stripped ("café" -> "cafe"), lower case;
- digits are spelled out one by one ("42" -> "four two"), never dropped;
- apostrophes inside words are kept ("don't"), all other punctuation and symbols become a space;
- letters of other scripts are kept, so that training can count and report them;
- runs of whitespace collapse to one space, and the ends are trimmed.
Characters outside the vocabulary are skipped by ``Vocabulary.encode``, which counts them.
"""
from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

BLANK = "<blank>"
DEFAULT_CHARS = " abcdefghijklmnopqrstuvwxyz'"  # 28 symbols; the blank is index 0 in front of them
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def normalize_text(text: str) -> str:
    """Apply the normalization described in the module docstring."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = text.replace("\u2019", "'").replace("`", "'")
    text = re.sub(r"\d", lambda m: f" {DIGIT_WORDS[int(m.group())]} ", text)
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)  # quotes, not apostrophes inside words
    text = "".join(c if c == "'" or unicodedata.category(c)[0] == "L" else " " for c in text)
    return " ".join(text.split())


@dataclass(frozen=True)
class Vocabulary:
    """Output symbols of the model: index ``blank`` is the CTC blank, the rest are characters."""

    chars: str = DEFAULT_CHARS
    blank: int = 0

    def __post_init__(self):
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("vocabulary characters must be unique")

    @property
    def size(self) -> int:
        """Number of model outputs: the characters plus the blank."""
        return len(self.chars) + 1

    @property
    def symbols(self) -> list[str]:
        out = list(self.chars)
        out.insert(self.blank, BLANK)
        return out

    def encode(self, text: str, unknown: Counter | None = None) -> list[int]:
        """Normalized text -> label ids (never the blank). Characters outside the vocabulary
        are skipped and counted in ``unknown`` when given."""
        index = {c: i for i, c in enumerate(self.symbols)}
        ids = []
        for c in text:
            if c in index and c != BLANK:
                ids.append(index[c])
            elif unknown is not None:
                unknown[c] += 1
        return ids

    def decode(self, ids) -> str:
        """Label ids (already collapsed, blanks removed) -> text."""
        symbols = self.symbols
        return "".join(symbols[i] for i in ids if i != self.blank)

    def to_dict(self) -> dict:
        return {"chars": self.chars, "blank": self.blank, "symbols": self.symbols}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        return cls(chars=d["chars"], blank=int(d["blank"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)
