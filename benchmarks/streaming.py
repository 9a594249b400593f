"""The streaming .tflite (asr export --streaming) measured: exactness against the whole-file
pass, latency of each digit, compute per chunk, memory over a long stream, interleaved streams.

    python benchmarks/streaming.py [--model models/fsdd_streaming] [--eval-dir recipes/fsdd/data/manifests/eval]
        [--minutes 30] [--out benchmarks/results/streaming.json]

--model is a unidirectional Keras model directory (the shipped one, or a recipe's
exp/streaming/model); --eval-dir the FSDD recipe's evaluation manifests (fsdd_*.jsonl; the
connected sets with their .words.jsonl truth beside them). Everything runs on 1 thread.

exactness   for each chunk length (160, 320, 640 ms), every FSDD test utterance plus a 0.1 s
            clip streamed chunk by chunk (asr.streaming) against one whole-file pass of the same
            model (export/convert.py, asr.runtime): float32 max |diff| of the log-probabilities;
            dynamic int8 (what ships) the number of utterances whose greedy text differs, on
            LiteRT's default kernels and on its builtin kernels only (``exactness``).
latency     connected digits (george's, never heard, and the trained speakers'): the stream is
            delivered a chunk at a time as a microphone would (chunk i complete at (i + 1) * chunk
            seconds), each chunk is computed when it arrives (its measured compute time added);
            a digit "appears" when the partial (greedy) text first holds it as the final text
            does. Latency = appearance - the digit's end of speech (energy-trimmed truth,
            asr.corpora.fsdd). Digits that the final text gets right only (jiwer alignment hits).
            Includes the chunk wait, the 46 ms look-ahead, the model's own emission delay and
            the compute. RTF = compute / audio.
memory      ``asr stream -`` reading --minutes of raw PCM (connected digits and pauses, looped)
            from a pipe as fast as it takes it; its resident set size sampled every 50 ms.
interleave  two streams alternating call by call on one interpreter against each alone.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHUNKS = (160, 320, 640)
RATE = 16000
FSDD_SETS = ("fsdd_heldout", "fsdd_heldout_connected", "fsdd_seen", "fsdd_seen_connected")
LATENCY_SETS = ("fsdd_heldout_connected", "fsdd_seen_connected")
PAUSE = 1.0  # seconds of silence between the strings of the memory stream
SAMPLE_SECONDS = 0.05  # RSS sampling interval


def load_sets(eval_dir: Path) -> dict[str, list]:
    from asr.audio import load_audio
    from asr.manifest import read_manifest

    return {name: [(u, load_audio(u.audio, RATE)) for u in read_manifest(eval_dir / f"{name}.jsonl")] for name in FSDD_SETS}


def exports(model: Path, work: Path) -> dict:
    """{(kind, quantization): path}: kind "whole" or a chunk length."""
    from export.convert import export_model
    from export.streaming import export_streaming

    out = {}
    for q in ("float32", "dynamic"):
        out["whole", q] = work / f"whole-{q}.tflite"
        if not out["whole", q].exists():
            export_model(model, out["whole", q], q)
        for ms in CHUNKS:
            out[ms, q] = work / f"stream-{ms}-{q}.tflite"
            if not out[ms, q].exists():
                export_streaming(model, out[ms, q], ms, q)
    return out


def exactness(files: dict, sets: dict) -> dict:
    """Both files on LiteRT's default kernels (XNNPACK, what apps get), and both on TFLite's
    builtin kernels only (no default delegate): XNNPACK runs the streaming file's int8
    FULLY_CONNECTED steps, but not the whole-file graph's fused LSTM or GRU loop, and its
    int8 arithmetic differs from the builtin kernels' in the last bits."""
    from asr.runtime import TFLiteModel, decode_text
    from asr.streaming import StreamingModel

    audios = [a for name in FSDD_SETS for _, a in sets[name]]
    audios.append(audios[0][:1600])  # 0.1 s
    result = {"utterances": len(audios)}
    for q, xnnpack in (("float32", True), ("dynamic", True), ("dynamic", False)):
        whole = TFLiteModel(files["whole", q], num_threads=1, xnnpack=xnnpack)
        want = [whole.log_probs(a) for a in audios]
        texts = [whole.decode(w) for w in want]
        for ms in CHUNKS:
            model = StreamingModel(files[ms, q], num_threads=1, xnnpack=xnnpack)
            got = [model.log_probs(a) for a in audios]
            assert all(g.shape == w.shape for g, w in zip(got, want))
            differ = sum(decode_text(g, model.symbols, model.blank) != t for g, t in zip(got, texts))
            key = f"{q}_{ms}ms" + ("" if xnnpack else "_builtin_kernels")
            result[key] = {"max_abs_diff": float(max(np.abs(g - w).max() for g, w in zip(got, want))),
                           "texts_differing": int(differ)}
            print(f"exactness {key}: {result[key]}", flush=True)
    return result


def hits(ref: list[str], hyp: list[str]) -> list[tuple[int, int]]:
    """(reference index, hypothesis index) of every word the alignment calls equal."""
    import jiwer

    pairs = []
    for chunk in jiwer.process_words(" ".join(ref), " ".join(hyp)).alignments[0]:
        if chunk.type == "equal":
            pairs += [(chunk.ref_start_idx + k, chunk.hyp_start_idx + k) for k in range(chunk.ref_end_idx - chunk.ref_start_idx)]
    return pairs


