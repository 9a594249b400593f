"""CTC beam search with flashlight-text (the engine under torchaudio's CTC decoder).

Measured, not written here: flashlight-text installs as a cp311 wheel with KenLM built in and
decodes at about 0.01 ms per output frame on the FSDD model; pyctcdecode pins numpy < 2.

Two searches, chosen by whether there is a lexicon:
- **lexicon**: hypotheses are sequences of lexicon words, each spelled in the model's tokens
  (a trie of spellings, smeared with the words' unigram LM scores); a word LM (ARPA or KenLM
  binary) scores the words with ``lm_weight``, and ``word_score`` is added per word. The word
  separator (space for characters; "▁" for BPE when it is a piece of its own) may appear
  between words and is never required.
- **lexicon-free**: any token sequence; an optional token LM (an n-gram over the model's
  symbols, the space spelled TOKEN_SEPARATOR, as ``asr lm --units tokens`` writes) scores each
  token; ``word_score`` is added per word separator.

Scores: log-probabilities [frames, vocab] (natural log) plus ``lm_weight`` x the LM's score
(KenLM's log10) plus the word scores and hotword credit (asr.hotwords).

    log_probs  float32 [frames, vocab]
    path       one token id per frame (blanks included): the alignment of the best hypothesis
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from asr.decoding import DecoderError, collapse_path
from asr.lm import TOKEN_SEPARATOR  # the word separator in a token LM
from asr.runtime import filtered_stderr

BEAM_THRESHOLD = 25.0  # hypotheses more than this below the best (natural log) are pruned
UNK = "<unk>"


class BeamSearch:
    """flashlight's LexiconDecoder (``lexicon`` given) or LexiconFreeDecoder.

    ``lexicon``: word -> spellings (lists of token ids). ``lm``: path of an ARPA (plain or .gz)
    or KenLM binary file, or None. ``hotwords``: (words, boost) phrases; words missing from the
    lexicon are added with their spelling from ``spell``."""

    def __init__(self, symbols: list[str], blank: int, separator: int | None, lexicon: dict | None,
                 lm: str | None = None, lm_weight: float = 0.0, word_score: float = 0.0, beam: int = 50,
                 hotwords=(), spell=None):
        from flashlight.lib.text import decoder as fl
        from flashlight.lib.text.dictionary import Dictionary

        self.symbols, self.blank = symbols, blank
        self.separator = blank if separator is None else separator
        self.lexicon = lexicon
        self.hotwords = list(hotwords)
        if lexicon is not None:
            lexicon = dict(lexicon)
            for words, _ in self.hotwords:
                for w in words:
                    if w not in lexicon:
                        lexicon[w] = [spell(w)]
            units = list(lexicon) + [UNK]
        else:
            units = [TOKEN_SEPARATOR if i == separator else s for i, s in enumerate(symbols)]
        self.units = units
        self.dictionary = Dictionary()
        for u in units:
            self.dictionary.add_entry(u)
        base = self._load_lm(fl, lm, self.dictionary)
        weight = lm_weight if lm else 1.0  # ZeroLM scores 0: the weight only scales hotword credit
        self.lm = base
        if self.hotwords:
            from asr.hotwords import BoostedLM

            index = {u: i for i, u in enumerate(units)}
            phrases = [(self._phrase_units(words, index, spell), boost) for words, boost in self.hotwords]
            self.lm = BoostedLM(base, phrases, weight if weight else 1.0)
            weight = weight or 1.0
        if lexicon is not None:
            trie = fl.Trie(len(symbols), self.separator)
            start = self.lm.start(False)
            for word, spellings in lexicon.items():
                idx = self.dictionary.get_index(word)
                _, unigram = self.lm.score(start, idx)
                for spelling in spellings:
                    trie.insert(list(spelling), idx, unigram)
            trie.smear(fl.SmearingMode.MAX)
            opts = fl.LexiconDecoderOptions(beam_size=beam, beam_size_token=len(symbols), beam_threshold=BEAM_THRESHOLD,
                                            lm_weight=weight, word_score=word_score, unk_score=-math.inf,
                                            sil_score=0.0, log_add=False, criterion_type=fl.CriterionType.CTC)
            self.decoder = fl.LexiconDecoder(opts, trie, self.lm, self.separator, blank, -1, [], False)
        else:
            opts = fl.LexiconFreeDecoderOptions(beam_size=beam, beam_size_token=len(symbols), beam_threshold=BEAM_THRESHOLD,
                                                lm_weight=weight, sil_score=word_score, log_add=False,
                                                criterion_type=fl.CriterionType.CTC)
            self.decoder = fl.LexiconFreeDecoder(opts, self.lm, self.separator, blank, [])

    @staticmethod
    def _load_lm(fl, lm, dictionary):
        if not lm:
            return fl.ZeroLM()
        from asr.lm import check_lm

        check_lm(lm)
        try:
            with filtered_stderr(_kenlm_progress):
                return fl.KenLM(str(lm), dictionary)
        except Exception as err:  # KenLM raises RuntimeError/ValueError with a long message
            raise DecoderError(f"{lm}: KenLM cannot load it ({str(err).splitlines()[0][:200]})") from None

    def _phrase_units(self, words, index, spell) -> tuple[int, ...]:
        if self.lexicon is not None:
            return tuple(index[w] for w in words)
        ids: list[int] = []
        for k, w in enumerate(words):
            if k and self.separator != self.blank:
                ids.append(self.separator)
            ids += spell(w)
        return tuple(ids)

    def search(self, log_probs: np.ndarray, nbest: int = 1) -> list[tuple[list[str] | None, float, list[int]]]:
        """Up to ``nbest`` distinct hypotheses, best first: (words with a lexicon, else None;
        score; path [frames] of token ids)."""
        lp = np.ascontiguousarray(log_probs, dtype=np.float32)
        if lp.ndim != 2 or lp.shape[1] != len(self.symbols):
            raise DecoderError(f"log-probabilities of shape {lp.shape} do not match the {len(self.symbols)} symbols")
        if lp.shape[0] == 0:
            return [([] if self.lexicon is not None else None, 0.0, [])]
        results = self.decoder.decode(lp.ctypes.data, lp.shape[0], lp.shape[1])
        out, seen = [], set()
        for r in results:
            path = [int(t) for t in list(r.tokens)[1 : lp.shape[0] + 1]]
            words = [self.units[i] for i in r.words if i >= 0] if self.lexicon is not None else None
            key = tuple(words) if words is not None else tuple(collapse_path(path, self.blank))
            if key in seen:
                continue
            seen.add(key)
            out.append((words, float(r.score), path))
            if len(out) >= nbest:
                break
        return out


def _kenlm_progress(line: bytes) -> bool:
    """KenLM's loading chatter on stderr (a hint to build a binary, the file name, a progress bar)."""
    text = line.strip()
    return (not text or text.startswith((b"Loading the LM will be faster", b"Reading ")) or set(text) <= set(b"*")
            or text.startswith(b"----5---10"))


def lm_path(path) -> str:
    """``path`` as a string, after checking it exists (DecoderError otherwise)."""
    p = Path(path)
    if not p.is_file():
        raise DecoderError(f"{p}: language model not found")
    return str(p)
