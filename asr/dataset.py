"""From manifests (or feature shards) to padded training batches.

``open_data(paths, config, train)`` is the entry point; it returns a ``DataSource`` whose
``dataset(...)`` is the tf.data pipeline. Three ways to get log-mels:

- "memory" (training.pipeline, manifests): ``load_examples`` computes the log-mels once per
  speed factor into an on-disk cache (parallel processes, reused on the next run) and holds
  them in RAM; a Python generator does the rest. For small corpora (FSDD).
- "stream" (training.pipeline, manifests): nothing is precomputed. Audio is decoded with
  soundfile (and speed-perturbed with soxr) in ``tf.numpy_function``; log-mels, normalization
  and SpecAugment are TF ops (``export.frontend``'s raw_log_mel_graph and normalize_graph: the
  exported model's frontend, the same log-mel as ``asr.features.log_mel``), so the work runs in
  tf.data's parallel C++ threads.
- shard folders (made by ``asr.shards.write_shards``): un-normalized log-mels read from
  TFRecord files; always streamed, whatever training.pipeline says. Speed factor 1.0 only.

Order of the utterances, pass by pass (train=True; a pass is one epoch's worth of utterances):
pass p (counting from ``first_pass``) is shortest-first when training.sortagrad and p == 0,
else a permutation seeded by (seed, p); with ``num_pipelines`` > 1, pipeline k keeps the
positions i of that order with i % num_pipelines == k (so the pipelines partition every pass).
Shard folders cannot be read in an arbitrary order: their shuffled passes permute the shard
files, interleave SHARD_CYCLE of them record by record and shuffle blocks of SHUFFLE_BLOCK
records (seeded by (seed, p)); their shortest-first pass merges the shards exactly. (Each of
several pipelines reads every record of a shard folder and parses only its own; manifests'
utterances are decoded only by the pipeline that keeps them.)
Speed factor and SpecAugment masks are drawn per utterance from (seed, pass, utterance) (the
memory path draws them in its generator, in pass order, exactly as ``make_dataset`` always
has), so batches do not depend on the parallelism or on how many pipelines share the work.
The shortest-first pass is not speed-perturbed (factor 1.0, so that it really is in order
of length); SpecAugment applies to it as to every training pass.
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
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from asr.audio import AudioError, load_audio
from asr.ctc import min_frames
from asr.features import FeatureSpec, GlobalStats, feature_sums, log_mel, normalize, stats_from_sums
from asr.manifest import Utterance, read_manifest
from asr.model import output_length
from asr.text import Vocabulary, normalize_text

log = logging.getLogger(__name__)

CACHE_VERSION = 1
NUM_BUCKETS = 8


@dataclass
class Example:
    """One utterance ready to batch: log-mels [frames_k, n_mels] per speed factor k, labels."""

    id: str
    labels: np.ndarray  # int32 [label_len]
    feats: list[np.ndarray] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return self.feats[0].shape[0]


@dataclass
class DataReport:
    """What ``load_examples`` kept and dropped, for the log."""

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


def speed_perturb(audio: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """Play ``audio`` [samples] ``factor`` times faster (tempo and pitch, like sox 'speed')."""
    if factor == 1.0:
        return audio
    import soxr

    return soxr.resample(audio, sample_rate * factor, sample_rate, quality="HQ").astype(np.float32)


def _features_for_file(args):
    """Worker: (audio path, spec dict, factors) -> list of log-mels, or an error string."""
    path, spec_dict, factors = args
    spec = FeatureSpec(**spec_dict)
    try:
        audio = load_audio(path, spec.sample_rate)
    except AudioError as err:
        return str(err)
    return [log_mel(speed_perturb(audio, f, spec.sample_rate), spec) for f in factors]


def _cache_key(utts: list[Utterance], spec: FeatureSpec, factor: float) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, spec.to_dict(), factor]).encode())
    for u in utts:
        h.update(f"{u.id}\t{u.audio}\n".encode())
    return h.hexdigest()[:16]


def compute_features(
    utts: list[Utterance], spec: FeatureSpec, factors, cache_dir: Path | None, workers: int | None = None
) -> tuple[list[list[np.ndarray] | None], list[str]]:
    """Un-normalized log-mels of every utterance at every speed factor.

    Returns (feats, errors): feats[i] is a list (one [frames, n_mels] per factor) or None when
    the audio was unreadable; errors lists "id: reason" for those. Results are cached in
    ``cache_dir`` as one .npz per factor, written atomically, so a killed run resumes.
    """
    factors = list(factors)
    paths = {f: cache_dir / f"feats-{_cache_key(utts, spec, f)}.npz" for f in factors} if cache_dir else {}
    if cache_dir and all(p.exists() for p in paths.values()):
        return _read_cache(paths, factors, len(utts))
    from tqdm import tqdm

    workers = workers or max(1, min(os.cpu_count() or 1, 8))
    unique = list(dict.fromkeys(u.audio for u in utts))  # a file listed twice is computed once
    jobs = [(path, spec.to_dict(), factors) for path in unique]
    desc = f"features x{len(factors)}"
    if workers > 1 and len(jobs) > 50:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            done = list(tqdm(pool.map(_features_for_file, jobs, chunksize=16), total=len(jobs), desc=desc, leave=False, disable=None))
    else:
        done = [_features_for_file(j) for j in tqdm(jobs, desc=desc, leave=False, disable=None)]
    by_path = dict(zip(unique, done))
    results = [by_path[u.audio] for u in utts]
    feats = [r if isinstance(r, list) else None for r in results]
    errors = [f"{u.id}: {r}" for u, r in zip(utts, results) if isinstance(r, str)]
    if cache_dir:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for k, f in enumerate(factors):
            _write_cache(paths[f], [x[k] if x is not None else None for x in feats], errors)
    return feats, errors


def _write_cache(path: Path, arrays: list, errors: list[str]) -> None:
    lengths = np.array([-1 if a is None else a.shape[0] for a in arrays], np.int64)
    data = np.concatenate([a for a in arrays if a is not None] or [np.zeros((0, 1), np.float32)])
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, data=data, lengths=lengths, errors=np.array(errors, dtype=object))
    os.replace(tmp, path)


def _read_cache(paths: dict, factors: list, n: int):
    per_factor = []
    errors: list[str] = []
    for f in factors:
        with np.load(paths[f], allow_pickle=True) as z:
            data, lengths = z["data"], z["lengths"]
            errors = list(z["errors"])
        offsets = np.concatenate([[0], np.cumsum(np.maximum(lengths, 0))])
        per_factor.append([None if lengths[i] < 0 else data[offsets[i] : offsets[i + 1]] for i in range(n)])
    feats = [None if per_factor[0][i] is None else [pf[i] for pf in per_factor] for i in range(n)]
    return feats, errors


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
        labels = vocab.encode(normalize_text(utt.text), report.unknown_chars)
        if min(output_length(f.shape[0]) for f in fs) < min_frames(labels):
            report.too_long_label += 1
            continue
        examples.append(Example(utt.id, np.asarray(labels, np.int32), fs))
    report.kept = len(examples)
    return examples, report


def _draw_masks(rng: np.random.Generator, frames: int, channels: int, cfg) -> list[tuple[int, int, int]]:
    """(axis, start, width) of each SpecAugment mask (axis 1: channels, 0: frames)."""
    masks = []
    for _ in range(cfg.freq_masks):
        w = int(rng.integers(0, cfg.freq_mask_width + 1))
        f0 = int(rng.integers(0, max(1, channels - w)))
        masks.append((1, f0, w))
    max_t = int(cfg.time_mask_fraction * frames)
    for _ in range(cfg.time_masks):
        w = int(rng.integers(0, max_t + 1))
        t0 = int(rng.integers(0, max(1, frames - w)))
        masks.append((0, t0, w))
    return masks


def spec_augment(feats: np.ndarray, rng: np.random.Generator, cfg) -> np.ndarray:
    """Zero ``cfg.freq_masks`` bands of up to ``cfg.freq_mask_width`` channels and
    ``cfg.time_masks`` spans of up to ``cfg.time_mask_fraction`` of the frames; [T, F] in and out."""
    out = feats.copy()
    for axis, start, width in _draw_masks(rng, out.shape[0], out.shape[1], cfg):
        if axis:
            out[:, start : start + width] = 0.0
        else:
            out[start : start + width, :] = 0.0
    return out


def bucket_plan(frames: list[int], batch_frames: int, max_batch: int) -> tuple[list[int], list[int]]:
    """Bucket boundaries (frame-count quantiles) and a batch size per bucket such that
    batch_size * longest_frames <= batch_frames."""
    qs = np.quantile(np.asarray(frames), np.linspace(0, 1, NUM_BUCKETS + 1)[1:-1]) if frames else []
    bounds = sorted({int(q) + 1 for q in qs})
    edges = bounds + [max(frames or [1]) + 1]
    sizes = [int(max(1, min(max_batch, batch_frames // e))) for e in edges]
    return bounds, sizes


def estimate_steps(frames: list[int], bounds: list[int], sizes: list[int]) -> int:
    """Batches per epoch for the given bucketing."""
    idx = np.searchsorted(np.asarray(bounds), np.asarray(frames), side="right")
    counts = np.bincount(idx, minlength=len(sizes))
    return int(sum(int(np.ceil(c / s)) for c, s in zip(counts, sizes)))


def make_dataset(
    examples: list[Example],
    spec: FeatureSpec,
    stats: GlobalStats | None,
    cfg,
    train: bool,
    seed: int = 0,
    first_pass: int = 0,
):
    """tf.data pipeline over ``examples`` (see the module docstring for the batch layout).

    train=True: endless; a new order, speed factor and SpecAugment masks on every pass (use
    ``estimate_steps`` for steps_per_epoch). train=False: one pass over the unperturbed
    features in a fixed order, nothing random. (``open_data`` is the newer interface.)"""
    bounds, sizes = bucket_plan([e.frames for e in examples], cfg.batch_frames, cfg.max_batch_size)
    return _generator_dataset(examples, spec, stats, cfg, train, seed, first_pass, bounds, sizes)


def _padded_shapes(n_mels: int) -> dict:
    return {"features": [None, n_mels], "feature_lengths": [], "labels": [None], "label_lengths": []}


def _bucket(ds, bounds, sizes, n_mels: int):
    return ds.bucket_by_sequence_length(
        element_length_func=lambda d: d["feature_lengths"],
        bucket_boundaries=bounds,
        bucket_batch_sizes=sizes,
        padded_shapes=_padded_shapes(n_mels),
    )


def _generator_dataset(
    examples, spec, stats, cfg, train, seed, first_pass, bounds, sizes,
    sort_frames=None, sortagrad=False, num_pipelines=1, pipeline_id=0, unit=0,
):
    """The memory path: a generator over ``examples``, one pass per call. Pass p draws its
    order (unless shortest-first), then each utterance's speed copy and masks, in order, from
    one generator seeded by (seed, p): the draws of positions other pipelines keep are made
    too (and thrown away), so every utterance gets the same copy and masks whatever
    ``num_pipelines`` is; with one pipeline and sortagrad off this is ``make_dataset`` as it
    always was. The shortest-first pass uses copy ``unit`` (speed factor 1.0) throughout."""
    import tensorflow as tf

    n_mels = spec.n_mels
    epoch = [first_pass]  # pass counter: seeds each pass's order, speed factors and masks

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
                    _draw_masks(rng, ex.feats[k].shape[0], n_mels, cfg)
                continue
            feats = normalize(ex.feats[k], spec, stats)
            if train:
                feats = spec_augment(feats, rng, cfg)
            yield {
                "features": feats,
                "feature_lengths": np.int32(feats.shape[0]),
                "labels": ex.labels,
                "label_lengths": np.int32(len(ex.labels)),
            }

    signature = {
        "features": tf.TensorSpec([None, n_mels], tf.float32),
        "feature_lengths": tf.TensorSpec([], tf.int32),
        "labels": tf.TensorSpec([None], tf.int32),
        "label_lengths": tf.TensorSpec([], tf.int32),
    }
    ds = _bucket(tf.data.Dataset.from_generator(generate, output_signature=signature), bounds, sizes, n_mels)
    if train:
        # Endless: fit() gets steps_per_epoch. The batch count of one pass varies with the
        # speed factors drawn, and tf_keras ends training when a pass falls short of the first.
        ds = ds.repeat()
    return ds.prefetch(tf.data.AUTOTUNE)


# ============================================================================ open_data

STREAM_FEATURES = "tf"  # stream log-mels: "tf" (raw_log_mel_graph in tf.data) or "numpy" (librosa in numpy_function)
STATS_SAMPLE = 1000  # stream: utterances (a fixed sample) that the global statistics are computed from
SHARD_CYCLE = 16  # shuffled shard passes: shards read side by side, record by record
SHUFFLE_BLOCK = 512  # shuffled shard passes: records shuffled within blocks of this many
_SEED_MULT = 1_000_003  # per-utterance stateless seeds: (seed * _SEED_MULT + pass * 16 + purpose, utterance)


def open_data(paths, config, train: bool, cache_dir=None) -> "DataSource":
    """Open training (``train=True``) or evaluation data: manifests (.jsonl) and/or shard folders
    (``asr.shards.write_shards``; a folder with index.json).

    Manifests use config.training.pipeline ("memory": cached log-mels in RAM, ``cache_dir`` is
    the cache; "stream": computed on the fly); shard folders always stream from the shards.
    train=True applies training.speed_factors (not to shards, which hold factor 1.0 only) and
    training.max_duration. Labels are config.vocabulary.encode(normalize_text(text)), encoded
    here once. Utterances whose label cannot fit the subsampled frames are dropped and counted
    (stream: judged from the manifest duration, at the fastest speed factor)."""
    from asr.shards import is_shard_folder

    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    if not paths:
        raise ValueError("open_data needs at least one manifest or shard folder")
    manifests = [p for p in paths if not p.is_dir()]
    folders = [p for p in paths if p.is_dir()]
    for f in folders:
        if not is_shard_folder(f):
            from asr.shards import ShardError

            raise ShardError(f"{f} is a folder without index.json: not a finished shard folder")
    parts: list[_Part] = []
    if manifests:
        if config.training.pipeline == "stream":
            parts.append(_StreamPart(manifests, config, train))
        else:
            parts.append(_MemoryPart(manifests, config, train, cache_dir))
    parts += [_ShardPart(f, config, train) for f in folders]
    return DataSource(parts, config, train)


def _encode(vocab: Vocabulary, text: str, report: DataReport) -> np.ndarray:
    return np.asarray(vocab.encode(normalize_text(text), report.unknown_chars), np.int32)


def _fits(labels: np.ndarray, frames: int) -> bool:
    return output_length(int(frames)) >= min_frames(labels.tolist())


class _Part:
    """A group of utterances of one kind. Attributes: ids, labels (int32 arrays), frames
    (factor 1.0), plan_frames (the longest speed variant: what batches are planned with),
    report; offset (of its first utterance in the DataSource) is set by the DataSource."""

    addressable = True  # features can be produced in any order, by utterance
    offset = 0

    @property
    def n(self) -> int:
        return len(self.ids)

    @staticmethod
    def _factor_index(g, p, seed, k: int):
        """Speed factor index of utterance ``g`` in pass ``p``: uniform over ``k``, stateless."""
        import tensorflow as tf

        if k == 1:
            return tf.constant(0, tf.int64)
        s = tf.stack([tf.cast(seed, tf.int64) * _SEED_MULT + tf.cast(p, tf.int64) * 16 + 1, g])
        u = tf.random.stateless_uniform([], seed=s, dtype=tf.float32)
        return tf.minimum(tf.cast(tf.floor(u * k), tf.int64), k - 1)


class _MemoryPart(_Part):
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
        """(utterance, un-normalized log-mels) for the utterances of ``gidx`` (a dataset);
        ``perturb``: a speed copy drawn per utterance, else the factor-1.0 copy."""
        import tensorflow as tf

        def fetch(g, c):
            return self.examples[int(g) - self.offset].feats[int(c)]

        def element(g):
            c = self._factor_index(g, p, seed, len(self.factors)) if perturb else tf.constant(self.unit, tf.int64)
            feats = tf.numpy_function(fetch, [g, c], tf.float32)
            feats.set_shape([None, self.spec.n_mels])
            return g, feats

        return gidx.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


class _StreamPart(_Part):
    kind = "stream"

    def __init__(self, manifests, config, train: bool):
        from threading import Lock

        tc, spec = config.training, config.features
        self.train, self.spec = train, spec
        self.factors = tc.speed_factors if train else (1.0,)
        self.report = DataReport()
        self.runtime_unreadable: list[str] = []
        self._seen_bad: set[str] = set()
        self._lock = Lock()
        utts: list[Utterance] = []
        for m in manifests:
            utts += read_manifest(m, check_audio=True)
        if train and tc.max_duration:
            self.report.too_long_audio = sum(u.duration > tc.max_duration for u in utts)
            utts = [u for u in utts if u.duration <= tc.max_duration]
        kept = []
        self.labels = []
        fastest, slowest = max(self.factors), min(self.factors)
        for u in utts:
            labels = _encode(config.vocabulary, u.text, self.report)
            samples = int(round(u.duration * spec.sample_rate))
            if not _fits(labels, spec.num_frames(int(samples / fastest))):
                self.report.too_long_label += 1
                continue
            kept.append(u)
            self.labels.append(labels)
        self.report.kept = len(kept)
        self.ids = [u.id for u in kept]
        self.audio = [u.audio for u in kept]
        samples = np.array([int(round(u.duration * spec.sample_rate)) for u in kept], np.int64)
        self.frames = spec.num_frames(samples)
        self.plan_frames = spec.num_frames((samples / slowest).astype(np.int64))

    def _skip(self, i: int, reason: str) -> None:
        uid = self.ids[i]
        with self._lock:
            if uid in self._seen_bad:
                return
            self._seen_bad.add(uid)
            self.runtime_unreadable.append(f"{uid}: {reason}")
        log.warning("skipping unreadable audio %s (%s): %s", uid, self.audio[i], reason)

    def _audio(self, g, factor):
        """numpy_function body: (utterance, speed factor) -> (samples float32, ok)."""
        i = int(g) - self.offset
        try:
            audio = load_audio(self.audio[i], self.spec.sample_rate)
            return speed_perturb(audio, float(factor), self.spec.sample_rate), True
        except AudioError as err:
            self._skip(i, str(err))
        except Exception as err:  # whatever a decoder raises: skipped, never fatal
            self._skip(i, f"{type(err).__name__}: {err}")
        return np.zeros(0, np.float32), False

    def _log_mel_numpy(self, g, factor):
        audio, ok = self._audio(g, factor)
        if not ok:
            return np.zeros((0, self.spec.n_mels), np.float32), False
        return log_mel(audio, self.spec), True

    def raw(self, gidx, p, seed, perturb: bool):
        """(utterance, un-normalized log-mels) for the utterances of ``gidx`` (a dataset);
        unreadable audio is skipped (logged once, counted in ``runtime_unreadable``)."""
        import tensorflow as tf

        factors = tf.constant(self.factors if perturb else (1.0,), tf.float32)
        k = len(self.factors) if perturb else 1
        n_mels = self.spec.n_mels

        def with_factor(g):
            return g, tf.gather(factors, self._factor_index(g, p, seed, k))

        ds = gidx.map(with_factor)
        if STREAM_FEATURES == "numpy":
            def features(g, f):
                feats, ok = tf.numpy_function(self._log_mel_numpy, [g, f], [tf.float32, tf.bool])
                feats.set_shape([None, n_mels])
                return g, feats, ok

            ds = ds.map(features, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            return ds.filter(_readable).map(_drop_flag)

        from export.frontend import raw_log_mel_graph

        def decode(g, f):
            audio, ok = tf.numpy_function(self._audio, [g, f], [tf.float32, tf.bool])
            audio.set_shape([None])
            return g, audio, ok

        def features(g, audio, ok):
            return g, raw_log_mel_graph(audio, self.spec)

        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.filter(_readable)
        return ds.map(features, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def sums(self, limit: int | None = None):
        """Sums over a fixed sample of up to ``limit`` utterances, scaled to the whole part."""
        import tensorflow as tf

        limit = STATS_SAMPLE if limit is None else limit
        pick = np.arange(self.n) if self.n <= limit else np.sort(np.random.default_rng(0).choice(self.n, limit, replace=False))
        gidx = tf.data.Dataset.from_tensor_slices((pick + self.offset).astype(np.int64))
        feats = self.raw(gidx, 0, 0, perturb=False).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
        total, total_sq, count = feature_sums((f for _, f in feats), self.spec.n_mels)
        if count and len(pick) < self.n:
            scale = float(self.frames.sum()) / float(self.frames[pick].sum())
            total, total_sq, count = total * scale, total_sq * scale, int(round(count * scale))
        return total, total_sq, count


class _ShardPart(_Part):
    kind = "shards"
    addressable = False

    def __init__(self, folder, config, train: bool):
        from asr.shards import ShardError, check_spec, read_index

        tc, spec = config.training, config.features
        self.folder, self.train, self.spec = Path(folder), train, spec
        self.index = index = read_index(folder)
        check_spec(folder, index, spec)
        self.dtype = index["dtype"]
        self.report = DataReport()
        self.report.unreadable = list(index["problems"])
        self.report.too_long_audio = len(index["too_long"])
        self.speed_note = train and tuple(tc.speed_factors) != (1.0,)
        cols = index["utterances"]
        n_rec = len(cols["id"])
        self.record_kept = np.full(n_rec, -1, np.int64)  # record -> index in this part, -1: dropped
        self.ids, self.labels, frames = [], [], []
        for r in range(n_rec):
            if train and tc.max_duration and cols["duration"][r] > tc.max_duration:
                self.report.too_long_audio += 1
                continue
            labels = _encode(config.vocabulary, cols["text"][r], self.report)
            if not _fits(labels, cols["frames"][r]):
                self.report.too_long_label += 1
                continue
            self.record_kept[r] = len(self.ids)
            self.ids.append(cols["id"][r])
            self.labels.append(labels)
            frames.append(cols["frames"][r])
        self.report.kept = len(self.ids)
        self.frames = np.array(frames, np.int64)
        self.plan_frames = self.frames
        self.num_shards = len(index["shards"])
        counts = [s["utterances"] for s in index["shards"]]
        self.record_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.files = [str(self.folder / s["file"]) for s in index["shards"]]
        # The shortest-first pass merges the shards: the shard of each record, all records in
        # order of length (ties: record order). Exact when each shard is sorted by length.
        rec_frames, rec_shard = np.asarray(cols["frames"], np.int64), np.asarray(cols["shard"], np.int64)
        if np.any((np.diff(rec_frames) < 0) & (np.diff(rec_shard) == 0)):
            raise ShardError(f"{folder}: a shard is not sorted by length (not written by asr.shards); rewrite it")
        self.merge_selector = rec_shard[np.argsort(rec_frames, kind="stable")]

    def sums(self):
        """Per-shard sums from index.json, less the records dropped here (from the shard's meta)."""
        from asr.shards import utterance_sums

        n_mels = self.spec.n_mels
        total, total_sq, count = np.zeros(n_mels), np.zeros(n_mels), 0
        cols = self.index["utterances"]
        for s, shard in enumerate(self.index["shards"]):
            lo, hi = self.record_start[s], self.record_start[s + 1]
            dropped = np.nonzero(self.record_kept[lo:hi] < 0)[0]
            if shard["utterances"]:
                total += np.asarray(shard["sum"])
                total_sq += np.asarray(shard["sumsq"])
                count += shard["frames"]
            if len(dropped):
                sums, sq = utterance_sums(self.folder, self.index, s)
                total -= sums[dropped].sum(axis=0)
                total_sq -= sq[dropped].sum(axis=0)
                count -= int(sum(cols["frames"][lo + d] for d in dropped))
        return total, total_sq, count

    @cached_property
    def _kept_global(self) -> np.ndarray:
        """Record -> utterance index in the DataSource (-1: dropped); needs ``offset`` set."""
        return np.where(self.record_kept >= 0, self.record_kept + self.offset, -1)

    def _shard(self, s):
        """(serialized record, utterance) of shard ``s`` (an int, or a tensor inside interleave),
        dropped records included (utterance -1)."""
        import tensorflow as tf

        kept = self._kept_global
        if isinstance(s, (int, np.integer)):  # only this shard's slice becomes a constant
            utterances = kept[self.record_start[s] : self.record_start[s + 1]]
            records = tf.data.TFRecordDataset(self.files[s])
        else:
            start = tf.constant(self.record_start)
            utterances = tf.constant(kept)[start[s] : start[s + 1]]
            records = tf.data.TFRecordDataset(tf.gather(tf.constant(self.files), s))
        return tf.data.Dataset.zip((records, tf.data.Dataset.from_tensor_slices(utterances)))

    def records(self, kind: str, keep, extra, p, seed):
        """This part's records in pass order, the positions this pipeline keeps, parsed:
        (utterance, log-mels). ``keep``: bool per rank (of the records kept at open time);
        ``extra``: shard order (eval, shuffled) or the shard of every record (sorted)."""
        import tensorflow as tf

        from asr.shards import parse_record

        if kind == "sorted":  # exact merge of the frame-sorted shards
            shards = [self._shard(s) for s in range(self.num_shards)]
            ds = tf.data.Dataset.choose_from_datasets(shards, tf.data.Dataset.from_tensor_slices(extra))
            ds = ds.filter(_kept_record)
        else:
            cycle = SHARD_CYCLE if kind == "shuffled" else 1
            parallel = {"num_parallel_calls": cycle, "deterministic": True} if cycle > 1 else {}
            ds = tf.data.Dataset.from_tensor_slices(extra).interleave(self._shard, cycle_length=cycle, block_length=1, **parallel)
            ds = ds.filter(_kept_record)
            if kind == "shuffled":
                base = tf.cast(seed, tf.int64) * _SEED_MULT + tf.cast(p, tf.int64) * 16 + 3

                def shuffle_block(w, block):
                    rec, g = block
                    perm = tf.argsort(tf.random.stateless_uniform(tf.shape(g), seed=tf.stack([base, w])))
                    return tf.data.Dataset.from_tensor_slices((tf.gather(rec, perm), tf.gather(g, perm)))

                ds = ds.batch(SHUFFLE_BLOCK).enumerate().flat_map(shuffle_block)
        keep = tf.convert_to_tensor(keep, tf.bool)

        def mine(i, x):
            return tf.gather(keep, i)

        def parse(i, x):
            record, g = x
            return g, parse_record(record, self.spec.n_mels, self.dtype)

        return ds.enumerate().filter(mine).map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _kept_record(record, g):
    return g >= 0


def _readable(g, x, ok):
    return ok


def _drop_flag(g, x, ok):
    return g, x


class DataSource:
    """Utterances ready to batch (see ``open_data`` and the module docstring).

    frames: int64 [num_utterances] (factor 1.0; exact for memory and shards, from the manifest
    duration for stream); audio_seconds: float; ids: list of utterance ids."""

    def __init__(self, parts: list[_Part], config, train: bool):
        self.parts, self.config, self.train = parts, config, train
        offset = 0
        for part in parts:
            part.offset = offset
            offset += part.n
        self.ids = [i for part in parts for i in part.ids]
        self.labels = [lab for part in parts for lab in part.labels]
        self.frames = np.concatenate([part.frames for part in parts]).astype(np.int64)
        self.plan_frames = np.concatenate([part.plan_frames for part in parts]).astype(np.int64)
        self._part_of = np.repeat(np.arange(len(parts)), [part.n for part in parts])
        spec = config.features
        self.audio_seconds = float(self.frames.sum()) * spec.hop_length / spec.sample_rate

    @property
    def num_utterances(self) -> int:
        return len(self.ids)

    def report_lines(self, name: str) -> list[str]:
        """Kept / dropped / unreadable counts, like DataReport.lines (stream: the unreadable
        audio skipped at run time so far)."""
        total = DataReport()
        for part in self.parts:
            r = part.report
            total.kept += r.kept
            total.unreadable += r.unreadable
            total.too_long_label += r.too_long_label
            total.too_long_audio += r.too_long_audio
            total.unknown_chars.update(r.unknown_chars)
        lines = total.lines(name)
        runtime = [x for part in self.parts for x in getattr(part, "runtime_unreadable", [])]
        if runtime:
            lines.append(f"{name}: skipped {len(runtime)} unreadable audio file(s) while streaming: {'; '.join(runtime[:5])}")
        if any(getattr(part, "speed_note", False) for part in self.parts):
            lines.append(f"{name}: shard folders hold speed factor 1.0 only: no speed perturbation for their utterances")
        return lines

    def global_stats(self) -> GlobalStats:
        """Per-channel mean and std of the un-normalized log-mels (memory: from the features of
        the first speed factor; shards: from the sums stored at write time, factor 1.0; stream:
        from a fixed sample of up to STATS_SAMPLE utterances, factor 1.0)."""
        n_mels = self.config.features.n_mels
        total, total_sq, count = np.zeros(n_mels), np.zeros(n_mels), 0
        for part in self.parts:
            t, q, c = part.sums()
            total, total_sq, count = total + t, total_sq + q, count + c
        return stats_from_sums(total, total_sq, count)

    def steps_per_epoch(self, batch_frames: int, max_batch_size: int) -> int:
        """Batches in one pass of one pipeline (bucket_plan / estimate_steps)."""
        bounds, sizes = bucket_plan(self.plan_frames.tolist(), batch_frames, max_batch_size)
        return estimate_steps(self.plan_frames.tolist(), bounds, sizes)

    # ------------------------------------------------------------------ pass plans

    def _plan(self, kind: str, p: int, seed: int, num_pipelines: int, pipeline_id: int) -> list[np.ndarray]:
        """[part of each kept position] + per part: its utterances to produce (addressable
        parts), or (keep per rank, shard order / shard per rank) for shard parts."""
        n = self.num_utterances
        if kind == "eval":
            order = np.arange(n)
        elif kind == "sorted":
            order = np.argsort(self.frames, kind="stable")
        else:
            order = np.random.default_rng([seed, p]).permutation(n)
        mine = np.arange(n) % num_pipelines == pipeline_id
        part_at = self._part_of[order]
        out = [part_at[mine].astype(np.int64)]
        for j, part in enumerate(self.parts):
            at = part_at == j
            seq, keep = order[at], mine[at]
            if part.addressable:
                out.append(seq[keep].astype(np.int64))
                continue
            out.append(keep)
            if kind == "shuffled":
                out.append(np.random.default_rng([seed, p, j + 1]).permutation(part.num_shards).astype(np.int64))
            elif kind == "sorted":
                out.append(part.merge_selector)
            else:
                out.append(np.arange(part.num_shards, dtype=np.int64))
        return out

    def _plan_types(self):
        import tensorflow as tf

        types = [tf.int64]
        for part in self.parts:
            types += [tf.int64] if part.addressable else [tf.bool, tf.int64]
        return types

    def _pass(self, kind, p, arrays, seed, train, stats, bounds, sizes):
        import tensorflow as tf

        selector, rest = arrays[0], list(arrays[1:])
        streams = []
        for part in self.parts:
            if part.addressable:
                perturb = train and kind == "shuffled"
                streams.append(part.raw(tf.data.Dataset.from_tensor_slices(rest.pop(0)), p, seed, perturb))
            else:
                keep, extra = rest.pop(0), rest.pop(0)
                streams.append(part.records(kind, keep, extra, p, seed))
        if len(streams) == 1:
            ds = streams[0]
        else:  # unreadable stream audio shortens a part: its last choices are skipped
            ds = tf.data.Dataset.choose_from_datasets(
                streams, tf.data.Dataset.from_tensor_slices(selector), stop_on_empty_dataset=False
            )
        finish = self._finisher(p, seed, train, stats)
        return _bucket(ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True), bounds, sizes,
                       self.config.features.n_mels)

    def _finisher(self, p, seed, train, stats):
        """(utterance, raw log-mels) -> batch element: normalized, SpecAugment (train), labels."""
        import tensorflow as tf

        from export.frontend import normalize_graph

        spec, tc = self.config.features, self.config.training
        if spec.normalization == "global" and stats is None:
            raise ValueError("global normalization needs the training-set statistics (GlobalStats)")
        labels_of = self.labels

        def lookup(g):
            return labels_of[int(g)]

        def finish(g, raw):
            feats = normalize_graph(raw, spec, stats)  # the exported frontend's normalization
            if train:
                s = tf.stack([tf.cast(seed, tf.int64) * _SEED_MULT + tf.cast(p, tf.int64) * 16 + 2, g])
                feats = _spec_augment_tf(feats, s, tc)
            labels = tf.numpy_function(lookup, [g], tf.int32)
            labels.set_shape([None])
            return {
                "features": feats,
                "feature_lengths": tf.shape(feats, out_type=tf.int32)[0],
                "labels": labels,
                "label_lengths": tf.shape(labels, out_type=tf.int32)[0],
            }

        return finish

    def dataset(
        self,
        stats: GlobalStats | None,
        batch_frames: int,
        max_batch_size: int,
        seed: int = 0,
        first_pass: int = 0,
        num_pipelines: int = 1,
        pipeline_id: int = 0,
    ):
        """Padded batch dicts (module docstring). train: endless, pass by pass (order,
        pipelines, per-utterance randomness: module docstring); else one pass, fixed order."""
        import tensorflow as tf

        if not 0 <= pipeline_id < num_pipelines:
            raise ValueError(f"pipeline_id must be in [0, {num_pipelines}), got {pipeline_id}")
        if self.num_utterances == 0:
            raise ValueError("no utterances to make a dataset of")
        tc, spec = self.config.training, self.config.features
        sortagrad = bool(tc.sortagrad) and self.train
        bounds, sizes = bucket_plan(self.plan_frames.tolist(), batch_frames, max_batch_size)
        if len(self.parts) == 1 and self.parts[0].kind == "memory":
            part = self.parts[0]
            return _generator_dataset(
                part.examples, spec, stats, tc, self.train, seed, first_pass, bounds, sizes,
                sort_frames=self.frames, sortagrad=sortagrad, num_pipelines=num_pipelines, pipeline_id=pipeline_id,
                unit=part.unit,
            )

        def static(kind, p):
            arrays = [tf.constant(a) for a in self._plan(kind, p, seed, num_pipelines, pipeline_id)]
            return self._pass(kind, tf.constant(p, tf.int64), arrays, seed, self.train, stats, bounds, sizes)

        if not self.train:
            return static("eval", 0).prefetch(tf.data.AUTOTUNE)

        types = self._plan_types()

        def shuffled(p):
            arrays = tf.numpy_function(
                lambda q: self._plan("shuffled", int(q), seed, num_pipelines, pipeline_id), [p], types
            )
            for a in arrays:
                a.set_shape([None])
            return self._pass("shuffled", p, arrays, seed, True, stats, bounds, sizes)

        if sortagrad and first_pass == 0:
            ds = static("sorted", 0).concatenate(tf.data.Dataset.counter(1).flat_map(shuffled))
        else:
            ds = tf.data.Dataset.counter(first_pass).flat_map(shuffled)
        return ds.prefetch(tf.data.AUTOTUNE)


