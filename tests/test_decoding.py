"""asr.decoding: greedy CTC decoding and log-softmax in pure numpy."""
from __future__ import annotations

import numpy as np
import pytest

from asr.decoding import greedy_decode_batch, greedy_ids, log_softmax

VOCAB = 5  # blank 0, labels 1..4


def one_hot_scores(best_path, vocab: int = VOCAB, high: float = 5.0) -> np.ndarray:
    """Scores [frames, vocab] whose per-frame argmax is ``best_path``."""
    scores = np.zeros((len(best_path), vocab), np.float32)
    scores[np.arange(len(best_path)), best_path] = high
    return scores


@pytest.mark.parametrize(
    "path, expected",
    [
        ([1, 1, 1], [1]),  # repeats collapse
        ([1, 0, 1], [1, 1]),  # a blank between repeats keeps both
        ([1, 0, 0, 1, 1, 0, 1], [1, 1, 1]),
        ([0, 0, 0], []),  # blanks dropped
        ([0, 2, 0, 3, 3, 0, 0, 4], [2, 3, 4]),
        ([2, 3, 2, 3], [2, 3, 2, 3]),
        ([4], [4]),
        ([0, 1, 2, 2, 0, 2, 1, 1, 0], [1, 2, 2, 1]),
    ],
)
def test_greedy_ids(path, expected):
    assert greedy_ids(one_hot_scores(path)) == expected


def test_greedy_ids_returns_python_ints():
    out = greedy_ids(one_hot_scores([1, 0, 2]))
    assert all(type(i) is int for i in out)


def test_greedy_ids_other_blank():
    # blank is 3 here; 0 is an ordinary label
    assert greedy_ids(one_hot_scores([0, 3, 0, 0, 3, 3, 2]), blank=3) == [0, 0, 2]


def test_greedy_ids_empty_input():
    assert greedy_ids(np.zeros((0, VOCAB), np.float32)) == []


def test_greedy_is_invariant_to_softmax(rng):
    scores = rng.standard_normal((30, VOCAB)).astype(np.float32)
    assert greedy_ids(scores) == greedy_ids(log_softmax(scores))


def test_greedy_matches_reference_on_random_scores(rng):
    scores = rng.standard_normal((200, VOCAB))
    best = scores.argmax(axis=1).tolist()
    expected, prev = [], None
    for s in best:  # the textbook rule, frame by frame
        if s != prev and s != 0:
            expected.append(s)
        prev = s
    assert greedy_ids(scores) == expected


def test_batch_cut_at_lengths():
    paths = [[1, 0, 1, 2], [3, 3], [0, 4, 0], []]
    lengths = [len(p) for p in paths]
    frames = max(lengths) + 3
    batch = np.zeros((len(paths), frames, VOCAB), np.float32)
    for b, p in enumerate(paths):
        batch[b, : len(p)] = one_hot_scores(p)
        batch[b, len(p) :, 2] = 100.0  # garbage past the end that would decode as extra 2s
    out = greedy_decode_batch(batch, np.array(lengths))
    assert out == [[1, 1, 2], [3], [4], []]


def test_batch_garbage_continuing_last_symbol_is_not_merged():
    # frame 3 of row 0 decodes to 2; garbage beyond length holds 0 then 2 and must be ignored
    batch = np.zeros((1, 6, VOCAB), np.float32)
    batch[0, :3] = one_hot_scores([1, 2, 2])
    batch[0, 3:] = one_hot_scores([0, 2, 4])
    assert greedy_decode_batch(batch, [3]) == [[1, 2]]


def test_empty_batch():
    assert greedy_decode_batch(np.zeros((0, 4, VOCAB), np.float32), []) == []


def test_log_softmax_rows_sum_to_one(rng):
    x = rng.standard_normal((3, 7, VOCAB)) * 20
    out = log_softmax(x)
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_allclose(np.exp(out).sum(axis=-1), 1.0, rtol=1e-5)
    assert (out <= 0).all()
    # log-softmax only shifts each row: differences between entries are kept
    np.testing.assert_allclose(out - out[..., :1], (x - x[..., :1]).astype(np.float32), atol=1e-4)


def test_log_softmax_is_stable_for_huge_scores():
    out = log_softmax(np.array([[1000.0, 0.0, -1000.0], [-1e4, -1e4, -1e4]]))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(out[1], np.log(1 / 3), rtol=1e-6)


def test_log_softmax_other_axis(rng):
    x = rng.standard_normal((4, 6))
    np.testing.assert_allclose(np.exp(log_softmax(x, axis=0)).sum(axis=0), 1.0, rtol=1e-5)


# ------------------------------------------------------------------ text of a character model


def _scores_for(text: str, vocab) -> np.ndarray:
    """Scores whose greedy path spells ``text`` exactly (a blank after every symbol)."""
    path = [i for c in text for i in (vocab.symbols.index(c), vocab.blank)]
    return one_hot_scores(path, vocab.size)


@pytest.mark.parametrize("decoding_extra", [
    {},  # metadata version 1: no tokenizer, no text rule
    {"tokenizer": "chars", "text": "concatenate the symbols"},  # version 2 files exported before the fix
])
def test_runtime_text_of_any_character_file_has_no_stray_spaces(decoding_extra):
    """Leading, trailing and doubled spaces would reach the CLI and count as CER insertions; a
    .tflite exported earlier, whatever rule text it carries, gets clean text too."""
    from asr.runtime import decode_text, decoding_rule
    from asr.text import Vocabulary

    vocab = Vocabulary()
    meta = {"decoding": {"blank_index": 0, "vocabulary": vocab.symbols, **decoding_extra}}
    blank, symbols, boundary = decoding_rule(meta)
    assert decode_text(_scores_for("  one   two ", vocab), symbols, blank, boundary) == "one two"
    assert decode_text(_scores_for(" ", vocab), symbols, blank, boundary) == ""


def test_keras_decoding_of_a_character_model_has_no_stray_spaces():
    from asr.decoding import greedy_decode_batch
    from asr.text import Vocabulary

    vocab = Vocabulary()
    scores = _scores_for(" seven  three ", vocab)
    ids = greedy_decode_batch(scores[None], np.array([len(scores)]), vocab.blank)[0]
    assert vocab.decode(ids) == "seven three"


def test_exported_text_rule_describes_the_character_decoding():
    from asr.text import Vocabulary
    from export.metadata import decoding_metadata

    assert decoding_metadata(Vocabulary())["text"] == "concatenate the symbols, collapse runs of spaces, trim"
