"""CTC loss over the true lengths of each utterance.

Shapes:
    labels        int32   [batch, max_label_len]  (padding past label_lengths is ignored)
    label_lengths int32   [batch]
    logits        float32 [batch, max_frames, vocab_size]  (unnormalized)
    logit_lengths int32   [batch]                 (true output frames, never the padded count)
    returns       float32 [batch]  negative log-likelihood of each utterance
"""
from __future__ import annotations

import asr  # noqa: F401


def ctc_loss(labels, label_lengths, logits, logit_lengths, blank: int = 0):
    """Per-utterance CTC negative log-likelihood, float32 [batch] (tf.nn.ctc_loss, dense labels)."""
    import tensorflow as tf

    return tf.nn.ctc_loss(
        labels=tf.cast(labels, tf.int32),
        logits=tf.cast(logits, tf.float32),
        label_length=tf.cast(label_lengths, tf.int32),
        logit_length=tf.cast(logit_lengths, tf.int32),
        logits_time_major=False,
        blank_index=blank,
    )


def min_frames(label_ids) -> int:
    """Fewest output frames that can carry ``label_ids`` under CTC: one per label plus a blank
    between each pair of equal neighbours."""
    repeats = sum(1 for a, b in zip(label_ids, label_ids[1:]) if a == b)
    return len(label_ids) + repeats
