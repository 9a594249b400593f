"""The log-mel frontend as TensorFlow ops: the same ``FeatureSpec`` as the librosa pipeline
(asr.features), implemented a second time so that it runs inside tf.data (the "stream" data
pipeline, asr.data) and inside the exported .tflite graph (export/convert.py). Every op converts
to a TFLite builtin.

    pcm      float32 [num_samples], 16 kHz, in [-1, 1]
    returns  float32 [num_frames, n_mels], num_frames = 1 + num_samples // hop_length

Steps, mirroring librosa.feature.melspectrogram(center=True, pad_mode="constant"):
zero-pad n_fft // 2 on both sides, frame (n_fft, hop), multiply by the zero-padded Hann window,
power spectrum with a power-of-two RFFT, the librosa mel matrix as constants (in blocks small
enough to stay float under quantization), log(x + floor), then the stored normalization (per
utterance, or the global mean and std as constants).
"""
from __future__ import annotations

import numpy as np

import asr  # noqa: F401
from asr.features import NORM_EPS, FeatureSpec, GlobalStats

# TFLite's post-training quantization leaves constant weights with fewer elements than this in
# float. The mel projection must stay float: as one [257, 80] matmul, dynamic-range quantization
# quantizes each frame's power spectrum to int8 on the fly, and with 60-80 dB of range in a
# frame every quiet bin becomes zero before the log (measured: 76% of frames kept their argmax).
UNQUANTIZED_MAX_ELEMENTS = 1023


def mel_groups(mel: np.ndarray, max_elements: int = UNQUANTIZED_MAX_ELEMENTS) -> list[tuple[int, int, int, int]]:
    """Split the mel matrix [bins, n_mels] into column groups (first_bin, end_bin, first_mel,
    end_mel) covering each group's non-zero bins, every block at most ``max_elements``."""
    support = [np.nonzero(mel[:, j])[0] for j in range(mel.shape[1])]
    span = [(int(s.min()), int(s.max()) + 1) if s.size else (0, 1) for s in support]
    groups, start = [], 0
    while start < mel.shape[1]:
        end, lo, hi = start + 1, span[start][0], span[start][1]
        while end < mel.shape[1]:
            lo2, hi2 = min(lo, span[end][0]), max(hi, span[end][1])
            if (hi2 - lo2) * (end + 1 - start) > max_elements:
                break
            lo, hi, end = lo2, hi2, end + 1
        if (hi - lo) * (end - start) > max_elements:
            raise ValueError(f"mel filter {start} spans {hi - lo} bins: too wide to keep unquantized")
        groups.append((lo, hi, start, end))
        start = end
    return groups


def log_mel_graph(pcm, spec: FeatureSpec, stats: GlobalStats | None = None):
    """TensorFlow log-mel of ``pcm`` [num_samples] -> [num_frames, n_mels], normalized."""
    return normalize_graph(raw_log_mel_graph(pcm, spec), spec, stats)


def raw_log_mel_graph(pcm, spec: FeatureSpec, center: bool = True):
    """TensorFlow log-mel of ``pcm`` [num_samples] -> [num_frames, n_mels], not normalized
    (asr.features.log_mel in TF ops). center=False: no zero padding, frame i covers samples
    [i * hop, i * hop + n_fft) and num_frames = 1 + (num_samples - n_fft) // hop (streaming)."""
    import tensorflow as tf

    pad = spec.n_fft // 2 if center else 0
    padded = tf.pad(pcm, [[pad, pad]]) if center else pcm
    frames = tf.signal.frame(padded, spec.n_fft, spec.hop_length)  # [num_frames, n_fft]
    frames = frames * tf.constant(spec.window())
    spectrum = tf.signal.rfft(frames, fft_length=[spec.n_fft])  # [num_frames, n_fft // 2 + 1]
    power = tf.math.real(spectrum) ** 2 + tf.math.imag(spectrum) ** 2
    matrix = spec.mel_matrix()  # [n_fft // 2 + 1, n_mels]
    mel = tf.concat(  # [num_frames, n_mels], one small matmul per group of neighbouring filters
        [tf.matmul(power[:, lo:hi], tf.constant(matrix[lo:hi, a:b])) for lo, hi, a, b in mel_groups(matrix)], axis=1
    )
    return tf.math.log(mel + spec.log_floor)


def normalize_graph(feats, spec: FeatureSpec, stats: GlobalStats | None = None):
    """asr.features.normalize in TF ops: [num_frames, n_mels] in and out."""
    import tensorflow as tf

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
