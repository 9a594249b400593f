"""Training-time augmentation: speed perturbation (numpy, soxr) and SpecAugment, drawn the same
way in numpy (the memory pipeline's generator) and in TF ops (the streamed pipelines).

    audio  float32 [samples]           speed_perturb -> float32 [about samples / factor]
    feats  float32 [frames, n_mels]    spec_augment, spec_augment_tf -> same shape, masks zeroed
"""
from __future__ import annotations

import numpy as np


def speed_perturb(audio: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """Play ``audio`` [samples] ``factor`` times faster (tempo and pitch, like sox 'speed')."""
    if factor == 1.0:
        return audio
    import soxr

    return soxr.resample(audio, sample_rate * factor, sample_rate, quality="HQ").astype(np.float32)


def draw_masks(rng: np.random.Generator, frames: int, channels: int, cfg) -> list[tuple[int, int, int]]:
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
    for axis, start, width in draw_masks(rng, out.shape[0], out.shape[1], cfg):
        if axis:
            out[:, start : start + width] = 0.0
        else:
            out[start : start + width, :] = 0.0
    return out


def spec_augment_tf(feats, seed, cfg):
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
