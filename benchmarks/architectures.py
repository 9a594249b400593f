"""What streaming costs: BiLSTM vs unidirectional LSTM vs BiGRU vs unidirectional GRU at about
the same number of parameters, trained alike, measured on the sets the project reports.

    python benchmarks/architectures.py --fsdd ../shared/data/fsdd --speech-commands ../shared/data/speech-commands
        [--work DIR] [--epochs 12] [--variants bilstm bigru lstm lstm_lookahead gru_lookahead]
        [--reuse VARIANT=MODEL_DIR ...] [--out benchmarks/results/architectures.json]

Data and training: the shipped model's (recipes/fsdd/run.sh, models/configs/fsdd.yaml: FSDD's
held-out-speaker split plus Speech Commands clips of 111 speakers, global normalization, same
seed and epochs; the lists of benchmarks/augmentation.py's ``global`` variant). Variants:
    bilstm          the shipped architecture: 2 bidirectional LSTM layers of 128 units (1.20M parameters)
    bigru           2 bidirectional GRU layers of 152 units (1.12M)
    lstm            2 unidirectional LSTM layers of 224 units (1.19M): streams, 46 ms look-ahead
    lstm_lookahead  the same plus a lookahead convolution of 4 frames (206 ms look-ahead): the
                    shipped streaming model's architecture (recipes/fsdd/run.sh --streaming yes)
    gru_lookahead   2 unidirectional GRU layers of 264 units plus the same lookahead (1.16M)
Two variants train at a time, one thread each; ``--work`` keeps the models (a killed run
resumes, trained variants are not retrained). ``--reuse lstm_lookahead=recipes/fsdd/exp/streaming/model``
takes a model trained elsewhere on the same data with the variant's config (checked) instead
of training it again. Results: WER (greedy, and beam search with the
training words' lexicon) on george's isolated and connected digits (never heard), the Speech
Commands test speakers' digits and commands, and the trained FSDD speakers' own test
recordings; parameters; the dynamic-int8 .tflite's size; its real-time factor on 1 thread
(whole-file pass over george's connected digits; for the unidirectional ones also the
streaming .tflite at the default chunk, chunk by chunk).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.augmentation import (CONFIG, prepare, run_pairs, score, train_lists, training_command,  # noqa: E402
                                     write_results)

VARIANTS = {
    "bilstm": [],
    "bigru": ["model.rnn=gru", "model.lstm_units=152"],
    "lstm": ["model.bidirectional=false", "model.lstm_units=224"],
    "lstm_lookahead": ["model.bidirectional=false", "model.lstm_units=224", "model.lookahead_frames=4"],
    "gru_lookahead": ["model.rnn=gru", "model.bidirectional=false", "model.lstm_units=264", "model.lookahead_frames=4"],
}
RTF_SET = "george_connected"


def reuse(items: list[str], work: Path) -> None:
    """Link VARIANT=MODEL_DIR models in as work/VARIANT/model after checking their config."""
    from asr.checkpoint import load_model_dir
    from asr.config import load_config

    for item in items:
        v, _, model = item.partition("=")
        if v not in VARIANTS:
            raise SystemExit(f"--reuse: unknown variant {v!r}")
        want = load_config(CONFIG, ["features.normalization=global", *VARIANTS[v]]).model
        got = load_model_dir(model)[0].model
        if want != got:
            raise SystemExit(f"--reuse {item}: its model config {got} is not the variant's {want}")
        (work / v).mkdir(parents=True, exist_ok=True)
        link = work / v / "model"
        if not link.exists():
            link.symlink_to(Path(model).resolve())


def train(variants: list[str], m: dict[str, Path], work: Path, epochs: int) -> None:
    """Train the variants two at a time (one thread each); a variant with a model is skipped."""
    run_pairs({v: training_command(work / v, train_lists("global", m, None), m, work, "features.normalization=global",
                                   f"training.epochs={epochs}", *VARIANTS[v]) for v in variants}, work)


def rtf(tflite: Path, audio: list, streaming: bool) -> float:
    """Processing seconds per audio second on 1 thread over ``audio`` (16 kHz float32 arrays)."""
    import time

    if streaming:
        from asr.streaming import StreamingModel, StreamingRecognizer

        model = StreamingModel(tflite, num_threads=1)

        def run(audio):  # one stream: every chunk, then the final (greedy) result
            stream = StreamingRecognizer(model)
            stream.accept(audio)
            stream.finish()
    else:
        from asr.runtime import TFLiteModel

        model = TFLiteModel(tflite, num_threads=1)
        run = model.log_probs
    run(audio[0])  # allocation outside the timing
    t = time.perf_counter()
    for a in audio:
        run(a)
    return (time.perf_counter() - t) / (sum(len(a) for a in audio) / 16000)


def measure(v: str, m: dict[str, Path], work: Path) -> dict:
    from asr.audio import load_audio
    from asr.checkpoint import load_model_dir
    from asr.manifest import read_manifest
    from export.convert import export_model

    model = work / v / "model"
    config, _, _, net = load_model_dir(model)
    out = {"parameters": int(net.count_params()), "model": config.model.to_dict()}
    tflite = work / v / "model.tflite"
    if not tflite.exists():
        export_model(model, tflite)
    out["tflite_bytes"] = tflite.stat().st_size
    audio = [load_audio(u.audio) for u in read_manifest(m[RTF_SET])]
    out["rtf_whole_file"] = round(rtf(tflite, audio, streaming=False), 5)
    if not config.model.bidirectional:
        from export.streaming import DEFAULT_CHUNK_MS, export_streaming

        stream = work / v / "model_streaming.tflite"
        if not stream.exists():
            export_streaming(model, stream)
        out["streaming_tflite_bytes"] = stream.stat().st_size
        out["streaming_chunk_ms"] = DEFAULT_CHUNK_MS
        out["rtf_streaming"] = round(rtf(stream, audio, streaming=True), 5)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fsdd", type=Path, required=True, help="FSDD copy holding recordings/")
    parser.add_argument("--speech-commands", type=Path, required=True, help="Speech Commands clips (corpus layout)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "architectures")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "architectures.json")
    parser.add_argument("--train-only", action="store_true", help="train the variants, measure nothing")
    parser.add_argument("--reuse", nargs="*", default=[], metavar="VARIANT=MODEL_DIR",
                        help="a model trained elsewhere with the same data and the variant's config")
    args = parser.parse_args()
    from asr.report import machine

    args.work.mkdir(parents=True, exist_ok=True)
    m = prepare(args.fsdd, args.speech_commands, args.work)
    reuse(args.reuse, args.work)
    train(args.variants, m, args.work, args.epochs)
    if args.train_only:
        return 0
    result = {"epochs": args.epochs, "machine": machine(), "config": str(CONFIG.relative_to(ROOT)), "results": {}}
    for v in args.variants:
        result["results"][v] = {**measure(v, m, args.work),
                                **score(args.work / v / "model", m, args.work, args.work / v / "eval")}
    write_results(result, args.out, "parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
