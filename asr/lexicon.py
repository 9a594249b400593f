"""Lexicons for lexicon-constrained beam search: the words a decoder may output and their spellings
in the acoustic model's output symbols.

Lexicon file format (UTF-8, one entry a line; blank lines and lines starting with "#" skipped):
- ``word`` alone: the word is spelled with the model's own tokenizer (``spell``);
- ``word<TAB>sym1 sym2 ...``: an explicit spelling in the model's output symbols (characters for
  a "chars" vocabulary, SentencePiece pieces such as "▁th" for a "bpe" one), separated by spaces.
A word may have several lines: each is one spelling (repeated spellings count once). Words
contain no whitespace. ``write_lexicon`` writes word-only lexicons, so a lexicon made from an
LM's vocabulary (asr.lm writes ``<stem>.vocab.txt``, one word a line: already a lexicon) works
with any acoustic model.

Spelling rule (``spell``), the same for lexicon words and the decoder's hotwords:
- "chars": the output ids of the word's characters, in order;
- "bpe": the output ids of the word's SentencePiece encoding (``Vocabulary.encode``); its first
  piece carries the word boundary "▁" (it may be "▁" alone).
A word with a character the model cannot output is an error (LexiconError), not silently
shortened as ``Vocabulary.encode`` does with training text.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterable

from asr.text import Vocabulary

COMMENT = "#"


class LexiconError(ValueError):
    """A lexicon or word that cannot be spelled for the model; one line naming the file and line."""


def spell(word: str, vocabulary: Vocabulary) -> list[int]:
    """Output ids spelling ``word`` by the model's tokenizer (module docstring). LexiconError for
    an empty word, whitespace in it, or a character the vocabulary does not have."""
    if not word or any(c.isspace() for c in word):
        raise LexiconError(f"{word!r} is not a word (empty, or with whitespace in it)")
    unknown: Counter = Counter()
    ids = vocabulary.encode(word, unknown)
    if unknown:
        c = next(iter(unknown))
        raise LexiconError(f"{word!r} uses {c!r}, which the model's vocabulary does not have")
    if not ids:
        raise LexiconError(f"{word!r} spells to no output symbol of the model")
    return ids


def _explicit(word: str, spelling: str, index: dict[str, int]) -> list[int]:
    """Output ids of an explicit spelling (symbols separated by spaces)."""
    symbols = spelling.split()
    if not symbols:
        raise LexiconError(f"{word!r} has an empty spelling after its TAB")
    for s in symbols:
        if s not in index:
            raise LexiconError(f"{word!r}'s spelling uses {s!r}, which the model's vocabulary does not have")
    return [index[s] for s in symbols]


def read_lexicon(path: str | os.PathLike, vocabulary: Vocabulary) -> dict[str, list[list[int]]]:
    """word -> its spellings (lists of output ids, never the blank), in file order. LexiconError
    ("PATH:LINE: ...") for a word with whitespace, a symbol the model does not have, a missing
    file ("PATH: lexicon not found") or one with no words."""
    path = Path(path)
    if not path.is_file():
        raise LexiconError(f"{path}: lexicon not found")
    index = {s: i for i, s in enumerate(vocabulary.symbols) if i != vocabulary.blank}
    lexicon: dict[str, list[list[int]]] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line.strip() or line.lstrip().startswith(COMMENT):
                    continue
                word, tab, spelling = line.partition("\t")
                word = word.strip()
                try:
                    if any(c.isspace() for c in word):
                        hint = "" if tab else " (separate a spelling from its word with a TAB)"
                        raise LexiconError(f"{word!r} has whitespace in it{hint}")
                    ids = _explicit(word, spelling, index) if tab else spell(word, vocabulary)
                except LexiconError as err:
                    raise LexiconError(f"{path}:{number}: {err}") from None
                spellings = lexicon.setdefault(word, [])
                if ids not in spellings:
                    spellings.append(ids)
    except UnicodeDecodeError:
        raise LexiconError(f"{path}: lexicon is not UTF-8 text") from None
    if not lexicon:
        raise LexiconError(f"{path}: lexicon has no words")
    return lexicon


def lexicon_words(path: str | os.PathLike) -> list[str]:
    """The words of a lexicon file (the first field of each entry, in file order, repeats
    dropped), without spelling them: what a model ships. LexiconError for a missing file."""
    path = Path(path)
    if not path.is_file():
        raise LexiconError(f"{path}: lexicon not found")
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith(COMMENT):
            words.append(line.partition("\t")[0].strip())
    return list(dict.fromkeys(words))


def write_lexicon(words: Iterable[str], path: str | os.PathLike) -> Path:
    """Write a word-only lexicon (one word a line, in the given order, repeats dropped),
    atomically; LexiconError for an empty word or one with whitespace. Returns the path."""
    path = Path(path)
    unique = list(dict.fromkeys(words))
    for word in unique:
        if not word or any(c.isspace() for c in word) or word.startswith(COMMENT):
            raise LexiconError(f"{path}: {word!r} cannot be a lexicon word (empty, whitespace, or a leading '#')")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(w + "\n" for w in unique), encoding="utf-8")
    os.replace(tmp, path)
    return path
