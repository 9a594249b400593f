"""asr.text: transcript normalization, the character vocabulary with the CTC blank, and the
text of output symbols (join_symbols). The BPE vocabulary is tested in test_tokens.py."""
from __future__ import annotations

import json
import random
import string
from collections import Counter

import pytest

from asr.text import BLANK, DEFAULT_CHARS, WORD_BOUNDARY, Vocabulary, join_symbols, normalize_text


@pytest.mark.parametrize(
    "raw, expected",
    [
        # case
        ("HELLO World", "hello world"),
        # punctuation becomes a space
        ("Hello, world! How are you?", "hello world how are you"),
        ("end.start", "end start"),
        ("a-b_c/d", "a b c d"),
        ("(parenthesised) [bracketed] {braced}", "parenthesised bracketed braced"),
        # apostrophes inside words are kept, quotes are not
        ("Don't", "don't"),
        ("rock'n'roll", "rock'n'roll"),
        ("it\u2019s", "it's"),  # typographic apostrophe
        ("'quoted'", "quoted"),
        ("the dogs' bone", "the dogs bone"),
        ("' lonely '", "lonely"),
        # digits are spelled out one by one, never dropped
        ("42", "four two"),
        ("room 101", "room one zero one"),
        ("abc1def", "abc one def"),
        ("0", "zero"),
        ("3.5", "three five"),
        # accents stripped
        ("Café Noël", "cafe noel"),
        ("naïve résumé", "naive resume"),
        ("ÅNGSTRÖM", "angstrom"),
        # whitespace collapsed and trimmed
        ("  a \t b\n\nc  ", "a b c"),
        ("", ""),
        ("   ", ""),
        ("?!...", ""),
    ],
)
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


def _random_raw(rnd: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits + string.punctuation + " \t\n'\u2019éüçñÅ"
    return "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 40)))


def test_normalized_text_uses_only_vocabulary_characters_and_is_idempotent():
    rnd = random.Random(7)
    allowed = set(DEFAULT_CHARS)
    for _ in range(500):
        raw = _random_raw(rnd)
        text = normalize_text(raw)
        assert set(text) <= allowed, (raw, text)
        assert text == text.strip() and "  " not in text
        assert normalize_text(text) == text, raw
        # the number of spelled-out digits matches the digits in the input
        digits = sum(c.isdigit() for c in raw)
        words = text.split()
        assert sum(w in {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"} for w in words) >= digits


def test_ascii_fast_path_equals_the_general_path():
    """ASCII text skips NFKD; a trailing " é" sends the same text down the general path."""
    rnd = random.Random(11)
    alphabet = string.printable + "'" * 10 + "`" * 3
    for _ in range(2000):
        raw = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 60)))
        assert raw.isascii()
        assert normalize_text(raw + " \u00e9") == (normalize_text(raw) + " e").lstrip(), raw


def _random_normalized(rnd: random.Random) -> str:
    words = ["".join(rnd.choice(string.ascii_lowercase + "'") for _ in range(rnd.randint(1, 8))) for _ in range(rnd.randint(0, 6))]
    return normalize_text(" ".join(words))


def test_default_vocabulary_layout():
    vocab = Vocabulary()
    assert vocab.size == 29 == len(DEFAULT_CHARS) + 1
    assert vocab.symbols[0] == BLANK
    assert vocab.symbols[1:] == list(DEFAULT_CHARS)


@pytest.mark.parametrize("blank", [0, 5, 28])
def test_encode_decode_round_trip(blank):
    vocab = Vocabulary(blank=blank)
    rnd = random.Random(blank)
    for _ in range(300):
        text = _random_normalized(rnd)
        ids = vocab.encode(text)
        assert len(ids) == len(text)
        assert blank not in ids
        assert all(0 <= i < vocab.size for i in ids)
        assert [vocab.symbols[i] for i in ids] == list(text)
        assert vocab.decode(ids) == text


def test_encode_never_produces_blank_even_for_its_spelling():
    vocab = Vocabulary()
    unknown = Counter()
    ids = vocab.encode("<blank>", unknown)
    assert vocab.blank not in ids
    assert vocab.decode(ids) == "blank"
    assert unknown == Counter({"<": 1, ">": 1})


