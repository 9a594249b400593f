"""Transcription of files, directories and manifests with a trained model.

``Recognizer.transcribe_files(paths)`` returns one ``Result`` per path, in order; a file that
cannot be read gets ``Result.error`` (one line) and never stops the others. Work is batched
by length: features [batch, frames, n_mels] with true lengths go through the network, and
greedy CTC decoding cuts each row at its true output length.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asr.audio import AudioError, is_audio_path, load_audio
from asr.decoding import greedy_ids
from asr.features import extract
from asr.model import output_length

MODELS = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODELS = (MODELS / "fsdd.tflite", MODELS / "fsdd")  # the shipped model: on-device file first
MAX_BATCH_FRAMES = 60000  # padded input frames per batch: 10 minutes of audio
CHUNK = 256  # files read into memory at a time


@dataclass(frozen=True)
class Result:
    path: str
    text: str = ""
    error: str = ""
    duration: float = 0.0  # seconds of audio

    def to_dict(self) -> dict:
        d = {"path": self.path, "text": self.text, "duration": round(self.duration, 3)}
        if self.error:
            d = {"path": self.path, "error": self.error}
        return d


def expand_inputs(inputs) -> tuple[list[str], list[Result]]:
    """Files, directories (searched recursively for audio) and .jsonl manifests -> audio paths,
    plus a Result with an error for each input that yields nothing."""
    from asr.manifest import ManifestError, read_manifest

    paths, problems = [], []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.is_file() and is_audio_path(f))
            if not found:
                problems.append(Result(str(item), error="directory contains no audio files"))
            paths += found
        elif p.suffix == ".jsonl" and p.is_file():
            try:
                paths += [u.audio for u in read_manifest(p)]
            except ManifestError as err:
                problems.append(Result(str(item), error=str(err)))
        elif not p.exists():
            problems.append(Result(str(item), error="no such file or directory"))
        else:
            paths.append(str(item))
    return paths, problems


class FileTranscriber:
    """Files in, Results out. Subclasses set ``sample_rate`` and implement ``transcribe_audio``."""

    sample_rate: int

    def transcribe_audio(self, audios: list[np.ndarray], batch_size: int = 16) -> list[str]:
        """Texts for mono float32 waveforms [num_samples] at ``sample_rate``."""
        raise NotImplementedError

    def transcribe_files(self, paths, batch_size: int = 16, progress=None) -> list[Result]:
        """One Result per path, in order. Files are read CHUNK at a time; ``progress``
        (optional) is called with the number of files done."""
        results: list[Result] = []
        for start in range(0, len(paths), CHUNK):
            results += self._transcribe_chunk(paths[start : start + CHUNK], batch_size)
            if progress:
                progress(len(results))
        return results

    def _transcribe_chunk(self, paths, batch_size: int) -> list[Result]:
        results: list[Result] = []
        audios: dict[int, np.ndarray] = {}
        for i, path in enumerate(paths):
            try:
                audios[i] = load_audio(path, self.sample_rate)
                results.append(Result(str(path), duration=len(audios[i]) / self.sample_rate))
            except AudioError as err:
                results.append(Result(str(path), error=str(err)))
            except OSError as err:
                results.append(Result(str(path), error=f"cannot read: {err.strerror or err}"))
        texts = self.transcribe_audio(list(audios.values()), batch_size) if audios else []
        for i, text in zip(audios, texts):
            results[i] = Result(results[i].path, text=text, duration=results[i].duration)
        return results


class Recognizer(FileTranscriber):
    """A model directory loaded for inference with tf_keras; utterances are batched by length."""

    def __init__(self, model_dir):
        from asr.checkpoint import load_model_dir
        from asr.model import make_forward

        self.config, self.stats, self.meta, self.net = load_model_dir(model_dir)
        self.sample_rate = self.config.features.sample_rate
        self._forward = make_forward(self.net, self.config.features.n_mels)

    def features(self, audio: np.ndarray) -> np.ndarray:
        """Audio [samples] -> normalized log-mels [frames, n_mels]."""
        return extract(audio, self.config.features, self.stats)

    def log_probs(self, feats: list[np.ndarray]) -> list[np.ndarray]:
        """Per-utterance log-probabilities [out_frames_i, vocab] for features [frames_i, n_mels]."""
        lengths = np.array([f.shape[0] for f in feats], np.int32)
        batch = np.zeros((len(feats), lengths.max(), feats[0].shape[1]), np.float32)
        for i, f in enumerate(feats):
            batch[i, : f.shape[0]] = f
        out = self._forward(batch, lengths).numpy()
        return [out[i, : output_length(n)] for i, n in enumerate(lengths)]

    def transcribe_audio(self, audios: list[np.ndarray], batch_size: int = 16) -> list[str]:
        feats = [self.features(a) for a in audios]
        vocab = self.config.vocabulary
        texts: list[str] = [""] * len(feats)
        for batch in length_batches([f.shape[0] for f in feats], batch_size):
            for i, scores in zip(batch, self.log_probs([feats[i] for i in batch])):
                texts[i] = vocab.decode(greedy_ids(scores, vocab.blank))
        return texts


class TFLiteRecognizer(FileTranscriber):
    """A .tflite from ``asr export`` (asr.runtime, no TensorFlow): one utterance per invoke."""

    def __init__(self, path, num_threads: int | None = None):
        from asr.runtime import TFLiteModel

        self.model = TFLiteModel(path, num_threads)
        self.sample_rate = self.model.sample_rate
        self.metadata = self.model.metadata

    def transcribe_audio(self, audios: list[np.ndarray], batch_size: int = 16) -> list[str]:
        return [self.model.transcribe(a) for a in audios]


def length_batches(frames: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length: at most ``batch_size`` items and
    MAX_BATCH_FRAMES padded frames each."""
    batches, current = [], []
    for i in sorted(range(len(frames)), key=frames.__getitem__):
        if current and (len(current) >= batch_size or frames[i] * (len(current) + 1) > MAX_BATCH_FRAMES):
            batches.append(current)
            current = []
        current.append(i)
    return batches + [current] if current else batches


def default_model() -> Path | None:
    """The shipped model a command uses without --model, or None when none is shipped."""
    return next((m for m in DEFAULT_MODELS if m.exists()), None)


def load_recognizer(model=None, num_threads: int | None = None) -> FileTranscriber:
    """A recognizer for a model directory (tf_keras) or a .tflite file (ai-edge-litert, no
    TensorFlow import). Default: the shipped FSDD model, models/fsdd.tflite, else models/fsdd."""
    if model is None:
        model = default_model()
        if model is None:
            raise FileNotFoundError(f"no shipped model in {MODELS}: run recipes/fsdd/run.sh, or pass --model")
    model = Path(model)
    if not model.exists():
        raise FileNotFoundError(f"model not found: {model}")
    if model.is_file():
        return TFLiteRecognizer(model, num_threads=num_threads)
    return Recognizer(model)
