"""Transcript writers: txt, tsv, json, srt and vtt, after openai-whisper's writers.

One file's transcript to a stream (``write_transcript``), one file per input in a folder
(``write_outputs``), or every input to one stream such as stdout (``write_combined``).

    txt   the text of each segment with text, one per line
    tsv   header ``start<TAB>end<TAB>text``, then one row per segment with text; times in
          integer milliseconds (whisper's WriteTSV); tabs and newlines in text become spaces
    json  ``Transcript.to_dict()``: segments with words, per-word start/end/confidence
    srt   cues numbered from 1, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, a blank line after each
    vtt   ``WEBVTT``, a blank line, then cues ``MM:SS.mmm --> MM:SS.mmm``; hours are written
          only from one hour on (``HH:MM:SS.mmm``), as whisper's WriteVTT does: both are valid
          WebVTT timestamps

Subtitle cues (srt, vtt) are built in integer milliseconds by ``subtitle_cues``: one cue per
segment with text; a segment longer than MAX_CUE_SECONDS or with more than MAX_CUE_CHARS
characters is split at word boundaries, greedily, using its words' times (the first cue starts
at the segment's start, the last ends at its end, the cuts lie at word times). A segment
without words is never split (there are no times to split at). Then the times are made valid:
each cue starts no earlier than the previous one ends, lasts at least MIN_CUE_MS (a zero-length
word or segment gets 1 ms) and lies inside [0, duration] when the duration is known; a cue
that finds no room left before the end joins the previous cue's text. Text is put on one line
(whitespace collapsed) and ``-->`` becomes ``->``, as whisper does.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple, TextIO

from asr.transcript import Segment, Transcript, Word

FORMATS = ("txt", "tsv", "json", "srt", "vtt")
MAX_CUE_SECONDS = 7.0  # a longer segment is split into several cues (at word times)
MAX_CUE_CHARS = 84  # two subtitle lines of 42 characters
MIN_CUE_MS = 1  # shortest cue, so that end > start even for a zero-length word
MS_PER_HOUR = 3_600_000  # 60 * 60 * 1000
COMBINED_HEADER = "==> {path} <=="  # precedes each file's srt/vtt block on one stream, as `head` does


class Cue(NamedTuple):
    """One subtitle: start and end in integer milliseconds (end > start) and one line of text."""

    start_ms: int
    end_ms: int
    text: str


def _ms(seconds: float) -> int:
    return round(seconds * 1000.0)


def format_timestamp(ms: int, decimal_marker: str = ",", always_include_hours: bool = True) -> str:
    """``HH:MM:SS,mmm`` for ``ms`` milliseconds (>= 0); without ``HH:`` under an hour unless
    ``always_include_hours``. 3725500 -> ``01:02:05,500``."""
    if ms < 0:
        raise ValueError(f"timestamps must not be negative, got {ms} ms")
    hours, rest = divmod(ms, MS_PER_HOUR)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    head = f"{hours:02d}:" if always_include_hours or hours else ""
    return f"{head}{minutes:02d}:{seconds:02d}{decimal_marker}{millis:03d}"


def _clean(text: str) -> str:
    return " ".join(text.split()).replace("-->", "->")


def _word_groups(seg: Segment) -> list[tuple[float, float, str]]:
    """Split a long segment's words greedily into groups within MAX_CUE_CHARS and
    MAX_CUE_SECONDS: [(start, end, text)] in seconds; a single over-long word is a group."""
    words: list[Word] = [w for w in seg.words if _clean(w.text)]
    groups: list[list[Word]] = []
    group_start, chars = seg.start, 0  # the open group's start (seconds) and length (characters)
    for w in words:
        n = len(_clean(w.text))
        if groups and chars + 1 + n <= MAX_CUE_CHARS and w.end - group_start <= MAX_CUE_SECONDS:
            groups[-1].append(w)
            chars += 1 + n
            continue
        if groups:
            group_start = w.start
        groups.append([w])
        chars = n
    out = []
    for i, g in enumerate(groups):
        start = seg.start if i == 0 else g[0].start
        end = seg.end if i == len(groups) - 1 else g[-1].end
        out.append((start, end, " ".join(_clean(x.text) for x in g)))
    return out


def subtitle_cues(transcript: Transcript) -> list[Cue]:
    """The srt/vtt cues of ``transcript``: in order, not overlapping, end > start, inside
    [0, duration] (when duration > 0). Empty segments give no cue."""
    raw: list[tuple[float, float, str]] = []
    for seg in transcript.segments:
        text = _clean(seg.text)
        if not text:
            continue
        too_long = seg.end - seg.start > MAX_CUE_SECONDS or len(text) > MAX_CUE_CHARS
        if too_long and any(_clean(w.text) for w in seg.words):
            raw += _word_groups(seg)
        else:
            raw.append((seg.start, seg.end, text))
    limit = int(transcript.duration * 1000) if transcript.duration > 0 else None  # floor: never past the end
    cues: list[Cue] = []
    for start, end, text in raw:
        lo = max(_ms(start), cues[-1].end_ms if cues else 0, 0)
        hi = max(_ms(end), lo + MIN_CUE_MS)
        if limit is not None:
            hi = min(hi, limit)
            if hi - lo < MIN_CUE_MS:  # no room left before the end of the file
                if cues:
                    prev = cues[-1]
                    cues[-1] = prev._replace(text=f"{prev.text} {text}")
                    continue
                lo, hi = max(0, limit - MIN_CUE_MS), max(limit, MIN_CUE_MS)
        cues.append(Cue(lo, hi, text))
    return cues


def _lines(transcript: Transcript, fmt: str) -> Iterable[str]:
    """The lines (without newline) of one transcript in ``fmt`` (not json)."""
    if fmt == "txt":
        yield from (_clean(s.text) for s in transcript.segments if _clean(s.text))
    elif fmt == "tsv":
        yield "start\tend\ttext"
        for s in transcript.segments:
            if _clean(s.text):
                yield f"{_ms(s.start)}\t{_ms(s.end)}\t{' '.join(s.text.split())}"
    elif fmt == "srt":
        for i, c in enumerate(subtitle_cues(transcript), start=1):
            yield from (str(i), f"{format_timestamp(c.start_ms)} --> {format_timestamp(c.end_ms)}", c.text, "")
    elif fmt == "vtt":
        yield from ("WEBVTT", "")
        for c in subtitle_cues(transcript):
            start = format_timestamp(c.start_ms, ".", always_include_hours=False)
            end = format_timestamp(c.end_ms, ".", always_include_hours=False)
            yield from (f"{start} --> {end}", c.text, "")


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}: choose one of {', '.join(FORMATS)}")


def write_transcript(transcript: Transcript, fmt: str, stream: TextIO) -> None:
    """Write one file's ``transcript`` to ``stream`` in ``fmt`` (one of FORMATS). An empty
    transcript gives an empty txt/srt, a tsv header and ``WEBVTT`` plus a blank line."""
    _check_format(fmt)
    if fmt == "json":
        json.dump(transcript.to_dict(), stream, ensure_ascii=False, indent=1)
        stream.write("\n")
        return
    for line in _lines(transcript, fmt):
        stream.write(line + "\n")


def output_names(transcripts: Sequence[Transcript], fmt: str) -> list[str]:
    """File names ``<stem>.<fmt>``, one per transcript, distinct (ignoring case, for
    case-insensitive file systems). Inputs that share a stem keep it for the first, then get
    ``<stem>-2``, ``<stem>-3``... skipping any name another input's own stem takes."""
    natural = [f"{Path(t.path).stem}.{fmt}" for t in transcripts]
    taken = {n.casefold() for n in natural}
    used: set[str] = set()
    names = []
    for t, name in zip(transcripts, natural):
        if name.casefold() in used:
            stem, n = Path(t.path).stem, 2
            while f"{stem}-{n}.{fmt}".casefold() in taken | used:
                n += 1
            name = f"{stem}-{n}.{fmt}"
        used.add(name.casefold())
        names.append(name)
    return names


