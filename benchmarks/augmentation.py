"""Ablation on unseen voices: each augmentation and the normalization choice, one change at a
time against a base, same seed and epochs, measured on speakers the models never heard.

    python benchmarks/augmentation.py --fsdd ../shared/data/fsdd --speech-commands ../shared/data/speech-commands
        [--work DIR] [--epochs 12] [--variants base global noise reverb vtlp tts]
        [--out benchmarks/results/augmentation.json]

Data: the shipped model's (recipes/fsdd/run.sh): FSDD's held-out-speaker split (four speakers
trained on, george never heard) plus the Speech Commands clips split by speaker hash
(``asr prepare speech-commands --split-percentages 11,2``: 111 speakers train, 18 dev, 29 test).
Every variant trains the recipe's config (models/configs/fsdd.yaml) for --epochs epochs on

    FSDD isolated, FSDD isolated (second listing), FSDD connected, non-speech,
    Speech Commands train, Speech Commands train (second listing)

and differs from ``base`` in one thing only:
    base      as above, per-utterance normalization
    global    features.normalization=global (training-set statistics)
    noise     the second listings are noisy copies (asr augment --kind noise: Speech Commands'
              background noise at 5-20 dB SNR)
    reverb    the second listings are reverberant copies (asr augment --kind reverb: RT60
              0.2-0.8 s)
    vtlp      training.vtlp_warp=0.1 (mel-axis warp, a different vocal tract per utterance)
    tts       plus synthetic speakers: espeak-ng voices saying the digits and the Speech
              Commands words (needs espeak-ng; left out, and said so, without it)
The copies double the utterances of the lists they replace, so every variant trains the same
number of steps. Two variants train at a time, one thread each. Results (greedy decoding, and
beam search with the lexicon of every training word, no LM): WER on george's isolated and
connected digits, Speech Commands test speakers' digits and the ten command words, and the
trained FSDD speakers' own test recordings. ``--work`` keeps the trained models: a killed run
resumes, finished variants are not retrained.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = ROOT / "models" / "configs" / "fsdd.yaml"
VARIANTS = ("base", "global", "noise", "reverb", "vtlp", "tts")
SETTINGS = {"base": [], "global": ["features.normalization=global"], "vtlp": ["training.vtlp_warp=0.1"]}
SC_PERCENTAGES = (11, 2)  # the shared clips are all from the official test band [10, 20) of which_set
TTS_VOICES = ("en-us", "en", "en-gb-x-rp", "en-029", "en-us+f1", "en-us+f3", "en-us+m3", "en+m7", "en+f4", "en-us+croak")
TTS_SPEEDS = (130, 160, 190)


def prepare(fsdd_dir: Path, sc_dir: Path, work: Path) -> dict[str, Path]:
    """Manifests of the module docstring under ``work``; returns {name: manifest}."""
    from asr.corpora import fsdd, speech_commands
    from asr.corruption import corrupt_manifest
    from asr.lexicon import write_lexicon
    from asr.manifest import read_manifest

    f, s = work / "fsdd", work / "sc"
    if not (f / "prepare.json").exists():
        fsdd.prepare(fsdd_dir, f)
    if not (s / "prepare.json").exists():
        speech_commands.prepare(sc_dir, s, validation_percentage=SC_PERCENTAGES[0],
                                testing_percentage=SC_PERCENTAGES[1], progress=False)
    h = f / "heldout"
    m = {"fsdd_train": h / "train.jsonl", "fsdd_connected": h / "train_connected.jsonl",
         "nonspeech": h / "train_nonspeech.jsonl", "sc_train": s / "train.jsonl",
         "fsdd_dev": h / "dev.jsonl", "fsdd_dev_connected": h / "dev_connected.jsonl", "sc_dev": s / "dev.jsonl"}
    for kind in ("noise", "reverb"):
        for name in ("fsdd_train", "sc_train"):
            out = work / "copies" / f"{name}_{kind}.jsonl"
            if not out.exists():
                corrupt_manifest(m[name], out, kind, s / "noise.jsonl", seed=1)
            m[f"{name}_{kind}"] = out
    m.update({"george_isolated": h / "test.jsonl", "george_connected": h / "test_connected.jsonl",
              "sc_digits": s / "test_digits.jsonl", "sc_commands": s / "test_commands.jsonl",
              "seen_isolated": h / "test_seen.jsonl", "seen_connected": h / "test_seen_connected.jsonl"})
    write_lexicon(sorted({w for k in ("fsdd_train", "sc_train") for u in read_manifest(m[k]) for w in u.text.split()}),
                  work / "lexicon.txt")
    return m


def espeak_manifest(out: Path, words: list[str]) -> Path | None:
    """Each word of ``words`` by each TTS voice at each speed (16 kHz WAVs); None without espeak-ng."""
    from asr.audio import load_audio, write_audio
    from asr.manifest import Utterance, write_manifest

    if shutil.which("espeak-ng") is None:
        return None
    out.mkdir(parents=True, exist_ok=True)
    utts = []
    for v, voice in enumerate(TTS_VOICES):
        for speed in TTS_SPEEDS:
            for word in words:
                wav = out / f"tts-{v}-{speed}-{word}.wav"
                if not wav.exists():
                    raw = out / "raw.wav"
                    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), word], check=True)
                    write_audio(wav, load_audio(raw))
                seconds = len(load_audio(wav)) / 16000
                utts.append(Utterance(wav.stem, str(wav), round(seconds, 4), word, f"tts-{v}"))
    write_manifest(out / "tts.jsonl", utts)
    return out / "tts.jsonl"


def train_lists(variant: str, m: dict[str, Path], tts: Path | None) -> list[Path]:
    second = {"noise": "_noise", "reverb": "_reverb"}.get(variant, "")
    lists = [m["fsdd_train"], m["fsdd_train" + second] if second else m["fsdd_train"], m["fsdd_connected"],
             m["nonspeech"], m["sc_train"], m["sc_train" + second] if second else m["sc_train"]]
    return lists + ([tts] if variant == "tts" else [])


def train(variants: list[str], m: dict[str, Path], tts: Path | None, work: Path, epochs: int) -> None:
    """Train the variants two at a time (one thread each); a variant with a model is skipped."""
    run_pairs({v: training_command(work / v, train_lists(v, m, tts), m, work, "features.normalization=utterance",
                                   f"training.epochs={epochs}", *SETTINGS.get(v, [])) for v in variants}, work)


def training_command(exp: Path, lists: list[Path], m: dict[str, Path], work: Path, *settings: str) -> list[str]:
    """``asr train`` of the recipe's config on one thread, the dev sets of ``m``, the shared cache."""
    return [sys.executable, "-m", "asr", "train", "--config", str(CONFIG), "--threads", "1", "--corpus", "fsdd+speech-commands",
            "--exp", str(exp), "--feature-cache", str(work / "cache"), "--train", *map(str, lists),
            "--dev", *(str(m[k]) for k in ("fsdd_dev", "fsdd_dev_connected", "sc_dev")), "--set", *settings]


