"""asr.ctc against a brute-force CTC that enumerates every alignment path."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from asr.ctc import ctc_loss, min_frames


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def collapse(path, blank: int) -> tuple[int, ...]:
    """CTC's many-to-one map: merge runs of equal symbols, then drop blanks."""
    return tuple(s for s, _ in itertools.groupby(path) if s != blank)


def brute_force_ctc(logits: np.ndarray, labels, blank: int = 0) -> float:
    """-log sum over all paths of length T that collapse to ``labels`` (logits [T, V])."""
    logp = log_softmax64(logits)
    frames, vocab = logp.shape
    target = tuple(int(i) for i in labels)
    total = 0.0
    for path in itertools.product(range(vocab), repeat=frames):
        if collapse(path, blank) == target:
            total += np.exp(logp[np.arange(frames), path].sum())
    return -np.log(total) if total > 0 else np.inf


def asr_loss(logits: np.ndarray, labels, blank: int = 0) -> float:
    """asr.ctc.ctc_loss on a batch of one unpadded utterance."""
    lab = np.array([list(labels) or [0]], np.int32)  # a label row needs at least one column
    out = ctc_loss(lab, np.array([len(labels)]), logits[None].astype(np.float32), np.array([len(logits)]), blank=blank)
    return float(np.asarray(out)[0])


# ---------------------------------------------------------------- the brute force itself


def test_collapse():
    assert collapse((0, 1, 1, 0, 1, 2, 2, 0), blank=0) == (1, 1, 2)
    assert collapse((0, 0), blank=0) == ()
    assert collapse((2, 2, 1), blank=2) == (1,)


def test_brute_force_on_uniform_scores_counts_paths():
    # uniform over V=3, T=3, label [1]: the paths are 1bb b1b bb1 11b b11 111 -> 6 of 27
    assert brute_force_ctc(np.zeros((3, 3)), [1]) == pytest.approx(-np.log(6 / 27))
    # label [1, 1] needs 1 b 1 exactly when T == 3: 1 of 27
    assert brute_force_ctc(np.zeros((3, 3)), [1, 1]) == pytest.approx(-np.log(1 / 27))


# ---------------------------------------------------------------- single utterances

CASES = [
    ([], 1), ([], 4),
    ([1], 1), ([1], 2), ([1], 4),
    ([1, 2], 2), ([1, 2], 5),
    ([1, 1], 3), ([1, 1], 5),
    ([2, 1, 2], 3), ([2, 1, 2], 6),
    ([1, 2, 2], 4), ([3, 3, 3], 5),
]


@pytest.mark.parametrize("labels, frames", CASES)
def test_ctc_loss_matches_brute_force(rng, labels, frames):
    logits = 2.0 * rng.standard_normal((frames, 4))
    expected = brute_force_ctc(logits, labels)
    assert np.isfinite(expected)
    assert asr_loss(logits, labels) == pytest.approx(expected, rel=1e-4)


def test_label_length_zero_is_all_blanks(rng):
    logits = rng.standard_normal((5, 4))
    expected = -log_softmax64(logits)[:, 0].sum()
    assert brute_force_ctc(logits, []) == pytest.approx(expected)
    assert asr_loss(logits, []) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("blank", [2, 3])
def test_blank_index_other_than_zero(rng, blank):
    logits = rng.standard_normal((4, 4))
    labels = [1, 0]  # id 0 is an ordinary label when the blank is elsewhere
    assert asr_loss(logits, labels, blank=blank) == pytest.approx(brute_force_ctc(logits, labels, blank), rel=1e-4)


# ---------------------------------------------------------------- padded batches


def test_batch_padding_is_ignored(rng):
    vocab = 4
    logit_lengths = np.array([6, 3, 5, 4, 2])
    labels_true = [[1, 2, 1], [3], [], [2, 2], [1, 3]]
    batch, max_frames = len(labels_true), int(logit_lengths.max()) + 2  # extra all-garbage columns too
    max_labels = max(len(l) for l in labels_true) + 2

    logits = rng.standard_normal((batch, max_frames, vocab)).astype(np.float32)
    labels = np.zeros((batch, max_labels), np.int32)
    for b, (n, lab) in enumerate(zip(logit_lengths, labels_true)):
        logits[b, n:] = 50.0 * rng.standard_normal((max_frames - n, vocab))  # large garbage past the end
        labels[b, : len(lab)] = lab
        labels[b, len(lab) :] = rng.integers(0, vocab, max_labels - len(lab))  # garbage ids, blank included
    label_lengths = np.array([len(l) for l in labels_true])

    got = np.asarray(ctc_loss(labels, label_lengths, logits, logit_lengths))
    expected = [brute_force_ctc(logits[b, :n], labels_true[b]) for b, n in enumerate(logit_lengths)]
    assert got.shape == (batch,)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_batch_loss_is_independent_of_neighbours(rng):
    """The same utterance gets the same loss whatever else is in the batch."""
    a = rng.standard_normal((1, 4, 4)).astype(np.float32)
    alone = np.asarray(ctc_loss([[1, 2]], [2], a, [4]))[0]
    big = rng.standard_normal((2, 9, 4)).astype(np.float32) * 10
    big[0, :4] = a[0]
    together = np.asarray(ctc_loss([[1, 2, 3, 3], [3, 1, 2, 2]], [2, 4], big, [4, 9]))[0]
    assert together == pytest.approx(alone, rel=1e-5)


# ---------------------------------------------------------------- min_frames


@pytest.mark.parametrize(
    "labels, expected",
    [([], 0), ([1], 1), ([1, 2], 2), ([1, 1], 3), ([1, 2, 1], 3), ([1, 1, 1], 5), ([3, 3, 2, 2], 6), ([1, 2, 2, 3], 5)],
)
def test_min_frames(labels, expected):
    assert min_frames(labels) == expected


@pytest.mark.parametrize("labels", [[1], [1, 1], [1, 2], [2, 2, 2], [1, 2, 1], [1, 1, 2]])
def test_min_frames_is_the_shortest_feasible_alignment(labels):
    """Independent check: the first T at which some path of length T collapses to the labels."""
    vocab = 3
    feasible = next(
        t for t in range(1, 8) if any(collapse(p, 0) == tuple(labels) for p in itertools.product(range(vocab), repeat=t))
    )
    assert min_frames(labels) == feasible


@pytest.mark.parametrize("labels", [[1, 1], [1, 2], [2, 1, 2], [1, 1, 1]])
def test_too_few_frames(rng, labels):
    """Observed with TensorFlow 2.21: for T < min_frames, tf.nn.ctc_loss returns a huge *finite*
    loss (around 700, i.e. -log of the float floor) rather than inf; the brute force gives inf.
    With T == min_frames the loss is finite and matches the brute force."""
    need = min_frames(labels)
    logits = rng.standard_normal((need - 1, 4))
    assert brute_force_ctc(logits, labels) == np.inf
    assert asr_loss(logits, labels) > 100.0

    logits = rng.standard_normal((need, 4))
    assert asr_loss(logits, labels) == pytest.approx(brute_force_ctc(logits, labels), rel=1e-4)
