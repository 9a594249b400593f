"""Hotword boosting on real speech of many speakers: what a boost recovers and what it inserts.

    python benchmarks/hotwords.py --speech-commands ../shared/data/speech-commands
        [--model models/fsdd.tflite] [--boost 5] [--out benchmarks/results/hotwords.json]

Over the Speech Commands digit clips (``<digit>/*.wav``), decoded by the lexicon search over the
ten digit words (no LM): "recovered" counts the clips the plain search gets wrong that boosting
their own digit gets right; "inserted" counts, over the clips of the other digits whose plain
result has no "four", those where boosting "four" puts it in.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speech-commands", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "fsdd.tflite")
    parser.add_argument("--boost", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "hotwords.json")
    args = parser.parse_args()
    from asr.audio import load_audio
    from asr.decoding import Decoder, DecoderConfig
    from asr.lexicon import write_lexicon
    from asr.report import machine
    from asr.runtime import TFLiteModel
    from asr.text import DIGIT_WORDS, Vocabulary

    model = TFLiteModel(args.model, num_threads=1)
    chars = Vocabulary(chars="".join(s for i, s in enumerate(model.symbols) if i != model.blank), blank=model.blank)
    with tempfile.TemporaryDirectory() as tmp:
        lexicon = str(write_lexicon(DIGIT_WORDS, Path(tmp) / "digits.txt"))

        def search(hotword=None):
            hotwords = (((hotword,), args.boost),) if hotword else ()
            config = DecoderConfig(kind="beam", lexicon=lexicon, hotwords=hotwords)
            return Decoder(config, model.symbols, model.blank, model.word_boundary, chars, None)

        plain, four = search(), search("four")
        clips = {w: sorted((args.speech_commands / w).glob("*.wav")) for w in DIGIT_WORDS}
        wrong = recovered = checked = inserted = 0
        for word, paths in clips.items():
            boosted = search(word)
            for path in paths:
                lp = model.log_probs(load_audio(path, model.sample_rate))
                text = plain.decode(lp)[0].text
                if text != word:
                    wrong += 1
                    recovered += boosted.decode(lp)[0].text == word
                if word != "four" and "four" not in text:
                    checked += 1
                    inserted += "four" in four.decode(lp)[0].text.split()
    result = {"model": str(args.model.relative_to(ROOT)) if args.model.is_relative_to(ROOT) else str(args.model),
              "machine": machine(), "boost": args.boost, "clips": sum(map(len, clips.values())),
              "wrong_without_boost": wrong, "recovered": recovered,
              "other_digit_clips_checked": checked, "four_inserted": inserted}
    print(json.dumps(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