def write_outputs(transcripts: Iterable[Transcript], fmt: str, output_dir: str | os.PathLike) -> list[Path]:
    """Write one ``<stem>.<fmt>`` per transcript into ``output_dir`` (created if needed), each
    atomically (a hidden temporary file, then os.replace); an existing file of that name is
    replaced. Transcripts with an error are skipped: the caller reports them. Returns the
    paths written, in input order. Same-stem inputs are named as in ``output_names``."""
    _check_format(fmt)
    good = [t for t in transcripts if not t.error]
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for t, name in zip(good, output_names(good, fmt)):
        path = out_dir / name
        tmp = out_dir / f".{name}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                write_transcript(t, fmt, f)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        paths.append(path)
    return paths


def write_combined(transcripts: Iterable[Transcript], fmt: str, stream: TextIO) -> None:
    """Write every transcript to one ``stream`` (stdout when there is no output folder).

    txt   ``path<TAB>text`` per file, the output ``asr transcribe`` has always printed
    json  one JSON object per line per file (``Transcript.to_dict()``); a file with an error
          is included as ``{"path", "error"}`` so that a reader of the stream sees it
    tsv   one table: header ``path<TAB>start<TAB>end<TAB>text``, one row per segment
    srt, vtt  each file's complete document (its cues end with a blank line), preceded by a
          line ``==> path <==`` as ``head`` prints several files
    Except in json, files with an error are skipped: the caller reports them.
    """
    _check_format(fmt)
    if fmt == "tsv":
        stream.write("path\tstart\tend\ttext\n")
    for t in transcripts:
        if fmt == "json":
            stream.write(json.dumps(t.to_dict(), ensure_ascii=False) + "\n")
        elif t.error:
            continue
        elif fmt == "txt":
            stream.write(f"{t.path}\t{t.text}\n")
        elif fmt == "tsv":
            for line in list(_lines(t, "tsv"))[1:]:
                stream.write(f"{t.path}\t{line}\n")
        else:
            stream.write(COMBINED_HEADER.format(path=t.path) + "\n")
            write_transcript(t, fmt, stream)
