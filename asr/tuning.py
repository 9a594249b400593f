"""Choosing the LM weight and word score on a dev set: ``asr tune``.

The acoustic model runs once over the dev manifests (log-probabilities [frames, vocab] per
utterance, kept in memory: 29 float32 per 40 ms frame for characters, 10.4 MB per hour of
audio); then every (lm_weight, word_score) pair of the grid decodes them with beam search and
is scored with asr.evaluation.score. The best pair (lowest WER; ties: lower CER, then the
smaller LM weight, then the word score nearest 0) is written as a decoder config (JSON of
asr.decoding.DecoderConfig fields) that ``asr evaluate --decoder-config`` and ``asr transcribe --decoder-config`` read, and every point
goes to ``tuning.json`` beside it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from tqdm import tqdm

from asr.evaluation import score
from asr.manifest import read_manifest
from asr.transcription import load_recognizer


def dev_log_probs(recognizer, manifests, batch_size: int = 32) -> tuple[list, list[str]]:
    """(log-probabilities [frames, vocab] per readable utterance, their transcripts); as asr
    evaluate scores, unreadable audio is left out."""
    utts = [u for m in manifests for u in read_manifest(m)]
    log_probs, refs = [], []
    scored = recognizer.files_log_probs([u.audio for u in utts], batch_size)
    for utt, (_, lp) in tqdm(zip(utts, scored), total=len(utts), desc="acoustic model", unit="utt",
                             disable=None, leave=False):
        if lp is not None:
            log_probs.append(lp)
            refs.append(utt.text)
    return log_probs, refs


def tune(model, manifests, out, lexicon=None, lm=None, lm_weights=(0.0, 0.5, 1.0, 1.5, 2.0),
         word_scores=(-1.0, 0.0, 1.0), beam: int | None = None, batch_size: int = 32) -> dict:
    """Grid search; writes ``out`` (the best decoder config) and ``tuning.json`` beside it;
    returns the best point {"lm_weight", "word_score", "wer", "cer"}."""
    recognizer = load_recognizer(model)
    log_probs, refs = dev_log_probs(recognizer, manifests, batch_size)
    if not refs:
        raise ValueError(f"no readable utterance in {', '.join(map(str, manifests))}")
    base = {"kind": "beam", "nbest": 1, "hotwords": [],
            **{k: v for k, v in {"lexicon": lexicon, "lm": lm, "beam": beam}.items() if v is not None}}
    points = []
    grid = [(w, s) for w in lm_weights for s in word_scores]
    for w, s in tqdm(grid, desc="decoding grid", disable=None, leave=False):
        decoder = recognizer.set_decoder(**base, lm_weight=w, word_score=s).decoder
        hyps = [decoder.decode(lp)[0].text for lp in log_probs]
        rates = score(refs, hyps)
        points.append({"lm_weight": w, "word_score": s, "wer": rates["wer"], "cer": rates["cer"]})
    best = min(points, key=lambda p: (p["wer"], p["cer"], p["lm_weight"], abs(p["word_score"])))
    config = recognizer.set_decoder(**base, lm_weight=best["lm_weight"], word_score=best["word_score"]).decoder.config
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_json(out, config.to_dict())
    _write_json(out.parent / "tuning.json", {"model": str(model), "manifests": [str(m) for m in manifests],
                                            "utterances": len(refs), "best": best, "grid": points})
    return best


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
