"""Exported-model benchmark: size, accuracy, speed and start-up of every quantization mode.

    python benchmarks/ondevice.py --data-dir ../shared/data/fsdd [--model models/fsdd] [--out benchmarks/results/ondevice.json]

Exports the model in all four modes (full int8 calibrated on 200 utterances of the FSDD
train split), verifies each against the Keras model on the isolated-digit and connected-digit
test sets (asr export --verify), times ``asr transcribe --model X.tflite one.wav`` from process
start to printed text (median of 5), and checks the targets:
    dynamic-int8 file <= 26% of float32; its WER <= Keras + 0.3 points on both test sets;
    its real-time factor with 1 thread <= 0.01; the start-up <= 1.5 s.
Prints the tables and writes JSON (and the Markdown tables beside it).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STARTUP_RUNS = 5
TARGETS = {"size_ratio": 0.26, "wer_points": 0.3, "rtf_1_thread": 0.01, "startup_seconds": 1.5}


def startup_seconds(tflite: Path, wav: Path) -> list[float]:
    runs = []
    for _ in range(STARTUP_RUNS):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "asr", "transcribe", "--model", str(tflite), str(wav)],
                             capture_output=True, text=True, check=True)
        runs.append(time.perf_counter() - t0)
        assert out.stdout.strip(), "nothing printed"
    return runs


def checks(report: dict, startup: float) -> dict:
    sizes = report["variants"]
    out = {"size_ratio": sizes["dynamic"]["bytes"] / sizes["float32"]["bytes"], "startup_seconds": startup}
    for name, s in report["sets"].items():
        r = s["results"]
        out[f"wer_points_{name}"] = 100 * (r["dynamic"]["wer"] - r["keras"]["wer"])
        out[f"rtf_1_thread_{name}"] = r["dynamic"]["rtf_1_thread"]
    passed = {k: v <= TARGETS[next(t for t in TARGETS if k.startswith(t))] for k, v in out.items()}
    return {"values": out, "targets": TARGETS, "passed": passed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="FSDD copy holding recordings/")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "fsdd")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ondevice.json")
    args = parser.parse_args()
    from asr.corpora import fsdd
    from asr.report import machine
    from export.convert import QUANTIZATIONS, export_model
    from export.verify import markdown, verify

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        fsdd.prepare(args.data_dir, work / "manifests")
        split = work / "manifests" / "split"
        calibration = split / "train.jsonl"
        variants = {q: export_model(args.model, work / f"{q}.tflite", q, calibration if q == "int8" else None)
                    for q in QUANTIZATIONS}
        report = verify(args.model, variants, {"isolated": split / "test.jsonl", "connected": split / "test_connected.jsonl"})
        wav = next(iter(sorted(Path(fsdd.find_recordings(args.data_dir)).glob("*_0.wav"))))
        runs = startup_seconds(variants["dynamic"], wav)
    report["startup_seconds_runs"] = [round(r, 3) for r in runs]
    report["checks"] = checks(report, statistics.median(runs))
    report["machine"] = machine()
    tables = markdown(report)
    print(tables)
    print(json.dumps(report["checks"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(tables + "\n")
    return 0 if all(report["checks"]["passed"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
