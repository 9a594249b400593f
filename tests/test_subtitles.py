"""Transcript writers: srt/vtt parse with the srt and webvtt libraries at the exact times."""
from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import pytest
import srt
import webvtt

from asr.subtitles import (FORMATS, MAX_CUE_CHARS, MAX_CUE_SECONDS, Cue, format_timestamp,
                           subtitle_cues, write_combined, write_outputs, write_transcript)
from asr.transcript import Segment, Transcript, Word


def _words(text: str, start: float, step: float) -> tuple[Word, ...]:
    """One word per ``step`` seconds from ``start``, each lasting 0.8 * step."""
    return tuple(Word(w, round(start + i * step, 3), round(start + i * step + 0.8 * step, 3), 0.9)
                 for i, w in enumerate(text.split()))


def _segment(text: str, start: float, step: float = 0.5) -> Segment:
    words = _words(text, start, step)
    return Segment(start, words[-1].end + 0.1 if words else start + 1.0, text, words)


def _transcript(*segments: Segment, path: str = "a/talk.wav", duration: float | None = None) -> Transcript:
    end = max((s.end for s in segments), default=0.0)
    return Transcript(path, duration if duration is not None else end + 1.0, tuple(segments))


def _render(t: Transcript, fmt: str) -> str:
    buf = io.StringIO()
    write_transcript(t, fmt, buf)
    return buf.getvalue()


def _ms(td) -> int:
    return round(td.total_seconds() * 1000)


def _vtt_ms(ts) -> int:
    return ((ts.hours * 60 + ts.minutes) * 60 + ts.seconds) * 1000 + ts.milliseconds


def _parse_srt(text: str) -> list[Cue]:
    return [Cue(_ms(s.start), _ms(s.end), s.content) for s in srt.parse(text)]


def _parse_vtt(text: str) -> list[Cue]:
    return [Cue(_vtt_ms(c.start_time), _vtt_ms(c.end_time), c.text) for c in webvtt.from_string(text)]


SHORT = _transcript(_segment("one two three", 0.25), _segment("four five", 2.7181),
                    Segment(4.0, 4.5, "", ()), _segment("six", 5.0005))


@pytest.mark.parametrize("parse,fmt", [(_parse_srt, "srt"), (_parse_vtt, "vtt")])
def test_subtitles_parse_at_segment_times(parse, fmt):
    cues = parse(_render(SHORT, fmt))
    expected = [Cue(round(s.start * 1000), round(s.end * 1000), s.text) for s in SHORT.segments if s.text]
    assert cues == expected  # the empty segment gives no cue


def test_srt_and_vtt_layout():
    t = _transcript(Segment(1.0, 2.5, "hello there", ()))
    assert _render(t, "srt") == "1\n00:00:01,000 --> 00:00:02,500\nhello there\n\n"
    assert _render(t, "vtt") == "WEBVTT\n\n00:01.000 --> 00:02.500\nhello there\n\n"


def test_hour_plus_times():
    assert format_timestamp(3_725_500) == "01:02:05,500"
    assert format_timestamp(3_725_500, ".", always_include_hours=False) == "01:02:05.500"
    assert format_timestamp(59_999, ".", always_include_hours=False) == "00:59.999"
    assert format_timestamp(100 * 3_600_000) == "100:00:00,000"
    t = _transcript(Segment(3725.5, 3727.25, "late", ()), duration=4000.0)
    assert "01:02:05,500 --> 01:02:07,250" in _render(t, "srt")
    assert "01:02:05.500 --> 01:02:07.250" in _render(t, "vtt")
    assert _parse_srt(_render(t, "srt")) == _parse_vtt(_render(t, "vtt")) == [Cue(3725500, 3727250, "late")]
    with pytest.raises(ValueError):
        format_timestamp(-1)


def test_long_segment_splits_at_words():
    text = " ".join(f"w{i}" for i in range(40))
    seg = _segment(text, 10.0, step=0.6)  # 24 s of words
    t = _transcript(seg)
    for parse, fmt in [(_parse_srt, "srt"), (_parse_vtt, "vtt")]:
        cues = parse(_render(t, fmt))
        assert len(cues) >= 4
        assert " ".join(c.text for c in cues) == text
        assert cues[0].start_ms == 10000 and cues[-1].end_ms == round(seg.end * 1000)
        by_text = {w.text: w for w in seg.words}
        for c in cues:
            assert c.end_ms - c.start_ms <= MAX_CUE_SECONDS * 1000
            first, last = by_text[c.text.split()[0]], by_text[c.text.split()[-1]]
            if c is not cues[0]:
                assert c.start_ms == round(first.start * 1000)  # cut at a word's start...
            if c is not cues[-1]:
                assert c.end_ms == round(last.end * 1000)  # ...and a word's end
        for a, b in zip(cues, cues[1:]):
            assert a.end_ms <= b.start_ms


def test_many_characters_split_at_words():
    text = " ".join(["supercalifragilistic"] * 12)  # 251 characters in 3 s
    seg = _segment(text, 0.0, step=0.25)
    cues = subtitle_cues(_transcript(seg))
    assert len(cues) >= 3 and all(len(c.text) <= MAX_CUE_CHARS for c in cues)
    assert " ".join(c.text for c in cues) == text


def test_long_segment_without_words_is_one_cue():
    t = _transcript(Segment(0.0, 12.0, "no word times here", ()))
    assert subtitle_cues(t) == [Cue(0, 12000, "no word times here")]