def test_decode_drops_blank_ids():
    vocab = Vocabulary()
    a, b = vocab.encode("ab")
    assert vocab.decode([0, a, 0, 0, b, 0]) == "ab"


def test_unknown_characters_are_counted_and_skipped():
    vocab = Vocabulary()
    unknown = Counter()
    ids = vocab.encode("héllo, wörld! 42", unknown)
    assert vocab.decode(ids) == "hllo wrld "
    assert unknown == Counter({"é": 1, "ö": 1, ",": 1, "!": 1, "4": 1, "2": 1})
    # counts accumulate across calls
    vocab.encode("é", unknown)
    assert unknown["é"] == 2


def test_unknown_characters_without_counter_are_skipped():
    assert Vocabulary().decode(Vocabulary().encode("a?b")) == "ab"


def test_custom_vocabulary():
    vocab = Vocabulary(chars="xyz ", blank=2)
    assert vocab.symbols == ["x", "y", BLANK, "z", " "]
    assert vocab.encode("zyx z") == [3, 1, 0, 4, 3]
    assert vocab.decode([3, 1, 0, 4, 3]) == "zyx z"


def test_duplicate_characters_rejected():
    with pytest.raises(ValueError, match="unique"):
        Vocabulary(chars="abca")


@pytest.mark.parametrize("vocab", [Vocabulary(), Vocabulary(chars="xyz ", blank=2), Vocabulary(blank=28)])
def test_dict_and_json_round_trip(vocab):
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab
    data = json.loads(vocab.to_json())
    assert data["symbols"] == vocab.symbols
    assert Vocabulary.from_dict(data) == vocab


def test_character_vocabulary_kind_and_dict_forms():
    vocab = Vocabulary()
    assert vocab.kind == "chars" and vocab.word_boundary is None and vocab.pieces == () and vocab.sp_model == ""
    assert vocab.to_dict(derived=False) == {"chars": DEFAULT_CHARS, "blank": 0}  # what configs save, as before
    assert vocab.to_dict() == {"chars": DEFAULT_CHARS, "blank": 0, "kind": "chars", "symbols": vocab.symbols}
    assert Vocabulary.from_dict({}) == vocab and Vocabulary.from_dict({"blank": 3}) == Vocabulary(blank=3)


def test_character_decode_keeps_spaces_as_they_are():
    """Characters decode exactly as before BPE existed: no collapsing or trimming of spaces."""
    vocab = Vocabulary()
    assert vocab.decode(vocab.encode(" one  two ")) == " one  two "


@pytest.mark.parametrize(
    "d, message",
    [
        ({"chars": "ab", "blank": 0, "colour": 1}, "unknown vocabulary key"),
        ({"chars": "ab", "blank": "0"}, "blank must be an integer"),
        ({"chars": "ab", "blank": 3}, r"blank must be in 0\.\.2"),
        ({"chars": "", "blank": 0}, "at least one symbol"),
        ({"chars": 5}, "chars must be a string"),
        ({"chars": "ab", "kind": "bpe"}, "does not match"),
    ],
)
def test_bad_vocabulary_dicts_are_rejected(d, message):
    with pytest.raises(ValueError, match=message):
        Vocabulary.from_dict(d)


@pytest.mark.parametrize(
    "symbols, boundary, expected",
    [
        (["h", "i", " ", "y", "o", "u"], None, "hi you"),
        ([" ", "a", " ", " "], None, " a  "),  # characters: as they are
        (["\u2581he", "llo", "\u2581wor", "ld"], WORD_BOUNDARY, "hello world"),
        (["\u2581", "\u2581he", "\u2581", "\u2581", "\u2581x", "\u2581"], WORD_BOUNDARY, "he x"),  # collapsed, trimmed
        (["he", "llo"], WORD_BOUNDARY, "hello"),  # no boundary at the start
        ([], WORD_BOUNDARY, ""),
        (["\u2581"], WORD_BOUNDARY, ""),
    ],
)
def test_join_symbols(symbols, boundary, expected):
    assert join_symbols(symbols, boundary) == expected
