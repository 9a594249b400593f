"""Greedy CTC decoding in pure numpy (the on-device runtime uses it without TensorFlow).

Shapes:
    log_probs [batch, frames, vocab_size] or [frames, vocab_size], any real scores
    lengths   [batch] true output frames of each row
"""
from __future__ import annotations

import numpy as np


def greedy_ids(scores: np.ndarray, blank: int = 0) -> list[int]:
    """Best path of one utterance's scores [frames, vocab]: argmax per frame, repeats
    collapsed, blanks dropped."""
    best = np.asarray(scores).argmax(axis=-1)
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