def test_cue_times_made_valid():
    words = (Word("a", 1.0, 1.0), Word("b", 1.0, 1.0))  # zero-length words
    t = Transcript("x.wav", 3.0, (
        Segment(1.0, 1.0, "a b", words),  # zero-length segment: 1 ms
        Segment(0.9995, 1.8, "overlaps the previous one"),  # starts before the previous end
        Segment(2.5, 3.4, "past the end --> of the file"),  # clamped to the duration
        Segment(3.2, 3.3, "after the end"),  # no room left: joins the previous cue
    ))
    cues = subtitle_cues(t)
    assert cues == [Cue(1000, 1001, "a b"), Cue(1001, 1800, "overlaps the previous one"),
                    Cue(2500, 3000, "past the end -> of the file after the end")]
    assert _parse_srt(_render(t, "srt")) == cues


def test_txt_tsv_json():
    assert _render(SHORT, "txt") == "one two three\nfour five\nsix\n"
    rows = _render(SHORT, "tsv").splitlines()
    assert rows[0] == "start\tend\ttext"
    assert rows[1] == "250\t1750\tone two three"
    assert rows[1:] == [f"{round(s.start * 1000)}\t{round(s.end * 1000)}\t{s.text}" for s in SHORT.segments if s.text]
    assert all(part.isdigit() for row in rows[1:] for part in row.split("\t")[:2])
    data = json.loads(_render(SHORT, "json"))
    assert data == SHORT.to_dict()
    assert data["segments"][0]["words"][1] == {"word": "two", "start": 0.75, "end": 1.15, "confidence": 0.9}


def test_empty_transcript():
    t = Transcript("silence.wav", 5.0, ())
    assert _render(t, "txt") == ""
    assert _render(t, "srt") == ""
    assert _render(t, "vtt") == "WEBVTT\n\n"
    assert _render(t, "tsv") == "start\tend\ttext\n"
    assert json.loads(_render(t, "json")) == {"path": "silence.wav", "text": "", "duration": 5.0, "segments": []}
    assert list(webvtt.from_string(_render(t, "vtt"))) == []


def test_unknown_format():
    with pytest.raises(ValueError, match="srt"):
        write_transcript(SHORT, "doc", io.StringIO())


def test_output_dir_naming_and_collisions(tmp_path):
    ts = [_transcript(_segment("one", 0.0), path="x/a.wav"),
          _transcript(_segment("two", 0.0), path="y/a.flac"),  # same stem: a-3 (a-2 is taken)
          _transcript(_segment("three", 0.0), path="z/a-2.wav"),
          Transcript("bad.wav", error="file not found"),
          _transcript(_segment("four", 0.0), path="w/A.wav")]  # differs only in case: A-4
    out = tmp_path / "out" / "nested"
    for fmt in FORMATS:
        paths = write_outputs(ts, fmt, out)
        assert [p.name for p in paths] == [f"a.{fmt}", f"a-3.{fmt}", f"a-2.{fmt}", f"A-4.{fmt}"]
    stems = ("a", "a-3", "a-2", "A-4")
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.{fmt}" for s in stems for fmt in FORMATS)
    assert (out / "a-3.txt").read_text() == "two\n" and (out / "a-2.txt").read_text() == "three\n"
    (out / "a.txt").write_text("stale")
    write_outputs(ts[:1], "txt", out)  # a second run replaces, no leftover temporary file
    assert (out / "a.txt").read_text() == "one\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_combined_txt_matches_transcribe_output():
    ts = [SHORT, Transcript("b.wav", error="not a readable audio file"), _transcript(path="c d.wav")]
    buf, printed = io.StringIO(), io.StringIO()
    write_combined(ts, "txt", buf)
    with redirect_stdout(printed):  # what `asr transcribe` prints for the files without error
        for res in ts:
            if not res.error:
                print(f"{res.path}\t{res.text}")
    assert buf.getvalue() == printed.getvalue() == "a/talk.wav\tone two three four five six\nc d.wav\t\n"


def test_combined_json_tsv_srt_vtt():
    ts = [SHORT, Transcript("b.wav", error="bad"), _transcript(Segment(1.0, 2.0, "hi", ()), path="c.wav")]
    buf = io.StringIO()
    write_combined(ts, "json", buf)
    assert [json.loads(line) for line in buf.getvalue().splitlines()] == [t.to_dict() for t in ts]
    buf = io.StringIO()
    write_combined(ts, "tsv", buf)
    rows = _render(SHORT, "tsv").splitlines()[1:]
    assert buf.getvalue().splitlines() == (["path\tstart\tend\ttext"] + [f"a/talk.wav\t{r}" for r in rows]
                                           + ["c.wav\t1000\t2000\thi"])
    for fmt, parse in [("srt", _parse_srt), ("vtt", _parse_vtt)]:
        buf = io.StringIO()
        write_combined(ts, fmt, buf)
        blocks = buf.getvalue().split("==> ")[1:]
        assert [b.split(" <==\n")[0] for b in blocks] == ["a/talk.wav", "c.wav"]
        assert [parse(b.split(" <==\n", 1)[1]) for b in blocks] == [subtitle_cues(ts[0]), subtitle_cues(ts[2])]


def test_segments_from_real_audio(clips_dir):
    """Segment times from the VAD on real speech come out of the srt/vtt writers exactly."""
    from asr.segmentation import speech_segments

    path = clips_dir / "cards_005.wav"
    segs = [Segment(s.start, s.end, f"part {i}") for i, s in enumerate(speech_segments(path))]
    t = Transcript(str(path), 3.5025, tuple(segs))
    expected = [Cue(round(s.start * 1000), round(s.end * 1000), s.text) for s in segs]
    assert _parse_srt(_render(t, "srt")) == _parse_vtt(_render(t, "vtt")) == expected
