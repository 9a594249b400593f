"""asr.lm, asr.kneser_ney and asr.lexicon: the built-in modified Kneser-Ney ARPA writer (every context's
distribution sums to 1; KenLM loads it and scores sentences as ARPA backoff semantics say; it
agrees with lmplz where lmplz is installed), ARPA checks and their messages, ``asr lm``'s files,
and lexicons for character and BPE vocabularies."""
from __future__ import annotations

import gzip
import json
import math
import random
from collections import Counter

import pytest

from asr.lexicon import LexiconError, read_lexicon, spell, write_lexicon
from asr.kneser_ney import FALLBACK_DISCOUNTS, discounts
from asr.lm import (KENLM_BINARY_MAGIC, LMError, arpa_vocabulary, build_lm, check_lm, find_lmplz, lm_command,
                    vocab_path)
from asr.text import DIGIT_WORDS, WORD_BOUNDARY, Vocabulary

TINY = ["one two three", "two three four", "one two", "three", "four four one two", "five six", "one two three"]
SCORED = ["one two three", "three two one", "six five four four", "zero", "one eleven two", ""]


def digit_sentences(n: int, seed: int = 0) -> list[str]:
    """Connected-digit sentences, 1 to 7 words each."""
    rnd = random.Random(seed)
    return [" ".join(rnd.choice(DIGIT_WORDS) for _ in range(rnd.randint(1, 7))) for _ in range(n)]


# ------------------------------------------------------------------ an ARPA evaluator


def read_arpa(path) -> tuple[int, dict[tuple, float], dict[tuple, float]]:
    """(order, n-gram -> log10 p, n-gram -> log10 backoff) of an ARPA file, plain or gzip."""
    opener = gzip.open if str(path).endswith(".gz") else open
    probs, backoffs, order, n = {}, {}, 0, 0
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("ngram "):
                order = int(line.split("=")[0].split()[1])
            elif line.endswith("-grams:"):
                n = int(line[1:].split("-")[0])
            elif line and n and not line.startswith("\\"):
                fields = line.split()
                probs[tuple(fields[1:n + 1])] = float(fields[0])
                if len(fields) == n + 2:
                    backoffs[tuple(fields[1:n + 1])] = float(fields[n + 1])
    return order, probs, backoffs


def log10_prob(model, history: tuple, word: str) -> float:
    """log10 P(word | history) by ARPA backoff semantics; unknown words are <unk>."""
    order, probs, backoffs = model
    if (word,) not in probs:
        word = "<unk>"
    h = tuple(history)[-(order - 1):]
    penalty = 0.0
    while (*h, word) not in probs:
        penalty += backoffs.get(h, 0.0)
        h = h[1:]
    return penalty + probs[(*h, word)]


def sentence_log10(model, sentence: str) -> float:
    """log10 P(words </s> | <s>)."""
    history, total = ("<s>",), 0.0
    for word in sentence.split() + ["</s>"]:
        total += log10_prob(model, history, word)
        history += (word,)
    return total


# ------------------------------------------------------------------ the built-in writer


@pytest.mark.parametrize("order", [2, 3, 4])
@pytest.mark.parametrize("texts", [TINY, digit_sentences(300)], ids=["tiny", "digits"])
def test_every_context_sums_to_one(tmp_path, texts, order):
    out = tmp_path / "lm.arpa"
    summary = build_lm(texts, order, out, lmplz=False)
    assert summary["engine"] == "builtin" and summary["order"] == order
    assert summary["sentences"] == len(texts) and summary["words"] == sum(len(t.split()) for t in texts)
    model = read_arpa(out)
    _, probs, backoffs = model
    assert summary["ngrams"] == [sum(len(g) == n for g in probs) for n in range(1, order + 1)]
    vocab = [g[0] for g in probs if len(g) == 1 and g[0] != "<s>"]
    assert {"<unk>", "</s>"} <= set(vocab) and probs[("<s>",)] == -99
    contexts = [()] + [g for g in probs if len(g) < order]
    for h in contexts:
        total = sum(10 ** log10_prob(model, h, w) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-4), f"context {h}"
    assert all(len(g) < order for g in backoffs)  # no backoff on the highest order
    assert all(p <= 0 for p in probs.values())


