"""Long inputs through the .tflite runtime: peak memory, speed, and windowed == whole pass.

    python benchmarks/long_audio.py --data-dir ../shared/data/fsdd [--minutes 1 10 60] [--context]
        [--model models/fsdd.tflite] [--out benchmarks/results/long_audio.json]

Generates, in a temporary folder, one 16 kHz WAV per length in ``--minutes``: real FSDD test-split
digits (recordings 0-4, resampled from 8 kHz) joined by pauses of 0.3-1.5 s with faint noise.
Each file is transcribed by ``asr transcribe --model MODEL --threads 1`` in a subprocess; the
child's peak RSS (os.wait4) and its real-time factor (wall time / audio duration, start-up
included) are recorded, with the WER against the digits spoken. Files of at most
``WHOLE_MAX_MINUTES`` are also run in-process as one whole pass (no windows), and the
windowed transcript is compared with it.

``--context`` measures how much BiLSTM context a window needs: a 5-minute file is run whole
and in windows of 10 s with 0 to 40 s of context on each side; for each context, the largest
absolute difference of the log-probabilities, the share of frames with the whole pass's argmax
and whether the transcript is the same. It runs the model with its weights made float
(``float_weights``), whose output does not depend on the window beyond the BiLSTM state, and
the model as it is (dynamic int8, convolutions float: the int8 LSTMs carry differences a
little further, measured 40 s to match one pass to the bit).

Timings depend on what else the machine runs; peak RSS does not.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLE_RATE = 16000  # Hz, the model's input rate
PAUSE_SECONDS = (0.3, 1.5)  # pause drawn uniformly between digits
NOISE_STD = 3e-4  # about -70 dBFS of noise in the pauses and under the speech
WHOLE_MAX_MINUTES = 10  # whole-pass comparison up to here (one pass at 10 min: about 1 GB)
CONTEXT_FILE_SECONDS = 300  # length of the file of the context measurement
CONTEXT_WINDOW_FRAMES = 250  # 10 s cores in the context measurement
CONTEXT_SWEEP = (0, 25, 50, 125, 250, 375, 500, 750, 1000)  # output frames of context (40 ms each)


def digit_clips(data_dir: Path) -> list[tuple[np.ndarray, str]]:
    """FSDD test-split recordings at 16 kHz with their digit word, in a fixed order."""
    import soundfile as sf
    import soxr

    from asr.text import DIGIT_WORDS

    clips = []
    for path in sorted(Path(data_dir, "recordings").glob("*_[0-4].wav")):
        audio, rate = sf.read(str(path), dtype="float32")
        clips.append((soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32), DIGIT_WORDS[int(path.name[0])]))
    if not clips:
        raise SystemExit(f"no FSDD recordings in {data_dir}/recordings")
    return clips


def write_long_audio(path: Path, seconds: float, clips, seed: int = 0) -> str:
    """Write ``seconds`` of digits and pauses to ``path`` (16 kHz PCM_16, written piece by piece)
    and return the words spoken."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    target = int(seconds * SAMPLE_RATE)
    words, written = [], 0
    with sf.SoundFile(str(path), "w", SAMPLE_RATE, 1, "PCM_16") as f:
        while written < target:
            audio, word = clips[rng.integers(len(clips))]
            pause = np.zeros(int(rng.uniform(*PAUSE_SECONDS) * SAMPLE_RATE), np.float32)
            piece = np.concatenate([pause, audio])[: target - written]
            if piece.size == pause.size + audio.size:
                words.append(word)
            f.write(piece + rng.normal(0, NOISE_STD, piece.size).astype(np.float32))
            written += piece.size
    return " ".join(words)


