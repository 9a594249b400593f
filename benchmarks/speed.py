"""Speed of training and transcription on this machine, printed and written as JSON.

    python benchmarks/speed.py --data-dir ../shared/data/fsdd [--model models/fsdd] [--out benchmarks/results/speed.json]

Measures, with the FSDD recipe's config (models/configs/fsdd.yaml):
- training: audio seconds per wall second and epoch time, from epoch 2 of a fresh run on the
  dataset's train split (epoch 1 includes graph tracing), all CPU threads;
- transcription, for the shipped Keras model (models/fsdd) and the shipped .tflite
  (models/fsdd.tflite, what ``asr transcribe`` uses by default): real-time factor of
  ``transcribe_files`` on the FSDD test split (reading, features, network and decoding), and the
  start-up time of the ``asr transcribe`` command: process start to printed text for one file,
  median of 3.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "models" / "configs" / "fsdd.yaml"
STARTUP_RUNS = 3


def bench_training(data_dir: Path, work: Path) -> dict:
    from asr.config import load_config
    from asr.corpora import fsdd
    from asr.training import train

    fsdd.prepare(data_dir, work / "manifests")
    m = work / "manifests" / "split"
    config = load_config(CONFIG)
    train(config, [m / "train.jsonl", m / "train_connected.jsonl", m / "train_nonspeech.jsonl"],
          [m / "dev.jsonl"], work / "exp", max_epochs=2)
    epoch = [json.loads(x) for x in (work / "exp" / "train.log").read_text().splitlines()][-1]
    return {
        "train_audio_seconds_per_epoch": epoch["train_audio_seconds"],
        "epoch_train_seconds": epoch["train_seconds"],
        "epoch_seconds_with_dev_eval": epoch["epoch_seconds"],
        "train_audio_seconds_per_second": round(epoch["train_audio_seconds"] / epoch["train_seconds"], 1),
    }


def bench_transcription(data_dir: Path, model: Path, threads: int | None = None) -> dict:
    from asr.corpora.fsdd import TEST_INDICES, scan
    from asr.transcription import load_recognizer

    recs, _ = scan(data_dir)
    paths = [str(r.path) for r in recs if r.index in TEST_INDICES]
    recognizer = load_recognizer(model, num_threads=threads)
    recognizer.transcribe_files(paths[:8])  # warm-up: tracing and librosa's first call
    start = time.perf_counter()
    results = recognizer.transcribe_files(paths)
    seconds = time.perf_counter() - start
    audio = sum(r.duration for r in results)
    startup = []
    for _ in range(STARTUP_RUNS):
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "asr", "transcribe", "--model", str(model), paths[0]]
        out = subprocess.run(cmd + (["--threads", str(threads)] if threads else []), capture_output=True, text=True, check=True)
        startup.append(time.perf_counter() - t0)
        assert out.stdout.strip(), "asr transcribe printed nothing"
    return {
        "files": len(paths),
        "audio_seconds": round(audio, 2),
        "wall_seconds": round(seconds, 3),
        "real_time_factor": round(seconds / audio, 4),
        "cli_startup_seconds_median": round(statistics.median(startup), 2),
        "cli_startup_seconds_runs": [round(s, 2) for s in startup],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="FSDD copy holding recordings/")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "fsdd", help="Keras model directory")
    parser.add_argument("--tflite", type=Path, default=ROOT / "models" / "fsdd.tflite", help="exported model")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speed.json")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    from asr.report import machine

    result = {"machine": machine(), "tensorflow_threads": "all (%d cores)" % os.cpu_count()}
    result["transcription_keras"] = bench_transcription(args.data_dir, args.model)
    if args.tflite.is_file():
        result["transcription_tflite_1_thread"] = bench_transcription(args.data_dir, args.tflite, threads=1)
    if not args.skip_training:
        with tempfile.TemporaryDirectory() as work:
            result["training"] = bench_training(args.data_dir, Path(work))
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
