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
        # numbers are read as words, never dropped
        ("42", "forty two"),
        ("room 101", "room one hundred and one"),
        ("abc1def", "abc one def"),
        ("0", "zero"),
        ("3.5", "three point five"),
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


@pytest.mark.parametrize(
    "raw, expected",
    [
        # cardinals: num2words' English, its hyphens and commas become spaces
        ("$1,000.", "one thousand dollars"),
        ("1,000", "one thousand"),
        ("10,000 people", "ten thousand people"),
        ("105", "one hundred and five"),
        ("1,234,567", "one million two hundred and thirty four thousand five hundred and sixty seven"),
        # ordinals
        ("1st", "first"),
        ("the 22nd of May", "the twenty second of may"),
        ("3rd 4th 101st", "third fourth one hundred and first"),
        ("1,000,000th", "one millionth"),
        # currency
        ("$5.50", "five dollars fifty cents"),
        ("$1", "one dollar"),
        ("$0.01", "one cent"),
        ("it costs $ 20.", "it costs twenty dollars"),
        ("\u00a33.20", "three pounds twenty pence"),
        ("\u20ac10", "ten euros"),
        # decimals: the digits after the point one by one
        ("3.14", "three point one four"),
        ("0.5", "zero point five"),
        # percent
        ("50%", "fifty percent"),
        ("3.5 %", "three point five percent"),
        # plain four-digit numbers 1100-1999 are years; later ones cardinals
        ("1999", "nineteen ninety nine"),
        ("in 1905", "in nineteen oh five"),
        ("2024", "two thousand and twenty four"),
        # a leading zero or more than MAX_CARDINAL_DIGITS plain digits: digit by digit
        ("007", "zero zero seven"),
        ("call 5551234", "call five five five one two three four"),
        ("0800 123", "zero eight zero zero one hundred and twenty three"),
    ],
)
def test_numbers_are_read_as_words(raw, expected):
    assert normalize_text(raw) == expected


def test_digit_reading_spells_every_digit():
    """numbers="digits": the reading of spoken digit sequences, one word per digit."""
    from asr.text import MAX_CARDINAL_DIGITS

    assert normalize_text("42", numbers="digits") == "four two"
    assert normalize_text("$1,000.50 1st", numbers="digits") == "one zero zero zero five zero one st"
    assert MAX_CARDINAL_DIGITS == 6
    with pytest.raises(ValueError, match="numbers must be one of words, digits"):
        normalize_text("1", numbers="roman")


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
        # read digit by digit, the number of spelled-out digits matches the digits in the input
        digits = sum(c.isdigit() for c in raw)
        words = normalize_text(raw, numbers="digits").split()
        assert sum(w in {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"} for w in words) >= digits
        assert normalize_text(normalize_text(raw, numbers="digits")) == normalize_text(raw, numbers="digits")


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
    assert vocab.decode(ids) == "hllo wrld"
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


def test_character_decode_collapses_and_trims_spaces():
    """Leading, trailing and doubled spaces of the output would reach the CLI and count as CER
    insertions: character text is trimmed and its runs of spaces collapsed, as for BPE."""
    vocab = Vocabulary()
    assert vocab.decode(vocab.encode(" one  two ")) == "one two"
    assert vocab.decode(vocab.encode("   ")) == ""
    assert vocab.decode(vocab.encode("seven")) == "seven"


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
        ([" ", "a", " ", " "], None, "a"),  # characters: collapsed and trimmed too
        (["a", " ", " ", " ", "b"], None, "a b"),
        ([" "], None, ""),
        (["\u2581he", "llo", "\u2581wor", "ld"], WORD_BOUNDARY, "hello world"),
        (["\u2581", "\u2581he", "\u2581", "\u2581", "\u2581x", "\u2581"], WORD_BOUNDARY, "he x"),  # collapsed, trimmed
        (["he", "llo"], WORD_BOUNDARY, "hello"),  # no boundary at the start
        ([], WORD_BOUNDARY, ""),
        (["\u2581"], WORD_BOUNDARY, ""),
    ],
)
def test_join_symbols(symbols, boundary, expected):
    assert join_symbols(symbols, boundary) == expected
