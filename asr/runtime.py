"""On-device runtime: run a .tflite made by ``asr export`` with ai-edge-litert and numpy.

Only numpy, ai-edge-litert, asr.decoding, asr.text and asr.windows (standard library only)
are imported here: no TensorFlow, no audio libraries. This is the whole inference stack an
app needs (audio I/O aside), and it is what ``asr transcribe --model x.tflite`` runs.

    pcm        float32 [num_samples], 16 kHz, [-1, 1]
    log_probs  float32 [num_frames, vocab_size], num_frames = ceil((1 + num_samples // 160) / 4)

The fused LSTM kernels keep their state in variable tensors across invoke() calls, so
``reset_all_variables()`` runs before every utterance.

Long inputs go through the interpreter in overlapping windows (asr.windows): one pass holds
about 1.5 MB per second of audio, so inputs over 140 s are cut into windows that keep 60 s
(120 s with per-utterance normalization) and see 40 s more on each side, and the kept parts
are stitched. That equals one pass, with float weights and with the dynamic-int8 export (its
convolutions compute in float; asr.windows says why).

LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on file descriptor 2
the first time a process allocates an interpreter, and has no Python switch for it; the
interpreter is created and first allocated with descriptor 2 captured, and everything else
it wrote there is written back.

Text follows the metadata's "decoding" entry: greedy CTC ids, their ``vocabulary`` symbols
joined by ``asr.text.join_symbols``: concatenated (for ``tokenizer`` "bpe" its ``word_boundary``
becomes a space), then runs of spaces collapsed and the ends trimmed. Metadata without
``tokenizer`` (files exported before BPE existed) is "chars".
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from asr.decoding import greedy_ids
from asr.text import TOKENIZERS, WORD_BOUNDARY, join_symbols
from asr.windows import CONTEXT_FRAMES, HOP, default_window_frames, output_frames, plan_windows

METADATA_NAME = "asr_metadata"  # the Model.metadata entry written by export/metadata.py
TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier, bytes 4..8
XNNPACK_INFO = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."  # LiteRT's start-up line
PREPARE_SAMPLES = 16000  # 1 s: the input length the interpreter is first allocated with
STREAMING_FORMAT = "asr-tflite-streaming"  # metadata "format" of a streaming file (asr.streaming)


class ModelFileError(ValueError):
    """A .tflite that is missing, corrupt, or was not exported by ``asr export``."""


def read_metadata(path) -> dict:
    """The JSON metadata embedded by ``asr export``; raises ModelFileError with the reason."""
    from ai_edge_litert import schema_py_generated as schema

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: file not found")
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise ModelFileError(f"{path}: not a TFLite model (no TFL3 flatbuffer identifier)")
    try:
        model = schema.Model.GetRootAsModel(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() == METADATA_NAME.encode():
                raw = model.Buffers(entry.Buffer()).DataAsNumpy()
                return json.loads(bytes(raw).decode("utf-8"))
    except Exception as err:  # flatbuffers raises assorted errors on damaged data
        raise ModelFileError(f"{path}: corrupt TFLite file ({type(err).__name__}: {err})") from None
    raise ModelFileError(f"{path}: no '{METADATA_NAME}' metadata: this .tflite was not exported by 'asr export'")


def is_streaming(metadata: dict) -> bool:
    """Whether ``metadata`` is a streaming file's (asr export --streaming; asr.streaming runs it)."""
    return metadata.get("format") == STREAMING_FORMAT


def metadata_field(metadata: dict, keys: str, path="model"):
    """The metadata entry at dotted ``keys`` ("input.sample_rate"); ModelFileError naming the
    first missing key."""
    value = metadata
    parts = keys.split(".")
    for i, key in enumerate(parts):
        if not isinstance(value, dict) or key not in value:
            raise ModelFileError(f"{path}: the metadata has no '{'.'.join(parts[: i + 1])}' entry: "
                                 f"it is incomplete (export the model again with 'asr export')")
        value = value[key]
    return value


def decoding_rule(metadata: dict, path="model") -> tuple[int, list[str], str | None]:
    """(blank index, vocabulary symbols, word boundary or None) from the metadata's "decoding"
    entry; ModelFileError for a missing key or a tokenizer this version does not know."""
    decoding = metadata_field(metadata, "decoding", path)
    blank = metadata_field(metadata, "decoding.blank_index", path)
    symbols = metadata_field(metadata, "decoding.vocabulary", path)
    if not isinstance(symbols, list) or not all(isinstance(x, str) for x in symbols):
        raise ModelFileError(f"{path}: the metadata's 'decoding.vocabulary' is not a list of strings")
    if not isinstance(blank, int) or not 0 <= blank < len(symbols):
        raise ModelFileError(f"{path}: the metadata's 'decoding.blank_index' ({blank!r}) is not an index "
                             f"into the {len(symbols)} symbols of 'decoding.vocabulary'")
    tokenizer = decoding.get("tokenizer", "chars")  # absent: exported before BPE, characters
    if tokenizer not in TOKENIZERS:
        raise ModelFileError(f"{path}: unknown tokenizer {tokenizer!r} in the metadata (this asr knows "
                             f"{', '.join(TOKENIZERS)}); a newer asr exported it")
    word_boundary = decoding.get("word_boundary", WORD_BOUNDARY) if tokenizer == "bpe" else None
    return blank, list(symbols), word_boundary