def run_pairs(commands: dict[str, list[str]], work: Path) -> None:
    """Run the {variant: command} two at a time, each logging to work/<variant>.log; a variant
    whose work/<variant>/model exists is skipped."""
    todo = [v for v in commands if not (work / v / "model" / "model.json").exists()]
    for pair in (todo[i : i + 2] for i in range(0, len(todo), 2)):
        procs = []
        for v in pair:
            log = open(work / f"{v}.log", "a")
            procs.append((v, subprocess.Popen(commands[v], stdout=log, stderr=subprocess.STDOUT), log))
        for v, proc, log in procs:
            if proc.wait() != 0:
                raise RuntimeError(f"training variant {v} failed: see {work / (v + '.log')}")
            log.close()


def score(model: Path, m: dict[str, Path], work: Path, out: Path) -> dict:
    """{decoder: {set: {"wer", "words"}}}: greedy, and beam search over the training words' lexicon."""
    from asr.evaluation import evaluate_many

    sets = ("george_isolated", "george_connected", "sc_digits", "sc_commands", "seen_isolated", "seen_connected")
    decoders = {"greedy": None, "lexicon": {"kind": "beam", "lexicon": str(work / "lexicon.txt"), "lm": "none"}}
    result = {}
    for d, cfg in decoders.items():
        summaries = evaluate_many(model, [m[s] for s in sets], [out / d / s for s in sets], decoding=cfg)
        result[d] = {s: {k: summary[k] for k in ("wer", "words")} for s, summary in zip(sets, summaries)}
    return result


