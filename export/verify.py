"""Verification of exported models against the Keras model they came from.

For each manifest and each variant (the Keras model, then every .tflite): file size (raw and
gzip), WER and CER, frame-argmax agreement with Keras, and real-time factor with 1 thread and
with all threads (the .tflite timings include the in-graph frontend; audio is read first and
not timed). Written as JSON and as a Markdown table.
"""
from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import numpy as np

from asr.audio import load_audio
from asr.evaluation import error_rates
from asr.manifest import read_manifest
from asr.text import normalize_text


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _gzip_size(path: Path) -> int:
    if path.is_dir():
        return sum(len(gzip.compress(p.read_bytes(), 9)) for p in path.rglob("*") if p.is_file())
    return len(gzip.compress(path.read_bytes(), 9))


def _load(manifest) -> tuple[list[str], list[np.ndarray]]:
    utts = read_manifest(manifest, check_audio=True)
    return [normalize_text(u.text) for u in utts], [load_audio(u.audio) for u in utts]


def _keras(model_dir, audios):
    """(log-probs per utterance, texts, seconds) with the Keras model, all threads, batched."""
    from asr.transcription import Recognizer

    rec = Recognizer(model_dir)
    rec.transcribe_audio(audios[:4])  # trace once before timing
    start = time.perf_counter()
    texts = rec.transcribe_audio(audios, batch_size=32)
    seconds = time.perf_counter() - start
    scores = []
    for i in range(0, len(audios), 32):
        scores += rec.log_probs([rec.features(a) for a in audios[i : i + 32]])
    return scores, texts, seconds


def _tflite(path, audios, threads: int):
    from asr.runtime import TFLiteModel

    model = TFLiteModel(path, num_threads=threads)
    model.log_probs(audios[0])  # first invoke allocates
    start = time.perf_counter()
    scores = [model.log_probs(a) for a in audios]
    seconds = time.perf_counter() - start
    return scores, [model.decode(s) for s in scores], seconds


def verify(model_dir, tflites: dict[str, Path], manifests: dict[str, Path]) -> dict:
    """Report for ``model_dir`` and each named .tflite over each named manifest."""
    model_dir = Path(model_dir)
    cores = os.cpu_count() or 1
    report = {"threads_all": cores, "variants": {}, "sets": {}}
    report["variants"]["keras"] = {"bytes": _dir_size(model_dir), "gzip_bytes": _gzip_size(model_dir)}
    for name, path in tflites.items():
        report["variants"][name] = {"bytes": Path(path).stat().st_size, "gzip_bytes": _gzip_size(Path(path))}
    for set_name, manifest in manifests.items():
        refs, audios = _load(manifest)
        audio_seconds = sum(len(a) for a in audios) / 16000
        k_scores, k_texts, k_sec = _keras(model_dir, audios)
        rows = {"keras": {**error_rates(refs, k_texts), "rtf_all_threads": k_sec / audio_seconds, "argmax_agreement": 1.0}}
        for name, path in tflites.items():
            scores, texts, sec_all = _tflite(path, audios, cores)
            _, _, sec_one = _tflite(path, audios, 1)
            agree = np.mean(np.concatenate([s.argmax(-1) == k.argmax(-1) for s, k in zip(scores, k_scores)]))
            same = sum(t == k for t, k in zip(texts, k_texts))
            rows[name] = {
                **error_rates(refs, texts),
                "rtf_1_thread": sec_one / audio_seconds,
                "rtf_all_threads": sec_all / audio_seconds,
                "argmax_agreement": float(agree),
                "transcripts_equal_to_keras": f"{same}/{len(texts)}",
            }
        report["sets"][set_name] = {"utterances": len(refs), "audio_seconds": round(audio_seconds, 2), "results": rows}
    return report


def markdown(report: dict) -> str:
    """The report as Markdown tables, one per manifest."""
    lines = []
    for set_name, s in report["sets"].items():
        lines += [
            f"**{set_name}** ({s['utterances']} utterances, {s['audio_seconds']} s of audio)",
            "",
            "| variant | size | gzip | WER | CER | argmax = Keras | same text | RTF 1 thread | RTF all threads |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in s["results"].items():
            v = report["variants"][name]
            one = f"{r['rtf_1_thread']:.4f}" if "rtf_1_thread" in r else "-"
            lines.append(
                f"| {name} | {v['bytes'] / 1e6:.2f} MB | {v['gzip_bytes'] / 1e6:.2f} MB | {100 * r['wer']:.2f}% | "
                f"{100 * r['cer']:.2f}% | {100 * r['argmax_agreement']:.2f}% | {r.get('transcripts_equal_to_keras', '-')} | "
                f"{one} | {r['rtf_all_threads']:.4f} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_report(report: dict, path) -> tuple[Path, Path]:
    """Write PATH.json and PATH.md (PATH keeps its own dots: x.verify -> x.verify.json)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    js, md = path.with_name(path.name + ".json"), path.with_name(path.name + ".md")
    js.write_text(json.dumps(report, indent=2) + "\n")
    md.write_text(markdown(report) + "\n")
    return js, md
