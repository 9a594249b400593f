"""Streaming runtime: transcribe while audio arrives, with a .tflite from
``asr export --streaming`` (export/streaming.py) and ai-edge-litert; no TensorFlow.

    StreamingModel.step(pcm [C], state, end) -> (log_probs [n, vocab], first frame, new state)
        one call of the file: a chunk of C samples (metadata "streaming.chunk_samples") and the
        state; the app owns the state, so one model serves any number of streams
    StreamingRecognizer(model).accept(pcm [any length]) -> partial text
    StreamingRecognizer.finish() -> asr.transcript.Segment (text, words with times in seconds)

Partial text is greedy (argmax per frame, repeats collapsed, blanks dropped) and grows as
frames arrive; the final result is decoded over the whole utterance's log-probabilities with
the decoder given (the model's shipped lexicon and LM, asr.decoding), so it may differ from
the last partial. With ``endpoint_seconds``, a stretch of that much blank after some text ends
a segment: it is decoded, its result queued for ``take_segments()``, its log-probabilities
dropped, and the stream goes on (the recurrent state carries over): memory stays constant
however long the stream.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from asr.runtime import (ModelFileError, decoding_rule, interpreter, is_streaming, metadata_field, quiet_litert_info,
                         read_metadata)
from asr.text import join_symbols
from asr.windows import output_frames
from asr.transcript import Segment  # a final result: start, end, text, words (seconds from the stream's start)

NO_END = -1  # the "end" input while the stream goes on
FLUSH_CALLS = 2  # zero chunks after the final one suffice for any chunk, plus one per lookahead frame


class StreamError(ValueError):
    """A chunk or a state that does not fit the model."""


class StreamingModel:
    """One interpreter of a streaming .tflite; ``step`` runs one chunk of one stream."""

    def __init__(self, path, num_threads: int | None = None, xnnpack: bool = True):
        self.path = Path(path)
        self.metadata = read_metadata(self.path)
        if not is_streaming(self.metadata):
            raise ModelFileError(f"{self.path}: a whole-file model (it needs the whole utterance in one call): "
                                 f"stream with a file from 'asr export --streaming', or transcribe without --stream")
        self.blank, self.symbols, self.word_boundary = decoding_rule(self.metadata, self.path)
        s = metadata_field(self.metadata, "streaming", self.path)
        self.chunk_samples, self.chunk_ms = int(s["chunk_samples"]), int(s["chunk_ms"])
        self.sample_rate = int(metadata_field(self.metadata, "input.sample_rate", self.path))
        self.hop = int(metadata_field(self.metadata, "features.hop_length", self.path))
        self.frame_seconds = float(metadata_field(self.metadata, "output.frame_shift_seconds", self.path))
        self.flush_calls = FLUSH_CALLS + int((self.metadata.get("model") or {}).get("lookahead_frames", 0))
        self.states = [(e["input"], e["output"], tuple(e["shape"]), np.dtype(e["dtype"])) for e in s["state"]]
        with quiet_litert_info():
            try:
                self.interpreter = interpreter(self.path, num_threads, xnnpack)
                self.interpreter.allocate_tensors()
            except (ValueError, RuntimeError) as err:
                raise ModelFileError(f"{self.path}: the interpreter cannot load it ({err})") from None
        inputs = {d["name"]: d["index"] for d in self.interpreter.get_input_details()}
        outputs = {d["name"]: d["index"] for d in self.interpreter.get_output_details()}
        try:
            self._in = {name: inputs[name] for name in ["pcm", "end", *(i for i, _, _, _ in self.states)]}
            self._out = {name: outputs[name] for name in ["log_probs", "frame_index", *(o for _, o, _, _ in self.states)]}
        except KeyError as err:
            raise ModelFileError(f"{self.path}: the metadata names tensor {err} that the graph does not have") from None

    def initial_state(self) -> dict[str, np.ndarray]:
        """The state that starts a stream: every tensor zero."""
        return {name: np.zeros(shape, dtype) for name, _, shape, dtype in self.states}

    def step(self, pcm: np.ndarray, state: dict, end: int = NO_END):
        """One chunk: float32 pcm [chunk_samples] and ``state`` (initial_state() or the last
        call's) -> (log_probs [n, vocab] of the rows that are frames, index of the first,
        new state). ``end``: the stream's total samples once it has ended, else NO_END."""
        pcm = np.asarray(pcm)
        if pcm.shape != (self.chunk_samples,):
            raise StreamError(f"a chunk of this model is {self.chunk_samples} samples ({self.chunk_ms} ms at "
                              f"{self.sample_rate} Hz), got shape {pcm.shape}")
        if not isinstance(state, dict) or set(state) != {name for name, _, _, _ in self.states}:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise StreamError(f"the state must be a dict of {', '.join(n for n, _, _, _ in self.states)}; got {got}")
        for name, _, shape, dtype in self.states:
            value = np.asarray(state[name])
            if value.shape != shape:
                raise StreamError(f"state {name!r} must have shape {list(shape)}, got {list(value.shape)}")
            self.interpreter.set_tensor(self._in[name], np.ascontiguousarray(value, dtype))
        self.interpreter.set_tensor(self._in["pcm"], np.ascontiguousarray(pcm, np.float32))
        self.interpreter.set_tensor(self._in["end"], np.array([end], np.int32))
        self.interpreter.invoke()
        log_probs = self.interpreter.get_tensor(self._out["log_probs"])
        index = self.interpreter.get_tensor(self._out["frame_index"])
        new_state = {name: self.interpreter.get_tensor(self._out[out]).copy() for name, out, _, _ in self.states}
        stop = output_frames(end, self.hop) if end != NO_END else np.iinfo(np.int32).max
        keep = (index >= 0) & (index < stop)
        first = int(index[keep][0]) if keep.any() else int(index[-1]) + 1
        return log_probs[keep].copy(), first, new_state

    def log_probs(self, pcm: np.ndarray) -> np.ndarray:
        """A whole waveform streamed chunk by chunk: [output_frames(len(pcm)), vocab_size]."""
        session = StreamingRecognizer(self)
        session.accept(pcm)
        return session.finish_log_probs()


