"""The decoding subcommands of ``asr`` (transcribe, evaluate, tune, lm) and their shared options.

    asr transcribe PATH ... [--model M] [--format txt|tsv|json|srt|vtt] [--output-dir DIR] [decoder options]
    asr evaluate --model M --manifest M --out DIR [decoder options]
    asr tune --model M --manifest DEV ... --lm LM [--lexicon LEX] --lm-weights W ... --word-scores S ... --out FILE
    asr lm --text FILE ... --order N --out LM.arpa [--units words|chars] [--builtin]

Decoder options: --decoder greedy|beam, --lexicon PATH|none, --lm PATH|none, --beam N,
--lm-weight W, --word-score S, --nbest N, --hotword WORD[:BOOST] (repeatable), --hotwords FILE,
--decoder-config FILE (JSON of asr.decoding.DecoderConfig fields, e.g. what ``asr tune`` writes).
Without any, a model decodes as it ships (the FSDD models: beam search with their word list and
digit LM); a lexicon, LM or hotword given without --decoder implies beam.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

LONG_FILE_SECONDS = 60.0  # asr transcribe: longer files are cut at pauses (asr.segmentation)


def add_decoder_args(p) -> None:
    g = p.add_argument_group("decoding")
    g.add_argument("--decoder", choices=["greedy", "beam"], default=None,
                   help="default: as the model ships (beam with its lexicon and LM), else greedy")
    g.add_argument("--lexicon", default=None, help="word list or spellings (word<TAB>tokens); 'none': without")
    g.add_argument("--lm", default=None, help="n-gram LM (ARPA, .arpa.gz, KenLM binary); 'none': without")
    g.add_argument("--beam", type=int, default=None, help="hypotheses kept per frame (default 50)")
    g.add_argument("--lm-weight", type=float, default=None, help="weight of the LM's log10 score")
    g.add_argument("--word-score", type=float, default=None, help="score added per word")
    g.add_argument("--nbest", type=int, default=None, help="hypotheses per file (json output)")
    g.add_argument("--hotword", action="append", default=[], metavar="WORD[:BOOST]", help="boost a word or phrase")
    g.add_argument("--hotwords", type=Path, default=None, help="file: one phrase[:BOOST] per line")
    g.add_argument("--decoder-config", type=Path, default=None, help="JSON decoder settings (asr tune writes one)")


def read_decoder_config(path) -> dict | None:
    """The JSON decoder config at ``path`` (what asr tune writes), or None for no path;
    ValueError naming the file when it cannot be read."""
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the decoder config ({err})") from None


def decoder_options(args) -> dict:
    """DecoderConfig fields the user gave (asr.decoding.resolve merges them over the model's)."""
    from asr.hotwords import parse_hotword, read_hotwords

    given = dict(read_decoder_config(args.decoder_config) or {})
    flags = {"kind": args.decoder, "lexicon": args.lexicon, "lm": args.lm, "beam": args.beam,
             "lm_weight": args.lm_weight, "word_score": args.word_score, "nbest": args.nbest}
    given.update({k: v for k, v in flags.items() if v is not None})
    hotwords = [parse_hotword(h) for h in args.hotword]
    if args.hotwords is not None:
        hotwords += read_hotwords(args.hotwords)
    if hotwords:
        given["hotwords"] = [(" ".join(w), b) for w, b in hotwords]
    if args.decoder is None and any(k in given for k in ("lexicon", "lm", "hotwords")):
        given.setdefault("kind", "beam")
    return given


def _add_transcribe(sub, handler):
    from asr.subtitles import FORMATS

    p = sub.add_parser("transcribe", help="transcribe audio files, folders or manifests")
    p.add_argument("paths", nargs="+", help="audio files, folders (searched recursively) or .jsonl manifests")
    p.add_argument("--model", default=None, help="model directory or .tflite (default: the shipped FSDD model)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for a .tflite model (default: all)")
    p.add_argument("--format", choices=[*FORMATS, "text"], default="txt",
                   help="txt (path<TAB>text on stdout; 'text' is the same), tsv, json, srt, vtt")
    p.add_argument("--output-dir", type=Path, default=None, help="one file per input, named after it")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-vad", action="store_true",
                   help=f"do not cut files over {LONG_FILE_SECONDS:.0f} s at pauses (one windowed pass instead)")
    p.add_argument("--stream", action="store_true",
                   help="read each file chunk by chunk through a streaming model (asr export --streaming; default: "
                        "the shipped one), the partial text updating on stderr")
    p.add_argument("--realtime", action="store_true", help="with --stream: deliver the chunks at the pace of speech")
    add_decoder_args(p)
    p.set_defaults(func=handler)


def _add_evaluate(sub, handler):
    p = sub.add_parser("evaluate", help="WER/CER of a model on a manifest, written to files")
    p.add_argument("--model", required=True, type=Path, help="model directory or .tflite")
    p.add_argument("--manifest", required=True, nargs="+", type=Path,
                   help="test manifest(s); with several, each one's results go to OUT/<its file stem>")
    p.add_argument("--out", required=True, type=Path,
                   help="folder for hyps.tsv, errors.txt, summary.json; {stem} in it is replaced by each "
                        "manifest's file stem (e.g. exp/eval/{stem}-lm)")
    p.add_argument("--batch-size", type=int, default=32)
    add_decoder_args(p)
    p.set_defaults(func=handler)


