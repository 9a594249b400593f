"""Vocal-tract-length perturbation as a mel-axis warp (training.vtlp_warp): mel_warp and
mel_warp_tf, their place in the memory generator and the TF pipelines, and the config key."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import tiny_config, write_fsdd_manifest

ALPHAS = [0.55, 0.9, 0.97, 1.03, 1.1, 1.45]
N_MELS = 12  # channels of the synthetic features
SLOPE = 0.5  # synthetic log-mels: SLOPE * channel + a per-frame offset (linear along the mel axis)


def ramp(frames: int, channels: int) -> np.ndarray:
    """float32 [frames, channels]: value f at channel f in every frame."""
    return np.tile(np.arange(channels, dtype=np.float32), (frames, 1))


# ------------------------------------------------------------------------------ mel_warp


def test_alpha_one_is_the_identity(rng):
    import tensorflow as tf

    from asr.data.augment import mel_warp, mel_warp_tf

    feats = rng.normal(size=(7, 20)).astype(np.float32)
    assert mel_warp(feats, 1.0) is feats
    np.testing.assert_array_equal(mel_warp_tf(tf.constant(feats), 1.0).numpy(), feats)


def test_known_warps_of_a_ramp():
    """Channel f reads channel f / alpha (interpolated), clamped to the last channel."""
    from asr.data.augment import mel_warp

    x = ramp(3, 10)
    f = np.arange(10, dtype=np.float32)
    np.testing.assert_allclose(mel_warp(x, 2.0), np.tile(f / 2, (3, 1)), atol=1e-6)  # content moves up
    np.testing.assert_allclose(mel_warp(x, 1.25), np.tile(f * 0.8, (3, 1)), atol=1e-6)
    np.testing.assert_allclose(mel_warp(x, 0.5), np.tile(np.minimum(2 * f, 9), (3, 1)), atol=1e-6)  # down, clamped
    # Not a ramp: the interpolation between two channels.
    step = np.array([[0.0, 0.0, 4.0, 4.0]], np.float32)
    # channel 2 reads 2 / 1.6 = 1.25: 0.75 * 0 + 0.25 * 4; channel 3 reads 1.875: 0.125 * 0 + 0.875 * 4
    np.testing.assert_allclose(mel_warp(step, 1.6), [[0.0, 0.0, 1.0, 3.5]], atol=1e-6)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_numpy_and_tf_agree(alpha, rng):
    import tensorflow as tf

    from asr.data.augment import mel_warp, mel_warp_tf

    feats = rng.normal(size=(50, 80)).astype(np.float32)
    got = mel_warp_tf(tf.constant(feats), tf.constant(alpha, tf.float32)).numpy()
    assert got.shape == feats.shape
    np.testing.assert_allclose(got, mel_warp(feats, alpha), atol=1e-6, rtol=0)


def test_warp_factor_draws():
    import tensorflow as tf

    from asr.data.augment import draw_warp, warp_factor_tf

    cfg = tiny_config("training.vtlp_warp=0.1").training
    rng = np.random.default_rng(0)
    alphas = [draw_warp(rng, cfg) for _ in range(200)]
    assert 0.9 <= min(alphas) < 0.92 and 1.08 < max(alphas) <= 1.1
    tf_alphas = [float(warp_factor_tf(tf.constant([5, g], tf.int64), cfg)) for g in range(50)]
    assert all(0.9 <= a <= 1.1 for a in tf_alphas) and len(set(tf_alphas)) == 50
    assert float(warp_factor_tf(tf.constant([5, 3], tf.int64), cfg)) == tf_alphas[3]  # stateless
    off = np.random.default_rng(0)
    assert draw_warp(off, tiny_config().training) == 1.0
    assert off.random() == np.random.default_rng(0).random()  # nothing drawn when off


# ------------------------------------------------------------------------------ pipelines


def synthetic_examples(count: int):
    """``count`` Examples whose log-mels [T, N_MELS] are SLOPE * channel + a per-frame offset."""
    from asr.data import Example

    r = np.random.default_rng(3)
    out = []
    for i in range(count):
        frames = 30 + 4 * i
        feats = SLOPE * ramp(frames, N_MELS) + r.normal(size=(frames, 1)).astype(np.float32)
        out.append(Example(f"u{i}", np.array([1 + i % 5, 2], np.int32), [feats.astype(np.float32)], "x"))
    return out


def memory_pass(examples, seed: int, *overrides, num_pipelines=1, pipeline_id=0):
    """{index: features [T, N_MELS]} of the first training pass of the memory generator
    (global normalization with mean 0, std 1: the features as stored)."""
    from asr.data.batching import bucket_plan
    from asr.data.memory import generator_dataset
    from asr.features import GlobalStats

    config = tiny_config(f"features.n_mels={N_MELS}", "features.normalization=global", *overrides)
    stats = GlobalStats(np.zeros(N_MELS, np.float32), np.ones(N_MELS, np.float32))
    bounds, sizes = bucket_plan([e.frames for e in examples], 100_000, 1, 1)
    ds = generator_dataset(examples, config.features, stats, config.training, True, seed, 0, bounds, sizes,
                           num_pipelines=num_pipelines, pipeline_id=pipeline_id)
    out = {}
    for batch in ds.take(len(examples) // num_pipelines):
        out[int(batch["index"][0])] = batch["features"].numpy()[0]
    return out


def test_memory_pipeline_warps_each_utterance_deterministically():
    """vtlp_warp 0.1, masks off: every utterance is its unwarped features warped by its own
    alpha in [0.9, 1.1] (read off the ramp's slope), the same for the same seed."""
    from asr.data.augment import mel_warp

    examples = synthetic_examples(8)
    base = memory_pass(examples, 5)
    warped = memory_pass(examples, 5, "training.vtlp_warp=0.1")
    assert sorted(base) == sorted(warped) == list(range(8))
    alphas = []
    for i, feats in warped.items():
        assert feats.shape == base[i].shape
        np.testing.assert_array_equal(base[i], examples[i].feats[0])  # vtlp_warp 0: untouched
        alpha = SLOPE / float(np.mean(feats[:, 1] - feats[:, 0]))
        assert 0.9 <= alpha <= 1.1
        np.testing.assert_allclose(feats, mel_warp(base[i], alpha), atol=1e-4)
        alphas.append(alpha)
    assert len({round(a, 5) for a in alphas}) == 8
    again = memory_pass(examples, 5, "training.vtlp_warp=0.1")
    other = memory_pass(examples, 6, "training.vtlp_warp=0.1")
    for i in warped:
        np.testing.assert_array_equal(again[i], warped[i])
    assert any(not np.array_equal(other[i], warped[i]) for i in warped)


def test_memory_pipelines_share_the_warps_and_masks():
    """Two pipelines give each utterance the warp and masks one pipeline gives it."""
    overrides = ("training.vtlp_warp=0.2", "training.freq_masks=1", "training.freq_mask_width=3",
                 "training.time_masks=1", "training.time_mask_fraction=0.1")
    examples = synthetic_examples(8)
    single = memory_pass(examples, 9, *overrides)
    halves = {}
    for k in range(2):
        halves.update(memory_pass(examples, 9, *overrides, num_pipelines=2, pipeline_id=k))
    assert sorted(halves) == sorted(single)
    for i in single:
        np.testing.assert_array_equal(halves[i], single[i])


def test_streamed_pipeline_warps_with_its_stateless_seed(fsdd_dir, tmp_path):
    """The TF path (stream pipeline): each utterance is the vtlp_warp-0 features warped by
    alpha = warp_factor_tf((pass seed, SEED_WARP), utterance); deterministic for a seed."""
    import tensorflow as tf

    from asr.data import open_data
    from asr.data.augment import mel_warp_tf, warp_factor_tf
    from asr.data.part import SEED_WARP, pass_seed

    m = write_fsdd_manifest(tmp_path / "f.jsonl", fsdd_dir, [f"{d}_jackson_0" for d in range(4)])

    def one_pass(*overrides):
        config = tiny_config("features.n_mels=40", "training.pipeline=stream", *overrides)
        src = open_data([m], config, train=True)
        out = {int(b["index"][0]): b["features"].numpy()[0] for b in src.dataset(None, 100_000, 1, seed=7).take(4)}
        return out, config.training

    base, _ = one_pass()
    warped, tc = one_pass("training.vtlp_warp=0.15")
    again, _ = one_pass("training.vtlp_warp=0.15")
    assert sorted(base) == sorted(warped) == [0, 1, 2, 3]
    for g, feats in warped.items():
        alpha = warp_factor_tf(tf.stack([pass_seed(7, 0, SEED_WARP), tf.constant(g, tf.int64)]), tc)
        assert 0.85 <= float(alpha) <= 1.15
        np.testing.assert_allclose(feats, mel_warp_tf(tf.constant(base[g]), alpha).numpy(), atol=1e-5)
        assert not np.array_equal(feats, base[g])
        np.testing.assert_array_equal(again[g], feats)


# ------------------------------------------------------------------------------ config


def test_vtlp_warp_is_validated():
    from asr.config import ConfigError, load_config

    assert load_config(None).training.vtlp_warp == 0.0
    assert load_config(None, ["training.vtlp_warp=0.1"]).training.vtlp_warp == 0.1
    for bad in ("0.5", "-0.1", "0.7"):
        with pytest.raises(ConfigError, match="vtlp_warp must be in"):
            load_config(None, [f"training.vtlp_warp={bad}"])


def test_config_saved_before_vtlp_existed_still_loads_and_resumes(tmp_path):
    from asr.config import ExperimentConfig
    from asr.training import _check_config

    config = tiny_config()
    old = config.to_dict()
    del old["training"]["vtlp_warp"]
    assert ExperimentConfig.from_dict(old).training.vtlp_warp == 0.0
    (tmp_path / "config.json").write_text(json.dumps(old))
    _check_config(tmp_path, config)  # no ConfigError