class StreamingRecognizer:
    """One stream: ``accept`` samples as they arrive (any length), ``finish`` at its end.

    ``decoder`` (asr.decoding.Decoder) decodes each final result (default: greedy);
    ``endpoint_seconds`` (None: off) ends a segment after that much blank following text."""

    def __init__(self, model: StreamingModel, decoder=None, endpoint_seconds: float | None = None):
        self.model, self.decoder = model, decoder
        self.endpoint_frames = None if endpoint_seconds is None else max(1, round(endpoint_seconds / model.frame_seconds))
        self.segments: list[Segment] = []  # ended by endpointing, not yet taken
        self.reset()

    def reset(self) -> None:
        """Start a new stream: zero state, nothing heard."""
        self.state = self.model.initial_state()
        self.pending = np.zeros(0, np.float32)
        self.samples = 0  # samples accepted
        self.frames = 0  # output frames computed
        self._start_segment(0)

    def _start_segment(self, frame: int) -> None:
        self.segment_first = frame
        self.segment_scores: list[np.ndarray] = []
        self.partial_symbols: list[str] = []
        self.last_id = self.model.blank
        self.blank_run = 0

    @property
    def partial(self) -> str:
        """Greedy text of the current segment so far."""
        return join_symbols(self.partial_symbols, self.model.word_boundary)

    def accept(self, pcm: np.ndarray) -> str:
        """Feed float32 samples [n] (16 kHz, [-1, 1], any n); returns the partial text."""
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        self.pending = np.concatenate([self.pending, pcm])
        self.samples += pcm.size
        c = self.model.chunk_samples
        while self.pending.size >= c:
            chunk, self.pending = self.pending[:c], self.pending[c:]
            self._run(chunk, NO_END)
        return self.partial

    def _run(self, chunk: np.ndarray, end: int) -> int:
        scores, first, self.state = self.model.step(chunk, self.state, end)
        for row in scores:
            self._frame(row)
        return first + len(scores)

    def _frame(self, row: np.ndarray) -> None:
        self.segment_scores.append(row)
        self.frames += 1
        best = int(row.argmax())
        if best != self.model.blank and best != self.last_id:
            self.partial_symbols.append(self.model.symbols[best])
        self.last_id = best
        self.blank_run = self.blank_run + 1 if best == self.model.blank else 0
        if self.endpoint_frames and self.partial_symbols and self.blank_run >= self.endpoint_frames:
            self.segments.append(self._decode())
            self._start_segment(self.frames)

    def _scores(self) -> np.ndarray:
        """The current segment's log-probabilities [frames, vocab]."""
        return np.stack(self.segment_scores) if self.segment_scores else np.zeros((0, len(self.model.symbols)), np.float32)

    def _decode(self) -> Segment:
        scores = self._scores()
        start = self.segment_first * self.model.frame_seconds
        end = min(start + len(scores) * self.model.frame_seconds, self.samples / self.model.sample_rate)
        if self.decoder is None:
            from asr.decoding import Decoder, DecoderConfig

            self.decoder = Decoder(DecoderConfig(), self.model.symbols, self.model.blank, self.model.word_boundary)
        best = self.decoder.decode(scores, offset=start)[0] if len(scores) else None
        return Segment(start, end, best.text if best else "", best.words if best else ())

    def _flush(self) -> None:
        """The pending samples zero-padded to a chunk with the stream's end, then zero chunks
        until every frame of the stream is out."""
        c, end = self.model.chunk_samples, self.samples
        chunk = np.zeros(c, np.float32)
        chunk[: self.pending.size] = self.pending
        self.pending = np.zeros(0, np.float32)
        total = output_frames(end, self.model.hop)
        done = self._run(chunk, end)
        for _ in range(self.model.flush_calls):
            if done >= total:
                return
            done = self._run(np.zeros(c, np.float32), end)
        if done < total:
            raise StreamError(f"the stream did not end after {self.model.flush_calls} flush calls ({done} of {total} frames)")

    def finish_log_probs(self) -> np.ndarray:
        """End the stream; the current segment's log-probabilities [frames, vocab] (the whole
        stream's without endpointing). The recognizer starts a new stream after it."""
        self._flush()
        scores = self._scores()
        self.reset()
        return scores

    def finish(self) -> Segment:
        """End the stream: the last segment's final result (the whole stream's without
        endpointing); then the recognizer starts a new stream."""
        self._flush()
        segment = self._decode()
        self.reset()
        return segment

    def take_segments(self) -> list[Segment]:
        """The segments ended by endpointing since the last call (oldest first)."""
        out, self.segments = self.segments, []
        return out
