"""The "memory" pipeline (training.pipeline: memory; for small corpora such as FSDD): log-mels
computed once per speed factor (asr.data.feature_cache), held in RAM, batched by a Python
generator.

``load_examples`` reads manifests into ``Example`` objects; ``make_dataset`` is the older
interface over a list of them; ``MemoryPart`` is the part a DataSource uses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asr.data.augment import draw_masks, draw_warp, mel_warp, spec_augment
from asr.data.batching import bucket, bucket_plan
from asr.data.feature_cache import compute_features
from asr.data.part import DataReport, Part, encode_text, label_fits
from asr.features import FeatureSpec, GlobalStats, feature_sums, normalize
from asr.manifest import Utterance, read_manifest
from asr.text import Vocabulary


@dataclass
class Example:
    """One utterance ready to batch: log-mels [frames_k, n_mels] per speed factor k, labels
    int32 [label_len], the normalized text."""

    id: str
    labels: np.ndarray
    feats: list[np.ndarray] = field(default_factory=list)
    text: str = ""

    @property
    def frames(self) -> int:
        return self.feats[0].shape[0]


def load_examples(
    manifests,
    spec: FeatureSpec,
    vocab: Vocabulary,
    factors=(1.0,),
    cache_dir: Path | None = None,
    max_duration: float | None = None,
) -> tuple[list[Example], DataReport]:
    """Read manifests (audio existence checked: a missing file is an error naming the line),
    encode labels, compute features; drop unreadable audio, over-long utterances and labels
    that cannot fit their output frames, counting each in the report."""
    utts: list[Utterance] = []
    for m in manifests:
        utts += read_manifest(m, check_audio=True)
    report = DataReport()
    if max_duration:
        report.too_long_audio = sum(u.duration > max_duration for u in utts)
        utts = [u for u in utts if u.duration <= max_duration]
    feats, errors = compute_features(utts, spec, factors, cache_dir)
    report.unreadable = errors
    examples = []
    for utt, fs in zip(utts, feats):
        if fs is None:
            continue
        text, labels = encode_text(vocab, utt.text, report)
        if not all(label_fits(labels, f.shape[0]) for f in fs):
            report.too_long_label += 1
            continue
        examples.append(Example(utt.id, labels, fs, text))
    report.kept = len(examples)
    return examples, report


def make_dataset(
    examples: list[Example],
    spec: FeatureSpec,
    stats: GlobalStats | None,
    cfg,
    train: bool,
    seed: int = 0,
    first_pass: int = 0,
):
    """tf.data pipeline over ``examples`` (asr.data's module docstring: the batch layout;
    "index" is the position in ``examples``).

    train=True: endless; a new order, speed factor, VTLP warp (training.vtlp_warp > 0) and
    SpecAugment masks on every pass (use ``estimate_steps`` for steps_per_epoch). train=False:
    one pass over the unperturbed features in a fixed order, nothing random. (``open_data`` is the newer interface.)"""
    bounds, sizes = bucket_plan([e.frames for e in examples], cfg.batch_frames, cfg.max_batch_size, cfg.buckets)
    return generator_dataset(examples, spec, stats, cfg, train, seed, first_pass, bounds, sizes)


def generator_dataset(
    examples, spec, stats, cfg, train, seed, first_pass, bounds, sizes,
    sort_frames=None, sortagrad=False, num_pipelines=1, pipeline_id=0, unit=0,
):
    """A generator over ``examples``, one pass per call. Pass p draws its order (unless
    shortest-first), then each utterance's speed copy, VTLP factor (only when
    training.vtlp_warp > 0) and masks, in order, from one generator seeded by (seed, p): the
    draws of positions other pipelines keep are made too (and thrown away), so every utterance
    gets the same copy, warp and masks whatever ``num_pipelines`` is; with one pipeline and
    sortagrad off this is ``make_dataset`` as it always was. The shortest-first pass uses copy
    ``unit`` (speed factor 1.0) throughout."""
    import tensorflow as tf

    n_mels = spec.n_mels
    epoch = [first_pass]  # pass counter: seeds each pass's order, speed factors, warps and masks

    def generate():
        p = epoch[0]
        rng = np.random.default_rng([seed, p])
        epoch[0] += 1
        in_order = train and sortagrad and p == 0
        if not train:
            order = range(len(examples))
        elif in_order:
            order = np.argsort(sort_frames, kind="stable")
        else:
            order = rng.permutation(len(examples))
        for pos, i in enumerate(order):
            ex = examples[i]
            k = unit if in_order else int(rng.integers(len(ex.feats))) if train else 0
            if pos % num_pipelines != pipeline_id:
                if train:
                    draw_warp(rng, cfg)
                    draw_masks(rng, ex.feats[k].shape[0], n_mels, cfg)
                continue
            feats = normalize(ex.feats[k], spec, stats)
            if train:
                feats = spec_augment(mel_warp(feats, draw_warp(rng, cfg)), rng, cfg)
            yield {
                "features": feats,
                "feature_lengths": np.int32(feats.shape[0]),
                "labels": ex.labels,
                "label_lengths": np.int32(len(ex.labels)),
                "index": np.int32(i),
            }

    signature = {
        "features": tf.TensorSpec([None, n_mels], tf.float32),
        "feature_lengths": tf.TensorSpec([], tf.int32),
        "labels": tf.TensorSpec([None], tf.int32),
        "label_lengths": tf.TensorSpec([], tf.int32),
        "index": tf.TensorSpec([], tf.int32),
    }
    ds = bucket(tf.data.Dataset.from_generator(generate, output_signature=signature), bounds, sizes, n_mels)
    if train:
        # Endless: fit() gets steps_per_epoch. The batch count of one pass varies with the
        # speed factors drawn, and tf_keras ends training when a pass falls short of the first.
        ds = ds.repeat()
    return ds.prefetch(tf.data.AUTOTUNE)


class MemoryPart(Part):
    """Manifests' utterances with their log-mels in RAM, one copy per speed factor."""

    kind = "memory"

    def __init__(self, manifests, config, train: bool, cache_dir):
        tc = config.training
        factors = tc.speed_factors if train else (1.0,)
        cache = Path(cache_dir) if cache_dir else None
        self.examples, self.report = load_examples(
            manifests, config.features, config.vocabulary, factors, cache, tc.max_duration if train else None
        )
        self.train, self.spec = train, config.features
        self.factors = factors
        self.unit = factors.index(1.0) if 1.0 in factors else 0  # the copy statistics and frames come from
        longest = int(np.argmin(factors))
        self.ids = [e.id for e in self.examples]
        self.texts = [e.text for e in self.examples]
        self.labels = [e.labels for e in self.examples]
        if 1.0 in factors:
            self.frames = np.array([e.feats[self.unit].shape[0] for e in self.examples], np.int64)
        else:
            self.frames = np.array([round(e.feats[0].shape[0] * factors[0]) for e in self.examples], np.int64)
        self.plan_frames = np.array([e.feats[longest].shape[0] for e in self.examples], np.int64)

    def sums(self):
        # From the first speed factor's copy, as the shipped FSDD model was trained (its recipe
        # lists 0.9 first); shards and streams use factor 1.0. Normalization statistics only
        # need to be the same in training and inference, which they are (saved with the model).
        return feature_sums((e.feats[0] for e in self.examples), self.spec.n_mels)

    def raw(self, gidx, p, seed, perturb: bool):
        """(utterance, un-normalized log-mels [frames, n_mels]) for the utterances of ``gidx``
        (a dataset of int64 DataSource positions); ``perturb``: a speed copy drawn per
        utterance, else the factor-1.0 copy."""
        import tensorflow as tf

        def fetch(g, c):
            return self.examples[int(g) - self.offset].feats[int(c)]

        def element(g):
            c = self.factor_index(g, p, seed, len(self.factors)) if perturb else tf.constant(self.unit, tf.int64)
            feats = tf.numpy_function(fetch, [g, c], tf.float32)
            feats.set_shape([None, self.spec.n_mels])
            return g, feats

        return gidx.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