@pytest.mark.parametrize("order", [2, 3, 4])
def test_kenlm_loads_and_scores_like_arpa_semantics(tmp_path, order):
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    out = tmp_path / ("lm.arpa.gz" if order == 3 else "lm.arpa")
    build_lm(digit_sentences(200), order, out, lmplz=False)
    with open(out, "rb") as f:
        assert (f.read(2) == b"\x1f\x8b") == (order == 3)
    words = Dictionary()
    for w in list(DIGIT_WORDS) + ["eleven"]:  # "eleven" is not in the LM: KenLM scores it as <unk>
        words.add_entry(w)
    lm = KenLM(str(out), words)
    model = read_arpa(out)
    for sentence in SCORED:
        state, total = lm.start(False), 0.0
        for w in sentence.split():
            state, score = lm.score(state, words.get_index(w))
            total += score
        total += lm.finish(state)[1]
        assert total == pytest.approx(sentence_log10(model, sentence), abs=1e-4), sentence


def test_gzip_output_is_the_plain_file_compressed(tmp_path):
    texts = digit_sentences(50)
    build_lm(texts, 3, tmp_path / "lm.arpa", lmplz=False)
    build_lm(texts, 3, tmp_path / "lm.arpa.gz", lmplz=False)
    assert gzip.decompress((tmp_path / "lm.arpa.gz").read_bytes()) == (tmp_path / "lm.arpa").read_bytes()
    first = (tmp_path / "lm.arpa.gz").read_bytes()
    build_lm(texts, 3, tmp_path / "lm.arpa.gz", lmplz=False)
    assert (tmp_path / "lm.arpa.gz").read_bytes() == first  # no timestamp: builds repeat byte for byte
    assert arpa_vocabulary(tmp_path / "lm.arpa.gz") == arpa_vocabulary(tmp_path / "lm.arpa")
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("order", [0, 1, 7, 2.0, True])
def test_bad_orders_are_refused(tmp_path, order):
    with pytest.raises(ValueError, match="order must be an integer from 2 to 6"):
        build_lm(TINY, order, tmp_path / "lm.arpa", lmplz=False)
    assert not (tmp_path / "lm.arpa").exists()


def test_no_text_and_missing_lmplz(tmp_path):
    with pytest.raises(LMError, match="no text"):
        build_lm(["", "  ", "<s> </s>"], 3, tmp_path / "lm.arpa", lmplz=False)
    with pytest.raises(LMError, match="lmplz executable not found"):
        build_lm(TINY, 3, tmp_path / "lm.arpa", lmplz=str(tmp_path / "no-lmplz"))
    assert not list(tmp_path.iterdir())


def test_discounts():
    # Chen & Goodman eq. 26 with t1..t4 = 4, 2, 1, 1: Y = 4 / 8
    counts = Counter({("a",): 1, ("b",): 1, ("c",): 1, ("d",): 1, ("e",): 2, ("f",): 2, ("g",): 3, ("h",): 4, ("i",): 9})
    d1, d2, d3 = discounts(counts)
    assert (d1, d2, d3) == pytest.approx((1 - 2 * 0.5 * 2 / 4, 2 - 3 * 0.5 * 1 / 2, 3 - 4 * 0.5 * 1 / 1))
    assert discounts(Counter({("a",): 1, ("b",): 3})) == FALLBACK_DISCOUNTS  # no adjusted count 2
    assert discounts(Counter({("a",): 1, ("b",): 2, ("c",): 3, ("d",): 4, ("e",): 4, ("f",): 4})) == FALLBACK_DISCOUNTS  # D3 < 0


