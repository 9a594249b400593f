"""Word timestamps and confidence (asr.alignment) on FSDD connected digits, against the truth.

    python benchmarks/timestamps.py --data-dir ../shared/data/fsdd --work WORK_DIR
        [--model models/fsdd.tflite] [--heldout-model M.tflite]
        [--out benchmarks/results/timestamps.json]

``asr.corpora.fsdd.prepare`` writes the manifests into WORK_DIR (unless they are there, with
their ``.words.jsonl``): each connected-digit string is 1-7 recordings of one speaker joined
by 50-300 ms pauses, and where each recording lies in the string is known. The primary truth
of a digit is its recording's first and last sample ("recording"); FSDD recordings keep a
little silence at either end, so the speech inside each recording (energy-trimmed,
``fsdd.speech_region``) is reported too ("speech").

The model's log-probabilities of each string (asr.runtime.TFLiteModel, 16 kHz) are decoded
greedily (argmax per frame: the best path). Hypothesis words are matched to the reference by
jiwer's alignment and only hits (the same word) are timed; substitutions and insertions are
the wrong words of the confidence measurement. A word is "within tolerance" when both its
start and its end are within TOLERANCE of the truth.

Choosing the boundary rule: on the dev strings of the dataset's split, every (start pad, end
pad, blank reach) of the grid is scored (asr.alignment.place, its GAP_SHARE fixed: neighbours
never overlap); the best has the most words within tolerance of the recording truth, ties
broken by the smaller sum of the median start and end errors, then by the smaller pads and
reach. "raw_spans" (no pad, no reach) times a word by its tokens' first and last frames.
Choosing the confidence: the rule of asr.alignment.CONFIDENCE_RULES with the largest dev AUC
of correct against wrong words. The test strings (and the held-out speaker's, with ``--heldout-model``, a model trained without
george) are then measured with what the library ships (asr.alignment's constants), and the
file says whether those equal the dev choice.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOLERANCE = 0.100  # seconds: the acceptance's window on both start and end
ACCEPTANCE = 0.90  # share of timed words within TOLERANCE on the recording truth
PADS = tuple(round(x, 2) for x in np.arange(-0.08, 0.2401, 0.02))  # seconds, 17 values
REACHES = (0.0, 0.04, 0.08, 0.12, 0.16, 0.2, 0.3, 0.5)  # seconds: 17 x 17 x 8 = 2312 rules on dev
RULE_KEYS = ("start_pad", "end_pad", "blank_reach")
TRUTHS = {"recording": ("start", "end"), "speech": ("speech_start", "speech_end")}
SAMPLE_RATE = 16000  # Hz, the model's input
THRESHOLDS = (0.5, 0.8, 0.9, 0.95)  # confidences: how many correct and wrong words fall below each


def ensure_manifests(data_dir: Path, work: Path) -> Path:
    """The manifests folder, prepared into ``work`` unless its word-times files are there."""
    from asr.corpora import fsdd

    if not (work / "heldout" / "test_connected.words.jsonl").is_file():
        fsdd.prepare(data_dir, work)
    return work


def decode_set(model_path: Path, manifest: Path, decoder: str = "model"):
    """(one dict per string: id, reference words, truth, best path int [T], scores [T, V];
    the model). ``decoder``: "greedy" (argmax per frame) or "model" (as the model ships: beam
    search with its lexicon and LM, the path of its best hypothesis)."""
    from asr.audio import load_audio
    from asr.corpora.fsdd import read_word_times
    from asr.manifest import read_manifest
    from asr.runtime import TFLiteModel

    from asr.transcription import TFLiteRecognizer

    model = TFLiteModel(model_path)
    search = TFLiteRecognizer(model_path).set_decoder().decoder.search if decoder == "model" else None
    truth = read_word_times(manifest)
    out = []
    for utt in read_manifest(manifest):
        log_probs = model.log_probs(load_audio(utt.audio, SAMPLE_RATE))
        path = log_probs.argmax(axis=1) if search is None else np.array(search.search(log_probs)[0][2])
        out.append({"id": utt.id, "ref": utt.text.split(), "truth": truth[utt.id], "log_probs": log_probs,
                    "path": path})
    return out, model


def matched(items: list[dict], symbols, blank: int, word_boundary) -> list[dict]:
    """Add each string's word spans and its jiwer alignment: (hyp index, ref index) of hits,
    hyp indices of wrong words (substituted or inserted)."""
    import jiwer

    from asr.alignment import posteriors, word_spans

    for it in items:
        it["spans"] = word_spans(it["path"], symbols, blank, word_boundary)
        it["probs"] = posteriors(it["log_probs"])
        hyp = [s.text for s in it["spans"]]
        it["hits"], it["wrong"], it["inserted"] = [], [], 0
        if not hyp:
            continue
        chunks = jiwer.process_words(" ".join(it["ref"]), " ".join(hyp)).alignments[0]
        for c in chunks:
            if c.type == "equal":
                it["hits"] += list(zip(range(c.hyp_start_idx, c.hyp_end_idx), range(c.ref_start_idx, c.ref_end_idx)))
            elif c.type in ("substitute", "insert"):
                it["wrong"] += list(range(c.hyp_start_idx, c.hyp_end_idx))
                it["inserted"] += (c.hyp_end_idx - c.hyp_start_idx) if c.type == "insert" else 0
    return items


def errors(items: list[dict], start_pad: float, end_pad: float, blank_reach: float, truth: str) -> np.ndarray:
    """Signed (start, end) errors in seconds, hypothesis minus truth, of every hit [hits, 2]."""
    from asr.alignment import place

    keys = TRUTHS[truth]
    rows = []
    for it in items:
        times = place(it["spans"], len(it["path"]), start_pad, end_pad, blank_reach)
        for h, r in it["hits"]:
            ref = it["truth"][r]
            rows.append((times[h][0] - ref[keys[0]], times[h][1] - ref[keys[1]]))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


def summarize(err: np.ndarray) -> dict:
    """Share within TOLERANCE (both ends), median / 90th percentile absolute and mean signed
    errors in ms, from signed errors [hits, 2]."""
    if not len(err):
        return {"timed_words": 0}
    ms = np.abs(err) * 1000
    within = (np.abs(err) <= TOLERANCE + 1e-9).all(axis=1)  # both ends (1e-9: float rounding)
    out = {"timed_words": len(err), "within_tolerance": round(float(np.mean(within)), 4)}
    for i, side in enumerate(("start", "end")):
        out[f"{side}_median_ms"] = round(float(np.median(ms[:, i])), 1)
        out[f"{side}_p90_ms"] = round(float(np.percentile(ms[:, i], 90)), 1)
        out[f"{side}_bias_ms"] = round(float(np.mean(err[:, i]) * 1000), 1)  # + : later than the truth
    return out


def search(items: list[dict]) -> dict:
    """Every rule of the grid scored on ``items`` against both truths: {"recording": [(rule,
    summary), ...] best first, "speech": the same}. Best: most words within tolerance, then
    the smaller sum of median errors, then the smaller pads and reach."""
    def key(scored):
        rule, s = scored
        return -s["within_tolerance"], s["start_median_ms"] + s["end_median_ms"], abs(rule[0]) + abs(rule[1]) + rule[2]

    grid = list(itertools.product(PADS, PADS, REACHES))
    return {truth: sorted(((r, summarize(errors(items, *r, truth))) for r in grid), key=key) for truth in TRUTHS}


def auc(pos: list[float], neg: list[float]) -> float | None:
    """P(a correct word's confidence > a wrong word's), ties counting half (Mann-Whitney)."""
    if not pos or not neg:
        return None
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return round(float(np.mean((p > n) + 0.5 * (p == n))), 4)


def confidence_stats(items: list[dict], rule: str) -> dict:
    """Mean and AUC of the confidence of correct (hit) against wrong (substituted or inserted) words."""
    from asr.alignment import word_confidence

    good, bad = [], []
    for it in items:
        conf = [word_confidence(s, it["probs"], rule) for s in it["spans"]]
        good += [conf[h] for h, _ in it["hits"]]
        bad += [conf[h] for h in it["wrong"]]
    mean = lambda xs: round(float(np.mean(xs)), 4) if xs else None  # noqa: E731
    return {"rule": rule, "correct_words": len(good), "wrong_words": len(bad), "mean_correct": mean(good),
            "mean_wrong": mean(bad), "auc": auc(good, bad),
            "below": {str(t): {"correct": sum(c < t for c in good), "wrong": sum(c < t for c in bad)}
                      for t in THRESHOLDS}}


def set_report(items: list[dict], rule: tuple, speech_rule: tuple, confidence_rule: str) -> dict:
    """Counts, WER, boundary errors against both truths (with ``rule``, with no pad and no reach,
    and on the speech truth with ``speech_rule``, dev's best for it), confidence."""
    from asr.alignment import CONFIDENCE_RULES

    ref_words = sum(len(it["ref"]) for it in items)
    hits = sum(len(it["hits"]) for it in items)
    hyp_words = sum(len(it["spans"]) for it in items)
    report = {
        "utterances": len(items),
        "ref_words": ref_words,
        "hyp_words": hyp_words,
        "hits": hits,
        "same_word_count_utterances": sum(len(it["spans"]) == len(it["ref"]) for it in items),
        "wer": round((ref_words - hits + sum(it["inserted"] for it in items)) / ref_words, 4),  # (S + D + I) / N
    }
    for truth in TRUTHS:
        chosen = summarize(errors(items, *rule, truth))
        chosen["within_tolerance_of_ref_words"] = round(chosen["within_tolerance"] * hits / ref_words, 4)
        report[truth] = {"rule": chosen, "raw_spans": summarize(errors(items, 0.0, 0.0, 0.0, truth))}
    report["speech"]["speech_truth_best_rule"] = summarize(errors(items, *speech_rule, "speech"))
    report["confidence"] = confidence_stats(items, confidence_rule)
    report["confidence_auc_of_each_rule"] = {r: confidence_stats(items, r)["auc"] for r in CONFIDENCE_RULES}
    return report


def named(rule: tuple, summary: dict | None = None) -> dict:
    return {**dict(zip(RULE_KEYS, rule)), **(summary or {})}


def report(decoded: dict, model: str, heldout_model: str | None, decoder: str = "model") -> dict:
    """The results file: the dev searches, then every set measured with the shipped rule."""
    import asr.alignment as alignment

    dev = decoded["dev"]
    ranked = search(dev)
    grid = ranked["recording"]
    shipped = (alignment.START_PAD, alignment.END_PAD, alignment.BLANK_REACH)
    conf_dev = {rule: confidence_stats(dev, rule) for rule in alignment.CONFIDENCE_RULES}
    best_conf = max(alignment.CONFIDENCE_RULES, key=lambda r: conf_dev[r]["auc"] or 0.0)
    result = {
        "model": model,
        "heldout_model": heldout_model,
        "decoder": {"greedy": "greedy (argmax per frame)",
                    "model": "as the model ships (beam search, its lexicon and LM): its best path"}[decoder],
        "frame_seconds": alignment.FRAME_SECONDS,
        "tolerance_ms": TOLERANCE * 1000,
        "acceptance": f"test: share of timed words with start and end within {TOLERANCE * 1000:.0f} ms "
                      f"of the recording truth >= {ACCEPTANCE}",
        "truths": {"recording": "first and last sample of the digit's recording in the string (primary)",
                   "speech": "the speech inside the recording: its 10 ms frames within 30 dB of the loudest "
                             "(fsdd.speech_region)"},
        "matching": "jiwer alignment of hypothesis to reference words; only hits are timed",
        "rule_search": {
            "on": "dev",
            "grid": {"pads_s": list(PADS), "blank_reaches_s": list(REACHES), "rules": len(grid),
                     "gap_share": alignment.GAP_SHARE},
            "best": named(grid[0][0]),
            "shipped": named(shipped),
            "shipped_is_dev_best": tuple(shipped) == tuple(grid[0][0]),
            "top": [named(*rs) for rs in grid[:8]],
            "best_per_reach": [named(*next(rs for rs in grid if rs[0][2] == x)) for x in REACHES],
            "speech_truth_best": named(*ranked["speech"][0]),
        },
        "confidence_search": {"on": "dev", "rules": conf_dev, "best": best_conf, "shipped": alignment.CONFIDENCE_RULE},
        "sets": {name: set_report(items, shipped, ranked["speech"][0][0], alignment.CONFIDENCE_RULE)
                 for name, items in decoded.items()},
    }
    result["acceptance_met"] = result["sets"]["test"]["recording"]["rule"]["within_tolerance"] >= ACCEPTANCE
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="FSDD folder (with recordings/)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the prepared manifests and audio")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "fsdd.tflite")
    parser.add_argument("--heldout-model", type=Path, help="a .tflite trained without the held-out speaker")
    parser.add_argument("--decoder", choices=["model", "greedy"], default="model",
                        help="model: as the model ships (beam search with its lexicon and LM); greedy: argmax")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "timestamps.json")
    args = parser.parse_args(argv)

    work = ensure_manifests(args.data_dir, args.work)
    sets = {"dev": (args.model, work / "split" / "dev_connected.jsonl"),
            "test": (args.model, work / "split" / "test_connected.jsonl")}
    if args.heldout_model:
        sets["heldout_test"] = (args.heldout_model, work / "heldout" / "test_connected.jsonl")
    decoded = {}
    for name, (model_path, manifest) in sets.items():
        items, model = decode_set(model_path, manifest, args.decoder)
        decoded[name] = matched(items, model.symbols, model.blank, model.word_boundary)
        print(f"{name}: {len(items)} strings decoded", file=sys.stderr)
    where = args.model.resolve()
    result = report(decoded, str(where.relative_to(ROOT)) if where.is_relative_to(ROOT) else where.name,
                    args.heldout_model.name if args.heldout_model else None, args.decoder)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    rules = result["rule_search"]
    test = result["sets"]["test"]
    print(json.dumps({"dev_best": rules["best"], "shipped_is_dev_best": rules["shipped_is_dev_best"],
                      "test_within": test["recording"]["rule"]["within_tolerance"],
                      "confidence": test["confidence"], "acceptance_met": result["acceptance_met"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
