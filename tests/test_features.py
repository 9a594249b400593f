"""asr.features: log-mels identical to a direct librosa call, frame counts, normalization, FeatureSpec."""
from __future__ import annotations

import librosa
import numpy as np
import pytest

from asr.audio import load_audio
from asr.features import (
    NORM_EPS,
    FeatureSpec,
    GlobalStats,
    compute_global_stats,
    extract,
    log_mel,
    normalize,
)

# The documented front end, written out here rather than read from asr.features.
SR, N_FFT, WIN, HOP, N_MELS, FLOOR = 16000, 512, 400, 160, 80, 1e-6


def reference_log_mel(audio: np.ndarray) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=audio,
        sr=SR,
        n_fft=N_FFT,
        hop_length=HOP,
        win_length=WIN,
        window="hann",
        center=True,
        pad_mode="constant",
        power=2.0,
        n_mels=N_MELS,
    )
    return np.log(mel + FLOOR).T


@pytest.fixture(scope="module")
def spec() -> FeatureSpec:
    return FeatureSpec()


@pytest.fixture(scope="module")
def digit_audio(fsdd_wav) -> np.ndarray:
    """A real FSDD recording (8 kHz), resampled to 16 kHz by load_audio."""
    return load_audio(fsdd_wav)


def test_default_spec_is_the_documented_front_end(spec):
    assert (spec.sample_rate, spec.n_fft, spec.win_length, spec.hop_length, spec.n_mels) == (SR, N_FFT, WIN, HOP, N_MELS)
    assert spec.log_floor == FLOOR and spec.normalization == "utterance"


def test_log_mel_equals_direct_librosa_call(spec, digit_audio):
    feats = log_mel(digit_audio, spec)
    expected = reference_log_mel(digit_audio)
    assert feats.dtype == np.float32
    assert feats.shape == (1 + len(digit_audio) // HOP, N_MELS)
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-5)


def test_extract_is_log_mel_then_utterance_normalization(spec, digit_audio):
    raw = reference_log_mel(digit_audio)
    expected = (raw - raw.mean(axis=0)) / np.sqrt(raw.var(axis=0) + NORM_EPS)
    np.testing.assert_allclose(extract(digit_audio, spec), expected, rtol=1e-4, atol=1e-4)


def test_log_floor_bounds_silence(spec):
    feats = log_mel(np.zeros(1600, np.float32), spec)
    np.testing.assert_allclose(feats, np.log(FLOOR), rtol=1e-6)


def test_a_tone_lights_up_the_right_mel_band(spec):
    t = np.arange(SR) / SR
    feats = log_mel((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), spec)
    centres = librosa.mel_frequencies(n_mels=N_MELS + 2, fmin=0, fmax=SR / 2)[1:-1]
    peak = int(np.median(feats[5:-5].argmax(axis=1)))
    assert abs(centres[peak] - 1000) < 60


@pytest.mark.filterwarnings("ignore:n_fft=512 is too large")
@pytest.mark.parametrize("n", [1, 159, 160, 161, 319, 320, 321, 400, 512, 16000, 16159])
def test_frame_count(spec, rng, n):
    expected = 1 + n // 160
    audio = (0.1 * rng.standard_normal(n)).astype(np.float32)
    assert spec.num_frames(n) == expected
    assert log_mel(audio, spec).shape == (expected, N_MELS)


def test_num_frames_works_on_arrays(spec):
    n = np.array([1, 159, 160, 161, 16000])
    np.testing.assert_array_equal(spec.num_frames(n), [1, 1, 2, 2, 101])


def test_utterance_normalization_zero_mean_unit_variance(spec, digit_audio):
    feats = extract(digit_audio, spec)
    assert feats.dtype == np.float32
    np.testing.assert_allclose(feats.mean(axis=0), 0.0, atol=1e-4)
    # the variance floor NORM_EPS shrinks near-constant channels (above 4 kHz in this 8 kHz
    # recording) a little: std = sqrt(var / (var + eps)); every other channel has unit variance
    var = log_mel(digit_audio, spec).astype(np.float64).var(axis=0)
    np.testing.assert_allclose(feats.std(axis=0), np.sqrt(var / (var + NORM_EPS)), rtol=1e-3)
    lively = var > 1000 * NORM_EPS
    assert lively.sum() >= N_MELS // 2
    np.testing.assert_allclose(feats.std(axis=0)[lively], 1.0, atol=1e-3)


