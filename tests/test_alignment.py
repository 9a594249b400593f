"""Word timestamps and confidence from CTC best paths (asr.alignment), and the FSDD word-times
truth that prepare writes beside the connected-digit manifests."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import REPO_ROOT

from asr.alignment import (BLANK_REACH, END_PAD, START_PAD, place, tokens_of, word_confidence, word_spans,
                           word_times)
from asr.decoding import greedy_ids
from asr.text import DEFAULT_CHARS, WORD_BOUNDARY, join_symbols
from asr.transcript import FRAME_SECONDS

CHARS = ["<blank>", *DEFAULT_CHARS]  # blank 0, space 1, a-z, apostrophe
PIECES = ["<blank>", "▁one", "▁tw", "o", "▁", "s", "▁three"]  # a small BPE vocabulary
SHIPPED_MODEL = REPO_ROOT / "models" / "fsdd.tflite"
TOLERANCE = 0.100  # seconds, as in benchmarks/timestamps.py


def ids(text: str) -> list[int]:
    """Character ids of ``text`` ("_" is the blank)."""
    return [0 if c == "_" else CHARS.index(c) for c in text]


def scores_of(path, vocab: int, peak: float = 0.9, rng=None) -> np.ndarray:
    """Log-probabilities [len(path), vocab] whose argmax is ``path``: ``peak`` on the path's id
    (a float or one per frame), the rest spread evenly."""
    peak = np.broadcast_to(np.asarray(peak, dtype=np.float64), (len(path),))
    probs = np.repeat(((1 - peak) / (vocab - 1))[:, None], vocab, axis=1)
    probs[np.arange(len(path)), path] = peak
    return np.log(probs)


def test_character_path_words_text_and_frames():
    path = ids("__tt_oo_o___  ff_oo_u_rr__")
    spans = word_spans(path, CHARS, 0)
    assert [s.text for s in spans] == ["too", "four"]
    first, second = spans
    assert [(t.first, t.stop) for t in first.tokens] == [(2, 4), (5, 7), (8, 9)]
    assert (first.first, first.stop, first.lead, first.tail) == (2, 9, 2, 3)  # the space token ends the tail
    assert (second.first, second.stop, second.lead, second.tail) == (14, 24, 0, 2)


def test_words_joined_are_the_greedy_text_of_random_scores(rng):
    for _ in range(200):
        frames = int(rng.integers(0, 40))
        log_probs = np.log(rng.dirichlet(np.full(len(CHARS), 0.2), size=frames) + 1e-12)
        path = log_probs.argmax(axis=1)
        words = word_times(path, log_probs, CHARS, 0)
        expected = join_symbols(CHARS[i] for i in greedy_ids(log_probs, 0))
        assert " ".join(w.text for w in words) == expected
        assert all(0.0 <= w.start <= w.end <= frames * FRAME_SECONDS + 1e-9 for w in words)
        assert all(a.end <= b.start + 1e-9 for a, b in zip(words, words[1:]))  # neighbours never overlap


def test_repeats_collapse_as_ctc_does():
    tokens = tokens_of(ids("aa_a__b"), 0)
    assert [(t.id, t.first, t.stop) for t in tokens] == [(2, 0, 2), (2, 3, 4), (3, 6, 7)]
    assert [s.text for s in word_spans(ids("aa_a__b"), CHARS, 0)] == ["aab"]


def test_bpe_pieces_start_words_and_a_lone_boundary_separates():
    path = [0, 1, 1, 0, 2, 3, 3, 0, 4, 0, 5, 0, 0, 6, 6]  # ▁one, ▁tw o, a lone ▁, s, ▁three
    spans = word_spans(path, PIECES, 0, WORD_BOUNDARY)
    assert [s.text for s in spans] == ["one", "two", "s", "three"]
    assert [(s.first, s.stop) for s in spans] == [(1, 3), (4, 7), (10, 11), (13, 15)]
    text = join_symbols((PIECES[i] for i in greedy_ids(scores_of(path, len(PIECES)), 0)), WORD_BOUNDARY)
    assert " ".join(s.text for s in spans) == text == "one two s three"


def test_words_separated_by_blank_only_gaps_share_the_gap():
    path = [1, 1] + [0] * 10 + [2, 3]  # "one", ten blank frames, "two" (BPE: no separator token)
    spans = word_spans(path, PIECES, 0, WORD_BOUNDARY)
    assert [(s.lead, s.tail) for s in spans] == [(0, 10), (10, 0)]
    (s1, e1), (s2, e2) = place(spans, len(path), start_pad=0.0, end_pad=0.0, blank_reach=1.0)
    assert e1 == pytest.approx(7 * FRAME_SECONDS) and s2 == pytest.approx(7 * FRAME_SECONDS)  # half the gap each
    (_, e1), (s2, _) = place(spans, len(path), start_pad=0.0, end_pad=0.0, blank_reach=2 * FRAME_SECONDS)
    assert e1 == pytest.approx(4 * FRAME_SECONDS) and s2 == pytest.approx(10 * FRAME_SECONDS)  # two frames each
    assert e1 <= s2


def test_times_follow_the_rule_and_add_the_offset():
    path = ids("____seven_____  ___one__")
    log_probs = scores_of(path, len(CHARS))
    words = word_times(path, log_probs, CHARS, 0, offset=12.5)
    assert [w.text for w in words] == ["seven", "one"]
    reach = BLANK_REACH / FRAME_SECONDS
    seven_start = 4 - min(min(4, reach) + START_PAD / FRAME_SECONDS, 0.5 * 4)
    seven_end = 9 + min(min(5, reach) + END_PAD / FRAME_SECONDS, 0.5 * (19 - 9))
    assert words[0].start == pytest.approx(12.5 + seven_start * FRAME_SECONDS)
    assert words[0].end == pytest.approx(12.5 + seven_end * FRAME_SECONDS)
    zero = word_times(path, log_probs, CHARS, 0)
    assert [t + 12.5 for w in zero for t in (w.start, w.end)] == pytest.approx([t for w in words for t in (w.start, w.end)])
    raw = place(word_spans(path, CHARS, 0), len(path), 0.0, 0.0, 0.0)
    assert np.ravel(raw) == pytest.approx(np.array([4, 9, 19, 22]) * FRAME_SECONDS)  # the tokens' frames


def test_frame_seconds_scales_the_times():
    """Frames count frame_seconds each; the pads and the reach are seconds whatever the frame."""
    path = ids("__ab__")
    spans = word_spans(path, CHARS, 0)
    b = word_times(path, scores_of(path, len(CHARS)), CHARS, 0, frame_seconds=2 * FRAME_SECONDS)
    assert (b[0].start, b[0].end) == pytest.approx(tuple(place(spans, len(path), frame_seconds=2 * FRAME_SECONDS)[0]))
    bare = {"start_pad": 0.0, "end_pad": 0.0, "blank_reach": 0.0}
    one, two = (place(spans, len(path), frame_seconds=f, **bare)[0] for f in (FRAME_SECONDS, 2 * FRAME_SECONDS))
    assert tuple(two) == pytest.approx((2 * one[0], 2 * one[1])) and tuple(one) == pytest.approx((2 * FRAME_SECONDS, 4 * FRAME_SECONDS))


def test_a_span_shrunk_past_itself_becomes_its_middle():
    spans = word_spans(ids("_abc_"), CHARS, 0)
    assert np.ravel(place(spans, 5, start_pad=-0.2, end_pad=-0.2, blank_reach=0.0)) == pytest.approx([2.5 * FRAME_SECONDS] * 2)


@pytest.mark.parametrize("path", [[], ids("_____"), ids("__  _ _")])
def test_no_words(path):
    assert word_times(path, scores_of(path, len(CHARS)).reshape(len(path), len(CHARS)), CHARS, 0) == []


def test_scores_must_match_the_path():
    with pytest.raises(ValueError, match="the path has 3 frames"):
        word_times([2, 2, 0], np.zeros((4, len(CHARS))), CHARS, 0)


def test_confidence_is_in_range_and_lower_for_a_doubtful_word():
    path = ids("_one_  _two_")
    peak = np.full(len(path), 0.95)
    peak[ids("_one_  _two_").index(CHARS.index("w"))] = 0.4  # the "w" of "two" barely wins
    words = word_times(path, scores_of(path, len(CHARS), peak), CHARS, 0)
    assert [w.text for w in words] == ["one", "two"]
    assert all(0.0 <= w.confidence <= 1.0 for w in words)
    assert words[0].confidence == pytest.approx(0.95) and words[1].confidence == pytest.approx(0.4)
    span = word_spans(path, CHARS, 0)[1]
    probs = np.exp(scores_of(path, len(CHARS), peak))
    for rule in ("min_peak", "min_mean", "geo_mean", "mean"):
        assert 0.0 <= word_confidence(span, probs, rule) <= 1.0
    with pytest.raises(ValueError, match="rule must be one of"):
        word_confidence(span, probs, "median")


def test_logits_are_normalized_before_confidence():
    path = ids("_ab_")
    logits = scores_of(path, len(CHARS)) + 7.0  # not log-probabilities: off by a constant
    assert word_times(path, logits, CHARS, 0)[0].confidence == pytest.approx(0.9)


@pytest.fixture(scope="module")
def connected(fsdd_dir, tmp_path_factory):
    """Three connected-digit test strings per speaker the shipped model trained on (the
    held-out split's test_seen part: recordings 0-4), prepared from the real recordings."""
    from asr.corpora import fsdd

    out = tmp_path_factory.mktemp("fsdd")
    fsdd.prepare(fsdd_dir, out, connected={"train": 0, "dev": 0, "test": 0, "test_seen": 3})
    return out / "heldout" / "test_seen_connected.jsonl"


def test_prepare_writes_the_word_times_of_each_connected_string(connected):
    from asr.corpora.fsdd import read_word_times, words_path
    from asr.manifest import read_manifest

    utts = read_manifest(connected)
    lines = [json.loads(line) for line in words_path(connected).read_text().splitlines()]
    assert [d["id"] for d in lines] == [u.id for u in utts]
    truth = read_word_times(connected)
    for utt in utts:
        words = truth[utt.id]
        assert " ".join(w["word"] for w in words) == utt.text
        assert words[0]["start"] == 0.0 and words[-1]["end"] == pytest.approx(utt.duration, abs=1e-4)
        for w, nxt in zip(words, words[1:] + [None]):
            assert w["start"] <= w["speech_start"] < w["speech_end"] <= w["end"]
            if nxt:
                assert 0.05 <= nxt["start"] - w["end"] <= 0.30 + 1e-9  # the pause between digits


def test_shipped_model_times_real_connected_digits(connected):
    import jiwer

    from asr.audio import load_audio
    from asr.corpora.fsdd import read_word_times
    from asr.manifest import read_manifest
    from asr.runtime import TFLiteModel

    if not SHIPPED_MODEL.is_file():
        pytest.skip(f"the shipped model {SHIPPED_MODEL.name} is absent")
    model = TFLiteModel(SHIPPED_MODEL, num_threads=2)
    truth = read_word_times(connected)
    good = timed = 0
    for utt in read_manifest(connected):
        log_probs = model.log_probs(load_audio(utt.audio, 16000))
        words = word_times(log_probs.argmax(axis=1), log_probs, model.symbols, model.blank, model.word_boundary)
        assert " ".join(w.text for w in words) == model.decode(log_probs)
        if not words:
            continue
        for chunk in jiwer.process_words(utt.text, " ".join(w.text for w in words)).alignments[0]:
            if chunk.type == "equal":
                for h, r in zip(range(chunk.hyp_start_idx, chunk.hyp_end_idx), range(chunk.ref_start_idx, chunk.ref_end_idx)):
                    ref = truth[utt.id][r]
                    timed += 1
                    good += abs(words[h].start - ref["start"]) <= TOLERANCE and abs(words[h].end - ref["end"]) <= TOLERANCE
    assert timed >= 30
    assert good / timed >= 0.8, f"{good} of {timed} words within {TOLERANCE * 1000:.0f} ms"
