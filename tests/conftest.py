"""Shared test fixtures: the real speech data folder and small signal helpers.

``import asr`` comes first so TF_USE_LEGACY_KERAS=1 is set before anything imports TensorFlow.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import asr  # noqa: F401  (selects tf_keras before TensorFlow loads)

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT.parent / "shared" / "data"
FSDD_DIR = DATA_DIR / "fsdd" / "recordings"
CLIPS_DIR = DATA_DIR / "clips"
LIBRISPEECH_DIR = DATA_DIR / "librispeech-sample" / "LibriSpeech"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real speech data not available: {path} is absent (expected at ../shared/data from the repo root)")
    return path


@pytest.fixture(scope="session")
def fsdd_dir() -> Path:
    """Free Spoken Digit Dataset recordings: {digit}_{speaker}_{index}.wav, 8 kHz mono PCM_16."""
    return _require(FSDD_DIR)


@pytest.fixture(scope="session")
def fsdd_wav(fsdd_dir) -> Path:
    """One real FSDD recording (8 kHz)."""
    return _require(fsdd_dir / "3_jackson_0.wav")


@pytest.fixture(scope="session")
def clips_dir() -> Path:
    """Short real English clips (16 kHz and 44.1 kHz WAV)."""
    return _require(CLIPS_DIR)


@pytest.fixture(scope="session")
def librispeech_dir() -> Path:
    """Five LibriSpeech test-clean utterances (16 kHz FLAC) in the corpus layout."""
    return _require(LIBRISPEECH_DIR)


@pytest.fixture
def rng() -> np.random.Generator:
    """A fixed-seed generator, fresh for every test."""
    return np.random.default_rng(1234)


def write_fsdd_manifest(path: Path, fsdd_dir: Path, names, copies: int = 1, text=None) -> Path:
    """A manifest of FSDD recordings ``names`` (e.g. "3_jackson_0"), each listed ``copies``
    times under distinct ids; ``text`` overrides the transcript of every line."""
    import soundfile as sf

    from asr.manifest import Utterance, write_manifest
    from asr.text import DIGIT_WORDS

    utts = []
    for name in names:
        wav = fsdd_dir / f"{name}.wav"
        info = sf.info(str(wav))
        words = text if text is not None else DIGIT_WORDS[int(name.split("_")[0])]
        for c in range(copies):
            utts.append(Utterance(f"{name}-{c}", str(wav), info.frames / info.samplerate, words, name.split("_")[1]))
    write_manifest(path, utts)
    return path


TINY_OVERRIDES = [
    "model.conv_channels=8",
    "model.lstm_layers=1",
    "model.lstm_units=48",
    "model.dropout=0.0",
    "training.speed_factors=1.0",
    "training.freq_masks=0",
    "training.time_masks=0",
    "training.learning_rate=0.005",
    "training.warmup_steps=10",
    "training.batch_frames=600",
    "training.early_stop_patience=1000",
]


def tiny_config(*extra: str):
    """A model small enough to train in seconds, with augmentation off."""
    from asr.config import load_config

    return load_config(None, TINY_OVERRIDES + list(extra))


# ------------------------------------------------------------------ downloads

@pytest.fixture
def sleeps():
    """Delays a download asked for; pass ``sleeps.append`` as its ``sleep`` to record them."""
    return []


@pytest.fixture
def opts(sleeps):
    """Download options for tests: no progress bar, sleeps recorded instead of slept."""
    from asr.corpora.librispeech import FetchOptions

    return FetchOptions(progress=False, sleep=sleeps.append)
