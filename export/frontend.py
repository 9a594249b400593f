"""The log-mel frontend as TensorFlow ops, built from the same ``FeatureSpec`` as the librosa
pipeline (asr.features); every op converts to a TFLite builtin.

    pcm      float32 [num_samples], 16 kHz, in [-1, 1]
    returns  float32 [num_frames, n_mels], num_frames = 1 + num_samples // hop_length

Steps, mirroring librosa.feature.melspectrogram(center=True, pad_mode="constant"):
zero-pad n_fft // 2 on both sides, frame (n_fft, hop), multiply by the zero-padded Hann window,
power spectrum with a power-of-two RFFT, the librosa mel matrix as a constant, log(x + floor),
then the stored normalization (per utterance, or the global mean and std as constants).
"""
from __future__ import annotations

import numpy as np

import asr  # noqa: F401
from asr.features import NORM_EPS, FeatureSpec, GlobalStats


def log_mel_graph(pcm, spec: FeatureSpec, stats: GlobalStats | None = None):
    """TensorFlow log-mel of ``pcm`` [num_samples] -> [num_frames, n_mels], normalized."""
    import tensorflow as tf

    pad = spec.n_fft // 2
    padded = tf.pad(pcm, [[pad, pad]])
    frames = tf.signal.frame(padded, spec.n_fft, spec.hop_length)  # [num_frames, n_fft]
    frames = frames * tf.constant(spec.window())
    spectrum = tf.signal.rfft(frames, fft_length=[spec.n_fft])  # [num_frames, n_fft // 2 + 1]
    power = tf.math.real(spectrum) ** 2 + tf.math.imag(spectrum) ** 2
    mel = tf.matmul(power, tf.constant(spec.mel_matrix()))  # [num_frames, n_mels]
    feats = tf.math.log(mel + spec.log_floor)
    if spec.normalization == "utterance":
        mean = tf.reduce_mean(feats, axis=0, keepdims=True)
        var = tf.reduce_mean(tf.square(feats - mean), axis=0, keepdims=True)
        return (feats - mean) * tf.math.rsqrt(var + NORM_EPS)
    if stats is None:
        raise ValueError("global normalization needs the training-set statistics")
    return (feats - tf.constant(stats.mean)) / tf.constant(stats.std)


def reference_log_mel(pcm: np.ndarray, spec: FeatureSpec, stats: GlobalStats | None = None) -> np.ndarray:
    """The librosa pipeline's normalized log-mel, for parity checks: [num_frames, n_mels]."""
    from asr.features import extract

    return extract(pcm, spec, stats)