def _add_tune(sub):
    p = sub.add_parser("tune", help="choose the LM weight and word score on a dev set (writes a decoder config)")
    p.add_argument("--model", required=True, type=Path, help="model directory or .tflite")
    p.add_argument("--manifest", required=True, nargs="+", type=Path, help="dev manifest(s)")
    p.add_argument("--lexicon", default=None, help="word list (default: the model's, else the LM's words)")
    p.add_argument("--lm", default=None, help="n-gram LM (default: the model's)")
    p.add_argument("--lm-weights", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5, 2.0])
    p.add_argument("--word-scores", type=float, nargs="+", default=[-1.0, 0.0, 1.0])
    p.add_argument("--beam", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", required=True, type=Path, help="decoder config to write (JSON); tuning.json beside it")
    p.set_defaults(func=cmd_tune)


def _add_lm(sub):
    p = sub.add_parser("lm", help="build an n-gram LM (modified Kneser-Ney ARPA) from text or manifests")
    p.add_argument("--text", required=True, nargs="+", type=Path, help="text files (a sentence per line) or .jsonl manifests")
    p.add_argument("--order", type=int, default=3)
    p.add_argument("--out", required=True, type=Path, help="LM.arpa (or .arpa.gz); the vocabulary is written beside it")
    p.add_argument("--units", choices=["words", "chars"], default="words",
                   help="chars: a character LM for beam search without a lexicon")
    p.add_argument("--builtin", action="store_true", help="use the built-in ARPA writer even when lmplz is installed")
    p.set_defaults(func=cmd_lm)


def add_parsers(sub, transcribe_handler, evaluate_handler) -> None:
    _add_evaluate(sub, evaluate_handler)
    _add_transcribe(sub, transcribe_handler)
    _add_tune(sub)
    _add_lm(sub)


def cmd_evaluate(args) -> int:
    from asr.evaluation import evaluate_many, summary_line

    stems = [m.name.removesuffix(".jsonl") for m in args.manifest]
    if "{stem}" in str(args.out):
        outs = [Path(str(args.out).replace("{stem}", s)) for s in stems]
    elif len(args.manifest) == 1:
        outs = [args.out]
    else:
        outs = [args.out / s for s in stems]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice and len(args.manifest) > 1:
        raise ValueError(f"several manifests named {', '.join(twice)}: their results would share one folder")
    summaries = evaluate_many(args.model, args.manifest, outs, batch_size=args.batch_size, decoding=decoder_options(args))
    for manifest, out, summary in zip(args.manifest, outs, summaries):
        print(f"{manifest}: {summary_line(summary)} -> {out}")
        for failure in summary["failures"]:
            print(f"error: {failure}", file=sys.stderr)
    return 0


def cmd_transcribe(args) -> int:
    from tqdm import tqdm

    from asr.subtitles import write_combined, write_outputs
    from asr.transcription import default_model, default_model_note, expand_inputs, load_recognizer

    paths, problems = expand_inputs(args.paths)
    results = list(problems)
    if args.realtime and not args.stream:
        raise ValueError("--realtime goes with --stream")
    if paths and args.stream:
        from asr.cli_streaming import cmd_transcribe_stream

        cmd_transcribe_stream(args, paths, results)
    elif paths:
        recognizer = load_recognizer(args.model, num_threads=args.threads, decoding=decoder_options(args))
        if args.model is None:  # once per command: what the shipped model knows
            print(default_model_note(default_model(), recognizer.corpus), file=sys.stderr, flush=True)
        from asr.audio import audio_seconds

        total = sum(audio_seconds(p) for p in paths)
        # a bar on a terminal only (tqdm's disable=None), in seconds of audio
        with tqdm(total=round(total, 1), unit="s", unit_scale=False, disable=None, file=sys.stderr,
                  desc="transcribing", leave=False, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]") as bar:
            results += recognizer.transcribe_files(paths, batch_size=args.batch_size, progress=bar.update,
                                                   segment_seconds=None if args.no_vad else LONG_FILE_SECONDS)
    for res in results:
        if res.error:
            print(f"error: {res.path}: {res.error}", file=sys.stderr)
    fmt = "txt" if args.format == "text" else args.format
    if args.output_dir is not None:
        for path in write_outputs(results, fmt, args.output_dir):
            print(path)
    else:
        write_combined(results, fmt, sys.stdout)
    return 1 if any(r.error for r in results) else 0


def cmd_tune(args) -> int:
    from asr.tuning import tune

    best = tune(args.model, args.manifest, args.out, lexicon=args.lexicon, lm=args.lm, lm_weights=args.lm_weights,
                word_scores=args.word_scores, beam=args.beam, batch_size=args.batch_size)
    print(f"best on {', '.join(map(str, args.manifest))}: lm_weight {best['lm_weight']}, word_score "
          f"{best['word_score']}, WER {100 * best['wer']:.2f}% -> {args.out}")
    return 0


def cmd_lm(args) -> int:
    from asr.lm import lm_command

    summary = lm_command(args.text, args.order, args.out, lmplz=False if args.builtin else None, units=args.units)
    print(json.dumps(summary))
    return 0