def decode_text(log_probs: np.ndarray, symbols: list[str], blank: int, word_boundary: str | None = None) -> str:
    """Greedy CTC text of log-probabilities [num_frames, len(symbols)]: best path ids, then
    their symbols joined by ``join_symbols``."""
    return join_symbols((symbols[i] for i in greedy_ids(log_probs, blank)), word_boundary)


@contextlib.contextmanager
def filtered_stderr(drop):
    """Capture file descriptor 2 during the block (C++ libraries write there directly, below
    Python's sys.stderr) and write back every line for which ``drop(line: bytes)`` is false."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True) if not drop(line)]
            if kept:
                os.write(2, b"".join(kept))


def interpreter(path, num_threads: int | None = None, xnnpack: bool = True):
    """A LiteRT Interpreter of ``path``; xnnpack=False: TFLite's builtin kernels only (no
    default delegate), whose int8 arithmetic differs from XNNPACK's in the last bits."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return Interpreter(model_path=str(path), num_threads=num_threads or os.cpu_count(),
                       experimental_op_resolver_type=resolver)


def quiet_litert_info():
    """``filtered_stderr`` dropping LiteRT's XNNPACK_INFO line."""
    return filtered_stderr(lambda line: line.rstrip() == XNNPACK_INFO)


class TFLiteModel:
    """One interpreter, resized per window: ``log_probs(pcm)`` for any length, in windows of
    ``window_frames`` output frames with ``context_frames`` of context on each side (asr.windows)
    when the input is longer than ``max_frames`` (default window + 2 * context)."""

    def __init__(self, path, num_threads: int | None = None, window_frames: int | None = None,
                 context_frames: int = CONTEXT_FRAMES, max_frames: int | None = None, xnnpack: bool = True):
        self.path = Path(path)
        self.metadata = read_metadata(self.path)
        if is_streaming(self.metadata):
            raise ModelFileError(f"{self.path}: a streaming model (one chunk plus state per call): run it with "
                                 f"asr.streaming.StreamingModel ('asr transcribe --stream', 'asr stream'), not as a whole file")
        self.blank, self.symbols, self.word_boundary = decoding_rule(self.metadata, self.path)
        self.sample_rate = metadata_field(self.metadata, "input.sample_rate", self.path)
        if not isinstance(self.sample_rate, int) or self.sample_rate <= 0:
            raise ModelFileError(f"{self.path}: the metadata's 'input.sample_rate' ({self.sample_rate!r}) "
                                 f"is not a positive integer")
        features = self.metadata.get("features") or {}
        self.hop = int(features.get("hop_length", HOP))
        self.window_frames = window_frames or default_window_frames(features.get("normalization"))
        self.context_frames, self.max_frames = context_frames, max_frames
        with quiet_litert_info():
            try:
                self.interpreter = interpreter(self.path, num_threads, xnnpack)
                self._input = self.interpreter.get_input_details()[0]["index"]
                self._output = self.interpreter.get_output_details()[0]["index"]
                self._resize(PREPARE_SAMPLES)
            except (ValueError, RuntimeError) as err:
                raise ModelFileError(f"{self.path}: the interpreter cannot load it ({err})") from None

    def _resize(self, num_samples: int) -> None:
        self.interpreter.resize_tensor_input(self._input, [num_samples], strict=False)
        self.interpreter.allocate_tensors()
        self._length = num_samples

    def _invoke(self, pcm: np.ndarray) -> np.ndarray:
        """One pass: float32 [num_samples] -> [output_frames(num_samples), vocab_size] (a copy)."""
        if pcm.size != self._length:
            self._resize(pcm.size)
        self.interpreter.reset_all_variables()  # LSTM state must not leak between utterances
        self.interpreter.set_tensor(self._input, pcm)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output).copy()

    def log_probs(self, pcm: np.ndarray) -> np.ndarray:
        """float32 [num_samples] -> log-probabilities [num_frames, vocab_size] (a new array),
        num_frames = ceil((1 + num_samples // hop) / 4); long inputs in windows."""
        pcm = np.ascontiguousarray(pcm, dtype=np.float32)
        if pcm.ndim != 1 or pcm.size == 0:
            raise ValueError(f"expected a non-empty 1-D waveform, got shape {pcm.shape}")
        windows = plan_windows(pcm.size, self.hop, self.window_frames, self.context_frames, self.max_frames)
        if len(windows) == 1:
            return self._invoke(pcm)
        out = None
        for w in windows:
            rows = self._invoke(pcm[w.start : w.end])[w.skip : w.skip + w.keep]
            if out is None:
                out = np.empty((output_frames(pcm.size, self.hop), rows.shape[1]), np.float32)
            out[w.first : w.first + w.keep] = rows
        return out

    def decode(self, log_probs: np.ndarray) -> str:
        """Greedy CTC text of one utterance's log-probabilities [num_frames, vocab_size]."""
        return decode_text(log_probs, self.symbols, self.blank, self.word_boundary)

    def transcribe(self, pcm: np.ndarray) -> str:
        return self.decode(self.log_probs(pcm))
