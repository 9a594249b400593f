"""Word timestamps and confidence from a CTC best path.

A decoder's best path holds one token id per output frame, blanks included (greedy argmax, or
the beam search's best path). Its words, start and end times and confidences:

    path       int [num_frames]: the token id of each output frame
    log_probs  float [num_frames, vocab_size]: the model's per-frame scores (log-probabilities;
               any real scores are normalized with a log-softmax first)
    symbols    the vocabulary, vocab_size strings; ``blank`` is the index of the CTC blank

Tokens: each run of one id on the path is one token, blanks are dropped (a repeat is a new
token only after a blank between, as ``asr.decoding.greedy_ids`` collapses). A token's frames are its run.
Words: a token whose symbol is only a space (the character vocabulary's separator, or a lone
BPE word boundary) ends the current word; a token whose symbol starts with a space or with
``word_boundary`` (a BPE piece "▁two") starts a new one. A word's text is its tokens' symbols
joined by ``asr.text.join_symbols``, so the words joined by spaces are the decoder's text.

Boundaries (``place``): a word's tokens span frames [first, stop). The start moves earlier
over the blank frames just before the word (up to BLANK_REACH of them; a separator token or
another word ends them), then START_PAD more; the end likewise over the blank frames after it,
then END_PAD more. Neither moves by more than GAP_SHARE of the frames between the word and its
neighbouring word (or the input's edge), so neighbours never overlap. Why: measured on FSDD
connected digits (benchmarks/timestamps.py; the truth is where each digit's recording lies in
the string), the shipped character model labels nearly every frame of speech with a letter and
the pauses with the space token, but leaves a word's weak edges blank (the fricative end of
"six", the onset of "one"). The frames of those blank runs, a little padding, and nothing else:
BLANK_REACH, START_PAD and END_PAD were chosen on the dev strings from a grid (pads -80 to
240 ms, reaches 0 to 500 ms) for the shipped model, and chosen again when it changed; the test
strings were measured once, with them: 87.7% of the correctly recognized words of greedy paths
have start and end within 100 ms of their recording's (benchmarks/results/timestamps_greedy.json;
87.2% decoded as the model ships, timestamps.json; the strings' speakers include george, whom
the model never heard). The five-speaker model before it (reach 120 ms) reached 91.5%.

Confidence (``word_confidence``): for each token of the word, its largest posterior over its
frames; the word's confidence is the smallest of these (a word is as doubtful as its least sure
token), in [0, 1]. It was chosen on the dev strings from CONFIDENCE_RULES by how well it
separates correct from wrong words (AUC of hits against substitutions and insertions); on the
test strings (greedy paths), correct words average 0.96 and wrong ones 0.71, AUC 0.89 (the
five-speaker model before it: 0.99, 0.76, 0.97).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asr.text import join_symbols
from asr.transcript import FRAME_SECONDS, Word

BLANK_REACH = 0.08  # seconds: at most this much of the blank run next to a word joins it (2 frames)
START_PAD = 0.02  # seconds the start moves earlier still, past the blank run
END_PAD = 0.04  # seconds the end moves later still, past the blank run (one frame)
GAP_SHARE = 0.5  # the most of the gap to a neighbour (or the input's edge) a word may take: no overlap
CONFIDENCE_RULES = ("min_peak", "min_mean", "geo_mean", "mean")  # word_confidence(rule=...)
CONFIDENCE_RULE = "min_peak"  # min over the word's tokens of the token's largest posterior


@dataclass(frozen=True)
class Token:
    """One run of a non-blank id on the path: frames [first, stop)."""

    id: int
    first: int
    stop: int


@dataclass(frozen=True)
class WordSpan:
    """A word of the path: its text and tokens (frames [first, stop) from its first token's
    first frame to its last token's stop); ``lead``/``tail``: the blank frames just before and
    after it (up to another token or the path's edge)."""

    text: str
    tokens: tuple[Token, ...]
    lead: int = 0
    tail: int = 0

    @property
    def first(self) -> int:
        return self.tokens[0].first

    @property
    def stop(self) -> int:
        return self.tokens[-1].stop


def tokens_of(path, blank: int) -> list[Token]:
    """The tokens of a path int [num_frames]: runs of one id, blank runs dropped."""
    path = np.asarray(path, dtype=np.int64).reshape(-1)
    if path.size == 0:
        return []
    starts = np.flatnonzero(np.r_[True, path[1:] != path[:-1]])
    stops = np.r_[starts[1:], path.size]
    return [Token(int(path[a]), int(a), int(b)) for a, b in zip(starts, stops) if path[a] != blank]


def _groups(tokens: list[Token], symbols, word_boundary: str | None) -> list[tuple[int, int]]:
    """Index ranges [i, j) into ``tokens`` of each word's tokens (module docstring: Words)."""
    groups, begin = [], None
    for i, token in enumerate(tokens):
        shown = symbols[token.id].replace(word_boundary, " ") if word_boundary else symbols[token.id]
        if begin is not None and (not shown.strip() or shown[0].isspace()):
            groups.append((begin, i))
            begin = None
        if shown.strip():
            begin = i if begin is None else begin
            if shown[-1].isspace():
                groups.append((begin, i + 1))
                begin = None
    if begin is not None:
        groups.append((begin, len(tokens)))
    return groups


def word_spans(path, symbols, blank: int, word_boundary: str | None = None) -> list[WordSpan]:
    """The words of a path int [num_frames] (module docstring: Tokens, Words), with the blank
    frames next to each."""
    tokens = tokens_of(path, blank)
    num_frames = int(np.asarray(path).size)
    words = []
    for i, j in _groups(tokens, symbols, word_boundary):
        text = join_symbols([symbols[t.id] for t in tokens[i:j]], word_boundary)
        before = tokens[i - 1].stop if i else 0
        after = tokens[j].first if j < len(tokens) else num_frames
        if text:
            words.append(WordSpan(text, tuple(tokens[i:j]), tokens[i].first - before, after - tokens[j - 1].stop))
    return words


def place(spans: list[WordSpan], num_frames: int, start_pad: float = START_PAD, end_pad: float = END_PAD,
          blank_reach: float = BLANK_REACH, gap_share: float = GAP_SHARE,
          frame_seconds: float = FRAME_SECONDS) -> list[tuple[float, float]]:
    """(start, end) in seconds from the path's first frame, for each span of a path of
    ``num_frames`` frames (module docstring: Boundaries): each side moves out over at most
    ``blank_reach`` seconds of its adjacent blank frames, then by ``start_pad``/``end_pad``
    seconds (negative: in), by at most ``gap_share`` of the frames to the neighbouring span or
    the edge; start <= end always (a span shrunk past itself becomes its middle)."""
    reach = blank_reach / frame_seconds
    out = []
    for i, span in enumerate(spans):
        before = span.first - (spans[i - 1].stop if i else 0)  # gap frames before the word
        after = (spans[i + 1].first if i + 1 < len(spans) else num_frames) - span.stop
        start = span.first - min(min(span.lead, reach) + start_pad / frame_seconds, gap_share * before)
        end = span.stop + min(min(span.tail, reach) + end_pad / frame_seconds, gap_share * after)
        if start > end:
            start = end = (span.first + span.stop) / 2
        out.append((start * frame_seconds, end * frame_seconds))
    return out


def word_confidence(span: WordSpan, probs: np.ndarray, rule: str = CONFIDENCE_RULE) -> float:
    """Confidence in [0, 1] of one word from posteriors ``probs`` [num_frames, vocab_size]:
    "min_mean" smallest over tokens of the token's mean posterior over its frames, "min_peak"
    smallest over tokens of its largest posterior, "geo_mean" geometric mean of the posteriors
    of all the word's token frames, "mean" their arithmetic mean."""
    if rule not in CONFIDENCE_RULES:
        raise ValueError(f"rule must be one of {', '.join(CONFIDENCE_RULES)}, got {rule!r}")
    per_token = [probs[t.first : t.stop, t.id] for t in span.tokens]
    if rule == "min_mean":
        value = min(float(p.mean()) for p in per_token)
    elif rule == "min_peak":
        value = min(float(p.max()) for p in per_token)
    elif rule == "geo_mean":
        value = float(np.exp(np.mean(np.log(np.maximum(np.concatenate(per_token), 1e-30)))))
    else:
        value = float(np.concatenate(per_token).mean())
    return min(1.0, max(0.0, value))


def posteriors(log_probs: np.ndarray) -> np.ndarray:
    """Per-frame posteriors float64 [num_frames, vocab_size] of scores [num_frames, vocab_size]
    (a softmax: log-probabilities come back as their probabilities)."""
    x = np.asarray(log_probs, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def word_times(path, log_probs: np.ndarray, symbols, blank: int, word_boundary: str | None = None,
               offset: float = 0.0, frame_seconds: float = FRAME_SECONDS) -> list[Word]:
    """The words of a best path int [num_frames] with times and confidence.

    ``log_probs`` [num_frames, len(symbols)] are the scores the path was decoded from; times
    are seconds, ``offset`` added (where the scored audio starts in its file); see the module
    docstring for the boundary rule (BLANK_REACH, START_PAD, END_PAD, GAP_SHARE) and the confidence
    (CONFIDENCE_RULE). ValueError when the path and the scores differ in length."""
    path = np.asarray(path, dtype=np.int64).reshape(-1)
    if path.size == 0:
        return []
    log_probs = np.asarray(log_probs)
    if log_probs.ndim != 2 or log_probs.shape[0] != path.size:
        raise ValueError(f"the path has {path.size} frames, the scores have shape {log_probs.shape}: "
                         f"expected [{path.size}, vocab_size]")
    spans = word_spans(path, symbols, blank, word_boundary)
    if not spans:
        return []
    probs = posteriors(log_probs)
    times = place(spans, path.size, frame_seconds=frame_seconds)
    return [Word(span.text, offset + start, offset + end, word_confidence(span, probs))
            for span, (start, end) in zip(spans, times)]
