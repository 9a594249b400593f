"""From manifests to padded training batches.

Stages:
1. ``load_examples``: read manifests, normalize and encode the text, compute log-mels once per
   speed factor into an on-disk cache (parallel processes, one file per manifest and factor,
   reused on the next run), drop what cannot train (with counts).
2. ``make_dataset``: a tf.data pipeline: shuffle, speed-perturbed copy picked per epoch,
   normalization, SpecAugment (training only), length bucketing, padded batches, prefetch.

Batch element (a dict):
    features        float32 [batch, max_frames, n_mels]   zero past each utterance's length
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
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from asr.audio import AudioError, load_audio
from asr.ctc import min_frames
from asr.features import FeatureSpec, GlobalStats, log_mel, normalize
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


def global_stats_of(examples: list[Example], spec: FeatureSpec) -> GlobalStats:
    """Training-set statistics from the unperturbed copy (factor index of 1.0, else the first)."""
    from asr.features import compute_global_stats

    return compute_global_stats((e.feats[0] for e in examples), spec)


def spec_augment(feats: np.ndarray, rng: np.random.Generator, cfg) -> np.ndarray:
    """Zero ``cfg.freq_masks`` bands of up to ``cfg.freq_mask_width`` channels and
    ``cfg.time_masks`` spans of up to ``cfg.time_mask_fraction`` of the frames; [T, F] in and out."""
    out = feats.copy()
    frames, channels = out.shape
    for _ in range(cfg.freq_masks):
        w = int(rng.integers(0, cfg.freq_mask_width + 1))
        f0 = int(rng.integers(0, max(1, channels - w)))
        out[:, f0 : f0 + w] = 0.0
    max_t = int(cfg.time_mask_fraction * frames)
    for _ in range(cfg.time_masks):
        w = int(rng.integers(0, max_t + 1))
        t0 = int(rng.integers(0, max(1, frames - w)))
        out[t0 : t0 + w, :] = 0.0
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
    features in a fixed order, nothing random."""
    import tensorflow as tf

    n_mels = spec.n_mels
    epoch = [first_pass]  # pass counter: seeds each pass's order, speed factors and masks

    def generate():
        rng = np.random.default_rng([seed, epoch[0]])
        epoch[0] += 1
        order = rng.permutation(len(examples)) if train else range(len(examples))
        for i in order:
            ex = examples[i]
            k = int(rng.integers(len(ex.feats))) if train else 0
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
    ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
    bounds, sizes = bucket_plan([e.frames for e in examples], cfg.batch_frames, cfg.max_batch_size)
    ds = ds.bucket_by_sequence_length(
        element_length_func=lambda d: d["feature_lengths"],
        bucket_boundaries=bounds,
        bucket_batch_sizes=sizes,
        padded_shapes={"features": [None, n_mels], "feature_lengths": [], "labels": [None], "label_lengths": []},
    )
    if train:
        # Endless: fit() gets steps_per_epoch. The batch count of one pass varies with the
        # speed factors drawn, and tf_keras ends training when a pass falls short of the first.
        ds = ds.repeat()
    return ds.prefetch(tf.data.AUTOTUNE)
