"""Training-time augmentation: speed perturbation (numpy, soxr), a mel-axis warp (VTLP) and
SpecAugment, the last two drawn the same way in numpy (the memory pipeline's generator) and in
TF ops (the streamed pipelines).

    audio  float32 [samples]           speed_perturb -> float32 [about samples / factor]
    feats  float32 [frames, n_mels]    mel_warp, mel_warp_tf -> same shape, channels warped
    feats  float32 [frames, n_mels]    spec_augment, spec_augment_tf -> same shape, masks zeroed

Vocal-tract-length perturbation (training.vtlp_warp = v > 0): each training utterance gets a
factor alpha ~ U[1 - v, 1 + v] and its normalized log-mels are warped along the mel axis before
the SpecAugment masks: out[:, f] = in[:, f / alpha], linearly interpolated between the two
nearest channels and clamped to the last one (mel_warp). This approximates VTLP, which scales
the linear frequency axis before the mel filterbank; warping the mel axis of the cached
features instead keeps the log-mel cache (and shards) valid and applies wherever SpecAugment
does.
"""
from __future__ import annotations

import numpy as np


def speed_perturb(audio: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """Play ``audio`` [samples] ``factor`` times faster (tempo and pitch, like sox 'speed')."""
    if factor == 1.0:
        return audio
    import soxr

    return soxr.resample(audio, sample_rate * factor, sample_rate, quality="HQ").astype(np.float32)


def draw_warp(rng: np.random.Generator, cfg) -> float:
    """The VTLP factor alpha ~ U[1 - cfg.vtlp_warp, 1 + cfg.vtlp_warp) from ``rng``; 1.0, with
    nothing drawn (so other draws are unchanged), when vtlp_warp is 0."""
    if not cfg.vtlp_warp:
        return 1.0
    return float(rng.uniform(1.0 - cfg.vtlp_warp, 1.0 + cfg.vtlp_warp))


def mel_warp(feats: np.ndarray, alpha: float) -> np.ndarray:
    """Warp the mel axis of ``feats`` [T, F] by ``alpha`` (> 0); [T, F] out.

    out[:, f] = (1 - w) * feats[:, i] + w * feats[:, min(i + 1, F - 1)], where
    s = min(f / alpha, F - 1) (float32), i = floor(s), w = s - i: channel f reads channel
    f / alpha of the input, so alpha > 1 moves content up the mel axis, alpha < 1 down (the top
    channel repeats where f / alpha runs past it). alpha == 1 returns ``feats`` itself."""
    if alpha == 1.0:
        return feats
    channels = feats.shape[1]
    src = np.minimum(np.arange(channels, dtype=np.float32) / np.float32(alpha), np.float32(channels - 1))
    lo = np.floor(src)
    w = (src - lo).astype(np.float32)
    i0 = lo.astype(np.int64)
    i1 = np.minimum(i0 + 1, channels - 1)
    return (feats[:, i0] * (1 - w) + feats[:, i1] * w).astype(np.float32)


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


def warp_factor_tf(seed, cfg):
    """float32 scalar tensor: the VTLP factor alpha ~ U[1 - cfg.vtlp_warp, 1 + cfg.vtlp_warp)
    drawn from a stateless ``seed`` [2] (callers skip the warp when vtlp_warp is 0)."""
    import tensorflow as tf

    v = float(cfg.vtlp_warp)
    return tf.random.stateless_uniform([], seed=seed, minval=1.0 - v, maxval=1.0 + v, dtype=tf.float32)


def mel_warp_tf(feats, alpha):
    """``mel_warp`` in TF ops (same formula, float32): ``feats`` [T, F], scalar ``alpha``; [T, F] out."""
    import tensorflow as tf

    channels = tf.shape(feats)[1]
    alpha = tf.cast(alpha, tf.float32)
    src = tf.minimum(tf.cast(tf.range(channels), tf.float32) / alpha, tf.cast(channels - 1, tf.float32))
    lo = tf.floor(src)
    w = src - lo
    i0 = tf.cast(lo, tf.int32)
    i1 = tf.minimum(i0 + 1, channels - 1)
    return tf.gather(feats, i0, axis=1) * (1 - w) + tf.gather(feats, i1, axis=1) * w


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
