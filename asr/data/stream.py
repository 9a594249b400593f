"""The "stream" pipeline (training.pipeline: stream; for corpora too large for RAM): nothing is
precomputed. Audio is decoded with soundfile (and speed-perturbed with soxr) in
``tf.numpy_function``; the log-mels are TF ops (asr.frontend.raw_log_mel_graph, the exported
model's frontend and the same log-mel as asr.features.log_mel), so the work runs in tf.data's
parallel C++ threads. ``features="numpy"`` computes them with librosa in the numpy_function
instead (for comparison: benchmarks/pipeline.py).

Utterances whose audio cannot be read are skipped when met (logged once, counted in
``runtime_unreadable``): the pass is then shorter by those.
"""
from __future__ import annotations

import logging
from threading import Lock

import numpy as np

from asr.audio import AudioError, load_audio
from asr.data.augment import speed_perturb
from asr.data.part import DataReport, Part, encode_text, label_fits
from asr.features import feature_sums, log_mel
from asr.manifest import Utterance, read_manifest

log = logging.getLogger(__name__)

STREAM_FEATURES = ("tf", "numpy")  # how log-mels are computed; the first is the default
STATS_SAMPLE = 1000  # utterances (a fixed sample) that the global statistics are computed from


class StreamPart(Part):
    """Manifests' utterances, decoded and turned into log-mels on the fly."""

    kind = "stream"

    def __init__(self, manifests, config, train: bool, features: str = STREAM_FEATURES[0]):
        if features not in STREAM_FEATURES:
            raise ValueError(f"stream features must be one of {STREAM_FEATURES}, got {features!r}")
        tc, spec = config.training, config.features
        self.train, self.spec, self.features = train, spec, features
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
        self.texts, self.labels = [], []
        fastest, slowest = max(self.factors), min(self.factors)
        for u in utts:
            text, labels = encode_text(config.vocabulary, u.text, self.report)
            samples = int(round(u.duration * spec.sample_rate))
            if not label_fits(labels, spec.num_frames(int(samples / fastest))):
                self.report.too_long_label += 1
                continue
            kept.append(u)
            self.texts.append(text)
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
        """(utterance, un-normalized log-mels [frames, n_mels]) for the utterances of ``gidx``
        (a dataset of int64 DataSource positions); unreadable audio is skipped."""
        import tensorflow as tf

        factors = tf.constant(self.factors if perturb else (1.0,), tf.float32)
        k = len(self.factors) if perturb else 1
        n_mels = self.spec.n_mels

        def with_factor(g):
            return g, tf.gather(factors, self.factor_index(g, p, seed, k))

        ds = gidx.map(with_factor)
        if self.features == "numpy":
            def features(g, f):
                feats, ok = tf.numpy_function(self._log_mel_numpy, [g, f], [tf.float32, tf.bool])
                feats.set_shape([None, n_mels])
                return g, feats, ok

            ds = ds.map(features, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            return ds.filter(_readable).map(_drop_flag)

        from asr.frontend import raw_log_mel_graph

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


def _readable(g, x, ok):
    return ok


def _drop_flag(g, x, ok):
    return g, x
