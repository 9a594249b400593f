"""The ``asr`` command: thin wrappers over library functions, one subcommand each.

    asr download fsdd --dest DIR [--url URL]
    asr download librispeech --dest DIR --parts PART|SET ... [--base-url URL] [--jobs N]
    asr download speech-commands --dest DIR [--url URL [--sha256 HEX]]
    asr prepare fsdd --data-dir DIR --out DIR [--heldout-speaker NAME] [--seed N]
    asr prepare speech-commands --data-dir DIR --out DIR [--words WORD ...] [--split-percentages DEV,TEST]
    asr prepare librispeech --data-dir DIR --out DIR --parts PART|SET ... [--jobs N]
    asr augment --manifest M --out NEW.jsonl --kind noise|reverb|both [--noise NOISE.jsonl] [--seed N]
    asr tokens --train M [M ...] --out FILE [--kind chars|bpe] [--vocab-size N]
    asr features --manifest M --out DIR [--config YAML] [--set ...] [--jobs N]
    asr train --train M|SHARDS ... --dev M --exp DIR [--config YAML] [--set section.key=value ...]
              [--tokens FILE] [--distribute auto|none|mirrored|multi-worker] [--mixed-precision]
    asr average --exp DIR --last N --out DIR
    asr evaluate --model DIR --manifest M [M ...] --out DIR [decoder options: asr/cli_decoding.py]
    asr tune --model DIR --manifest DEV --lm LM --out decoder.json
    asr lm --text FILE ... --order N --out LM.arpa
    asr results --eval DIR --out RESULTS.md
    asr transcribe PATH ... [--model DIR|FILE.tflite] [--format txt|tsv|json|srt|vtt] [--output-dir DIR]
    asr export MODEL_DIR -o model.tflite [--quantization float32|float16|dynamic|int8] [--verify M ...]
    asr export --streaming MODEL_DIR -o model.tflite [--chunk-ms 160|320|640] [--quantization float32|dynamic]
    asr stream -|FILE.raw [--model FILE.tflite] [--endpoint SECONDS]   (asr/cli_streaming.py)
    asr info MODEL_DIR|FILE.tflite
    asr publish --model DIR --dest DIR [--metrics NAME=SUMMARY.json ...] [--reference NAME=SUMMARY.json ...]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from asr.cli_decoding import add_parsers, cmd_evaluate, cmd_transcribe, read_decoder_config

CORPORA = ("fsdd", "librispeech", "speech-commands")


def _add_download(sub):
    p = sub.add_parser("download", help="download, verify and unpack a corpus (resumes after a failure)")
    p.add_argument("corpus", choices=CORPORA)
    p.add_argument("--dest", required=True, type=Path, help="folder to unpack into")
    p.add_argument("--url", default=None, help="FSDD, Speech Commands: archive URL (a mirror); default: the release")
    p.add_argument("--sha256", default=None,
                   help="Speech Commands: the sha256 of another archive at --url (default: the published "
                        "v0.02 checksum, which a mirror of the release must match)")
    p.add_argument("--parts", nargs="+", default=None, metavar="PART",
                   help="LibriSpeech: parts (dev-clean, train-clean-100, ...) or sets (mini, eval, 960)")
    p.add_argument("--base-url", default=None, help="LibriSpeech: mirror of openslr.org/resources")
    p.add_argument("--md5-file", type=Path, default=None,
                   help="LibriSpeech: local md5 list (default: md5sum.txt from the mirror)")
    p.add_argument("--jobs", type=int, default=4, help="LibriSpeech: parts downloaded in parallel")
    p.add_argument("--delete-archives", action="store_true",
                   help="LibriSpeech: delete each .tar.gz once extracted (saves 60 GB for the 960 h set)")
    p.set_defaults(func=cmd_download)


def _add_prepare(sub):
    p = sub.add_parser("prepare", help="write JSONL manifests for a corpus")
    p.add_argument("corpus", choices=CORPORA)
    p.add_argument("--data-dir", required=True, type=Path, help="an unpacked copy of the corpus")
    p.add_argument("--out", required=True, type=Path, help="folder for manifests (and generated audio)")
    p.add_argument("--heldout-speaker", default=None, help="FSDD: speaker held out of training")
    p.add_argument("--seed", type=int, default=0, help="FSDD: seed of the split and the connected digits")
    p.add_argument("--parts", nargs="+", default=None, metavar="PART", help="LibriSpeech: parts or sets")
    p.add_argument("--jobs", type=int, default=None, help="LibriSpeech: parallel readers (default: min(cores, 8))")
    p.add_argument("--words", nargs="+", default=None, metavar="WORD", help="Speech Commands: only these words")
    p.add_argument("--split-percentages", default=None, metavar="DEV,TEST",
                   help="Speech Commands without the official lists: which_set's validation and testing "
                        "percentages (default 10,10)")
    p.set_defaults(func=cmd_prepare)


def _add_tokens(sub):
    p = sub.add_parser("tokens", help="build the output vocabulary (characters or SentencePiece BPE)")
    p.add_argument("--train", nargs="+", required=True, type=Path, help="training manifest(s): the BPE's text")
    p.add_argument("--out", required=True, type=Path, help="tokens file (JSON) for asr train --tokens")
    p.add_argument("--kind", choices=["chars", "bpe"], default="chars")
    p.add_argument("--vocab-size", type=int, default=500,
                   help="BPE: model outputs, the CTC blank included (it takes the place of <unk>)")
    p.set_defaults(func=cmd_tokens)


def _add_features(sub):
    p = sub.add_parser("features", help="compute log-mels into sharded TFRecord files (resumable)")
    p.add_argument("--manifest", nargs="+", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="shard folder (pass it to asr train --train)")
    p.add_argument("--config", type=Path, default=None, help="YAML whose features section is used")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--shard-size", type=int, default=None, help="utterances per shard")
    p.add_argument("--jobs", type=int, default=None, help="parallel processes (default: all cores)")
    p.set_defaults(func=cmd_features)


def _add_average(sub):
    p = sub.add_parser("average", help="average the last N epoch checkpoints of an experiment into a model")
    p.add_argument("--exp", required=True, type=Path, help="experiment folder of asr train")
    p.add_argument("--last", type=int, default=5, help="number of newest epoch checkpoints")
    p.add_argument("--out", required=True, type=Path, help="model directory to write")
    p.set_defaults(func=cmd_average)


def _add_results(sub):
    p = sub.add_parser("results", help="WER/CER table (Markdown) from asr evaluate folders")
    p.add_argument("--eval", required=True, type=Path, help="folder of <test set>/summary.json")
    p.add_argument("--out", required=True, type=Path, help="the Markdown file to write")
    p.add_argument("--sets", nargs="+", default=None, help="rows, in order; a set without results says so")
    p.add_argument("--title", default="Results")
    p.add_argument("--note", action="append", default=[], help="a line under the table (repeatable)")
    p.set_defaults(func=cmd_results)


def _add_train(sub):
    p = sub.add_parser("train", help="train (or resume) a model")
    p.add_argument("--train", nargs="+", required=True, type=Path, help="training manifest(s) or shard folder(s)")
    p.add_argument("--dev", nargs="*", type=Path, default=[], help="dev manifest(s): best model, early stop, WER")
    p.add_argument("--exp", required=True, type=Path, help="experiment folder (resumes if it exists)")
    p.add_argument("--config", type=Path, default=None, help="YAML overriding the defaults")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="override config keys")
    p.add_argument("--corpus", default="", help="name of the training corpus, stored in the model")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for TensorFlow (default: all)")
    p.add_argument("--max-epochs", type=int, default=None, help="stop this run after N epochs in total")
    p.add_argument("--feature-cache", type=Path, default=None, help="log-mel cache folder (default: EXP/../feature-cache)")
    p.add_argument("--tokens", type=Path, default=None, help="tokens file from asr tokens (default: characters)")
    p.add_argument("--distribute", choices=["auto", "none", "mirrored", "multi-worker"], default="auto",
                   help="auto: multi-worker when TF_CONFIG is set, mirrored over several GPUs, else none")
    p.add_argument("--mixed-precision", action="store_true", help="float16 compute, float32 weights (GPUs)")
    p.set_defaults(func=cmd_train)


def _add_publish(sub):
    p = sub.add_parser("publish", help="copy a trained model and its measured metrics to a folder")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--dest", required=True, type=Path)
    p.add_argument("--metrics", nargs="*", default=[], metavar="NAME=SUMMARY.json",
                   help="evaluation summaries of this very model (refused when a summary names another model)")
    p.add_argument("--reference", nargs="*", default=[], metavar="NAME=SUMMARY.json",
                   help="evaluation summaries of OTHER models, for comparison: stored apart, under reference_metrics")
    p.add_argument("--reference-note", default="", metavar="TEXT",
                   help="what the reference models are (e.g. how they differ from this one), stored with each")
    p.add_argument("--tflite", type=Path, default=None, help="an exported .tflite to publish as DEST.tflite")
    p.add_argument("--tflite-metrics", nargs="*", default=[], metavar="NAME=SUMMARY.json",
                   help="the .tflite's own evaluation summaries, embedded in its metadata")
    p.add_argument("--decoder-config", type=Path, default=None,
                   help="ship this decoder (asr tune's JSON): its word list and LM are copied into DEST")
    p.set_defaults(func=cmd_publish)


def _add_export(sub):
    p = sub.add_parser("export", help="convert a model directory to one self-contained .tflite")
    p.add_argument("model", type=Path, help="model directory")
    p.add_argument("-o", "--output", required=True, type=Path, help="the .tflite to write")
    p.add_argument("--quantization", choices=["float32", "float16", "dynamic", "int8"], default="dynamic",
                   help="dynamic (default): int8 weights; int8: full integer, needs --calibration")
    p.add_argument("--calibration", type=Path, default=None, help="manifest of representative audio (int8)")
    p.add_argument("--verify", nargs="+", type=Path, default=None, metavar="MANIFEST",
                   help="also export every quantization mode beside OUTPUT and compare them with Keras")
    p.add_argument("--decoder-config", type=Path, default=None,
                   help="embed this decoder (asr tune's JSON: its word list and ARPA LM) instead of the model's own")
    p.add_argument("--streaming", action="store_true",
                   help="a streaming .tflite (a unidirectional model): one chunk of PCM plus the state per call")
    p.add_argument("--chunk-ms", type=int, default=None,
                   help="with --streaming: the chunk length, a multiple of 40 ms (default 160; 160, 320 and 640 are tested)")
    p.set_defaults(func=cmd_export)


def _add_info(sub):
    p = sub.add_parser("info", help="print a model's metadata (.tflite) or model.json (directory)")
    p.add_argument("model", type=Path)
    p.set_defaults(func=cmd_info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="CTC speech recognition: prepare, train, evaluate, transcribe")
    from asr import __version__

    parser.add_argument("--version", action="version", version=f"asr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = (_add_download, _add_prepare, _add_tokens, _add_features, _add_train, _add_average,
                _add_results, _add_export, _add_info, _add_publish)
    for add in commands:
        add(sub)
    add_parsers(sub, cmd_transcribe, cmd_evaluate)  # transcribe, evaluate, tune, lm
    from asr.corruption import add_parser as add_augment

    add_augment(sub)
    from asr.cli_streaming import add_stream_parser

    add_stream_parser(sub)
    return parser


def _only_for(args, corpus: str, names: list[str]) -> None:
    """Refuse options that belong to another corpus."""
    given = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is not None]
    if args.corpus != corpus and given:
        raise ValueError(f"{', '.join(given)} only apply to {corpus}, not {args.corpus}")


def cmd_download(args) -> int:
    _only_for(args, "librispeech", ["parts", "base_url", "md5_file"])
    _only_for(args, "speech-commands", ["sha256"])
    if args.sha256 is not None and args.url is None:
        raise ValueError("--sha256 names the checksum of another archive: give its --url too")
    if args.corpus == "librispeech" and args.url is not None:
        raise ValueError("--url only applies to fsdd and speech-commands, not librispeech (use --base-url)")
    if args.corpus == "speech-commands":
        from asr.corpora import speech_commands

        return speech_commands.run_download(args.dest, url=args.url, sha256=args.sha256)
    if args.corpus == "fsdd":
        from asr.corpora import fsdd

        fsdd.download(args.dest, url=args.url)
        return 0
    from asr.corpora import librispeech

    kw = {"base_url": args.base_url} if args.base_url else {}
    librispeech.download(args.dest, args.parts or ["mini"], jobs=args.jobs, md5_file=args.md5_file,
                         keep_archives=not args.delete_archives, **kw)
    return 0


def cmd_prepare(args) -> int:
    _only_for(args, "librispeech", ["parts", "jobs"])
    _only_for(args, "fsdd", ["heldout_speaker"])
    _only_for(args, "speech-commands", ["words", "split_percentages"])
    if args.corpus == "speech-commands":
        from asr.corpora import speech_commands

        return speech_commands.run_prepare(args.data_dir, args.out, words=args.words,
                                           percentages=speech_commands.parse_percentages(args.split_percentages))
    if args.corpus == "librispeech":
        from asr.corpora import librispeech

        librispeech.prepare(args.data_dir, args.out, args.parts or ["mini"], jobs=args.jobs)
        return 0
    from asr.corpora import fsdd

    summary = fsdd.prepare(args.data_dir, args.out, heldout_speaker=args.heldout_speaker or fsdd.HELDOUT_DEFAULT, seed=args.seed)
    for problem in summary["problems"]:
        print(f"warning: {problem}", file=sys.stderr)
    print(f"prepared {summary['recordings']} recordings of {len(summary['speakers'])} speakers into {args.out}")
    return 0


def cmd_tokens(args) -> int:
    from asr.tokens import build_tokens

    build_tokens(args.train, args.out, kind=args.kind, vocab_size=args.vocab_size)
    return 0


def cmd_features(args) -> int:
    from asr.config import load_config
    from asr.shards import write_shards

    config = load_config(args.config, args.set)
    kw = {"utterances_per_shard": args.shard_size} if args.shard_size else {}
    write_shards(args.manifest, config.features, args.out, workers=args.jobs,
                 max_duration=config.training.max_duration, **kw)
    return 0


def cmd_train(args) -> int:
    import dataclasses

    from asr.config import load_config
    from asr.distribute import configure_threads
    from asr.training import train

    config = load_config(args.config, args.set)
    if args.tokens:
        from asr.tokens import load_tokens

        config = dataclasses.replace(config, vocabulary=load_tokens(args.tokens))
    configure_threads(args.threads)
    best = train(
        config, args.train, args.dev, args.exp, corpus=args.corpus, max_epochs=args.max_epochs,
        cache_dir=args.feature_cache, distribute=args.distribute, mixed_precision=args.mixed_precision,
    )
    print(f"model: {best}", flush=True)
    if args.distribute in ("auto", "multi-worker") and os.environ.get("TF_CONFIG"):
        # Multi-worker processes linger for seconds (up to 30 s under load) in TensorFlow's
        # collective teardown after training; everything is written, so leave at once.
        sys.stderr.flush()
        os._exit(0)
    return 0


def cmd_average(args) -> int:
    from asr.checkpoint import average_experiment

    out, epochs = average_experiment(args.exp, args.last, args.out)
    print(f"{out}: average of epochs {', '.join(map(str, epochs))}")
    return 0


def cmd_results(args) -> int:
    from asr.report import eval_table

    text = eval_table(args.eval, args.sets, args.title, args.note)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0


def cmd_export(args) -> int:
    from export.convert import QUANTIZATIONS, export_model

    if args.streaming:
        return cmd_export_streaming(args)
    if args.chunk_ms is not None:
        raise ValueError("--chunk-ms goes with --streaming")
    out = export_model(args.model, args.output, args.quantization, args.calibration,
                       read_decoder_config(args.decoder_config))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {args.quantization})")
    if not args.verify:
        return 0
    from export.verify import markdown, verify, write_report

    variants = {args.quantization: out}
    for mode in QUANTIZATIONS:
        if mode in variants:
            continue
        if mode == "int8" and args.calibration is None:
            print("int8 skipped in verification: it needs --calibration MANIFEST", file=sys.stderr)
            continue
        path = out.with_name(f"{out.stem}.{mode}.tflite")
        variants[mode] = export_model(args.model, path, mode, args.calibration)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, {mode})")
    report = verify(args.model, variants, {m.stem: m for m in args.verify})
    js, md = write_report(report, out.with_name(f"{out.stem}.verify"))
    print(markdown(report))
    print(f"report: {js} and {md}")
    return 0


def cmd_export_streaming(args) -> int:
    from export.streaming import DEFAULT_CHUNK_MS, export_streaming

    if args.verify or args.calibration:
        raise ValueError("--verify and --calibration are for whole-file exports, not --streaming")
    chunk_ms = args.chunk_ms or DEFAULT_CHUNK_MS
    out = export_streaming(args.model, args.output, chunk_ms, args.quantization, read_decoder_config(args.decoder_config))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {args.quantization}, streaming, {chunk_ms} ms chunks)")
    return 0


def cmd_info(args) -> int:
    if args.model.is_dir():
        from asr.checkpoint import read_model_meta

        meta = read_model_meta(args.model)
    else:
        from asr.runtime import read_metadata

        meta = read_metadata(args.model)
    print(json.dumps(meta, indent=2, ensure_ascii=False))
    return 0


def _summaries(items: list[str]) -> dict:
    """NAME=SUMMARY.json pairs -> {NAME: summary dict}."""
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"expected NAME=SUMMARY.json, got {item!r}")
        out[name] = json.loads(Path(path).read_text())
    return out


def cmd_publish(args) -> int:
    from asr.checkpoint import publish_model

    dest = publish_model(args.model, args.dest, _summaries(args.metrics), _summaries(args.reference), args.reference_note)
    if args.decoder_config is not None:
        from asr.decoding import write_model_decoding

        write_model_decoding(dest, read_decoder_config(args.decoder_config))
    print(f"published {args.model} -> {dest}")
    if args.tflite:
        from export.metadata import publish_tflite

        out = publish_tflite(args.tflite, dest.with_suffix(".tflite"), _summaries(args.tflite_metrics),
                             decoder_config=read_decoder_config(args.decoder_config))
        print(f"published {args.tflite} -> {out}")
    return 0


def _needs_tensorflow(args) -> bool:
    """Only the Keras paths import TensorFlow; a .tflite model never does."""
    if args.command in ("train", "export", "average", "features"):
        return True
    if args.command in ("evaluate", "transcribe", "tune"):
        from asr.transcription import default_model

        model = args.model or default_model()
        return not (model and Path(model).is_file())
    return False


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with file descriptor 2 pointed at /dev/null: its C++ start-up lines
    (oneDNN, CUDA probing) would otherwise bury the command's own messages on stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if _needs_tensorflow(args):
        _import_tensorflow_quietly()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as err:
        print(f"asr {args.command}: error: {err}", file=sys.stderr)
        return 2
