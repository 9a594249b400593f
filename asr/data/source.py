"""``open_data`` and the ``DataSource`` it returns: manifests and shard folders as one list of
utterances, and the tf.data pipeline of its passes (asr.data's module docstring: orders,
pipelines, batch layout).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from asr.data.augment import mel_warp_tf, spec_augment_tf, warp_factor_tf
from asr.data.batching import bucket, bucket_plan, estimate_steps
from asr.data.memory import MemoryPart, generator_dataset
from asr.data.part import SEED_MASKS, SEED_WARP, DataReport, Part, pass_seed
from asr.data.shard_source import ShardPart
from asr.data.stream import STREAM_FEATURES, StreamPart
from asr.features import GlobalStats, stats_from_sums


def open_data(paths, config, train: bool, cache_dir=None, stream_features: str = STREAM_FEATURES[0]) -> "DataSource":
    """Open training (``train=True``) or evaluation data: manifests (.jsonl) and/or shard folders
    (``asr.shards.write_shards``; a folder with index.json).

    Manifests use config.training.pipeline ("memory": cached log-mels in RAM, ``cache_dir`` is
    the cache; "stream": computed on the fly, by TF ops or, with ``stream_features="numpy"``,
    librosa); shard folders always stream from the shards. train=True applies
    training.speed_factors (not to shards, which hold factor 1.0 only) and
    training.max_duration. Labels are config.vocabulary.encode(normalize_text(text)), encoded
    here once. Utterances whose label cannot fit the subsampled frames are dropped and counted
    (stream: judged from the manifest duration, at the fastest speed factor)."""
    from asr.shards import ShardError, is_shard_folder

    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    if not paths:
        raise ValueError("open_data needs at least one manifest or shard folder")
    manifests = [p for p in paths if not p.is_dir()]
    folders = [p for p in paths if p.is_dir()]
    for f in folders:
        if not is_shard_folder(f):
            raise ShardError(f"{f} is a folder without index.json: not a finished shard folder")
    parts: list[Part] = []
    if manifests:
        if config.training.pipeline == "stream":
            parts.append(StreamPart(manifests, config, train, stream_features))
        else:
            parts.append(MemoryPart(manifests, config, train, cache_dir))
    parts += [ShardPart(f, config, train) for f in folders]
    return DataSource(parts, config, train)


def spread(n: int, count: int) -> np.ndarray:
    """bool [n] with ``count`` True values spread evenly (the first at position 0 when any)."""
    r = np.arange(n)
    return (r + 1) * count // max(n, 1) > r * count // max(n, 1)


class DataSource:
    """Utterances ready to batch (see ``open_data`` and asr.data's module docstring).

    ids: list[str]; texts: list[str], the normalized reference text of each; frames: int64
    [num_utterances] (factor 1.0; exact for memory and shards, from the manifest duration for
    stream); audio_seconds: float. A batch's "index" entry is a position in these lists."""

    def __init__(self, parts: list[Part], config, train: bool):
        self.parts, self.config, self.train = parts, config, train
        offset = 0
        for part in parts:
            part.offset = offset
            offset += part.n
        self.ids = [i for part in parts for i in part.ids]
        self.texts = [t for part in parts for t in part.texts]
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
        bounds, sizes = bucket_plan(self.plan_frames.tolist(), batch_frames, max_batch_size,
                                    self.config.training.buckets)
        return estimate_steps(self.plan_frames.tolist(), bounds, sizes)

    # ------------------------------------------------------------------ pass plans

    def _plan(self, kind: str, p: int, seed: int, num_pipelines: int, pipeline_id: int) -> list[np.ndarray]:
        """[part of each position this pipeline yields] + per part: its utterances to produce
        (addressable parts), or (keep per rank, files, stagger) for shard parts
        (ShardPart.pass_plan). A shard part shared by files yields its own count of records,
        spread evenly over the part's positions of the pass order."""
        n = self.num_utterances
        if kind == "eval":
            order = np.arange(n)
        elif kind == "sorted":
            order = np.argsort(self.frames, kind="stable")
        else:
            order = np.random.default_rng([seed, p]).permutation(n)
        mine = np.arange(n) % num_pipelines == pipeline_id
        part_at = self._part_of[order]
        per_part = []
        for j, part in enumerate(self.parts):
            at = part_at == j
            if part.addressable:
                per_part.append(order[at][mine[at]].astype(np.int64))
                continue
            files, stagger, count = part.pass_plan(kind, p, seed, j, num_pipelines, pipeline_id)
            if count is None:
                keep = mine[at]
            else:
                keep = np.ones(count, bool)
                mine[at] = spread(int(at.sum()), count)
            per_part += [keep, files.astype(np.int64), stagger.astype(np.int64)]
        return [part_at[mine].astype(np.int64)] + per_part

    def _plan_types(self):
        import tensorflow as tf

        types = [tf.int64]
        for part in self.parts:
            types += [tf.int64] if part.addressable else [tf.bool, tf.int64, tf.int64]
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
                keep, files, stagger = rest.pop(0), rest.pop(0), rest.pop(0)
                streams.append(part.records(kind, keep, files, stagger, p, seed))
        if len(streams) == 1:
            ds = streams[0]
        else:  # unreadable stream audio shortens a part: its last choices are skipped
            ds = tf.data.Dataset.choose_from_datasets(
                streams, tf.data.Dataset.from_tensor_slices(selector), stop_on_empty_dataset=False
            )
        finish = self._finisher(p, seed, train, stats)
        return bucket(ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True), bounds, sizes,
                      self.config.features.n_mels)

    def _finisher(self, p, seed, train, stats):
        """(utterance, raw log-mels) -> batch element: normalized, VTLP warp (train, vtlp_warp > 0)
        and SpecAugment (train), labels."""
        import tensorflow as tf

        from asr.frontend import normalize_graph

        spec, tc = self.config.features, self.config.training
        if spec.normalization == "global" and stats is None:
            raise ValueError("global normalization needs the training-set statistics (GlobalStats)")
        labels_of = self.labels

        def lookup(g):
            return labels_of[int(g)]

        def finish(g, raw):
            feats = normalize_graph(raw, spec, stats)  # the exported frontend's normalization
            if train and tc.vtlp_warp:
                alpha = warp_factor_tf(tf.stack([pass_seed(seed, p, SEED_WARP), g]), tc)
                feats = mel_warp_tf(feats, alpha)
            if train:
                feats = spec_augment_tf(feats, tf.stack([pass_seed(seed, p, SEED_MASKS), g]), tc)
            labels = tf.numpy_function(lookup, [g], tf.int32)
            labels.set_shape([None])
            return {
                "features": feats,
                "feature_lengths": tf.shape(feats, out_type=tf.int32)[0],
                "labels": labels,
                "label_lengths": tf.shape(labels, out_type=tf.int32)[0],
                "index": tf.cast(g, tf.int32),
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
        """Padded batch dicts (asr.data's docstring). train: endless, pass by pass (order,
        pipelines, per-utterance randomness: asr.data's docstring); else one pass, fixed order."""
        import tensorflow as tf

        if not 0 <= pipeline_id < num_pipelines:
            raise ValueError(f"pipeline_id must be in [0, {num_pipelines}), got {pipeline_id}")
        if self.num_utterances == 0:
            raise ValueError("no utterances to make a dataset of")
        tc, spec = self.config.training, self.config.features
        sortagrad = bool(tc.sortagrad) and self.train
        bounds, sizes = bucket_plan(self.plan_frames.tolist(), batch_frames, max_batch_size, tc.buckets)
        if len(self.parts) == 1 and self.parts[0].kind == "memory":
            part = self.parts[0]
            return generator_dataset(
                part.examples, spec, stats, tc, self.train, seed, first_pass, bounds, sizes,
                sort_frames=self.frames, sortagrad=sortagrad, num_pipelines=num_pipelines, pipeline_id=pipeline_id,
                unit=part.unit,
            )

        def static(kind, p):
            arrays = self._plan(kind, p, seed, num_pipelines, pipeline_id)
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