def latency(path: Path, eval_dir: Path, sets: dict) -> dict:
    from asr.corpora.fsdd import read_word_times
    from asr.streaming import StreamingModel, StreamingRecognizer

    model = StreamingModel(path, num_threads=1)
    recognizer = StreamingRecognizer(model)
    c = model.chunk_samples
    out, compute, audio_seconds = {}, [], 0.0
    for name in LATENCY_SETS:
        truth = read_word_times((eval_dir / f"{name}.jsonl").resolve())  # the .words.jsonl lies beside the real file
        lat = []
        for utt, audio in sets[name]:
            seen = []  # (time the partial is known, partial words)
            for i in range(0, len(audio), c):
                t = time.perf_counter()
                partial = recognizer.accept(audio[i : i + c])
                spent = time.perf_counter() - t
                compute.append(spent)
                if i + c <= len(audio):  # a full chunk was computed (a partial one waits for finish)
                    seen.append(((i + c) / RATE + spent, partial.split()))
            t = time.perf_counter()
            final = recognizer.finish().text.split()
            spent = time.perf_counter() - t
            compute.append(spent)
            seen.append((len(audio) / RATE + spent, final))
            audio_seconds += len(audio) / RATE
            words = truth[utt.id]
            for r, h in hits([w["word"] for w in words], final):
                shown = next(t for t, partial in seen if len(partial) > h and partial[h] == final[h] and
                             (len(partial) > h + 1 or partial == final[: h + 1]))
                lat.append(shown - words[r]["speech_end"])
        lat = np.array(lat)
        out[name] = {"digits": int(lat.size), "median_ms": round(1000 * float(np.median(lat)), 1),
                     "p90_ms": round(1000 * float(np.percentile(lat, 90)), 1),
                     "max_ms": round(1000 * float(lat.max()), 1)}
    out["rtf"] = round(sum(compute) / audio_seconds, 5)
    out["compute_per_chunk_ms"] = {"median": round(1000 * float(np.median(compute)), 3),
                                   "p99": round(1000 * float(np.percentile(compute, 99)), 3)}
    return out


def memory(path: Path, sets: dict, minutes: float) -> dict:
    """Peak RSS of ``asr stream -`` over ``minutes`` of PCM, sampled every SAMPLE_SECONDS."""
    pause = np.zeros(int(PAUSE * RATE), np.float32)
    pieces = [x for _, a in sets["fsdd_seen_connected"] for x in (a, pause)]
    loop = (np.clip(np.concatenate(pieces), -1, 1) * 32767).astype("<i2").tobytes()
    total = int(minutes * 60 * RATE) * 2
    proc = subprocess.Popen([sys.executable, "-m", "asr", "stream", "-", "--model", str(path), "--no-partials"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    samples, written = [], [0]
    segments = []
    reader = threading.Thread(target=lambda: segments.extend(proc.stdout.read().decode().splitlines()))
    reader.start()

    def sample():
        while proc.poll() is None:
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        samples.append((written[0] / 2 / RATE, int(line.split()[1]) / 1024))
            except OSError:
                break
            time.sleep(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    block = RATE  # 0.5 s of 16-bit samples
    while written[0] < total:
        for i in range(0, len(loop), block):
            part = loop[i : i + block][: total - written[0]]
            if not part:
                break
            proc.stdin.write(part)
            written[0] += len(part)
    proc.stdin.close()
    rc = proc.wait()
    reader.join()
    sampler.join()
    if rc != 0:
        raise RuntimeError(f"asr stream failed: {proc.stderr.read().decode()[-2000:]}")
    rss = np.array([r for _, r in samples])
    half = len(rss) // 2
    return {"audio_minutes": minutes, "wall_seconds": round(time.perf_counter() - start, 1), "segments": len(segments),
            "rss_mb_samples": len(rss), "rss_mb_peak": round(float(rss.max()), 1),
            "rss_mb_peak_first_half": round(float(rss[:half].max()), 1),
            "rss_mb_peak_second_half": round(float(rss[half:].max()), 1),
            "rss_mb_at": {f"{t / 60:.1f} min": round(r, 1) for t, r in samples[:: max(1, len(samples) // 10)]}}


def interleave(path: Path, sets: dict) -> bool:
    from asr.streaming import StreamingModel, StreamingRecognizer

    model = StreamingModel(path, num_threads=1)
    a, b = sets["fsdd_heldout_connected"][0][1], sets["fsdd_seen_connected"][0][1]
    alone = [model.log_probs(a), model.log_probs(b)]
    sa, sb = StreamingRecognizer(model), StreamingRecognizer(model)
    for i in range(0, max(len(a), len(b)), 1000):
        sa.accept(a[i : i + 1000])
        sb.accept(b[i : i + 1000])
    return bool(np.array_equal(sa.finish_log_probs(), alone[0]) and np.array_equal(sb.finish_log_probs(), alone[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "fsdd_streaming")
    parser.add_argument("--eval-dir", type=Path, default=ROOT / "recipes" / "fsdd" / "data" / "manifests" / "eval")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "streaming")
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the memory stream")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "streaming.json")
    args = parser.parse_args()
    from asr.report import machine
    from export.streaming import DEFAULT_CHUNK_MS

    args.work.mkdir(parents=True, exist_ok=True)
    sets = load_sets(args.eval_dir)
    files = exports(args.model, args.work)
    result = {"machine": machine(), "model": str(args.model), "default_chunk_ms": DEFAULT_CHUNK_MS}
    result["exactness"] = exactness(files, sets)
    result["latency"] = {}
    for ms in CHUNKS:
        result["latency"][f"{ms}ms"] = latency(files[ms, "dynamic"], args.eval_dir, sets)
        print(f"latency {ms} ms: {result['latency'][f'{ms}ms']}", flush=True)
    result["interleaved_equal_alone"] = interleave(files[DEFAULT_CHUNK_MS, "dynamic"], sets)
    result["memory"] = memory(files[DEFAULT_CHUNK_MS, "dynamic"], sets, args.minutes)
    print(json.dumps(result["memory"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
