"""Decoders on FSDD: greedy vs lexicon beam search vs lexicon + digit LM, on seen and unseen
speakers, with the cost of decoding per second of audio and the start-up time of asr transcribe.

    python benchmarks/decoding.py --manifests recipes/fsdd/data/manifests \\
        [--model models/fsdd.tflite] [--heldout-model exp/selection/heldout/epoch-15] \\
        [--speech-commands ../shared/data/speech-commands] [--out benchmarks/results/decoding.json]

``--manifests`` is the folder ``asr prepare fsdd`` writes. For each split (``split``: the
dataset's own test split, all five speakers, decoded with --model; ``heldout``: speaker george,
never seen in training, decoded with --heldout-model, the model benchmarks/selection.py trains
without him) a word bigram LM (the order the on-device search of asr/lexicon_beam.py takes) is
built from that split's training transcripts (``asr lm``), the LM weight and word score are
tuned on that split's dev sets (``asr tune``), and the test sets (isolated, connected) are
decoded by each decoder. ``--speech-commands`` adds the digit words of
Speech Commands' test set (158 speakers none of the models heard; 1 s clips, 16 kHz) decoded with
--model and the split's tuned decoder.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRAIN_TEXT = ("train.jsonl", "train_connected.jsonl")
DEV = ("dev.jsonl", "dev_connected.jsonl")
TEST = ("test.jsonl", "test_connected.jsonl")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def decoders(lexicon: Path, lm: Path, tuned: dict, char_lm: Path) -> dict:
    """Every setting spelled out: what is left out would come from the decoder the model ships."""
    beam = {"kind": "beam", "beam": 50, "nbest": 1, "hotwords": [], "lm_weight": 0.0, "word_score": 0.0}
    return {
        "greedy": {"kind": "greedy"},
        "beam, no lexicon": {**beam, "lexicon": "none", "lm": "none"},
        "beam, character LM": {**beam, "lexicon": "none", "lm": str(char_lm), "lm_weight": 0.5},
        "lexicon": {**beam, "lexicon": str(lexicon), "lm": "none"},
        "lexicon + LM": {**beam, "lexicon": str(lexicon), "lm": str(lm),
                         "lm_weight": tuned["lm_weight"], "word_score": tuned["word_score"]},
    }


def decode_all(recognizer, log_probs, refs, settings: dict, audio_seconds: float) -> dict:
    from asr.evaluation import score

    decoder = recognizer.set_decoder(**settings).decoder
    start = time.perf_counter()
    hyps = [decoder.decode(lp)[0].text for lp in log_probs]
    seconds = time.perf_counter() - start
    rates = score(refs, hyps)
    return {"wer": round(rates["wer"], 4), "cer": round(rates["cer"], 4), "words": rates["words"],
            "word_errors": rates["word_errors"], "decode_ms_per_audio_second": round(1000 * seconds / audio_seconds, 3)}


def speech_commands(data_dir: Path, work: Path) -> Path:
    """A manifest of the digit words of Speech Commands' test clips."""
    from asr.manifest import Utterance, write_manifest

    utts = []
    for word in DIGITS:
        for wav in sorted((data_dir / word).glob("*.wav")):
            utts.append(Utterance(f"{word}-{wav.stem}", str(wav.resolve()), 1.0, word, wav.stem.split("_")[0]))
    out = work / "speech_commands_digits.jsonl"
    write_manifest(out, utts)
    return out


def run_split(name: str, model: str, manifests: Path, work: Path, extra: dict) -> dict:
    from asr.lm import lm_command
    from asr.tuning import dev_log_probs, tune
    from asr.transcription import load_recognizer

    work.mkdir(parents=True, exist_ok=True)
    lm = work / "digits.arpa"
    lm_summary = lm_command([manifests / f for f in TRAIN_TEXT], 2, lm)  # a bigram: what the device search takes
    char_lm = work / "chars.arpa"
    lm_command([manifests / f for f in TRAIN_TEXT], 6, char_lm, units="chars")
    lexicon = work / "digits.vocab.txt"
    tuned = tune(model, [manifests / f for f in DEV], work / "decoder.json", lexicon=str(lexicon), lm=str(lm),
                 lm_weights=[0.0, 0.25, 0.5, 1.0, 2.0, 4.0], word_scores=[-2.0, -1.0, 0.0, 1.0, 2.0])
    recognizer = load_recognizer(model)
    sets = {f.removesuffix(".jsonl"): manifests / f for f in TEST} | extra
    lm_summary = {k: v for k, v in lm_summary.items() if k not in ("arpa", "vocabulary")}
    out = {"model": shown(model), "lm": lm_summary, "tuned_on_dev": tuned, "sets": {}}
    for set_name, manifest in sets.items():
        log_probs, refs = dev_log_probs(recognizer, [manifest])
        seconds = sum(lp.shape[0] for lp in log_probs) * 0.04
        out["sets"][set_name] = {"utterances": len(refs), "audio_seconds": round(seconds, 1), "decoders": {
            label: decode_all(recognizer, log_probs, refs, settings, seconds)
            for label, settings in decoders(lexicon, lm, tuned, char_lm).items()}}
        print(name, set_name, {k: v["wer"] for k, v in out["sets"][set_name]["decoders"].items()}, flush=True)
    return out


def shown(path) -> str:
    """A model path as results name it: relative to the repository, else its last two parts."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else "/".join(p.parts[-2:])


def startup(model: str, wav: str) -> dict:
    """Wall time of a whole ``asr transcribe`` process on one 1 s file (interpreter start-up
    included; the best of 3), and whether the .tflite path imported TensorFlow."""
    code = "import sys; from asr.cli import main; rc = main(sys.argv[1:]); print('TF', 'tensorflow' in sys.modules, file=sys.stderr)"
    out = {}
    for label, extra in {"greedy": ["--decoder", "greedy"], "lexicon + LM (as shipped)": []}.items():
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", code, "transcribe", "--model", model, wav, *extra],
                                  capture_output=True, text=True, cwd=ROOT)
            runs.append(time.perf_counter() - start)
            tf = [x for x in proc.stderr.splitlines() if x.startswith("TF")][-1].split()[1] == "True"
        out[label] = {"seconds_min": round(min(runs), 3), "imports_tensorflow": tf,
                      "text": proc.stdout.strip().split("\t")[-1]}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifests", type=Path, required=True, help="the folder asr prepare fsdd wrote")
    parser.add_argument("--model", default=str(ROOT / "models" / "fsdd.tflite"))
    parser.add_argument("--heldout-model", default=None, help="a model trained without the held-out speaker")
    parser.add_argument("--speech-commands", type=Path, default=None, help="Speech Commands test clips (corpus layout)")
    parser.add_argument("--work", type=Path, default=ROOT / "exp" / "decoding")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "decoding.json")
    args = parser.parse_args(argv)

    from asr.report import machine

    extra = {}
    if args.speech_commands:
        extra["speech_commands_digits"] = speech_commands(args.speech_commands, args.work)
    results = {"machine": machine(), "splits": {}}
    results["splits"]["split"] = run_split("split", args.model, args.manifests / "split", args.work / "split", extra)
    if args.heldout_model:
        results["splits"]["heldout"] = run_split("heldout", args.heldout_model, args.manifests / "heldout",
                                                 args.work / "heldout", {})
    wav = sorted((args.manifests / "audio" / "split" / "test").glob("*.wav"))[0]
    results["startup"] = startup(args.model, str(wav))
    results["startup_file"] = wav.name
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results["startup"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