def test_global_stats_are_mean_and_std_over_all_frames(spec, rng):
    arrays = [rng.normal(3.0, 2.0, (n, N_MELS)).astype(np.float32) for n in (7, 50, 1)]
    stats = compute_global_stats(arrays, spec)
    stacked = np.concatenate(arrays).astype(np.float64)
    np.testing.assert_allclose(stats.mean, stacked.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(stats.std, np.sqrt(stacked.var(axis=0) + NORM_EPS), rtol=1e-4)


def test_global_normalization_uses_the_stats(rng):
    spec = FeatureSpec(normalization="global")
    stats = GlobalStats(rng.normal(size=N_MELS).astype(np.float32), rng.uniform(0.5, 2, N_MELS).astype(np.float32))
    feats = rng.normal(size=(30, N_MELS)).astype(np.float32)
    out = normalize(feats, spec, stats)
    np.testing.assert_allclose(out, (feats - stats.mean) / stats.std, rtol=1e-6)
    # not the per-utterance statistics
    assert np.abs(out.mean(axis=0)).max() > 0.1


def test_global_normalization_end_to_end(digit_audio):
    spec = FeatureSpec(normalization="global")
    raw = log_mel(digit_audio, spec)
    stats = compute_global_stats([raw], spec)
    np.testing.assert_allclose(extract(digit_audio, spec, stats), normalize(raw, spec, stats), rtol=1e-6)
    # stats computed over this one utterance: the result is (almost) standardized
    np.testing.assert_allclose(extract(digit_audio, spec, stats).mean(axis=0), 0.0, atol=1e-3)


def test_global_normalization_without_stats_is_an_error(spec):
    with pytest.raises(ValueError, match="GlobalStats"):
        normalize(np.zeros((3, N_MELS), np.float32), FeatureSpec(normalization="global"))


def test_global_stats_from_zero_frames_is_an_error(spec):
    with pytest.raises(ValueError, match="zero frames"):
        compute_global_stats([], spec)


def test_global_stats_dict_round_trip(rng):
    stats = GlobalStats(rng.normal(size=N_MELS).astype(np.float32), rng.uniform(1, 2, N_MELS).astype(np.float32))
    back = GlobalStats.from_dict(stats.to_dict())
    np.testing.assert_array_equal(back.mean, stats.mean)
    np.testing.assert_array_equal(back.std, stats.std)


@pytest.mark.parametrize("n_fft", [400, 500, 511, 513, 1000])
def test_spec_rejects_n_fft_not_power_of_two(n_fft):
    with pytest.raises(ValueError, match="power of two"):
        FeatureSpec(n_fft=n_fft, win_length=min(400, n_fft))


@pytest.mark.parametrize("kwargs", [{"win_length": 0}, {"win_length": 513}, {"normalization": "batch"}])
def test_spec_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        FeatureSpec(**kwargs)


def test_spec_accepts_other_powers_of_two():
    assert FeatureSpec(n_fft=1024).n_fft == 1024


def test_mel_matrix(spec):
    mel = spec.mel_matrix()
    assert mel.shape == (N_FFT // 2 + 1, N_MELS) == (257, 80)
    assert mel.dtype == np.float32
    np.testing.assert_allclose(mel, librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=N_MELS).T, rtol=1e-6)
    assert (mel >= 0).all() and (mel.max(axis=0) > 0).all()


def test_mel_matrix_respects_fmax():
    mel = FeatureSpec(fmax=4000).mel_matrix()
    bin_hz = np.arange(N_FFT // 2 + 1) * SR / N_FFT
    assert not mel[bin_hz > 4000].any()


def test_window_is_centred_periodic_hann(spec):
    win = spec.window()
    assert win.shape == (512,) and win.dtype == np.float32
    expected = np.zeros(512)
    left = (512 - 400) // 2  # 56
    n = np.arange(400)
    expected[left : left + 400] = 0.5 - 0.5 * np.cos(2 * np.pi * n / 400)  # periodic: divide by N, not N - 1
    np.testing.assert_allclose(win, expected, atol=1e-7)
    assert win[left] == 0.0 and win[left + 200] == pytest.approx(1.0)


def test_spec_to_dict_round_trip(spec):
    assert FeatureSpec(**spec.to_dict()) == spec
