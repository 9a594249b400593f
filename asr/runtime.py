"""On-device runtime: run a .tflite made by ``asr export`` with ai-edge-litert and numpy.

Only numpy, ai-edge-litert, asr.decoding and asr.text (standard library only) are imported
here: no TensorFlow, no audio libraries. This is the whole inference stack an app needs (audio
I/O aside), and it is what ``asr transcribe --model x.tflite`` runs.

    pcm        float32 [num_samples], 16 kHz, [-1, 1]
    log_probs  float32 [num_frames, vocab_size], num_frames = ceil((1 + num_samples // 160) / 4)

The fused LSTM kernels keep their state in variable tensors across invoke() calls, so
``reset_all_variables()`` runs before every utterance.

Text follows the metadata's "decoding" entry: greedy CTC ids, their ``vocabulary`` symbols
joined by ``asr.text.join_symbols``; for ``tokenizer`` "bpe" its ``word_boundary`` becomes a
space and spaces are collapsed and trimmed. Metadata without ``tokenizer`` (files exported
before BPE existed) is "chars": the symbols are concatenated as they are.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from asr.decoding import greedy_ids
from asr.text import TOKENIZERS, WORD_BOUNDARY, join_symbols

METADATA_NAME = "asr_metadata"  # the Model.metadata entry written by export/metadata.py
TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier, bytes 4..8


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


def decoding_rule(metadata: dict, path="model") -> tuple[int, list[str], str | None]:
    """(blank index, vocabulary symbols, word boundary or None) from the metadata's "decoding"
    entry; ModelFileError for a tokenizer this version does not know."""
    decoding = metadata["decoding"]
    tokenizer = decoding.get("tokenizer", "chars")  # absent: exported before BPE, characters
    if tokenizer not in TOKENIZERS:
        raise ModelFileError(f"{path}: unknown tokenizer {tokenizer!r} in the metadata (this asr knows "
                             f"{', '.join(TOKENIZERS)}); a newer asr exported it")
    word_boundary = decoding.get("word_boundary", WORD_BOUNDARY) if tokenizer == "bpe" else None
    return int(decoding["blank_index"]), list(decoding["vocabulary"]), word_boundary


def decode_text(log_probs: np.ndarray, symbols: list[str], blank: int, word_boundary: str | None = None) -> str:
    """Greedy CTC text of log-probabilities [num_frames, len(symbols)]: best path ids, then
    their symbols joined by ``join_symbols``."""
    return join_symbols((symbols[i] for i in greedy_ids(log_probs, blank)), word_boundary)


class TFLiteModel:
    """One interpreter, resized per utterance: ``log_probs(pcm)`` for any length."""

    def __init__(self, path, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        self.metadata = read_metadata(self.path)
        self.blank, self.symbols, self.word_boundary = decoding_rule(self.metadata, self.path)
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=num_threads or os.cpu_count())
        except (ValueError, RuntimeError) as err:
            raise ModelFileError(f"{self.path}: the interpreter cannot load it ({err})") from None
        self._input = self.interpreter.get_input_details()[0]["index"]
        self._output = self.interpreter.get_output_details()[0]["index"]
        self._length = None
        self.sample_rate = int(self.metadata["input"]["sample_rate"])

    def log_probs(self, pcm: np.ndarray) -> np.ndarray:
        """float32 [num_samples] -> log-probabilities [num_frames, vocab_size] (a copy)."""
        pcm = np.ascontiguousarray(pcm, dtype=np.float32)
        if pcm.ndim != 1 or pcm.size == 0:
            raise ValueError(f"expected a non-empty 1-D waveform, got shape {pcm.shape}")
        if pcm.size != self._length:
            self.interpreter.resize_tensor_input(self._input, [pcm.size], strict=False)
            self.interpreter.allocate_tensors()
            self._length = pcm.size
        self.interpreter.reset_all_variables()  # LSTM state must not leak between utterances
        self.interpreter.set_tensor(self._input, pcm)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output).copy()

    def decode(self, log_probs: np.ndarray) -> str:
        """Greedy CTC text of one utterance's log-probabilities [num_frames, vocab_size]."""
        return decode_text(log_probs, self.symbols, self.blank, self.word_boundary)

    def transcribe(self, pcm: np.ndarray) -> str:
        return self.decode(self.log_probs(pcm))
