"""From manifests (or feature shards) to padded training batches.

``open_data(paths, config, train)`` is the entry point; it returns a ``DataSource`` whose
``dataset(...)`` is the tf.data pipeline. The modules, one per stage:
    source.py        open_data, DataSource: the utterances of all parts, pass plans, batches
    memory.py        "memory" pipeline: log-mels in RAM (load_examples, make_dataset)
    feature_cache.py its on-disk cache of log-mels (content-keyed, written atomically)
    stream.py        "stream" pipeline: audio decoded and log-mels computed in tf.data
    shard_source.py  shard folders (asr.shards writes them): reading orders, multi-worker shares
    augment.py       speed perturbation, VTLP mel warp and SpecAugment (numpy and TF)
    batching.py      length buckets: bucket_plan, estimate_steps
    part.py          what the three sources share (Part, DataReport, label encoding, seeds)

Three ways to get log-mels:
- "memory" (training.pipeline, manifests): computed once per speed factor into an on-disk
  cache (parallel processes, reused on the next run) and held in RAM; a Python generator does
  the rest. For small corpora (FSDD).
- "stream" (training.pipeline, manifests): nothing is precomputed; decoding in
  tf.numpy_function, log-mels, normalization and SpecAugment as TF ops (asr.frontend: the
  exported model's frontend, the same log-mel as asr.features.log_mel).
- shard folders: un-normalized log-mels read from TFRecord files; always streamed, whatever
  training.pipeline says. Speed factor 1.0 only.

Order of the utterances, pass by pass (train=True; a pass is one epoch's worth of utterances):
pass p (counting from ``first_pass``) is shortest-first when training.sortagrad and p == 0,
else a permutation seeded by (seed, p); with ``num_pipelines`` > 1, pipeline k keeps the
positions i of that order with i % num_pipelines == k (so the pipelines partition every pass).
Shard folders cannot be read in an arbitrary order: their passes are described in
asr.data.shard_source (shuffled: permuted files, staggered and interleaved record by record;
shortest-first: an exact merge; several pipelines: shared by files when there are at least as
many files as pipelines, each record read by one pipeline). Manifests' utterances are decoded
only by the pipeline that keeps them.
Speed factor, VTLP warp factor (training.vtlp_warp > 0: the normalized log-mels are warped
along the mel axis before the masks, asr.data.augment) and SpecAugment masks are drawn per
utterance from (seed, pass, utterance) (the memory path draws them in its generator, in pass
order, exactly as ``make_dataset`` always has; with vtlp_warp 0 no warp factor is drawn), so
batches do not depend on the parallelism or on how many pipelines share the work.
The shortest-first pass is not speed-perturbed (factor 1.0, so that it really is in order
of length); the VTLP warp and SpecAugment apply to it as to every training pass.
train=False: one pass in a fixed order (manifest order; record order for shards), no
speed perturbation, no augmentation.

Batching: ``bucket_by_sequence_length`` with ``bucket_plan`` (per pass: partial buckets are
flushed when the pass ends). In the shortest-first pass each batch is a consecutive run of
the sorted order, except those flushed partial buckets, which come last in the pass (at most
one per bucket, each still a consecutive run).

Batch element (a dict):
    features        float32 [batch, max_frames, n_mels]   normalized, zero past each length
    feature_lengths int32   [batch]
    labels          int32   [batch, max_label_len]         zero past each label's length
    label_lengths   int32   [batch]
    index           int32   [batch]                        each utterance's position in the
                                                           DataSource: source.ids[i], source.texts[i]
                                                           (make_dataset: in its examples)
"""
from __future__ import annotations

from asr.data.augment import mel_warp, spec_augment, speed_perturb
from asr.data.batching import NUM_BUCKETS, bucket_plan, estimate_steps
from asr.data.feature_cache import compute_features
from asr.data.memory import Example, load_examples, make_dataset
from asr.data.part import DataReport
from asr.data.source import DataSource, open_data
from asr.data.stream import STREAM_FEATURES

__all__ = [
    "NUM_BUCKETS", "STREAM_FEATURES", "DataReport", "DataSource", "Example", "bucket_plan", "compute_features",
    "estimate_steps", "load_examples", "make_dataset", "mel_warp", "open_data", "spec_augment", "speed_perturb",
]