def throughput(m: dict[str, Path], clips: int = 300) -> dict:
    """Audio seconds per wall second, one core: writing corrupted copies (asr.corruption, per
    kind, decoding and writing the files included) and the VTLP warp of log-mels (per
    utterance in the training generator); SpecAugment alone for comparison."""
    import time

    import numpy as np

    from asr.audio import load_audio
    from asr.corruption import corrupt, load_noises
    from asr.data.augment import mel_warp, spec_augment
    from asr.features import FeatureSpec, log_mel
    from asr.manifest import read_manifest

    utts = read_manifest(m["sc_train"])[:clips]
    audio = [load_audio(u.audio) for u in utts]
    seconds = sum(len(a) for a in audio) / 16000
    noises = load_noises(Path(m["sc_train"]).parent / "noise.jsonl")
    out = {}
    for kind in ("noise", "reverb", "both"):
        rng = np.random.default_rng(0)
        corrupt(audio[0], kind, rng, noises)  # imports and FFT plans outside the timing
        t = time.perf_counter()
        for a in audio:
            corrupt(a, kind, rng, noises)
        out[f"copy_{kind}"] = round(seconds / (time.perf_counter() - t), 1)
    feats = [log_mel(a, FeatureSpec()) for a in audio]
    cfg = SimpleNamespace(freq_masks=2, freq_mask_width=15, time_masks=2, time_mask_fraction=0.08)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for f in feats:
        spec_augment(f, rng, cfg)
    out["spec_augment"] = round(seconds / (time.perf_counter() - t), 1)
    t = time.perf_counter()
    for f in feats:
        spec_augment(mel_warp(f, float(rng.uniform(0.9, 1.1))), rng, cfg)
    out["vtlp_and_spec_augment"] = round(seconds / (time.perf_counter() - t), 1)
    return out


def main() -> int:
    from asr.corpora.speech_commands import COMMAND_WORDS
    from asr.text import DIGIT_WORDS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fsdd", type=Path, required=True, help="FSDD copy holding recordings/")
    parser.add_argument("--speech-commands", type=Path, required=True, help="Speech Commands clips (corpus layout)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "augmentation")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "augmentation.json")
    args = parser.parse_args()
    from asr.report import machine

    args.work.mkdir(parents=True, exist_ok=True)
    m = prepare(args.fsdd, args.speech_commands, args.work)
    tts = (espeak_manifest(args.work / "tts", [*DIGIT_WORDS, *COMMAND_WORDS]) if "tts" in args.variants else None)
    variants = [v for v in args.variants if v != "tts" or tts is not None]
    skipped = sorted(set(args.variants) - set(variants))
    train(variants, m, tts, args.work, args.epochs)
    result = {"epochs": args.epochs, "machine": machine(), "throughput": throughput(m), "skipped": {v: "espeak-ng not installed" for v in skipped},
              "config": str(CONFIG.relative_to(ROOT)), "results": {}}
    for v in variants:
        result["results"][v] = score(args.work / v / "model", m, args.work, args.work / v / "eval")
    write_results(result, args.out)
    return 0


def write_results(result: dict, out: Path, column: str | None = None) -> None:
    """Print a WER table per decoder of ``result["results"]`` ({variant: {decoder: {set: ...}}},
    with ``column``, a per-variant value, after the name) and write ``result`` to ``out``."""
    results = result["results"]
    for d in ("greedy", "lexicon"):
        sets = list(next(iter(results.values()))[d])
        extra = [column] if column else []
        print(f"\n{d}: | " + " | ".join(["variant", *extra, *sets]) + " |\n|---|" + "---|" * (len(sets) + len(extra)))
        for v, r in results.items():
            cells = [v, *(f"{r[column]:,}" for _ in extra), *(f"{100 * r[d][s]['wer']:.1f}%" for s in sets)]
            print("| " + " | ".join(cells) + " |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