# ------------------------------------------------------------------ lmplz agreement


LMPLZ = find_lmplz()
AGREEMENT = [  # (texts, order, tolerance on log10 probabilities and backoffs)
    *((TINY, order, 1e-5) for order in (2, 3, 4)),  # fallback discounts everywhere
    *((digit_sentences(300), order, 1e-5) for order in (2, 3, 4)),  # closed-form discounts
    # lmplz's one quirk: the count-of-counts of each lower order take the raw count, not the
    # adjusted one, of the n-gram that comes last in its sort order. Here that is the trigram
    # "two two two" (adjusted count 2, raw 3), so lmplz's trigram discounts differ a little.
    (digit_sentences(300, seed=1), 4, 1e-2),
]


@pytest.mark.skipif(LMPLZ is None, reason="lmplz is not installed (tools/build_lmplz.sh builds it)")
@pytest.mark.parametrize("texts, order, tolerance", AGREEMENT,
                         ids=[f"{'tiny' if t is TINY else 'digits'}-{o}-{tol:g}" for t, o, tol in AGREEMENT])
def test_builtin_agrees_with_lmplz(tmp_path, texts, order, tolerance):
    built = build_lm(texts, order, tmp_path / "builtin.arpa", lmplz=False)
    kenlm = build_lm(texts, order, tmp_path / "lmplz.arpa")  # an installed lmplz is the default
    assert kenlm["engine"] == "lmplz" and built["ngrams"] == kenlm["ngrams"]
    assert (built["sentences"], built["words"]) == (kenlm["sentences"], kenlm["words"])
    _, p1, b1 = read_arpa(tmp_path / "builtin.arpa")
    _, p2, b2 = read_arpa(tmp_path / "lmplz.arpa")
    assert p1.keys() == p2.keys()
    del p1[("<s>",)], p2[("<s>",)]  # -99 here, 0 in lmplz: never predicted either way
    assert max(abs(p1[g] - p2[g]) for g in p1) < tolerance
    assert max(abs(b1.get(g, 0.0) - b2.get(g, 0.0)) for g in b1.keys() | b2.keys()) < tolerance


# ------------------------------------------------------------------ checks and messages


@pytest.fixture
def arpa(tmp_path):
    path = tmp_path / "lm.arpa"
    build_lm(TINY, 3, path, lmplz=False)
    return path


def test_vocabulary_and_check(arpa):
    words = arpa_vocabulary(arpa)
    assert words[:3] == ["<unk>", "<s>", "</s>"]
    assert sorted(words[3:]) == sorted({w for t in TINY for w in t.split()})
    check_lm(arpa)


def test_missing_and_non_arpa_files(tmp_path, arpa):
    for fn in (arpa_vocabulary, check_lm):
        with pytest.raises(LMError, match=r"nope\.arpa: LM file not found"):
            fn(tmp_path / "nope.arpa")
    text = tmp_path / "notes.txt"
    text.write_text("one two three\n")
    with pytest.raises(LMError, match=r"notes\.txt: not an ARPA file \(no \\data\\ header\)"):
        check_lm(text)
    empty = tmp_path / "empty.arpa"
    empty.write_text("")
    with pytest.raises(LMError, match="empty.arpa: not an ARPA file"):
        arpa_vocabulary(empty)
    binary = tmp_path / "bytes.arpa"
    binary.write_bytes(b"\xff\xfe\x00garbage" * 10)
    with pytest.raises(LMError, match="bytes.arpa: not an ARPA file"):
        check_lm(binary)