# Runs argv[1:] and prints the child's peak RSS in kB on its last stderr line. A small process
# starts the measured one: a child's ru_maxrss starts from its parent's RSS at fork, and this
# benchmark's own process holds whole passes over long files.
MEASURE = """import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(child.pid, 0)
print(usage.ru_maxrss, file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


# How each file is transcribed (asr transcribe options): as subtitles, cut at pauses and decoded as
# the model ships (beam search, lexicon, LM), the same with greedy decoding, and one windowed pass
# over the whole file with greedy decoding (compared with one pass without windows).
MODES = {"srt, lexicon + LM": ["--format", "srt"], "srt, greedy": ["--format", "srt", "--decoder", "greedy"],
         "windowed whole file, greedy": ["--no-vad", "--decoder", "greedy"]}


def run_transcribe(model: Path, wav: Path, options: list[str], out_dir: Path) -> tuple[str, float, float, str, dict]:
    """(transcript, wall seconds, peak RSS in MB, stderr, subtitle checks) of ``asr transcribe``
    in a child; subtitles are parsed with the ``srt`` library."""
    cmd = [sys.executable, "-m", "asr", "transcribe", "--model", str(model), "--threads", "1", str(wav), *options]
    if "srt" in options:
        cmd += ["--output-dir", str(out_dir)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    *stderr, rss_kb = out.stderr.splitlines()
    if out.returncode != 0:
        raise SystemExit(f"asr transcribe failed ({out.returncode}):\n{out.stderr}")
    if "srt" not in options:
        return out.stdout.split("\t", 1)[1].strip(), wall, int(rss_kb) / 1024, "\n".join(stderr), {}
    import soundfile as sf
    import srt

    cues = list(srt.parse((out_dir / f"{wav.stem}.srt").read_text(encoding="utf-8")))
    times = [t.total_seconds() for c in cues for t in (c.start, c.end)]
    checks = {"cues": len(cues), "times_monotonic": times == sorted(times) and all(c.end > c.start for c in cues),
              "inside_file": bool(times) and times[0] >= 0 and times[-1] <= sf.info(str(wav)).duration}
    return " ".join(c.content for c in cues), wall, int(rss_kb) / 1024, "\n".join(stderr), checks


def wer(ref: str, hyp: str) -> float:
    from asr.evaluation import error_rates

    return error_rates([ref], [hyp])["wer"]


def bench_lengths(model: Path, minutes: list[float], clips, work: Path) -> list[dict]:
    from asr.audio import load_audio
    from asr.runtime import TFLiteModel

    floated = work / "float_weights.tflite"
    floated.write_bytes(float_weights(model.read_bytes()))
    rows = []
    for m in minutes:
        wav = work / f"long_{m:g}min.wav"
        ref = write_long_audio(wav, m * 60, clips, seed=int(m * 10))
        row = {"minutes": m, "file_mb": round(wav.stat().st_size / 1e6, 1), "words": len(ref.split()), "modes": {}}
        for mode, options in MODES.items():
            text, wall, rss, stderr, checks = run_transcribe(model, wav, options, work)
            row["modes"][mode] = {"peak_rss_mb": round(rss, 1), "wall_seconds": round(wall, 2),
                                  "rtf": round(wall / (m * 60), 4), "wer_vs_digits": round(wer(ref, text), 4),
                                  "stderr": stderr, **checks}
            print(f"{m:g} min, {mode}: peak RSS {rss:.0f} MB, RTF {wall / (m * 60):.4f}, WER {wer(ref, text):.2%} {checks}",
                  flush=True)
        if m <= WHOLE_MAX_MINUTES:  # one whole pass still fits: compare the last mode's text with it
            pcm = load_audio(wav)
            whole = TFLiteModel(model, num_threads=1, max_frames=10**9).transcribe(pcm)
            row["same_as_whole_pass"] = whole == text
            row["word_difference_to_whole_pass"] = round(wer(whole, text), 4)
            row["whole_pass_wer_vs_digits"] = round(wer(ref, whole), 4)
            windowed = TFLiteModel(floated, num_threads=1).transcribe(pcm)
            row["float_weights_same_as_whole_pass"] = windowed == TFLiteModel(
                floated, num_threads=1, max_frames=10**9).transcribe(pcm)
        rows.append(row)
        print(f"{m:g} min: windowed same as whole pass: {row.get('same_as_whole_pass', 'not run')} (float weights: "
              f"{row.get('float_weights_same_as_whole_pass', 'not run')})", flush=True)
        wav.unlink()
    return rows


def float_weights(tflite: bytes) -> bytes:
    """The .tflite with its int8 weight tensors dequantized to float32 (scale and zero point,
    per channel or per tensor), and the DEQUANTIZE ops of such weights removed: the same
    network without dynamic-range quantization."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(tflite, 0))
    for graph in model.subgraphs:
        for t in graph.tensors:
            q, buffer = t.quantization, model.buffers[t.buffer]
            if t.type != schema.TensorType.INT8 or q is None or q.scale is None or buffer.data is None:
                continue
            w = np.asarray(buffer.data, np.uint8).view(np.int8).reshape(t.shape).astype(np.float32)
            shape = [1] * w.ndim
            if len(q.scale) > 1:
                shape[q.quantizedDimension] = -1
            scale = np.asarray(q.scale, np.float32).reshape(shape)
            zero = np.asarray(q.zeroPoint, np.float32).reshape(shape)
            buffer.data = np.frombuffer(((w - zero) * scale).astype(np.float32).tobytes(), np.uint8)
            t.type, t.quantization = schema.TensorType.FLOAT32, None
        # a DEQUANTIZE of weights that are float now has nothing to do: its consumers read them
        dequantize = {i for i, c in enumerate(model.operatorCodes)
                      if max(c.builtinCode, c.deprecatedBuiltinCode) == schema.BuiltinOperator.DEQUANTIZE}
        dropped = {op.outputs[0]: op.inputs[0] for op in graph.operators
                   if op.opcodeIndex in dequantize and graph.tensors[op.inputs[0]].type == schema.TensorType.FLOAT32}
        graph.operators = [op for op in graph.operators if op.outputs[0] not in dropped]
        for op in graph.operators:
            op.inputs = [dropped.get(i, i) for i in op.inputs]
    builder = flatbuffers.Builder(4 * len(tflite))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def bench_context(model: Path, clips, work: Path) -> dict:
    from asr.audio import load_audio
    from asr.runtime import TFLiteModel

    wav = work / "context.wav"
    write_long_audio(wav, CONTEXT_FILE_SECONDS, clips, seed=7)
    pcm = load_audio(wav)
    floated = work / "float_weights.tflite"
    floated.write_bytes(float_weights(model.read_bytes()))
    report = {"file_seconds": CONTEXT_FILE_SECONDS, "window_frames": CONTEXT_WINDOW_FRAMES}
    for name, path in (("float_weights", floated), ("as_shipped", model)):
        whole_model = TFLiteModel(path, num_threads=1, max_frames=10**9)
        whole = whole_model.log_probs(pcm)
        text = whole_model.decode(whole)
        rows = []
        for context in CONTEXT_SWEEP:
            windowed = TFLiteModel(path, num_threads=1, window_frames=CONTEXT_WINDOW_FRAMES, context_frames=context,
                                   max_frames=0)
            out = windowed.log_probs(pcm)
            row = {"context_frames": context, "context_seconds": round(context * 0.04, 2),
                   "max_abs_diff": float(np.abs(out - whole).max()),
                   "argmax_agreement": float((out.argmax(1) == whole.argmax(1)).mean()),
                   "same_transcript": windowed.decode(out) == text}
            rows.append(row)
            print(f"{name}: context {context:4d} frames ({row['context_seconds']:5.2f} s): max |diff| "
                  f"{row['max_abs_diff']:.2e}, argmax {row['argmax_agreement']:.4%}, same text {row['same_transcript']}",
                  flush=True)
        report[name] = rows
    return report


