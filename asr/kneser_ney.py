"""Interpolated modified Kneser-Ney estimation in memory (Chen & Goodman 1998, as KenLM's lmplz
does it), written as ARPA text; asr.lm.build_lm uses it when lmplz is not installed.

Counts: each sentence is ``<s> w1 ... wk </s>``. The highest order keeps raw counts; a lower-order
n-gram's adjusted count is the number of distinct words seen before it (its continuation count),
except for n-grams starting with ``<s>``, which keep their raw counts (nothing precedes ``<s>``).
``<unk>`` and ``<s>`` are unigrams of adjusted count 0.

Discounts: order n has D1, D2, D3+ from the count-of-counts t1..t4 of its adjusted counts:
Y = t1 / (t1 + 2 t2), Dk = k - (k+1) Y t(k+1) / tk. Small corpora can lack a count (tk = 0) or
give a discount outside 0..k; that order then uses FALLBACK_DISCOUNTS (0.5, 1, 1.5: lmplz's
``--discount_fallback`` values). lmplz has one quirk this module does not copy: for each lower
order, the n-gram last in its sort order enters the count-of-counts with its raw count instead
of its adjusted one, which on tiny corpora can move that order's discounts a little.

Probabilities: p(w | h) = (a(hw) - D(a(hw))) / sum_x a(hx) + gamma(h) p(w | h'), where h' is h
without its first word and gamma(h) = (D1 N1(h) + D2 N2(h) + D3+ N3+(h)) / sum_x a(hx), N_k(h)
counting the words after h of adjusted count k (3 or more for N3+). Unigrams interpolate with the
uniform distribution over the vocabulary without ``<s>`` (``<unk>`` included, which gets
gamma / V). The ARPA probability of hw is this interpolated p and the backoff of h is gamma(h),
so with ARPA backoff semantics each context's distribution over the vocabulary (``<unk>`` and
``</s>`` included, ``<s>`` excluded) sums to 1. ``<s>`` gets the probability -99 (never
predicted; lmplz writes 0).

Memory: all n-grams are held as tuples of word ids in Counters; a million sentences of nine
words (4.6 million n-grams, trigram model) take about 1 GiB and 40 s.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, TextIO

SPECIAL_WORDS = ("<unk>", "<s>", "</s>")  # word ids 0, 1, 2 (lmplz numbers them so too)
UNK, BOS, EOS = range(3)
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # D1, D2, D3+ where the closed-form estimate fails (lmplz's default)
NEVER = -99.0  # log10 probability written for <s> (never predicted) and for a zero probability


def adjusted_counts(sentences: Iterable[list[str]], order: int) -> tuple[list[Counter], dict[str, int]]:
    """Adjusted counts per order (index n-1: n-grams as tuples of word ids -> count) and the
    word ids (word -> id, ``SPECIAL_WORDS`` first, then in order of first appearance)."""
    ids = {w: i for i, w in enumerate(SPECIAL_WORDS)}
    top: Counter = Counter()  # highest-order n-grams: raw counts
    starts = [Counter() for _ in range(order)]  # starts[n-1]: n-grams from <s>, n < order: raw counts
    for words in sentences:
        seq = (BOS, *(ids.setdefault(w, len(ids)) for w in words), EOS)
        for n in range(2, min(order - 1, len(seq)) + 1):
            starts[n - 1][seq[:n]] += 1
        top.update(zip(*(seq[i:] for i in range(order))))
    counts = [Counter() for _ in range(order)]
    counts[-1] = top
    for n in range(order - 1, 0, -1):  # continuation counts: distinct words before each n-gram
        higher = counts[n]
        counts[n - 1] = Counter(g[1:] for g in higher)  # no n-gram from <s> is a suffix
        counts[n - 1].update(starts[n - 1])
    counts[0] = Counter({(UNK,): 0, (BOS,): 0, **dict(sorted(counts[0].items()))})  # specials first; 0: never seen
    return counts, ids


def discounts(counts: Counter) -> tuple[float, float, float]:
    """(D1, D2, D3+) of one order from the count-of-counts of its adjusted counts (Chen &
    Goodman's eq. 26), or FALLBACK_DISCOUNTS when a count-of-count is zero or a discount falls
    outside 0..k."""
    t = Counter(c for c in counts.values() if 0 < c <= 4)
    if not all(t[k] for k in (1, 2, 3)):
        return FALLBACK_DISCOUNTS
    y = t[1] / (t[1] + 2 * t[2])
    d = tuple(k - (k + 1) * y * t[k + 1] / t[k] for k in (1, 2, 3))
    return d if all(0 <= d[k - 1] <= k for k in (1, 2, 3)) else FALLBACK_DISCOUNTS


def _context_gammas(counts: Counter, d: tuple[float, float, float]) -> dict[tuple, tuple[float, float]]:
    """context -> (sum of its extensions' adjusted counts, gamma)."""
    sums: dict[tuple, list] = {}
    for g, c in counts.items():
        s = sums.get(g[:-1])
        if s is None:
            s = sums[g[:-1]] = [0, 0.0]
        s[0] += c
        if c:
            s[1] += d[min(c, 3) - 1]
    return {h: (total, mass / total if total else 0.0) for h, (total, mass) in sums.items()}


def _log10(p: float) -> float:
    return math.log10(p) if p > 0 else NEVER


def write_arpa(counts: list[Counter], words: list[str], f: TextIO) -> list[int]:
    """Write the model of ``adjusted_counts``' counts (``words``: id -> word) as ARPA text to
    ``f``; return the n-gram counts per order."""
    order = len(counts)
    ngrams = [len(c) for c in counts]
    uniform = 1.0 / (ngrams[0] - 1)  # the vocabulary without <s>
    ds = [discounts(c) for c in counts]
    f.write("\\data\\\n" + "".join(f"ngram {n}={k}\n" for n, k in enumerate(ngrams, 1)) + "\n")
    gammas = _context_gammas(counts[0], ds[0])
    lower: dict[tuple, float] = {}
    for n in range(1, order + 1):
        higher = _context_gammas(counts[n], ds[n]) if n < order else {}
        d = ds[n - 1]
        probs: dict[tuple, float] = {}
        f.write(f"\\{n}-grams:\n")
        for g, c in counts[n - 1].items():
            total, gamma = gammas[g[:-1]]
            p = (c - d[min(c, 3) - 1] if c else 0.0) / total if total else 0.0
            p += gamma * (lower[g[1:]] if n > 1 else uniform)
            if n == 1 and g[0] == BOS:
                p = 0.0  # never predicted
            if n < order:
                probs[g] = p
                backoff = higher.get(g)
                tail = f"\t{_log10(backoff[1]) if backoff else 0.0:.7g}"
            else:
                tail = ""
            f.write(f"{min(_log10(p), 0.0):.7g}\t{' '.join(words[i] for i in g)}{tail}\n")
        f.write("\n")
        lower, gammas = probs, higher
    f.write("\\end\\\n")
    return ngrams
