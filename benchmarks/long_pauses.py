"""Per-utterance against global normalization on longer recordings with pauses: the ablation's
``base`` (per utterance) and ``global`` models (benchmarks/augmentation.py) on 30 s of digits.

    python benchmarks/long_pauses.py --fsdd ../shared/data/fsdd [--work benchmarks/work/augmentation]
        [--out benchmarks/results/long_pauses.json]

Audio: test recordings (0-4) of the four speakers the models trained on (george left out),
joined by 0.3-1.5 s pauses of zeros, plus Gaussian noise of standard deviation 3e-4 (faint) or
3e-3 (louder) over the whole file, seeds 0 and 1; about 30 s each. Each variant's model is
exported as the shipped file is (dynamic int8, asr export) and decodes the whole file in one
pass, greedily (asr.runtime.TFLiteModel.transcribe). WER against the digits spoken.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("base", "global")  # per-utterance and global normalization (benchmarks/augmentation.py)
SECONDS = 30
SEEDS = (0, 1)
NOISE = (3e-4, 3e-3)  # standard deviation of the noise over the file


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fsdd", type=Path, required=True, help="FSDD copy holding recordings/")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "augmentation")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "long_pauses.json")
    args = parser.parse_args()
    from asr.corpora.fsdd import digits_with_pauses
    from asr.evaluation import error_rates
    from asr.report import machine
    from asr.runtime import TFLiteModel
    from export.convert import export_model

    recordings = args.fsdd / "recordings"
    result = {"machine": machine(), "seconds": SECONDS, "wer": {}}
    for v in VARIANTS:
        tflite = args.work / v / "model.tflite"
        if not tflite.exists():
            export_model(args.work / v / "model", tflite, "dynamic")
        model = TFLiteModel(tflite, num_threads=1)
        for seed in SEEDS:
            for noise in NOISE:
                pcm, words = digits_with_pauses(recordings, SECONDS, seed, noise)
                wer = error_rates([words], [model.transcribe(pcm)])["wer"]
                result["wer"][f"{v} seed {seed} noise {noise}"] = round(wer, 4)
                print(f"{v}, seed {seed}, noise {noise}: WER {100 * wer:.1f}%", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
