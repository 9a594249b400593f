"""Input-pipeline throughput: audio seconds delivered per wall second, per mode and core count.

    python benchmarks/pipeline.py [--copies 60] [--cores 1 2] [--passes 4] [--out benchmarks/results/pipeline.json]

Data: the LibriSpeech sample utterances (../shared/data/librispeech-sample, 5 FLAC files at
16 kHz, 2-10 s), each listed ``--copies`` times under distinct ids (so the files are decoded from
the page cache, as a corpus on a fast local disk would be after its first epoch).
Modes (asr.data.open_data, training data, the default TrainConfig: speed factors 0.9/1.0/1.1,
SpecAugment 2+2 masks, utterance normalization, batch_frames 12000, max_batch_size 64):
- stream-tf: audio decoded with soundfile in tf.numpy_function, log-mels by log_mel_graph (TF ops)
- stream-numpy: audio decoded and log-mels by librosa, both in tf.numpy_function
- shards: float16 log-mels from TFRecord shards (asr.shards.write_shards), factor 1.0 only
- memory: log-mels cached in RAM (computed before timing), Python generator (for reference)
Each mode runs in a fresh process pinned to N cores (os.sched_setaffinity; tf.data's thread
pool sized to N); the figure is the original audio of one full pass over the data divided by
its wall time, the best of passes 2..``--passes`` (the first one includes graph tracing; the
best, because other jobs on a shared machine only ever slow a pass down; the 1-minute load
average at the start of each run is recorded).
Also measured: shard writing speed and size, and the float16 storage error.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LIBRISPEECH = ROOT.parent / "shared" / "data" / "librispeech-sample" / "LibriSpeech"
MODES = ("stream-tf", "stream-numpy", "shards", "memory")


def make_manifest(path: Path, copies: int) -> dict:
    import soundfile as sf

    from asr.manifest import Utterance, write_manifest

    utts = []
    for trans in sorted(LIBRISPEECH.rglob("*.trans.txt")):
        for line in trans.read_text().splitlines():
            uid, text = line.split(" ", 1)
            flac = trans.parent / f"{uid}.flac"
            info = sf.info(str(flac))
            utts += [Utterance(f"{uid}-{c}", str(flac), info.frames / info.samplerate, text) for c in range(copies)]
    write_manifest(path, utts)
    return {"utterances": len(utts), "distinct_files": len(utts) // copies, "audio_seconds": round(sum(u.duration for u in utts), 2)}


def measure(mode: str, cores: int, data: Path, passes: int, batch_frames: int, max_batch: int, cache: Path) -> dict:
    """In a fresh process: one DataSource, ``passes`` passes timed separately."""
    load = round(os.getloadavg()[0], 2)  # other jobs on the machine show here
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
    os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = str(cores)
    import asr  # noqa: F401
    from asr.data import open_data
    from asr.config import load_config

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(cores)
    tf.config.threading.set_inter_op_parallelism_threads(cores)
    pipeline = "memory" if mode == "memory" else "stream"
    config = load_config(None, [f"training.pipeline={pipeline}"])
    t0 = time.perf_counter()
    features = "numpy" if mode == "stream-numpy" else "tf"
    source = open_data([data], config, train=True, cache_dir=cache, stream_features=features)
    open_s = time.perf_counter() - t0
    options = tf.data.Options()
    options.threading.private_threadpool_size = cores
    ds = source.dataset(None, batch_frames, max_batch, seed=1).with_options(options)
    n, audio = source.num_utterances, source.audio_seconds
    it = iter(ds)
    results = []
    for _ in range(passes):
        start, got, batches = time.perf_counter(), 0, 0
        while got < n:  # one pass: every utterance once (buckets flush at the pass end)
            got += int(next(it)["feature_lengths"].shape[0])
            batches += 1
        wall = time.perf_counter() - start
        results.append({"wall_seconds": round(wall, 3), "batches": batches, "audio_seconds_per_second": round(audio / wall, 1)})
    best = max(r["audio_seconds_per_second"] for r in results[1:] or results)
    return {"mode": mode, "cores": cores, "open_seconds": round(open_s, 2), "passes": results,
            "audio_seconds_per_second": best, "per_core": round(best / cores, 1),
            "load_average_1min_at_start": load}


def float16_error(shards: Path, manifest: Path) -> dict:
    """Largest difference between the stored features and asr.features.log_mel (float32)."""
    import numpy as np

    from asr.audio import load_audio
    from asr.features import FeatureSpec, log_mel, normalize
    from asr.manifest import read_manifest
    from asr.shards import read_features

    spec = FeatureSpec()
    stored = read_features(shards)
    seen, raw_err, rel_err, norm_err = set(), 0.0, 0.0, 0.0
    for u in read_manifest(manifest):
        if u.audio in seen:
            continue
        seen.add(u.audio)
        ref = log_mel(load_audio(u.audio), spec)
        got = stored[u.id]
        raw_err = max(raw_err, float(np.abs(got - ref).max()))
        rel_err = max(rel_err, float((np.abs(got - ref) / np.maximum(np.abs(ref), 1e-3)).max()))
        norm_err = max(norm_err, float(np.abs(normalize(got, spec) - normalize(ref, spec)).max()))
    return {"max_abs_error_log_mel": raw_err, "max_relative_error": rel_err,
            "max_abs_error_after_utterance_normalization": round(norm_err, 6), "files": len(seen)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=60, help="copies of each sample utterance (5 files)")
    ap.add_argument("--cores", type=int, nargs="+", default=None, help="core counts to measure (default: 1 and all)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--passes", type=int, default=4)
    ap.add_argument("--batch-frames", type=int, default=12000)
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--per-shard", type=int, default=64, help="utterances per shard")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pipeline.json"))
    ap.add_argument("--_measure", nargs=3, metavar=("MODE", "CORES", "WORK"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._measure:
        mode, cores, work = args._measure
        work = Path(work)
        data = work / "shards" if mode == "shards" else work / "data.jsonl"
        print(json.dumps(measure(mode, int(cores), data, args.passes, args.batch_frames, args.max_batch_size, work / "cache")))
        return 0

    if not LIBRISPEECH.is_dir():
        sys.exit(f"LibriSpeech sample not found at {LIBRISPEECH}")
    import asr  # noqa: F401
    from asr.features import FeatureSpec
    from asr.report import machine
    from asr.shards import write_shards

    all_cores = len(os.sched_getaffinity(0))
    cores = args.cores or sorted({1, all_cores})
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make_manifest(work / "data.jsonl", args.copies)
        print(f"data: {data['utterances']} utterances, {data['audio_seconds'] / 60:.1f} min of audio", flush=True)
        write = write_shards([work / "data.jsonl"], FeatureSpec(), work / "shards", args.per_shard, workers=all_cores)
        size = sum(f.stat().st_size for f in (work / "shards").glob("shard-*.tfrecord"))
        shards = {
            "workers": all_cores,
            "utterances_per_shard": args.per_shard,
            "write_seconds": write["seconds"],
            "write_audio_seconds_per_second": round(data["audio_seconds"] / write["seconds"], 1),
            "bytes_per_audio_hour": round(size / (data["audio_seconds"] / 3600)),
            "float16": float16_error(work / "shards", work / "data.jsonl"),
        }
        print(f"shards: written in {write['seconds']} s; {shards['bytes_per_audio_hour'] / 1e6:.0f} MB per audio hour; "
              f"float16 error {shards['float16']['max_abs_error_log_mel']}", flush=True)
        runs = []
        for mode in args.modes:
            for k in cores:
                cmd = [sys.executable, __file__, "--_measure", mode, str(k), str(work), "--passes", str(args.passes),
                       "--batch-frames", str(args.batch_frames), "--max-batch-size", str(args.max_batch_size)]
                out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
                if out.returncode != 0:
                    sys.exit(f"{mode} on {k} core(s) failed:\n{out.stderr[-3000:]}")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                runs.append(r)
                print(f"{mode:13s} {k} core(s): {r['audio_seconds_per_second']:8.1f} audio s/s "
                      f"({r['per_core']:.1f} per core; passes {[p['audio_seconds_per_second'] for p in r['passes']]})", flush=True)

    result = {
        "machine": machine(),
        "data": {**data, "source": "LibriSpeech test-clean sample (5 FLAC files, 16 kHz), each listed --copies times",
                 "copies": args.copies},
        "config": {"batch_frames": args.batch_frames, "max_batch_size": args.max_batch_size,
                   "speed_factors": [0.9, 1.0, 1.1], "spec_augment": "2 freq masks (<= 10 channels), 2 time masks (<= 5%)",
                   "normalization": "utterance", "features": "80 log-mels, 25 ms / 10 ms", "passes": args.passes,
                   "figure": "original audio seconds of one full pass / wall seconds of that pass, best of passes 2..N"},
        "shards": shards,
        "stream_features_default": "tf (open_data(stream_features=...)): compare stream-tf with stream-numpy",
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def markdown(r: dict) -> str:
    c, s = r["config"], r["shards"]
    cores = sorted({x["cores"] for x in r["runs"]})
    lines = [
        "# Input pipeline throughput",
        "",
        f"`python benchmarks/pipeline.py --copies {r['data']['copies']}`: {r['data']['utterances']} utterances "
        f"({r['data']['audio_seconds'] / 60:.1f} min; the {r['data']['distinct_files']} LibriSpeech sample files repeated), "
        f"training data (speed factors 0.9/1.0/1.1 except shards, SpecAugment, utterance normalization), "
        f"batch_frames {c['batch_frames']}, max_batch_size {c['max_batch_size']}. Audio seconds delivered per wall second "
        f"over one full pass, best of passes 2-{c['passes']}; each run in its own process pinned to the given number "
        f"of cores (load average at the start of the runs: {min(x['load_average_1min_at_start'] for x in r['runs'])}-"
        f"{max(x['load_average_1min_at_start'] for x in r['runs'])}; the cores are shared with other jobs).",
        "",
        "| mode | " + " | ".join(f"{k} core(s)" for k in cores) + " | per core |",
        "|---|" + "---|" * (len(cores) + 1),
    ]
    for mode in dict.fromkeys(x["mode"] for x in r["runs"]):
        by = {x["cores"]: x for x in r["runs"] if x["mode"] == mode}
        best = max(by.values(), key=lambda x: x["cores"])
        lines.append(f"| {mode} | " + " | ".join(f"{by[k]['audio_seconds_per_second']:.0f}" if k in by else "" for k in cores)
                     + f" | {by[min(by)]['per_core']:.0f} (1 core), {best['per_core']:.0f} ({best['cores']} cores) |")
    f16 = s["float16"]
    lines += [
        "",
        "stream-tf computes the log-mels with TF ops in tf.data's C++ threads; stream-numpy runs librosa in "
        "tf.numpy_function, which holds the GIL, so it does not gain from a second core. stream-tf is the "
        "default (open_data's stream_features). Memory runs a Python generator (also GIL-bound).",
        "",
        f"Shards: written with {s['workers']} processes at {s['write_audio_seconds_per_second']:.0f} audio s/s "
        "(start-up of the processes included); "
        f"{s['bytes_per_audio_hour'] / 1e6:.0f} MB per audio hour in float16 "
        f"({s['bytes_per_audio_hour'] * 960 / 1e9:.0f} GB for 960 h). float16 storage error: at most "
        f"{f16['max_abs_error_log_mel']:.4f} on the log-mels (relative {f16['max_relative_error']:.1e}, half an ulp), "
        f"{f16['max_abs_error_after_utterance_normalization']:.4f} after normalization.",
        "",
        "Would a GPU starve: a training step consuming X audio seconds per second needs about "
        "X / (per-core figure) cores of input pipeline in the mode used.",
        "",
        f"Machine: {r['machine']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
