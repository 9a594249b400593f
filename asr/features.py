"""Log-mel features: one frozen ``FeatureSpec`` drives both librosa here and the in-graph
TFLite frontend, so the numbers exist once.

Boundary shapes:
    audio    float32 [num_samples] at spec.sample_rate, in [-1, 1]
    log_mel  float32 [num_frames, n_mels], num_frames = 1 + num_samples // hop_length
             (frames are centred: the signal is zero-padded by n_fft // 2 on both sides)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SAMPLE_RATE = 16000  # Hz
N_FFT = 512  # 32 ms; a power of two, which the TFLite RFFT2D kernel requires
WIN_LENGTH = 400  # 25 ms Hann window, zero-padded to N_FFT
HOP_LENGTH = 160  # 10 ms, 100 frames per second
N_MELS = 80
LOG_FLOOR = 1e-6  # added to mel power before the log; -13.8 in log units
NORM_EPS = 1e-5  # variance floor of the normalization


@dataclass(frozen=True)
class FeatureSpec:
    """Everything that defines the features a model consumes; saved with every model.

    normalization: "utterance" (each utterance scaled to zero mean, unit variance per mel
    channel) or "global" (mean and variance per channel from the training set, stored
    with the model as ``GlobalStats``).
    fmax: highest mel filter edge in Hz; None means sample_rate / 2.
    """

    sample_rate: int = SAMPLE_RATE
    n_fft: int = N_FFT
    win_length: int = WIN_LENGTH
    hop_length: int = HOP_LENGTH
    n_mels: int = N_MELS
    fmin: float = 0.0
    fmax: float | None = None
    log_floor: float = LOG_FLOOR
    normalization: str = "utterance"

    def __post_init__(self):
        if self.n_fft & (self.n_fft - 1):
            raise ValueError(f"n_fft must be a power of two (TFLite RFFT2D), got {self.n_fft}")
        if not 0 < self.win_length <= self.n_fft:
            raise ValueError(f"win_length must be in (0, n_fft], got {self.win_length}")
        if self.normalization not in ("utterance", "global"):
            raise ValueError(f"normalization must be 'utterance' or 'global', got {self.normalization!r}")

    def num_frames(self, num_samples):
        """Frames produced for ``num_samples`` samples (works on ints and integer arrays)."""
        return 1 + num_samples // self.hop_length

    def to_dict(self) -> dict:
        return asdict(self)

    def mel_matrix(self) -> np.ndarray:
        """Mel filterbank, float32 [n_fft // 2 + 1, n_mels] (librosa.filters.mel, transposed)."""
        import librosa

        mel = librosa.filters.mel(
            sr=self.sample_rate, n_fft=self.n_fft, n_mels=self.n_mels, fmin=self.fmin, fmax=self.fmax
        )
        return np.ascontiguousarray(mel.T, dtype=np.float32)

    def window(self) -> np.ndarray:
        """Periodic Hann of win_length, centred and zero-padded to n_fft: float32 [n_fft]."""
        import librosa

        win = librosa.filters.get_window("hann", self.win_length, fftbins=True)
        return librosa.util.pad_center(win, size=self.n_fft).astype(np.float32)


@dataclass(frozen=True)
class GlobalStats:
    """Per-channel mean and standard deviation over a training set: float32 [n_mels] each."""

    mean: np.ndarray
    std: np.ndarray

    def to_dict(self) -> dict:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, d: dict) -> "GlobalStats":
        return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32))


def log_mel(audio: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Un-normalized log-mel: float32 [num_frames, n_mels] for audio float32 [num_samples]."""
    import warnings

    import librosa

    with warnings.catch_warnings():  # centre padding makes inputs shorter than n_fft valid
        warnings.filterwarnings("ignore", message="n_fft=.* is too large for input signal")
        mel = librosa.feature.melspectrogram(
            y=np.asarray(audio, dtype=np.float32),
            sr=spec.sample_rate,
            n_fft=spec.n_fft,
            hop_length=spec.hop_length,
            win_length=spec.win_length,
            window="hann",
            center=True,
            pad_mode="constant",
            power=2.0,
            n_mels=spec.n_mels,
            fmin=spec.fmin,
            fmax=spec.fmax,
        )
    return np.log(mel.T + spec.log_floor).astype(np.float32)


def normalize(feats: np.ndarray, spec: FeatureSpec, stats: GlobalStats | None = None) -> np.ndarray:
    """Apply the spec's normalization to log-mels [num_frames, n_mels]; same shape out."""
    if spec.normalization == "utterance":
        mean = feats.mean(axis=0, keepdims=True)
        var = feats.var(axis=0, keepdims=True)
        return ((feats - mean) / np.sqrt(var + NORM_EPS)).astype(np.float32)
    if stats is None:
        raise ValueError("global normalization needs the training-set statistics (GlobalStats)")
    return ((feats - stats.mean) / stats.std).astype(np.float32)


def feature_sums(feature_arrays, n_mels: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-channel sum and sum of squares (float64 [n_mels] each) and the frame count over
    all frames of un-normalized log-mels [T_i, n_mels]: what GlobalStats are made of, and
    what can be added up across parts, shards and workers."""
    total = np.zeros(n_mels, np.float64)
    total_sq = np.zeros(n_mels, np.float64)
    count = 0
    for feats in feature_arrays:
        total += feats.sum(axis=0)
        total_sq += np.square(feats, dtype=np.float64).sum(axis=0)
        count += feats.shape[0]
    return total, total_sq, count


def stats_from_sums(total: np.ndarray, total_sq: np.ndarray, count: int) -> GlobalStats:
    """GlobalStats (mean, std with the NORM_EPS variance floor) from ``feature_sums``."""
    if count == 0:
        raise ValueError("cannot compute normalization statistics from zero frames")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0) + NORM_EPS)
    return GlobalStats(mean.astype(np.float32), std.astype(np.float32))


def compute_global_stats(feature_arrays, spec: FeatureSpec) -> GlobalStats:
    """Mean and std per channel over all frames of un-normalized log-mels [T_i, n_mels]."""
    return stats_from_sums(*feature_sums(feature_arrays, spec.n_mels))


def extract(audio: np.ndarray, spec: FeatureSpec, stats: GlobalStats | None = None) -> np.ndarray:
    """Audio float32 [num_samples] -> normalized log-mel float32 [num_frames, n_mels]."""
    return normalize(log_mel(audio, spec), spec, stats)
