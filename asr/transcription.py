"""Transcription of files, directories and manifests with a trained model.

``Recognizer.transcribe_files(paths)`` returns one ``asr.transcript.Transcript`` per path, in
order (segments with timed words); a file that cannot be read gets ``Transcript.error`` (one
line) and never stops the others. Log-probabilities become text with the recognizer's
``asr.decoding.Decoder``: greedy, unless ``set_decoder`` (or ``load_recognizer(decoding=...)``,
what the commands use) asks for the model's own decoder or another.

Memory is bounded by audio duration, not file count: files are read until MAX_CHUNK_SECONDS
of audio are in memory (their headers give the duration first), then transcribed; a longer
file is read and transcribed alone. Inside a model, inputs longer than asr.windows.MAX_FRAMES
output frames (140 s) go through in overlapping windows (asr.windows), so one pass never
holds more than a window's tensors. The Keras path cuts the waveform into the same windows,
batches the pieces by length (features [batch, frames, n_mels] with true lengths), and
stitches each file's central parts back before decoding. With ``segment_seconds``, a longer
file is instead read in blocks and cut at pauses (asr.segmentation), each segment decoded
with its offset, so memory does not grow with the file.

Without --model, the first of DEFAULT_MODELS that exists is used: what a recipe published
into models/local/ on this machine, else the model shipped in models/.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from asr.audio import AudioError, audio_seconds, is_audio_path, load_audio
from asr.features import extract
from asr.model import output_length
from asr.decoding import shipped_from_dir, shipped_from_metadata
from asr.text import WORD_BOUNDARY
from asr.transcript import Segment, Transcript
from asr.windows import CONTEXT_FRAMES, default_window_frames, output_frames, plan_windows

MODELS = Path(__file__).resolve().parent.parent / "models"
LOCAL = "local"  # models/local/: where recipes publish what they train (git-ignored)
# Without --model, relative to models/: what a recipe published on this machine first, then the
# shipped model; the on-device file before the Keras directory.
DEFAULT_MODELS = ("local/fsdd.tflite", "local/fsdd", "fsdd.tflite", "fsdd")
DEFAULT_STREAMING_MODELS = ("local/fsdd_streaming.tflite", "fsdd_streaming.tflite")  # --stream, asr stream
MAX_BATCH_FRAMES = 60000  # padded input frames per batch: 10 minutes of audio
MAX_CHUNK_SECONDS = 600.0  # audio read into memory at a time: 10 min, 38 MB as float32 at 16 kHz
# What a model trained on each corpus recognizes, for the note on the default model.
CORPUS_SCOPE = {
    "fsdd": "spoken digits (zero to nine) only",
    "fsdd+speech-commands": "spoken digits (zero to nine) and the 35 Speech Commands words only",
    "speech-commands": "the 35 Speech Commands words only",
    "librispeech": "read English speech",
}


Result = Transcript  # what transcribe_files returns per path (path, duration, segments, error)


def expand_inputs(inputs) -> tuple[list[str], list[Transcript]]:
    """Files, directories (searched recursively for audio) and .jsonl manifests -> audio paths,
    plus a Transcript with an error for each input that yields nothing."""
    from asr.manifest import ManifestError, read_manifest

    paths, problems = [], []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.is_file() and is_audio_path(f))
            if not found:
                problems.append(Transcript(str(item), error="directory contains no audio files"))
            paths += found
        elif p.suffix == ".jsonl" and p.is_file():
            try:
                paths += [u.audio for u in read_manifest(p)]
            except ManifestError as err:
                problems.append(Transcript(str(item), error=str(err)))
        elif not p.exists():
            problems.append(Transcript(str(item), error="no such file or directory"))
        else:
            paths.append(str(item))
    return paths, problems


class FileTranscriber:
    """Files in, Transcripts out. Subclasses set ``sample_rate``, ``symbols``, ``blank``,
    ``word_boundary`` and implement ``audio_log_probs``; ``decoder`` (asr.decoding.Decoder) is
    greedy until ``set_decoder`` is called."""

    sample_rate: int
    decoder = None
    shipped = None  # asr.decoding.ModelDecoding: the lexicon, LM and defaults the model ships
    vocabulary = None  # asr.text.Vocabulary when the model carries its tokenizer

    def audio_log_probs(self, audios: list[np.ndarray], batch_size: int = 16) -> list[np.ndarray]:
        """Log-probabilities [output_frames_i, vocab] of mono float32 waveforms [num_samples_i]."""
        raise NotImplementedError

    def set_decoder(self, **given) -> "FileTranscriber":
        """Decode with the model's defaults (what it ships) overridden by ``given``
        (asr.decoding.DecoderConfig fields; None = not given)."""
        from asr.decoding import Decoder, resolve

        self.decoder = Decoder(resolve(self.shipped, **given), self.symbols, self.blank, self.word_boundary,
                               self.vocabulary, self.shipped)
        return self

    def _decoder(self):
        if self.decoder is None:
            from asr.decoding import Decoder, DecoderConfig

            self.decoder = Decoder(DecoderConfig(), self.symbols, self.blank, self.word_boundary)
        return self.decoder

    def transcribe_audio(self, audios: list[np.ndarray], batch_size: int = 16) -> list[str]:
        """Best texts of mono float32 waveforms [num_samples] at ``sample_rate``."""
        decoder = self._decoder()
        return [decoder.decode(lp)[0].text for lp in self.audio_log_probs(audios, batch_size)]

    def transcribe_files(self, paths, batch_size: int = 16, progress=None, segment_seconds: float | None = None) -> list[Transcript]:
        """One Transcript per path, in order. Files are read until MAX_CHUNK_SECONDS of audio
        are in memory, then transcribed. A file longer than ``segment_seconds`` (None: never)
        is read in blocks and cut at pauses (asr.segmentation), each segment decoded with its
        times offset, so memory does not grow with its duration. ``progress`` (optional) is
        called with the seconds of audio finished since its last call."""
        results: list[Transcript] = []
        pending: list[tuple[str, float]] = []  # (path, seconds its header declares)

        def flush():
            if pending:
                results.extend(self._transcribe_chunk([p for p, _ in pending], batch_size))
                if progress:
                    progress(sum(seconds for _, seconds in pending))
                pending.clear()

        for chunk in duration_chunks(paths, MAX_CHUNK_SECONDS):
            for path, seconds in chunk:
                if segment_seconds is not None and seconds > segment_seconds:
                    flush()
                    results.append(self._transcribe_segmented(path, seconds, progress))
                else:
                    pending.append((path, seconds))
            flush()
        return results

    def files_log_probs(self, paths, batch_size: int = 16):
        """Yield, per path and in order, (a Transcript holding its duration or its error, its
        log-probabilities [frames, vocab] or None), reading files until MAX_CHUNK_SECONDS of
        audio are in memory."""
        for chunk in duration_chunks(paths, MAX_CHUNK_SECONDS):
            yield from self._chunk_log_probs([path for path, _ in chunk], batch_size)

    def _chunk_log_probs(self, paths, batch_size: int) -> list[tuple[Transcript, np.ndarray | None]]:
        results: list[Transcript] = []
        audios: dict[int, np.ndarray] = {}
        for i, path in enumerate(paths):
            try:
                audios[i] = load_audio(path, self.sample_rate)
                results.append(Transcript(str(path), duration=len(audios[i]) / self.sample_rate))
            except AudioError as err:
                results.append(Transcript(str(path), error=str(err)))
            except OSError as err:
                results.append(Transcript(str(path), error=f"cannot read: {err.strerror or err}"))
        scores = dict(zip(audios, self.audio_log_probs(list(audios.values()), batch_size))) if audios else {}
        return [(res, scores.get(i)) for i, res in enumerate(results)]

    def _transcribe_chunk(self, paths, batch_size: int) -> list[Transcript]:
        decoder = self._decoder()
        results = []
        for res, lp in self._chunk_log_probs(paths, batch_size):
            if lp is None:
                results.append(res)
                continue
            hyps = decoder.decode(lp)
            best = hyps[0]
            segment = Segment(0.0, res.duration, best.text, best.words)
            results.append(Transcript(res.path, res.duration, (segment,) if best.text else (),
                                      nbest=tuple(h.text for h in hyps) if len(hyps) > 1 else ()))
        return results

    def _transcribe_segmented(self, path, duration: float, progress=None) -> Transcript:
        """A long file of ``duration`` seconds: voice-activity segments (asr.segmentation),
        each decoded alone."""
        from asr.segmentation import speech_segments

        decoder = self._decoder()
        segments, done = [], 0.0
        try:
            for piece in speech_segments(path, sample_rate=self.sample_rate):
                lp = self.audio_log_probs([piece.audio])[0]
                best = decoder.decode(lp, offset=piece.start)[0]
                if best.text:
                    segments.append(Segment(piece.start, piece.end, best.text, best.words))
                if progress:
                    progress(piece.end - done)
                done = piece.end
        except AudioError as err:
            return Transcript(str(path), error=str(err))
        except OSError as err:
            return Transcript(str(path), error=f"cannot read: {err.strerror or err}")
        if progress:
            progress(max(duration - done, 0.0))
        return Transcript(str(path), duration, tuple(segments))


def duration_chunks(paths, max_seconds: float):
    """Yield ``paths`` in order with their durations, as lists of (path, seconds) holding at
    most ``max_seconds`` of audio (durations from the headers, read once; an unreadable header
    counts 0 s and fails at loading); a file longer than ``max_seconds`` is a list of its own."""
    current, seconds = [], 0.0
    for path in paths:
        length = audio_seconds(path)
        if current and seconds + length > max_seconds:
            yield current
            current, seconds = [], 0.0
        current.append((path, length))
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
        vocab = self.vocabulary = self.config.vocabulary
        self.symbols, self.blank = list(vocab.symbols), vocab.blank
        self.word_boundary = WORD_BOUNDARY if vocab.kind == "bpe" else None
        self.shipped = shipped_from_dir(model_dir)

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


class TFLiteRecognizer(FileTranscriber):
    """A .tflite from ``asr export`` (asr.runtime, no TensorFlow): one utterance per invoke,
    long ones in windows."""

    def __init__(self, path, num_threads: int | None = None):
        self.model = self.open(path, num_threads)
        self.sample_rate = self.model.sample_rate
        self.metadata = self.model.metadata
        self.corpus = self.metadata.get("training_corpus", "")
        self.symbols, self.blank, self.word_boundary = self.model.symbols, self.model.blank, self.model.word_boundary
        self.shipped = shipped_from_metadata(self.metadata, path)

    @staticmethod
    def open(path, num_threads):
        from asr.runtime import TFLiteModel

        return TFLiteModel(path, num_threads)

    def audio_log_probs(self, audios: list[np.ndarray], batch_size: int = 16) -> list[np.ndarray]:
        return [self.model.log_probs(a) for a in audios]


class StreamingFileRecognizer(TFLiteRecognizer):
    """A streaming .tflite (``asr export --streaming``) on whole files: each file goes through
    the stream chunk by chunk (asr.streaming), so files decode as the phone would hear them."""

    @staticmethod
    def open(path, num_threads):
        from asr.streaming import StreamingModel

        return StreamingModel(path, num_threads)


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


def default_model(models_dir: Path = MODELS, streaming: bool = False) -> Path | None:
    """The model a command uses without --model: the first of DEFAULT_MODELS (with
    ``streaming``, DEFAULT_STREAMING_MODELS) under ``models_dir`` that exists (a directory
    counts when it holds model.json), or None."""
    for name in DEFAULT_STREAMING_MODELS if streaming else DEFAULT_MODELS:
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


def load_recognizer(model=None, num_threads: int | None = None, decoding: dict | None = None) -> FileTranscriber:
    """A recognizer for a model directory (tf_keras) or a .tflite file (ai-edge-litert, no
    TensorFlow import). Default: ``default_model()``. With ``decoding`` (a dict of
    asr.decoding.DecoderConfig fields, None = not given; {} for none) it decodes as the model
    ships, overridden by them (the commands' behaviour); without, greedy."""
    recognizer = _load(model, num_threads)
    return recognizer.set_decoder(**decoding) if decoding is not None else recognizer


def _load(model, num_threads) -> FileTranscriber:
    if model is None:
        model = default_model()
        if model is None:
            raise FileNotFoundError(f"no model in {MODELS / LOCAL} or {MODELS}: run recipes/fsdd/run.sh, or pass --model")
    model = Path(model)
    if not model.exists():
        raise FileNotFoundError(f"model not found: {model}")
    if model.is_file():
        from asr.runtime import is_streaming, read_metadata

        if is_streaming(read_metadata(model)):
            return StreamingFileRecognizer(model, num_threads=num_threads)
        return TFLiteRecognizer(model, num_threads=num_threads)
    return Recognizer(model)
