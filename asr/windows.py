"""Long inputs in overlapping windows whose stitched output equals one pass over the whole input.

Memory of one pass grows with the input (the TFLite arena holds every intermediate tensor:
about 1.5 MB per second of audio), so audio longer than ``max_frames`` output frames is cut
into windows: each keeps ``window_frames`` output frames (its core) and is given
``context_frames`` more on each side, which are computed and dropped.

The frame grid. With hop ``hop`` samples and time subsampling 4, output frame j is centred on
sample ``j * hop * 4`` (640 samples, 40 ms at 16 kHz) and sees input samples
``j * 640 - 3 * hop - n_fft // 2`` to ``j * 640 + 3 * hop + n_fft // 2`` (three feature frames
each side through the two stride-2 convolutions, and half an FFT of audio each side of a
feature frame's centre). A window that starts on a multiple of 640 samples therefore has the
whole input's frame grid, shifted by a whole number of output frames; every window but the
first starts on that grid. Its first and last frames differ from the whole pass (the
frontend pads with zeros where the audio goes on), and the BiLSTM needs time to forget its
zero initial state: that is what the context absorbs. ``benchmarks/long_audio.py --context``
measures how much context the shipped model needs (see docs/deployment.md).

Quantization. Float weights make the stitched output equal one pass (measured on 10 minutes
of digits: identical log-probabilities). TFLite's hybrid int8 convolution quantizes its whole
input with one scale per pass, which would make every output frame depend a little on the
whole input; ``asr export`` therefore feeds the dynamic-int8 file's convolutions a DEQUANTIZE
of their int8 weights, so they compute in float (the LSTMs and the output layer quantize per
time step and per row, which windows do not change). The int8 LSTMs carry small differences further than float ones: with 30 s of context
the shipped model's 10-minute test differed by 0.016 at one cut (same text); with 40 s it is
identical to the bit.

Normalization. Global statistics are per frame, so windowing is exact up to the context.
Per-utterance normalization (features.normalization "utterance") computes the mean and
standard deviation over the whole input inside the graph: a window normalizes over itself,
so windowed output is close to, not equal to, the whole pass; long windows keep it close.
"""
from __future__ import annotations

from dataclasses import dataclass

SUBSAMPLING = 4  # two stride-2 convolutions in time (asr.model.SUBSAMPLING)
HOP = 160  # samples per feature frame: 10 ms at 16 kHz
WINDOW_FRAMES = 1500  # output frames kept per window: 60 s at 40 ms per frame
UTTERANCE_WINDOW_FRAMES = 3000  # 120 s for per-utterance normalization, where windows are inexact
CONTEXT_FRAMES = 1000  # 40 s of context each side: measured to need up to 20 s (float), 40 s (int8)
MAX_FRAMES = WINDOW_FRAMES + 2 * CONTEXT_FRAMES  # 3500 frames, 140 s: longer inputs are windowed


def default_window_frames(normalization: str | None) -> int:
    """WINDOW_FRAMES, or the longer UTTERANCE_WINDOW_FRAMES for per-utterance normalization."""
    return UTTERANCE_WINDOW_FRAMES if normalization == "utterance" else WINDOW_FRAMES


def output_frames(num_samples: int, hop: int = HOP) -> int:
    """Output frames of ``num_samples`` samples: ceil((1 + num_samples // hop) / 4)."""
    return -(-(1 + num_samples // hop) // SUBSAMPLING)


@dataclass(frozen=True)
class Window:
    """Samples [start, end) go through the model; output rows [skip, skip + keep) of that pass
    are output frames [first, first + keep) of the whole input."""

    start: int
    end: int
    skip: int
    keep: int
    first: int


def plan_windows(num_samples: int, hop: int = HOP, window_frames: int = WINDOW_FRAMES,
                 context_frames: int = CONTEXT_FRAMES, max_frames: int | None = None) -> list[Window]:
    """Windows covering ``num_samples`` samples: one (the whole input) when it has at most
    ``max_frames`` output frames (default window_frames + 2 * context_frames), else cores of
    ``window_frames`` frames with up to ``context_frames`` frames of context on each side.
    The kept rows, concatenated in order, are exactly ``output_frames(num_samples)`` rows."""
    if window_frames < 1 or context_frames < 0:
        raise ValueError(f"window_frames must be >= 1 and context_frames >= 0, got {window_frames}, {context_frames}")
    total = output_frames(num_samples, hop)
    if max_frames is None:
        max_frames = window_frames + 2 * context_frames
    if total <= max_frames:
        return [Window(0, num_samples, 0, total, 0)]
    step = hop * SUBSAMPLING  # samples per output frame
    windows = []
    for first in range(0, total, window_frames):
        keep = min(window_frames, total - first)
        begin = max(0, first - context_frames)
        end = min(num_samples, (first + keep + context_frames) * step)
        windows.append(Window(begin * step, end, first - begin, keep, first))
    return windows
