"""The streaming commands (asr.streaming on a file from ``asr export --streaming``):

    asr transcribe --stream PATH ... [--model FILE.tflite] [--realtime]
        each file read chunk by chunk, as a microphone would deliver it; the partial text
        updates on stderr, the final transcript goes to stdout (--format as without --stream)
    asr stream - | FILE.raw [--model FILE.tflite] [--endpoint SECONDS] [--format txt|json]
        raw 16-bit little-endian mono PCM at 16 kHz (arecord -f S16_LE -r 16000 -c 1 | asr stream -);
        partial text on stderr, each final segment on stdout as it ends (a pause of --endpoint
        seconds ends a segment) and the last one at the end of the input

Partial text on a terminal rewrites one line; otherwise each change is a line "partial: TEXT".
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

PCM_BYTES = 2  # S16_LE
ENDPOINT_SECONDS = 0.8  # asr stream: this much blank after some text ends a segment


def add_stream_parser(sub) -> None:
    from asr.cli_decoding import add_decoder_args

    p = sub.add_parser("stream", help="transcribe raw 16 kHz 16-bit PCM from stdin (or a file) while it arrives")
    p.add_argument("source", help="'-' for standard input, or a file of raw S16_LE mono 16 kHz samples")
    p.add_argument("--model", default=None, help="streaming .tflite (default: the shipped streaming FSDD model)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    p.add_argument("--endpoint", type=float, default=ENDPOINT_SECONDS,
                   help=f"seconds of silence (blank output) after speech that end a segment (default {ENDPOINT_SECONDS})")
    p.add_argument("--format", choices=["txt", "json"], default="txt",
                   help="txt: START<TAB>END<TAB>TEXT per segment; json: one object per segment, with words")
    p.add_argument("--no-partials", action="store_true", help="print final segments only")
    add_decoder_args(p)
    p.set_defaults(func=cmd_stream)


def streaming_recognizer(model, threads, decoding: dict, endpoint: float | None):
    """A StreamingRecognizer of ``model`` (default: the shipped streaming model)."""
    from asr.decoding import Decoder, resolve, shipped_from_metadata
    from asr.streaming import StreamingModel, StreamingRecognizer
    from asr.transcription import MODELS, default_model

    path = Path(model) if model else default_model(streaming=True)
    if path is None:
        raise FileNotFoundError(f"no streaming model in {MODELS}: export one with 'asr export --streaming', or pass --model")
    if not path.is_file():
        raise FileNotFoundError(f"streaming model not found: {path} (a .tflite from 'asr export --streaming')")
    m = StreamingModel(path, num_threads=threads)
    shipped = shipped_from_metadata(m.metadata, path)
    decoder = Decoder(resolve(shipped, **decoding), m.symbols, m.blank, m.word_boundary, None, shipped)
    return StreamingRecognizer(m, decoder, endpoint)


class PartialLine:
    """Shows partial text on ``stream``: one rewritten line on a terminal, else a line per change."""

    def __init__(self, stream=sys.stderr, enabled: bool = True):
        self.stream, self.enabled, self.shown = stream, enabled, ""
        self.tty = enabled and stream.isatty()

    def show(self, text: str) -> None:
        if not self.enabled or text == self.shown:
            return
        self.shown = text
        if self.tty:
            self.stream.write("\r\033[K" + text)
        elif text:
            self.stream.write(f"partial: {text}\n")
        self.stream.flush()

    def clear(self) -> None:
        if self.tty and self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
        self.shown = ""


def cmd_stream(args) -> int:
    from asr.cli_decoding import decoder_options

    recognizer = streaming_recognizer(args.model, args.threads, decoder_options(args), args.endpoint)
    partial = PartialLine(enabled=not args.no_partials)
    source = sys.stdin.buffer if args.source == "-" else open_raw(args.source)
    block = recognizer.model.chunk_samples * PCM_BYTES
    leftover = b""
    try:
        while True:
            data = source.read(block)
            if not data:
                break
            data = leftover + data
            cut = len(data) - len(data) % PCM_BYTES
            data, leftover = data[:cut], data[cut:]
            partial.show(recognizer.accept(np.frombuffer(data, "<i2").astype(np.float32) / 32768.0))
            for segment in recognizer.take_segments():
                partial.clear()
                print_segment(segment, args.format)
        if leftover:
            print(f"asr stream: warning: the input ended with half a sample ({len(leftover)} byte): dropped", file=sys.stderr)
        last = recognizer.finish()
        for segment in [*recognizer.take_segments(), last]:
            if segment.text:
                partial.clear()
                print_segment(segment, args.format)
    finally:
        partial.clear()
        if source is not sys.stdin.buffer:
            source.close()
    return 0


def open_raw(path):
    """A raw PCM file for reading; a clear error for a WAV or other container."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input not found: {path}")
    f = open(path, "rb")
    head = f.read(4)
    if head in (b"RIFF", b"fLaC", b"OggS", b"ID3\x03", b"ID3\x04"):
        f.close()
        raise ValueError(f"{path} is an audio file ({head.decode(errors='replace')}), not raw PCM: "
                         f"use 'asr transcribe --stream {path}'")
    f.seek(0)
    return f


def print_segment(segment, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(segment.to_dict(), ensure_ascii=False), flush=True)
    else:
        print(f"{segment.start:.2f}\t{segment.end:.2f}\t{segment.text}", flush=True)


def cmd_transcribe_stream(args, paths: list[str], results: list) -> None:
    """``asr transcribe --stream``: each of ``paths`` streamed; Transcripts appended to ``results``."""
    from asr.audio import AudioError, load_audio
    from asr.cli_decoding import decoder_options
    from asr.transcript import Transcript

    recognizer = streaming_recognizer(args.model, args.threads or 1, decoder_options(args), None)
    partial = PartialLine()
    chunk = recognizer.model.chunk_samples
    seconds = chunk / recognizer.model.sample_rate
    for path in paths:
        try:
            audio = load_audio(path, recognizer.model.sample_rate)
        except (AudioError, OSError) as err:
            results.append(Transcript(path, error=str(err)))
            continue
        for start in range(0, len(audio), chunk):
            began = time.perf_counter()
            partial.show(recognizer.accept(audio[start : start + chunk]))
            if args.realtime:  # deliver as a microphone would: one chunk per chunk length
                time.sleep(max(0.0, seconds - (time.perf_counter() - began)))
        segment = recognizer.finish()
        partial.clear()
        results.append(Transcript(path, len(audio) / recognizer.model.sample_rate, (segment,) if segment.text else ()))