def test_truncated_and_miscounted_files(tmp_path, arpa):
    lines = arpa.read_text().splitlines(keepends=True)
    cut = tmp_path / "cut.arpa"
    cut.write_text("".join(lines[: len(lines) - 6]))
    for fn in (arpa_vocabulary, check_lm):
        with pytest.raises(LMError, match=r"cut\.arpa: truncated ARPA file \(it ends in the 3-grams"):
            fn(cut)
    short = tmp_path / "short.arpa"
    short.write_text("".join(lines[:8]))  # the header and three unigrams
    with pytest.raises(LMError, match=r"short\.arpa: truncated ARPA file \(it ends in the 1-grams"):
        arpa_vocabulary(short)
    wrong = tmp_path / "wrong.arpa"
    wrong.write_text(arpa.read_text().replace("ngram 2=15", "ngram 2=16"))
    with pytest.raises(LMError, match=r"wrong\.arpa: corrupt ARPA file: 15 2-grams where the header says 16"):
        arpa_vocabulary(wrong)
    bad_line = tmp_path / "bad.arpa"
    bad_line.write_text(arpa.read_text().replace("\tfive six\t", "\tfive\t", 1))
    with pytest.raises(LMError, match=r"bad\.arpa: bad 2-gram line"):
        check_lm(bad_line)
    gz = tmp_path / "cut.arpa.gz"
    gz.write_bytes(gzip.compress(arpa.read_bytes())[:-40])
    with pytest.raises(LMError, match=r"cut\.arpa\.gz: unreadable LM file"):
        check_lm(gz)


def test_kenlm_binary_is_recognized(tmp_path):
    binary = tmp_path / "lm.bin"
    binary.write_bytes(KENLM_BINARY_MAGIC + b" format version 5\n\0" + bytes(200))
    assert arpa_vocabulary(binary) is None
    check_lm(binary)


# ------------------------------------------------------------------ asr lm


def test_lm_command_files(tmp_path):
    plain = tmp_path / "corpus.txt"
    plain.write_text("One, TWO three!\n\n  \n42 apples\n")
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"u{i}", "audio": "x.wav", "duration": 1.0, "text": t}) + "\n"
                                for i, t in enumerate(["Four <s> five", "café"])))
    out = tmp_path / "lm" / "words.arpa.gz"
    summary = lm_command([plain, manifest], 3, out, lmplz=False)
    assert summary["engine"] == "builtin" and summary["sentences"] == 4
    assert summary["arpa"] == str(out) and summary["vocabulary"] == str(tmp_path / "lm" / "words.vocab.txt")
    expected = sorted(["one", "two", "three", "forty", "apples", "four", "s", "five", "cafe"])
    assert (tmp_path / "lm" / "words.vocab.txt").read_text().splitlines() == expected
    assert summary["vocabulary_size"] == len(expected)
    assert sorted(set(arpa_vocabulary(out)) - {"<s>", "</s>", "<unk>"}) == expected
    check_lm(out)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "one"}\n{"id": "x"}\n')
    with pytest.raises(LMError, match=r"bad\.jsonl:2: not a manifest line"):
        lm_command([bad], 2, tmp_path / "bad.arpa", lmplz=False)
    with pytest.raises(LMError, match=r"missing\.txt: text file not found"):
        lm_command([tmp_path / "missing.txt"], 2, tmp_path / "x.arpa", lmplz=False)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(LMError, match=r"latin\.txt: not UTF-8 text"):
        lm_command([latin], 2, tmp_path / "x.arpa", lmplz=False)


def test_vocab_path_names():
    assert vocab_path("d/lm.arpa").name == "lm.vocab.txt"
    assert vocab_path("d/lm.arpa.gz").name == "lm.vocab.txt"
    assert vocab_path("d/model.lm").name == "model.vocab.txt"


# ------------------------------------------------------------------ lexicons


@pytest.fixture(scope="module")
def bpe() -> Vocabulary:
    from asr.tokens import train_bpe

    return train_bpe(digit_sentences(300), 40)