def _spec_augment_tf(feats, seed, cfg):
    """SpecAugment in TF ops, drawn from a stateless ``seed`` [2]: ``cfg.freq_masks`` bands of
    0..freq_mask_width channels and ``cfg.time_masks`` spans of 0..time_mask_fraction * frames,
    each at a uniform start, as ``spec_augment`` draws them; [T, F] in and out."""
    import tensorflow as tf

    nf, nt = cfg.freq_masks, cfg.time_masks
    if nf + nt == 0:
        return feats
    frames, channels = tf.shape(feats)[0], tf.shape(feats)[1]
    u = tf.random.stateless_uniform([2 * (nf + nt)], seed=seed, dtype=tf.float32)

    def draw(j, high):  # integer in [0, high) from u[j]
        return tf.minimum(tf.cast(tf.floor(u[j] * tf.cast(high, tf.float32)), tf.int32), high - 1)

    f_idx, t_idx = tf.range(channels), tf.range(frames)
    masked_f = tf.zeros([channels], tf.bool)
    for j in range(nf):
        w = draw(2 * j, cfg.freq_mask_width + 1)
        f0 = draw(2 * j + 1, tf.maximum(1, channels - w))
        masked_f |= (f_idx >= f0) & (f_idx < f0 + w)
    max_t = tf.cast(tf.floor(cfg.time_mask_fraction * tf.cast(frames, tf.float32)), tf.int32)
    masked_t = tf.zeros([frames], tf.bool)
    for j in range(nf, nf + nt):
        w = draw(2 * j, max_t + 1)
        t0 = draw(2 * j + 1, tf.maximum(1, frames - w))
        masked_t |= (t_idx >= t0) & (t_idx < t0 + w)
    mask = masked_t[:, None] | masked_f[None, :]
    return tf.where(mask, tf.zeros_like(feats), feats)
