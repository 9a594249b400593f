"""Scoring: WER and CER with jiwer, written to files like icefall's decode.py.

``score(references, hypotheses)`` is the one scoring rule, for ``asr evaluate`` and for the dev
WER during training alike: both sides are normalized with ``asr.text.normalize_text`` (the
references from the transcripts as written, out-of-vocabulary characters included; the
hypotheses, already normalized text, only lose stray spaces and quotes) and then counted.

``evaluate`` writes into out_dir:
    hyps.tsv       id, reference, hypothesis (normalized text), one utterance per line
    errors.txt     per utterance: word errors, and the alignment of each one with errors
    summary.json   WER, CER, substitutions/deletions/insertions, counts, model (as given),
                   model_path (resolved: what publishing checks metrics against), manifest
    wer.txt        the same summary, one line, human-readable
"""
from __future__ import annotations

import json
from pathlib import Path

from asr.checkpoint import write_json
from asr.manifest import read_manifest
from asr.text import normalize_text


def _counts(refs: list[str], hyps: list[str], unit: str) -> dict:
    """Hits/substitutions/deletions/insertions over all pairs; ``unit`` 'word' or 'char'.
    Empty references are allowed: their hypothesis words count as insertions."""
    import jiwer

    total = {"hits": 0, "substitutions": 0, "deletions": 0, "insertions": 0}
    pairs = [(r, h) for r, h in zip(refs, hyps) if r.strip()]
    for r, h in zip(refs, hyps):
        if not r.strip():
            total["insertions"] += len(h.split()) if unit == "word" else len(h)
    if pairs:
        fn = jiwer.process_words if unit == "word" else jiwer.process_characters
        out = fn([r for r, _ in pairs], [h for _, h in pairs])
        for k in total:
            total[k] += getattr(out, k)
    return total


def error_rates(refs: list[str], hyps: list[str]) -> dict:
    """{"wer", "cer", "words", "chars", word-level "substitutions", "deletions", "insertions"}."""
    w, c = _counts(refs, hyps, "word"), _counts(refs, hyps, "char")
    n_words = w["hits"] + w["substitutions"] + w["deletions"]
    n_chars = c["hits"] + c["substitutions"] + c["deletions"]
    w_err = w["substitutions"] + w["deletions"] + w["insertions"]
    c_err = c["substitutions"] + c["deletions"] + c["insertions"]
    return {
        "wer": w_err / n_words if n_words else float(w_err > 0),
        "cer": c_err / n_chars if n_chars else float(c_err > 0),
        "words": n_words,
        "chars": n_chars,
        "word_errors": w_err,
        "substitutions": w["substitutions"],
        "deletions": w["deletions"],
        "insertions": w["insertions"],
    }


def score(references: list[str], hypotheses: list[str]) -> dict:
    """``error_rates`` of the normalized pairs: ``references`` are transcripts as written (a
    manifest's text), ``hypotheses`` recognized text; both go through ``normalize_text``, the
    normalization of training. Equal lengths required (ValueError otherwise)."""
    refs, hyps = normalized_pairs(references, hypotheses)
    return error_rates(refs, hyps)


def normalized_pairs(references: list[str], hypotheses: list[str]) -> tuple[list[str], list[str]]:
    """(references, hypotheses), each normalized with ``normalize_text``, as ``score`` counts them."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    return [normalize_text(r) for r in references], [normalize_text(h) for h in hypotheses]


def utterance_errors(ref: str, hyp: str) -> tuple[int, str]:
    """(word errors, jiwer alignment text) of one pair."""
    import jiwer

    if not ref.strip():
        return len(hyp.split()), f"REF: \nHYP: {hyp}\n"
    out = jiwer.process_words(ref, hyp)
    errors = out.substitutions + out.deletions + out.insertions
    text = jiwer.visualize_alignment(out, show_measures=False, skip_correct=False) if errors else ""
    return errors, text


def write_results(out_dir, ids, refs, hyps, failures: list[str], info: dict) -> dict:
    """Write hyps.tsv, errors.txt, summary.json and wer.txt; return the summary. ``refs`` are
    transcripts as written and ``hyps`` recognized text: scored by ``score``, and written
    normalized as ``score`` counted them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    refs, hyps = normalized_pairs(refs, hyps)
    rates = error_rates(refs, hyps)
    with open(out_dir / "hyps.tsv", "w", encoding="utf-8") as f:
        f.write("id\treference\thypothesis\n")
        for i, r, h in zip(ids, refs, hyps):
            f.write(f"{i}\t{r}\t{h}\n")
    with open(out_dir / "errors.txt", "w", encoding="utf-8") as f:
        for i, r, h in zip(ids, refs, hyps):
            n, text = utterance_errors(r, h)
            f.write(f"{i}\terrors={n}\twords={len(r.split())}\n")
            if n:
                f.write(text.rstrip("\n") + "\n\n")
    summary = {**rates, "utterances": len(ids), "failed": len(failures), "failures": failures, **info}
    write_json(out_dir / "summary.json", summary)
    line = summary_line(summary)
    (out_dir / "wer.txt").write_text(line + "\n", encoding="utf-8")
    return summary


def summary_line(s: dict) -> str:
    return (
        f"WER {100 * s['wer']:.2f}% ({s['word_errors']}/{s['words']}: {s['substitutions']} sub, "
        f"{s['deletions']} del, {s['insertions']} ins), CER {100 * s['cer']:.2f}%, "
        f"{s['utterances']} utterances" + (f", {s['failed']} failed" if s["failed"] else "")
    )


def evaluate(model, manifest, out_dir, batch_size: int = 32, decoding: dict | None = None) -> dict:
    """Transcribe every utterance of ``manifest`` with ``model`` (a model directory or .tflite)
    and write the results to ``out_dir``. ``decoding``: asr.decoding.DecoderConfig fields over
    the model's own defaults (None: greedy). Unreadable audio is listed under "failures" and not
    scored; summary.json records the decoder."""
    return evaluate_many(model, [manifest], [out_dir], batch_size, decoding)[0]


def evaluate_many(model, manifests, out_dirs, batch_size: int = 32, decoding: dict | None = None) -> list[dict]:
    """``evaluate`` of each manifest into its out_dir, the model and decoder loaded once."""
    from asr.transcription import load_recognizer

    recognizer = load_recognizer(model) if decoding is None else load_recognizer(model, decoding=decoding)
    decoder = getattr(recognizer, "decoder", None)
    summaries = []
    for manifest, out_dir in zip(manifests, out_dirs, strict=True):
        utts = read_manifest(manifest)
        results = recognizer.transcribe_files([u.audio for u in utts], batch_size=batch_size)
        ids, refs, hyps, failures = [], [], [], []
        for utt, res in zip(utts, results):
            if res.error:
                failures.append(f"{utt.id}: {res.error}")
                continue
            ids.append(utt.id)
            refs.append(utt.text)
            hyps.append(res.text)
        info = {"model": str(model), "model_path": str(Path(model).resolve()), "manifest": str(manifest)}
        info["decoder"] = decoder.config.to_dict() if decoder is not None else {"kind": "greedy"}
        summaries.append(write_results(out_dir, ids, refs, hyps, failures, info))
    return summaries


def load_summary(path) -> dict:
    return json.loads(Path(path).read_text())
