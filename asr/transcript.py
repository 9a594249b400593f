"""What a transcription produces: words with times and confidence, grouped into segments.

Times are seconds from the start of the file (a segment's own offset already added), rounded
to the millisecond by the writers only. One output frame of the CNN-BiLSTM is FRAME_SECONDS.

    Word        text, start, end (seconds, start <= end), confidence in [0, 1]
    Segment     start, end (seconds), text, words (in order, inside [start, end])
    Transcript  path, duration (seconds), segments (in order, not overlapping), error
"""
from __future__ import annotations

from dataclasses import dataclass, field

FRAME_SECONDS = 0.04  # one output frame: 4 input frames of 10 ms


@dataclass(frozen=True)
class Word:
    text: str
    start: float
    end: float
    confidence: float = 1.0

    def to_dict(self) -> dict:
        return {"word": self.text, "start": round(self.start, 3), "end": round(self.end, 3),
                "confidence": round(self.confidence, 4)}


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()

    def to_dict(self) -> dict:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "text": self.text,
                "words": [w.to_dict() for w in self.words]}


@dataclass(frozen=True)
class Transcript:
    path: str
    duration: float = 0.0
    segments: tuple[Segment, ...] = ()
    error: str = ""
    nbest: tuple[str, ...] = field(default=(), repr=False)  # other hypotheses of a one-segment file

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments if s.text)

    @property
    def words(self) -> list[Word]:
        return [w for s in self.segments for w in s.words]

    def to_dict(self) -> dict:
        if self.error:
            return {"path": self.path, "error": self.error}
        d = {"path": self.path, "text": self.text, "duration": round(self.duration, 3),
             "segments": [s.to_dict() for s in self.segments]}
        if self.nbest:
            d["nbest"] = list(self.nbest)
        return d
