"""A small CTC lexicon-constrained beam search in plain numpy: the reference for decoding on the
device for small vocabularies (digits, commands); docs/deployment.md ports it to Kotlin. The
tests hold its words equal to flashlight-text's LexiconDecoder (CTC, max merging, separator
score 0, unknown words off) with the same settings on the FSDD test sets.

    log_probs  float32 [frames, vocab]: natural-log CTC posteriors of one utterance
    lexicon    word -> spelling (token ids, no separator), e.g. {"one": [16, 15, 6]}
    lm         None, or a word bigram from ``read_arpa``: n-gram -> (log10 p, log10 backoff)

A hypothesis is (words so far, trie node, last token), the last token being the blank after a
blank, with the score of the best path into it (paths into one hypothesis are merged by max).
Each frame, each hypothesis may
  1. emit a child token of its node, unless it equals the last token (a repeat needs a blank
     between); reaching the end of a spelling emits the word (+ lm_weight * its LM score +
     word_score) and returns to the root;
  2. at the root, emit the separator (score 0 besides its log-probability); inside a word,
     hold its last token (not after a blank);
  3. emit the blank.
As in flashlight, a word is emitted on the frame its last token starts, so that token cannot be
held on the next frame, and the last token of a spelling may follow an equal token without a
blank ("three" from t h r e e). Partial words carry the best log10 P(word | <s>) below their
node (the LM look-ahead, taken back when the word is emitted). Each frame keeps the ``beam``
best hypotheses within ``beam_threshold`` of the best. At the end the LM's end-of-sentence score
is added and the best hypothesis at the root (any, if none is there) gives the words.
"""
from __future__ import annotations

import math

import numpy as np

START, END, UNK = "<s>", "</s>", "<unk>"


def read_arpa(text: str) -> dict[tuple[str, ...], tuple[float, float]]:
    """An ARPA language model of order <= 2 (the file's text) as {n-gram: (log10 p, log10
    backoff)}; a missing backoff is 0."""
    lm, order = {}, 0
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("\\") and line.endswith("-grams:"):
            order = int(line[1 : -len("-grams:")])
            if order > 2:
                raise ValueError(f"ARPA {order}-grams: only unigrams and bigrams are read")
        elif order and line and not line.startswith("\\"):
            fields = line.split()
            if len(fields) not in (order + 1, order + 2):
                raise ValueError(f"ARPA {order}-gram line with {len(fields)} fields: {line!r}")
            backoff = float(fields[order + 1]) if len(fields) == order + 2 else 0.0
            lm[tuple(fields[1 : order + 1])] = (float(fields[0]), backoff)
    return lm


def bigram_score(lm: dict, previous: str, word: str) -> float:
    """log10 P(word | previous) from ``read_arpa``'s dict: the bigram, else the backoff of
    ``previous`` plus the unigram; a word outside the LM scores as <unk>."""
    if (word,) not in lm:
        word = UNK
    if (previous, word) in lm:
        return lm[(previous, word)][0]
    return lm.get((previous,), (0.0, 0.0))[1] + lm.get((word,), (-99.0, 0.0))[0]


def build_trie(lexicon: dict[str, list[int]], lm: dict | None):
    """(children, words, ahead) per node, node 0 the root: children {token: node}, the words
    spelled up to the node, and the LM look-ahead (the best log10 P(word | <s>) of the words at
    or below the node; 0 without an LM and at the root)."""
    children, words = [{}], [[]]
    for word, spelling in lexicon.items():
        node = 0
        for token in spelling:
            if token not in children[node]:
                children[node][token] = len(children)
                children.append({})
                words.append([])
            node = children[node][token]
        words[node].append(word)
    ahead = [0.0] * len(children)
    for node in reversed(range(1, len(children))):  # children are numbered after their parent
        scores = [bigram_score(lm, START, w) if lm else 0.0 for w in words[node]]
        ahead[node] = max(scores + [ahead[c] for c in children[node].values()])
    return children, words, ahead


def lexicon_beam_search(log_probs: np.ndarray, lexicon: dict[str, list[int]], blank: int = 0,
                        separator: int = 1, beam: int = 16, beam_threshold: float = 25.0,
                        word_score: float = 0.0, lm: dict | None = None,
                        lm_weight: float = 0.0) -> list[str]:
    """The best sequence of ``lexicon`` words for ``log_probs`` [frames, vocab] (natural log).

    ``lm``: a bigram from ``read_arpa`` or None; its log10 scores are multiplied by
    ``lm_weight`` (as flashlight's KenLM wrapper does). ``word_score`` is added per word."""
    children, words, ahead = build_trie(lexicon, lm)

    def lm_score(history: tuple, word: str) -> float:
        return bigram_score(lm, history[-1] if history else START, word) if lm else 0.0

    hyps = {((), 0, separator): 0.0}  # (words, trie node, last token) -> score
    for row in np.asarray(log_probs, dtype=np.float64):
        new: dict = {}

        def add(key, score):
            if score > new.get(key, -math.inf):
                new[key] = score

        for (history, node, last), score in hyps.items():
            for token, child in children[node].items():
                s = score + row[token]
                if children[child] and token != last:
                    add((history, child, token), s + lm_weight * (ahead[child] - ahead[node]))
                for word in words[child]:
                    if node == 0 and token == last:
                        continue  # a one-token word repeated without a blank is one word
                    gain = lm_weight * (lm_score(history, word) - ahead[node]) + word_score
                    add((history + (word,), 0, token), s + gain)
            if node == 0:
                add((history, 0, separator), score + row[separator])
            elif last != blank:
                add((history, node, last), score + row[last])
            add((history, node, blank), score + row[blank])
        cutoff = max(new.values()) - beam_threshold
        best = sorted((k for k, s in new.items() if s >= cutoff), key=new.get, reverse=True)
        hyps = {k: new[k] for k in best[:beam]}
    ends = [k for k in hyps if k[1] == 0] or list(hyps)
    final = {k: hyps[k] + lm_weight * lm_score(k[0], END) for k in ends}
    return list(max(final, key=final.get)[0])
