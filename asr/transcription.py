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
from asr.decoding import greedy_decode_batch
from asr.features import extract
from asr.model import output_length

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "fsdd"
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


class Recognizer:
    """A model directory loaded for inference (tf_keras)."""

    def __init__(self, model_dir):
        from asr.checkpoint import load_model_dir
        from asr.model import make_forward

        self.config, self.stats, self.meta, self.net = load_model_dir(model_dir)
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

    def decode(self, feats: list[np.ndarray]) -> list[str]:
        vocab = self.config.vocabulary
        scores = self.log_probs(feats)
        return [vocab.decode(greedy_decode_batch(s[None], [s.shape[0]], vocab.blank)[0]) for s in scores]

    def transcribe_files(self, paths, batch_size: int = 16, progress=None) -> list[Result]:
        """One Result per path, in order. Files are read CHUNK at a time, sorted by length
        and batched; ``progress`` (optional) is called with the number of files done."""
        results: list[Result] = []
        for start in range(0, len(paths), CHUNK):
            results += self._transcribe_chunk(paths[start : start + CHUNK], batch_size)
            if progress:
                progress(len(results))
        return results

    def _transcribe_chunk(self, paths, batch_size: int) -> list[Result]:
        sr = self.config.features.sample_rate
        results: list[Result | None] = [None] * len(paths)
        feats: dict[int, np.ndarray] = {}
        for i, path in enumerate(paths):
            try:
                audio = load_audio(path, sr)
            except AudioError as err:
                results[i] = Result(str(path), error=str(err))
                continue
            except OSError as err:
                results[i] = Result(str(path), error=f"cannot read: {err.strerror or err}")
                continue
            feats[i] = self.features(audio)
            results[i] = Result(str(path), duration=len(audio) / sr)
        batches, current = [], []
        for i in sorted(feats, key=lambda i: feats[i].shape[0]):
            frames = feats[i].shape[0]
            if current and (len(current) >= batch_size or frames * (len(current) + 1) > MAX_BATCH_FRAMES):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        for batch in batches:
            for i, text in zip(batch, self.decode([feats[i] for i in batch])):
                results[i] = Result(str(paths[i]), text=text, duration=results[i].duration)
        return results  # type: ignore[return-value]


def load_recognizer(model=None):
    """A Recognizer for a model directory (default: the shipped FSDD model)."""
    model = Path(model) if model else DEFAULT_MODEL
    if not model.exists():
        hint = "" if model != DEFAULT_MODEL else " (the shipped model is missing: train one with recipes/fsdd/run.sh)"
        raise FileNotFoundError(f"model not found: {model}{hint}")
    return Recognizer(model)
