"""Transcription of files, directories and manifests with a trained model.

``Recognizer.transcribe_files(paths)`` returns one ``Result`` per path, in order; a file that
cannot be read gets ``Result.error`` (one line) and never stops the others.

Memory is bounded by audio duration, not file count: files are read until MAX_CHUNK_SECONDS
of audio are in memory (their headers give the duration first), then transcribed; a longer
file is read and transcribed alone. Inside a model, inputs longer than asr.windows.MAX_FRAMES
output frames (140 s) go through in overlapping windows (asr.windows), so one pass never
holds more than a window's tensors. The Keras path cuts the waveform into the same windows,
batches the pieces by length (features [batch, frames, n_mels] with true lengths), and
stitches each file's central parts back before greedy CTC decoding.

Without --model, the first of DEFAULT_MODELS that exists is used: what a recipe published
into models/local/ on this machine, else the model shipped in models/.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asr.audio import AudioError, audio_seconds, is_audio_path, load_audio
from asr.decoding import greedy_ids
from asr.features import extract
from asr.model import output_length
from asr.windows import CONTEXT_FRAMES, default_window_frames, output_frames, plan_windows

MODELS = Path(__file__).resolve().parent.parent / "models"
LOCAL = "local"  # models/local/: where recipes publish what they train (git-ignored)
# Without --model, relative to models/: what a recipe published on this machine first, then the
# shipped model; the on-device file before the Keras directory.
DEFAULT_MODELS = ("local/fsdd.tflite", "local/fsdd", "fsdd.tflite", "fsdd")
MAX_BATCH_FRAMES = 60000  # padded input frames per batch: 10 minutes of audio
MAX_CHUNK_SECONDS = 600.0  # audio read into memory at a time: 10 min, 38 MB as float32 at 16 kHz
# What a model trained on each corpus recognizes, for the note on the default model.
CORPUS_SCOPE = {"fsdd": "spoken digits (zero to nine) only", "librispeech": "read English speech"}


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
        """One Result per path, in order. Files are read until MAX_CHUNK_SECONDS of audio are
        in memory, then transcribed; ``progress`` (optional) is called with the number of
        files done after each such chunk."""
        results: list[Result] = []
        for chunk in duration_chunks(paths, MAX_CHUNK_SECONDS):
            results += self._transcribe_chunk(chunk, batch_size)
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


def duration_chunks(paths, max_seconds: float):
    """Yield ``paths`` in order, in groups of at most ``max_seconds`` of audio (durations from
    the headers; an unreadable header counts 0 s and fails at loading); a file longer than
    ``max_seconds`` is a group of its own."""
    current, seconds = [], 0.0
    for path in paths:
        length = audio_seconds(path)
        if current and seconds + length > max_seconds:
            yield current
            current, seconds = [], 0.0
        current.append(path)
        seconds += length
    if current:
        yield current


class Recognizer(FileTranscriber):
    """A model directory loaded for inference with tf_keras. Each waveform is cut into the
    windows of asr.windows (one window up to 140 s), the pieces are batched by length, and
    each waveform's central parts are stitched back."""

    def __init__(self, model_dir, window_frames: int | None = None, context_frames: int = CONTEXT_FRAMES,
                 max_frames: int | None = None):
        from asr.checkpoint import load_model_dir
        from asr.model import make_forward

        self.config, self.stats, self.meta, self.net = load_model_dir(model_dir)
        self.sample_rate = self.config.features.sample_rate
        self.corpus = self.meta.get("corpus", "")
        self.window_frames = window_frames or default_window_frames(self.config.features.normalization)
        self.context_frames, self.max_frames = context_frames, max_frames
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

    def audio_log_probs(self, audios: list[np.ndarray], batch_size: int = 16) -> list[np.ndarray]:
        """Log-probabilities [output_frames(num_samples_i), vocab] of waveforms [num_samples_i],
        long ones in windows."""
        hop = self.config.features.hop_length
        pieces = []  # (audio index, window)
        for i, audio in enumerate(audios):
            windows = plan_windows(audio.size, hop, self.window_frames, self.context_frames, self.max_frames)
            pieces += [(i, w) for w in windows]
        feats = [self.features(audios[i][w.start : w.end]) for i, w in pieces]
        vocab_size = self.config.vocabulary.size
        out = [np.empty((output_frames(a.size, hop), vocab_size), np.float32) for a in audios]
        for batch in length_batches([f.shape[0] for f in feats], batch_size):
            for k, scores in zip(batch, self.log_probs([feats[k] for k in batch])):
                i, w = pieces[k]
                out[i][w.first : w.first + w.keep] = scores[w.skip : w.skip + w.keep]
        return out

    def transcribe_audio(self, audios: list[np.ndarray], batch_size: int = 16) -> list[str]:
        vocab = self.config.vocabulary
        return [vocab.decode(greedy_ids(scores, vocab.blank)) for scores in self.audio_log_probs(audios, batch_size)]


class TFLiteRecognizer(FileTranscriber):
    """A .tflite from ``asr export`` (asr.runtime, no TensorFlow): one utterance per invoke,
    long ones in windows."""

    def __init__(self, path, num_threads: int | None = None):
        from asr.runtime import TFLiteModel

        self.model = TFLiteModel(path, num_threads)
        self.sample_rate = self.model.sample_rate
        self.metadata = self.model.metadata
        self.corpus = self.metadata.get("training_corpus", "")

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


def default_model(models_dir: Path = MODELS) -> Path | None:
    """The model a command uses without --model: the first of DEFAULT_MODELS under
    ``models_dir`` that exists (a directory counts when it holds model.json), or None."""
    for name in DEFAULT_MODELS:
        model = Path(models_dir) / name
        if (model if model.suffix == ".tflite" else model / "model.json").is_file():
            return model
    return None


def default_model_note(model: Path, corpus: str) -> str:
    """One line for stderr: what the default ``model``, trained on ``corpus``, recognizes."""
    try:
        shown = model.relative_to(MODELS.parent)
    except ValueError:
        shown = model
    scope = CORPUS_SCOPE.get(corpus, f"what it was trained on ({corpus or 'corpus not recorded'})")
    return f"note: the default model ({shown}) recognizes {scope}; pass --model for another model"


def load_recognizer(model=None, num_threads: int | None = None) -> FileTranscriber:
    """A recognizer for a model directory (tf_keras) or a .tflite file (ai-edge-litert, no
    TensorFlow import). Default: ``default_model()``."""
    if model is None:
        model = default_model()
        if model is None:
            raise FileNotFoundError(f"no model in {MODELS / LOCAL} or {MODELS}: run recipes/fsdd/run.sh, or pass --model")
    model = Path(model)
    if not model.exists():
        raise FileNotFoundError(f"model not found: {model}")
    if model.is_file():
        return TFLiteRecognizer(model, num_threads=num_threads)
    return Recognizer(model)