def test_chars_lexicon(tmp_path):
    vocab = Vocabulary()
    path = tmp_path / "lexicon.txt"
    path.write_text("# digits\none\n\ntwo\tt w o\ntwo\tt u\ntwo\none\ndon't\n")
    lexicon = read_lexicon(path, vocab)
    assert list(lexicon) == ["one", "two", "don't"]
    assert lexicon["one"] == [vocab.encode("one")] == [spell("one", vocab)]
    assert lexicon["two"] == [vocab.encode("two"), vocab.encode("tu")]  # the spelled one equals the explicit one
    assert all(vocab.blank not in s for spellings in lexicon.values() for s in spellings)


@pytest.mark.parametrize("content, message", [
    ("one\ntwo\ncafé\n", r"lexicon\.txt:3: 'café' uses 'é', which the model's vocabulary does not have"),
    ("# words\nnew york\n", r"lexicon\.txt:2: 'new york' has whitespace in it \(separate a spelling"),
    ("one\tO n e\n", r"lexicon\.txt:1: 'one''s spelling uses 'O', which the model's vocabulary does not have"),
    ("one\t<blank>\n", r"lexicon\.txt:1: 'one''s spelling uses '<blank>'"),
    ("one\t \n", r"lexicon\.txt:1: 'one' has an empty spelling"),
    ("# nothing\n\n", r"lexicon\.txt: lexicon has no words"),
    ("", r"lexicon\.txt: lexicon has no words"),
])
def test_lexicon_errors(tmp_path, content, message):
    path = tmp_path / "lexicon.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(LexiconError, match=message):
        read_lexicon(path, Vocabulary())


def test_missing_lexicon_and_spell_errors(tmp_path):
    with pytest.raises(LexiconError, match=r"nope\.txt: lexicon not found"):
        read_lexicon(tmp_path / "nope.txt", Vocabulary())
    with pytest.raises(LexiconError, match="'Zoë' uses 'Z'"):
        spell("Zoë", Vocabulary())
    with pytest.raises(LexiconError, match="not a word"):
        spell("a b", Vocabulary())


def test_bpe_lexicon(tmp_path, bpe):
    ids = spell("seven", bpe)
    assert ids == bpe.encode("seven") and bpe.symbols[ids[0]].startswith(WORD_BOUNDARY)
    odd = spell("vexing", bpe)  # not a training word: spelled from smaller pieces
    assert bpe.symbols[odd[0]].startswith(WORD_BOUNDARY) and bpe.decode(odd) == "vexing"
    path = tmp_path / "lexicon.txt"
    explicit = " ".join(bpe.symbols[i] for i in odd)
    path.write_text(f"seven\nvexing\t{explicit}\nvexing\n", encoding="utf-8")
    assert read_lexicon(path, bpe) == {"seven": [ids], "vexing": [odd]}
    path.write_text("seven\nnine\nquick\n")
    with pytest.raises(LexiconError, match=r"lexicon\.txt:3: 'quick' uses 'q'"):
        read_lexicon(path, bpe)


def test_write_lexicon_round_trip(tmp_path):
    path = write_lexicon(["two", "one", "two", "don't"], tmp_path / "sub" / "words.txt")
    assert path.read_text() == "two\none\ndon't\n"
    assert list(read_lexicon(path, Vocabulary())) == ["two", "one", "don't"]
    with pytest.raises(LexiconError, match="'a b' cannot be a lexicon word"):
        write_lexicon(["a b"], tmp_path / "bad.txt")
    assert not (tmp_path / "bad.txt").exists()


def test_lexicon_words_are_the_first_fields_in_order(tmp_path):
    from asr.lexicon import LexiconError, lexicon_words

    path = tmp_path / "lexicon.txt"
    path.write_text("# digits\none\ntwo\tt w o\n\n  # indented comment\none\tw a n\nthree\n")
    assert lexicon_words(path) == ["one", "two", "three"]
    with pytest.raises(LexiconError, match="lexicon not found"):
        lexicon_words(tmp_path / "missing.txt")
