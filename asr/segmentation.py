"""Voice-activity segmentation of long recordings, streamed in blocks with exact sample times.

``speech_segments(path)`` reads any file libsndfile reads (any rate, any number of channels)
in blocks of ``block_seconds``, averages the channels, resamples block by block with
``soxr.ResampleStream`` to ``sample_rate`` (16 kHz for every model here) and classifies
30 ms frames with webrtcvad. It yields ``AudioSegment``s: speech regions padded by
``pad_seconds``, regions closer than ``min_silence_seconds`` merged, and a region longer than
``max_seconds`` split at the quietest 30 ms frame in its last third, so that a split falls in
a pause when there is one. Memory does not grow with the file's length: at most about
``max_seconds + pad_seconds + block_seconds`` of audio is held at once (measured: a 10-minute
44.1 kHz stereo file peaks at 6.4 MB of Python allocations; the whole file as float32 at
16 kHz would be 38 MB).

Exact times: ``asr.audio.stream_audio`` produces the same samples as ``asr.audio.load_audio`` on the
whole file (measured bit-identical: soxr's streaming resampler at HQ quality returns exactly
``soxr.resample`` of the whole array for 8, 22.05, 32, 44.1 and 48 kHz input and blocks of
4096, 12345 and rate/10 samples), so ``seg.audio == load_audio(path)[seg.start_sample:
seg.start_sample + len(seg.audio)]`` holds exactly.

Why webrtcvad: it is a small compiled wheel with no model file. Silero VAD, the usual
alternative, is an ONNX model: it would add onnxruntime (not a dependency of this project)
and a model file to the runtime. Measured on 80 FSDD digits joined by 0.6-2.0 s pauses, under
white noise or Speech Commands background noise (its _silence_ clips) at -70 to -35 dBFS,
counting digits whose speech lies inside one segment of their own:
  - webrtcvad mode 3: 80/80 in white noise at -70 and -60 dBFS and in background noise at
    -70; 76/80 at -50 white and 69/80 at -35 white (quiet digits missed or their onsets
    cut; mode 2: 80/80 and 71/80). In background noise at -60 and -40 dBFS mode 3 merged 9
    and 36 neighbouring digits into shared segments, modes 0-2 merged 33-41 and 61-65
    (modes 0-1 merged 4 even in -70 dBFS white noise): mode 3 is the default.
  - an energy threshold on the same frames, same padding and merging: at -50 dBFS, 80/80
    in quiet noise, but all 80 digits merge into 7 segments once white noise reaches -50;
    at -40 dBFS it cuts 2 quiet digits' onsets or tails off even in -70 dBFS noise (78/80)
    and merges everything at -40 white; at -30 dBFS it misses 16 digits (58/80). A fixed
    threshold needs tuning per recording; one relative to the noise floor needs a floor
    estimate that a stream does not have at its start.

    AudioSegment     start_sample (int, at sample_rate), audio float32 [n], sample_rate (Hz)
    speech_segments  path -> Iterator[AudioSegment], in order, not overlapping
    stream_audio     (asr.audio) path -> Iterator[float32 blocks], mono at sample_rate
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import webrtcvad

from asr.audio import BLOCK_SECONDS, SAMPLE_RATE, stream_audio

MAX_SEGMENT_SECONDS = 30.0  # longest segment handed to the model
MIN_SILENCE_SECONDS = 0.5  # a shorter pause between speech regions does not split them
PAD_SECONDS = 0.2  # kept on each side of a speech region; at most half of MIN_SILENCE_SECONDS
VAD_MODE = 3  # webrtcvad aggressiveness 0..3; 3 rejects the most noise
FRAME_MS = 30  # webrtcvad frame: 480 samples at 16 kHz
SPLIT_SEARCH_FRACTION = 1 / 3  # a long region is split in the last third of max_seconds (10 s of 30)
VAD_RATES = (8000, 16000, 32000, 48000)  # the rates webrtcvad accepts
INT16_SCALE = 32768.0  # float [-1, 1] to 16-bit PCM for webrtcvad
# webrtcvad calls the first 3-4 frames of a stream speech while its noise model settles
# (measured on white noise at -60 and -40 dBFS, modes 0-3): a region whose voiced frames all
# lie in the first WARMUP_SECONDS of the file is dropped. Speech there that goes on past it is kept.
WARMUP_SECONDS = 0.15  # 5 frames of 30 ms


@dataclass(frozen=True, eq=False)
class AudioSegment:
    """A stretch of speech: samples [start_sample, start_sample + len(audio)) of the file
    resampled to ``sample_rate``. audio: float32 [n], mono, in [-1, 1]."""

    start_sample: int
    audio: np.ndarray = field(repr=False)
    sample_rate: int = SAMPLE_RATE

    @property
    def start(self) -> float:
        """Start in seconds from the beginning of the file."""
        return self.start_sample / self.sample_rate

    @property
    def end(self) -> float:
        """End in seconds (exclusive): start + len(audio) / sample_rate."""
        return (self.start_sample + len(self.audio)) / self.sample_rate

    @property
    def end_sample(self) -> int:
        return self.start_sample + len(self.audio)


class _Segmenter:
    """Turns per-frame VAD decisions into segment boundaries, in samples.

    ``push`` takes one frame (its first sample, voiced or not, its mean square energy) and
    returns the segments (start, end) that frame completes; ``finish`` returns the last one.
    ``keep_from`` is the earliest sample a future segment can start at: the caller may drop
    audio before it.
    """

    def __init__(self, frame: int, max_samples: int, min_silence: int, pad: int, warmup: int = 0):
        self.frame, self.max_samples, self.min_silence, self.pad = frame, max_samples, min_silence, pad
        self.warmup = warmup  # a region voiced only in samples [0, warmup) is dropped
        self.search = max(frame, int(max_samples * SPLIT_SEARCH_FRACTION))
        self.seg_start: int | None = None  # start of the open segment, None when in silence
        self.last_voiced_end = 0  # end of the open region's last voiced frame
        self.prev_end = 0  # end of the last emitted segment
        self.next_frame = 0  # first sample of the next frame to push
        self.energies: deque[tuple[int, float]] = deque()  # (frame start, energy) from keep_from on

    @property
    def keep_from(self) -> int:
        if self.seg_start is not None:
            return self.seg_start
        return max(self.next_frame - self.pad, self.prev_end, 0)

    def push(self, start: int, voiced: bool, energy: float) -> list[tuple[int, int]]:
        end = start + self.frame
        self.next_frame = end
        self.energies.append((start, energy))
        out: list[tuple[int, int]] = []
        if self.seg_start is None:
            if voiced:
                self.seg_start = max(start - self.pad, self.prev_end, 0)
                self.last_voiced_end = end
        elif voiced:
            self.last_voiced_end = end
        elif end - self.last_voiced_end >= self.min_silence:
            out += self._close(min(self.last_voiced_end + self.pad, end))
        if self.seg_start is not None and end - self.seg_start >= self.max_samples:
            out.append(self._cut())
        while self.energies and self.energies[0][0] < self.keep_from:
            self.energies.popleft()
        return out

    def finish(self, total: int) -> list[tuple[int, int]]:
        """The open segment, if any, ended at the last voiced frame plus padding (``total``:
        the number of samples in the stream)."""
        if self.seg_start is None:
            return []
        return self._close(min(self.last_voiced_end + self.pad, total))

    def _close(self, end: int) -> list[tuple[int, int]]:
        """End the open segment at ``end``: [(start, end)], or [] for a warm-up blip."""
        start = self.seg_start
        end = min(end, start + self.max_samples)
        self.seg_start = None
        if self.last_voiced_end <= self.warmup or end <= start:
            return []
        self.prev_end = end
        return [(start, end)]

    def _cut(self) -> tuple[int, int]:
        """Split the open segment at the centre of the quietest frame in the last part of its
        first max_samples; the rest stays open unless no voiced frame follows the cut."""
        start = self.seg_start
        limit = start + self.max_samples
        best, cut = None, limit
        for f_start, energy in self.energies:
            if f_start >= limit - self.search and f_start > start and f_start + self.frame <= limit:
                if best is None or energy < best:
                    best, cut = energy, f_start + self.frame // 2
        self.prev_end = cut
        self.seg_start = cut if self.last_voiced_end > cut else None
        return start, cut


def _frame_features(audio: np.ndarray, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """audio: float32 [k * frame]. Returns 16-bit PCM [k, frame] and mean square energy [k]."""
    frames = audio.reshape(-1, frame)
    pcm = np.clip(np.round(frames * INT16_SCALE), -INT16_SCALE, INT16_SCALE - 1).astype("<i2")
    return pcm, np.mean(np.square(frames, dtype=np.float64), axis=1)


def speech_segments(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE,
                    max_seconds: float = MAX_SEGMENT_SECONDS,
                    min_silence_seconds: float = MIN_SILENCE_SECONDS,
                    pad_seconds: float = PAD_SECONDS, block_seconds: float = BLOCK_SECONDS,
                    mode: int = VAD_MODE) -> Iterator[AudioSegment]:
    """Yield the speech segments of ``path`` in order, each at most ``max_seconds`` long.

    sample_rate: the model's rate in Hz, one of VAD_RATES (webrtcvad runs at that rate).
    Segments do not overlap, lie inside [0, duration], and each ``seg.audio`` is exactly
    the file's resampled samples from ``seg.start_sample`` on. Silence gives no segments.
    ``pad_seconds`` is capped at half of ``min_silence_seconds`` so that padding never
    bridges a pause that separates two segments. Raises AudioError while iterating when
    the file cannot be read, ValueError for bad arguments.
    """
    if sample_rate not in VAD_RATES:
        raise ValueError(f"sample_rate must be one of {VAD_RATES} for webrtcvad, got {sample_rate}")
    if mode not in (0, 1, 2, 3):
        raise ValueError(f"mode must be 0, 1, 2 or 3, got {mode}")
    frame = sample_rate * FRAME_MS // 1000
    if max_seconds * sample_rate < 2 * frame:
        raise ValueError(f"max_seconds must be at least {2 * FRAME_MS / 1000} s, got {max_seconds}")
    if min_silence_seconds < 0 or pad_seconds < 0:
        raise ValueError("min_silence_seconds and pad_seconds must not be negative")
    min_silence = max(frame, round(min_silence_seconds * sample_rate))
    pad = min(round(pad_seconds * sample_rate), min_silence // 2)
    seg = _Segmenter(frame, int(max_seconds * sample_rate), min_silence, pad,
                     warmup=round(WARMUP_SECONDS * sample_rate))
    vad = webrtcvad.Vad(mode)
    buf, buf_start, total = np.zeros(0, np.float32), 0, 0  # buf holds [buf_start, total)
    for block in stream_audio(path, sample_rate, block_seconds):
        buf = np.concatenate([buf, block])
        total += len(block)
        first = seg.next_frame
        count = (total - first) // frame
        if count == 0:
            continue
        pcm, energy = _frame_features(buf[first - buf_start:first - buf_start + count * frame], frame)
        for i in range(count):
            voiced = vad.is_speech(pcm[i].tobytes(), sample_rate)
            for s, e in seg.push(first + i * frame, voiced, float(energy[i])):
                yield AudioSegment(s, buf[s - buf_start:e - buf_start].copy(), sample_rate)
        keep = min(seg.keep_from, seg.next_frame)
        buf, buf_start = buf[keep - buf_start:].copy(), keep
    for s, e in seg.finish(total):
        yield AudioSegment(s, buf[s - buf_start:e - buf_start].copy(), sample_rate)