def table(rows: list[dict]) -> str:
    lines = ["| audio | how | peak RSS | RTF (1 thread) | WER vs digits | subtitle times in order, inside the file |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        for mode, x in r["modes"].items():
            cues = f"yes ({x['cues']} cues)" if x.get("times_monotonic") and x.get("inside_file") else (
                "no" if "cues" in x else "")
            lines.append(f"| {r['minutes']:g} min | {mode} | {x['peak_rss_mb']:.0f} MB | {x['rtf']} | "
                         f"{x['wer_vs_digits']:.2%} | {cues} |")
    lines += ["", "| audio | windowed whole file = one pass: same text (words differing), WER | float weights |",
              "|---|---|---|"]
    for r in rows:
        if "same_as_whole_pass" in r:
            lines.append(f"| {r['minutes']:g} min | {'yes' if r['same_as_whole_pass'] else 'no'} "
                         f"({r['word_difference_to_whole_pass']:.2%}), {r['whole_pass_wer_vs_digits']:.2%} | "
                         f"{'yes' if r['float_weights_same_as_whole_pass'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "fsdd")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "fsdd.tflite")
    parser.add_argument("--minutes", type=float, nargs="*", default=[1, 10, 60])
    parser.add_argument("--context", action="store_true", help="also measure the context a window needs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "long_audio.json")
    args = parser.parse_args()

    from asr.windows import CONTEXT_FRAMES, WINDOW_FRAMES

    clips = digit_clips(args.data_dir)
    report = {"model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
              "window_frames": WINDOW_FRAMES, "context_frames": CONTEXT_FRAMES, "cpu_count": os.cpu_count()}
    if args.out.exists():  # keep the other part of an earlier run
        report = {**json.loads(args.out.read_text()), **report}
    with tempfile.TemporaryDirectory() as tmp:
        if args.context:
            report["context"] = bench_context(args.model, clips, Path(tmp))
        if args.minutes:
            report["lengths"] = bench_lengths(args.model, args.minutes, clips, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    if "lengths" in report:
        print(table(report["lengths"]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
