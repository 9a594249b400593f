"""Length buckets: how utterances are grouped into padded batches.

``bucket_plan`` picks buckets - 1 (training.buckets, default NUM_BUCKETS) boundaries at frame-count quantiles and a batch size per
bucket such that batch_size * longest_frames <= batch_frames (at most max_batch);
``estimate_steps`` counts the batches of one pass; ``bucket`` applies the plan to a tf.data
stream of batch elements (module docstring of asr.data: one utterance in, padded batches out).
"""
from __future__ import annotations

import numpy as np

NUM_BUCKETS = 8  # -> 7 boundaries at the 1/8 .. 7/8 quantiles of the frame counts


def bucket_plan(frames: list[int], batch_frames: int, max_batch: int,
                buckets: int = NUM_BUCKETS) -> tuple[list[int], list[int]]:
    """Bucket boundaries (``buckets`` - 1 frame-count quantiles; none for one bucket) and a
    batch size per bucket such that batch_size * longest_frames <= batch_frames."""
    qs = np.quantile(np.asarray(frames), np.linspace(0, 1, buckets + 1)[1:-1]) if frames else []
    bounds = sorted({int(q) + 1 for q in qs})
    edges = bounds + [max(frames or [1]) + 1]
    sizes = [int(max(1, min(max_batch, batch_frames // e))) for e in edges]
    return bounds, sizes


def estimate_steps(frames: list[int], bounds: list[int], sizes: list[int]) -> int:
    """Batches per epoch for the given bucketing."""
    idx = np.searchsorted(np.asarray(bounds), np.asarray(frames), side="right")
    counts = np.bincount(idx, minlength=len(sizes))
    return int(sum(int(np.ceil(c / s)) for c, s in zip(counts, sizes)))


def padded_shapes(n_mels: int) -> dict:
    """Shapes of one batch element (an utterance) before padding."""
    return {"features": [None, n_mels], "feature_lengths": [], "labels": [None], "label_lengths": [], "index": []}


def bucket(ds, bounds: list[int], sizes: list[int], n_mels: int):
    """Group the utterance elements of ``ds`` into padded batches by ``feature_lengths``; partial
    buckets are flushed when ``ds`` ends."""
    return ds.bucket_by_sequence_length(
        element_length_func=lambda d: d["feature_lengths"],
        bucket_boundaries=bounds,
        bucket_batch_sizes=sizes,
        padded_shapes=padded_shapes(n_mels),
    )
