"""Per-utterance vs global (training-set) feature normalization, measured on a speaker the
model has never heard: the FSDD held-out-speaker split.

    python benchmarks/normalization.py --data-dir ../shared/data/fsdd [--epochs 12] [--out benchmarks/results/normalization.json]

Both variants use the FSDD recipe's config (models/configs/fsdd.yaml) with only
``features.normalization`` changed and ``training.epochs`` set to --epochs; they train side by
side (one thread each) and are evaluated on the held-out speaker's isolated digits and
connected digits, (the split where normalization matters most).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "models" / "configs" / "fsdd.yaml"
VARIANTS = ("utterance", "global")
# the recipe's training manifests (recipes/fsdd/run.sh lists the same, isolated digits twice)
TRAIN_FILES = ("train.jsonl", "train.jsonl", "train_connected.jsonl", "train_nonspeech.jsonl")


TTS_UTTERANCES = 40
TTS_VOICES = ("en-us", "en", "en-us+f3", "en+m3", "en-us+f2")


def espeak_manifest(out: Path, seed: int = 0) -> Path | None:
    """TTS_UTTERANCES strings of 1-4 digit words spoken by espeak-ng; None without espeak-ng."""
    import random
    import shutil

    from asr.manifest import Utterance, write_manifest
    from asr.text import DIGIT_WORDS

    if shutil.which("espeak-ng") is None:
        return None
    out.mkdir(parents=True, exist_ok=True)
    rng, utts = random.Random(seed), []
    for i in range(TTS_UTTERANCES):
        words = " ".join(rng.choice(DIGIT_WORDS) for _ in range(rng.randint(1, 4)))
        voice, wav = TTS_VOICES[i % len(TTS_VOICES)], out / f"tts_{i:02d}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(rng.randint(120, 170)), "-w", str(wav), words], check=True)
        utts.append(Utterance(f"tts_{i:02d}", str(wav), 1.0, words, voice))
    write_manifest(out / "tts.jsonl", utts)
    return out / "tts.jsonl"


def train_both(manifests: Path, work: Path, epochs: int | None) -> dict[str, Path]:
    m = manifests
    procs = {}
    for norm in VARIANTS:
        cmd = [sys.executable, "-m", "asr", "train", "--config", str(CONFIG), "--threads", "1",
               "--exp", str(work / norm), "--feature-cache", str(work / "cache"),
               "--train", *[str(m / f) for f in TRAIN_FILES], "--dev", str(m / "dev.jsonl"), str(m / "dev_connected.jsonl"),
               "--set", f"features.normalization={norm}", *([f"training.epochs={epochs}"] if epochs else [])]
        log = open(work / f"{norm}.log", "w")
        procs[norm] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
    for norm, (proc, log) in procs.items():
        if proc.wait() != 0:
            raise RuntimeError(f"training with {norm} normalization failed: see {work / (norm + '.log')}")
        log.close()
    return {norm: work / norm / "model" for norm in VARIANTS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="FSDD copy holding recordings/")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe config's")
    parser.add_argument("--split", choices=["split", "heldout"], default="split")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "normalization.json")
    args = parser.parse_args()
    from asr.corpora import fsdd
    from asr.evaluation import evaluate
    from asr.report import machine

    result = {"split": args.split, "epochs": args.epochs or "config", "machine": machine(), "results": {}}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        summary = fsdd.prepare(args.data_dir, work / "manifests")
        result["heldout_speaker"] = summary["heldout_speaker"]
        models = train_both(work / "manifests" / args.split, work, args.epochs)
        tests = {
            "isolated": work / "manifests" / args.split / "test.jsonl",
            "connected": work / "manifests" / args.split / "test_connected.jsonl",
        }
        tts = espeak_manifest(work / "tts")
        if tts is not None:
            tests["espeak_ng"] = tts
        for norm, model in models.items():
            result["results"][norm] = {
                name: {k: evaluate(model, m, work / "eval" / norm / name)[k] for k in ("wer", "cer", "words")}
                for name, m in tests.items()
            }
    print("| normalization | " + " | ".join(f"{t} WER" for t in result["results"]["utterance"]) + " |")
    print("|---|" + "---|" * len(result["results"]["utterance"]))
    for norm, rows in result["results"].items():
        print(f"| {norm} | " + " | ".join(f"{100 * r['wer']:.2f}%" for r in rows.values()) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
