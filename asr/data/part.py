"""What every data source of asr.data shares: the ``Part`` interface, the ``DataReport`` of
what was kept and dropped, label encoding and the per-utterance stateless seeds.

A part is a group of utterances of one kind (the manifests' memory or stream pipeline, or one
shard folder). Its attributes, all aligned with ``ids`` (the part's utterances, in its order):
    ids          list[str]
    texts        list[str]            normalized reference text (asr.text.normalize_text)
    labels       list[int32 [label_len]]
    frames       int64 [n]            log-mel frames at speed factor 1.0
    plan_frames  int64 [n]            frames of the longest speed variant (batches are planned with it)
    report       DataReport
    offset       int                  position of its first utterance in the DataSource (set by it)
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from asr.ctc import min_frames
from asr.model import output_length
from asr.text import Vocabulary, normalize_text

SEED_MULT = 1_000_003  # stateless seeds: (seed * SEED_MULT + pass * 16 + purpose, utterance or block)
SEED_SPEED, SEED_MASKS, SEED_WARP = 1, 2, 4  # the purposes (3 was a shard block shuffle's)


def pass_seed(seed, p, purpose: int):
    """int64 scalar tensor: the first half of a stateless seed for pass ``p`` and ``purpose``."""
    import tensorflow as tf

    return tf.cast(seed, tf.int64) * SEED_MULT + tf.cast(p, tf.int64) * 16 + purpose


@dataclass
class DataReport:
    """What a source kept and dropped, for the log."""

    kept: int = 0
    unreadable: list[str] = field(default_factory=list)
    too_long_label: int = 0
    too_long_audio: int = 0
    unknown_chars: Counter = field(default_factory=Counter)

    def lines(self, name: str) -> list[str]:
        out = [f"{name}: {self.kept} utterances kept"]
        if self.unreadable:
            shown = "; ".join(self.unreadable[:5])
            out.append(f"{name}: skipped {len(self.unreadable)} unreadable audio file(s): {shown}")
        if self.too_long_label:
            out.append(f"{name}: dropped {self.too_long_label} utterance(s) whose label cannot fit the subsampled frames")
        if self.too_long_audio:
            out.append(f"{name}: dropped {self.too_long_audio} utterance(s) longer than the maximum duration")
        if self.unknown_chars:
            chars = ", ".join(f"{c!r}x{n}" for c, n in self.unknown_chars.most_common())
            out.append(f"{name}: characters outside the vocabulary were skipped: {chars}")
        return out


def encode_text(vocab: Vocabulary, text: str, report: DataReport) -> tuple[str, np.ndarray]:
    """(normalized text, int32 labels [label_len]); unknown characters are counted in ``report``."""
    normalized = normalize_text(text)
    return normalized, np.asarray(vocab.encode(normalized, report.unknown_chars), np.int32)


def label_fits(labels: np.ndarray, frames: int) -> bool:
    """Whether ``labels`` fit the subsampled output frames of ``frames`` input frames under CTC."""
    return output_length(int(frames)) >= min_frames(np.asarray(labels).tolist())


class Part:
    """A group of utterances of one kind (module docstring). Addressable parts produce any
    utterance on demand: ``raw(indices, p, seed, perturb)``; shard parts read in file order."""

    addressable = True
    offset = 0

    @property
    def n(self) -> int:
        return len(self.ids)

    @staticmethod
    def factor_index(g, p, seed, k: int):
        """Speed factor index of utterance ``g`` in pass ``p``: uniform over ``k``, stateless."""
        import tensorflow as tf

        if k == 1:
            return tf.constant(0, tf.int64)
        s = tf.stack([pass_seed(seed, p, SEED_SPEED), g])
        u = tf.random.stateless_uniform([], seed=s, dtype=tf.float32)
        return tf.minimum(tf.cast(tf.floor(u * k), tf.int64), k - 1)
