"""Hotwords: boost words or phrases during beam search, in or out of the LM's vocabulary.

``--hotword WORD[:BOOST]`` (repeatable) and ``--hotwords FILE`` (one ``phrase[:BOOST]`` per
line, ``#`` comments) give phrases of one or more words; BOOST is in the units of the acoustic
log-probabilities (natural log), DEFAULT_BOOST when left out.

The boost works like icefall's and sherpa-onnx's context graphs, on the units the decoder's LM
sees (words with a lexicon, tokens without one): ``BoostedLM`` wraps the LM and adds ``boost``
for every unit that extends a partial match of a phrase; when a partial match breaks, or the
utterance ends inside one, the credit given so far is taken back. So a hypothesis gains
``boost x units`` only for a phrase it completes, and partial matches merely survive pruning.
A boosted word is never inserted for free: it still has to win on the acoustic scores, with
its boost as a bias of ``boost`` per unit.
"""
from __future__ import annotations

from pathlib import Path

from flashlight.lib.text.decoder import LM, LMState

DEFAULT_BOOST = 5.0  # natural-log units per word (lexicon) or token (no lexicon); measured in tests


class HotwordError(ValueError):
    """A hotword that cannot be used; the message names it (and the file and line)."""


def parse_hotword(spec: str, where: str = "--hotword") -> tuple[tuple[str, ...], float]:
    """``"new york:3.5"`` -> (("new", "york"), 3.5); the boost defaults to DEFAULT_BOOST. The
    phrase is normalized like transcripts (asr.text.normalize_text)."""
    from asr.text import normalize_text

    phrase, boost = spec, DEFAULT_BOOST
    if ":" in spec:
        head, tail = spec.rsplit(":", 1)
        try:
            phrase, boost = head, float(tail)
        except ValueError:
            raise HotwordError(f"{where}: {spec!r}: the boost after ':' must be a number") from None
    words = tuple(normalize_text(phrase).split())
    if not words:
        raise HotwordError(f"{where}: {spec!r} has no words")
    if not boost > 0:
        raise HotwordError(f"{where}: {spec!r}: the boost must be positive, got {boost}")
    return words, boost


def read_hotwords(path) -> list[tuple[tuple[str, ...], float]]:
    """Phrases of a hotwords file (one ``phrase[:BOOST]`` per line; blank lines and ``#``
    comments skipped); HotwordError naming ``path:line``."""
    path = Path(path)
    if not path.is_file():
        raise HotwordError(f"{path}: hotwords file not found")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(parse_hotword(line.strip(), f"{path}:{n}"))
    return out


class BoostedLM(LM):
    """``base`` (a flashlight LM over the decoder's units) plus hotword credit.

    ``phrases``: (unit indices, boost) pairs. ``scale``: the decoder's LM weight; flashlight
    multiplies every LM score by it, so the credit is divided by it here to stay in acoustic
    units. States are a tree of flashlight LMState (one per unit history); each maps to
    (base state, partial matches, credit held)."""

    def __init__(self, base: LM, phrases: list[tuple[tuple[int, ...], float]], scale: float):
        LM.__init__(self)
        self.base, self.phrases, self.scale = base, phrases, scale
        self.states: dict = {}

    def start(self, start_with_nothing: bool):
        self.states = {}  # one utterance at a time: start() begins a decode
        state = LMState()
        self.states[state] = (self.base.start(start_with_nothing), (), 0.0, 0.0)
        return state

    def score(self, state, index: int):
        child = state.child(index)
        if child not in self.states:
            base_state, partials, credit, _ = self.states[state]
            base_child, base_score = self.base.score(base_state, index)
            matches, done = [], 0.0
            for p, k in list(partials) + [(p, 0) for p in range(len(self.phrases))]:
                units, boost = self.phrases[p]
                if units[k] == index:
                    if k + 1 == len(units):
                        done = max(done, boost * len(units))
                    else:
                        matches.append((p, k + 1))
            matches = tuple(sorted(set(matches)))
            held = max((self.phrases[p][1] * k for p, k in matches), default=0.0)
            bonus = done + held - credit
            self.states[child] = (base_child, matches, held, base_score + bonus / self.scale)
        return child, self.states[child][3]

    def finish(self, state):
        base_state, _, credit, _ = self.states[state]
        base_final, base_score = self.base.finish(base_state)
        return state, base_score - credit / self.scale
