"""Log-mel shards: compute a corpus's features once, offline, and stream them from disk.

For corpora whose features do not fit in memory (LibriSpeech 960 h: 110 GB of float32 log-mels).
``write_shards`` computes the un-normalized log-mels of every utterance of some manifests, in
parallel processes, into sharded TFRecord files; ``asr.data.open_data`` streams a shard
folder (give the folder where a manifest would go).

    python -m asr.shards --config models/configs/x.yaml --out data/shards/train data/manifests/train*.jsonl

Folder layout:
    plan.json              written first: what the folder is built from (fingerprint, spec, sizes)
    shard-00000.tfrecord   tf.train.Example records, one per utterance (below)
    shard-00000.meta.npz   per record: plan position, frames, per-channel sum and sum of squares
    index.json             written last, atomically: shards, utterances (id, text, duration, frames,
                           shard) in record order, the FeatureSpec, per-shard sums for global
                           statistics, problems (unreadable audio: reported, not fatal)

Record features: "id" (bytes), "text" (bytes), "frames" (int64), "feats" (bytes: little-endian
float16 [frames, n_mels], un-normalized log-mels, FeatureSpec without its normalization).

Ordering: utterances are sorted by manifest duration (ties: manifest order) and cut into shards
of ``utterances_per_shard``, so shard k holds the k-th length slice; inside a shard the records
are sorted by their exact frame count. Reading the shards in order is the shortest-first pass.

Storage precision: float16 halves the disk (LibriSpeech 960 h: 55 GB instead of 110 GB). Its
error is half a unit in the last place: |x| * 2**-11 at most, 0.0039 for the log floor's -13.8
(the largest magnitude log-mels reach); measured on the LibriSpeech sample by
benchmarks/pipeline.py. Global statistics are summed from the float32 features before rounding.

Speed perturbation: shards hold speed factor 1.0 only (the factors would multiply the disk).

Resuming: every shard is written to a temporary name and renamed when complete; a rerun
computes only the shards that are missing, and does nothing (and says so) when index.json is
there. A folder planned from a different FeatureSpec, dtype, shard size, duration limit or
utterance list is refused (``overwrite=True`` rebuilds it).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from asr.features import FeatureSpec

log = logging.getLogger(__name__)

FORMAT = 1
DTYPE = "float16"  # "float32" also reads and writes; see the module docstring
UTTERANCES_PER_SHARD = 256  # LibriSpeech: ~50 MB of float16 per shard
INDEX, PLAN = "index.json", "plan.json"


class ShardError(ValueError):
    """A shard folder that cannot be written or read as asked; the message says why."""


def raw_spec(spec: FeatureSpec) -> dict:
    """The FeatureSpec fields that define un-normalized log-mels (normalization is applied when
    reading, so one shard folder serves both normalizations)."""
    d = spec.to_dict()
    d.pop("normalization")
    return d


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.tfrecord"


def meta_name(k: int) -> str:
    return f"shard-{k:05d}.meta.npz"


def is_shard_folder(path) -> bool:
    return Path(path).is_dir() and (Path(path) / INDEX).is_file()


# ------------------------------------------------------------------------------- writing


def _plan(utts, spec: FeatureSpec, per_shard: int, max_duration, dtype: str, manifests) -> dict:
    h = hashlib.sha256()
    for u in utts:
        h.update(f"{u.id}\t{u.duration!r}\t{os.path.basename(u.audio)}\t{u.text}\n".encode())
    plan = {
        "format": FORMAT,
        "spec": raw_spec(spec),
        "dtype": dtype,
        "utterances_per_shard": per_shard,
        "max_duration": max_duration,
        "utterances": len(utts),
        "utterances_sha256": h.hexdigest(),
        "shards": -(-len(utts) // per_shard),
        "manifests": [Path(m).name for m in manifests],
    }
    keys = ("format", "spec", "dtype", "utterances_per_shard", "max_duration", "utterances_sha256")
    plan["fingerprint"] = hashlib.sha256(json.dumps({k: plan[k] for k in keys}, sort_keys=True).encode()).hexdigest()[:16]
    return plan


def _plan_diff(old: dict, new: dict) -> list[str]:
    out = []
    for key in ("format", "dtype", "utterances_per_shard", "max_duration"):
        if old.get(key) != new.get(key):
            out.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    for key in sorted(set(old.get("spec", {})) | set(new["spec"])):
        if old.get("spec", {}).get(key) != new["spec"].get(key):
            out.append(f"features.{key}: {old.get('spec', {}).get(key)!r} -> {new['spec'].get(key)!r}")
    if old.get("utterances_sha256") != new["utterances_sha256"]:
        out.append(
            f"manifests: {old.get('utterances')} utterances from {', '.join(old.get('manifests', []))} -> "
            f"{new['utterances']} from {', '.join(new['manifests'])} (ids, texts, durations or files differ)"
        )
    return out


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, ensure_ascii=False))
    os.replace(tmp, path)


def _own_files(out: Path) -> list[Path]:
    return [out / INDEX, out / PLAN, *out.glob("shard-*.tfrecord"), *out.glob("shard-*.meta.npz"), *out.glob(".*.tmp-*")]


def _compute_shard(job):
    """Worker: (k, spec dict, dtype, [(position, id, audio path)]) -> features of shard k.

    Runs in a spawned process without TensorFlow: load_audio + librosa log_mel."""
    k, spec_dict, dtype, items = job
    from asr.audio import AudioError, load_audio
    from asr.features import feature_sums, log_mel

    spec = FeatureSpec(**spec_dict)
    done, problems, max_err = [], [], 0.0
    for pos, uid, audio in items:
        try:
            feats = log_mel(load_audio(audio, spec.sample_rate), spec)
        except AudioError as err:
            problems.append((pos, f"{uid}: {err}"))
            continue
        except Exception as err:  # a decoder's own failure: reported, never fatal
            problems.append((pos, f"{uid}: {type(err).__name__}: {err}"))
            continue
        stored = feats.astype(dtype)
        max_err = max(max_err, float(np.max(np.abs(stored.astype(np.float32) - feats))) if feats.size else 0.0)
        sums, sq, _ = feature_sums([feats], spec.n_mels)
        done.append((feats.shape[0], pos, stored.astype(stored.dtype.newbyteorder("<")).tobytes(), sums, sq))
    done.sort(key=lambda r: (r[0], r[1]))  # shortest first inside the shard, then plan order
    return {"k": k, "n_mels": spec.n_mels, "records": done, "problems": problems, "max_error": max_err}


def _store_shard(out: Path, result: dict, plan_utts) -> None:
    """Write one computed shard: meta then records, each to a temporary name, renamed when complete."""
    import tensorflow as tf

    k, records = result["k"], result["records"]
    n_mels = result["n_mels"]
    meta_tmp = out / f".{meta_name(k)}.tmp-{os.getpid()}.npz"
    np.savez(
        meta_tmp,
        positions=np.array([r[1] for r in records], np.int64),
        frames=np.array([r[0] for r in records], np.int64),
        sums=np.array([r[3] for r in records], np.float64).reshape(len(records), n_mels),
        sumsq=np.array([r[4] for r in records], np.float64).reshape(len(records), n_mels),
        problem_positions=np.array([p for p, _ in result["problems"]], np.int64),
        problems=np.array([m for _, m in result["problems"]], dtype=object),
        max_error=np.float64(result["max_error"]),
    )
    rec_tmp = out / f".{shard_name(k)}.tmp-{os.getpid()}"
    with tf.io.TFRecordWriter(str(rec_tmp)) as writer:
        for frames, pos, data, _, _ in records:
            u = plan_utts[pos]
            feature = {
                "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[u.id.encode()])),
                "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[u.text.encode()])),
                "frames": tf.train.Feature(int64_list=tf.train.Int64List(value=[frames])),
                "feats": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    os.replace(meta_tmp, out / meta_name(k))
    os.replace(rec_tmp, out / shard_name(k))  # the shard counts as done from here on


def write_shards(
    manifests,
    spec: FeatureSpec,
    out_dir,
    utterances_per_shard: int = UTTERANCES_PER_SHARD,
    workers: int | None = None,
    max_duration: float | None = None,
    overwrite: bool = False,
    dtype: str = DTYPE,
) -> dict:
    """Compute the un-normalized log-mels of every utterance of ``manifests`` into ``out_dir``
    (layout in the module docstring); resumable per shard. Returns a summary dict:
    shards, computed (this call), reused, utterances written, problems, too_long, seconds,
    max_abs_error (of the storage dtype, over the shards computed now), nothing_to_do.

    ``workers``: processes (spawned; default min(cores, 8)); 1 computes in this process.
    ``max_duration``: utterances longer than this (manifest seconds) are left out and counted.
    Raises ShardError for a folder planned from something else (unless ``overwrite``)."""
    from tqdm import tqdm

    from asr.manifest import read_manifest

    if dtype not in ("float16", "float32"):
        raise ShardError(f"dtype must be float16 or float32, got {dtype!r}")
    if utterances_per_shard < 1:
        raise ShardError(f"utterances_per_shard must be >= 1, got {utterances_per_shard}")
    start = time.perf_counter()
    manifests = [Path(m) for m in manifests]
    utts, seen = [], {}
    for m in manifests:
        for u in read_manifest(m):
            if u.id in seen:
                raise ShardError(f"utterance id {u.id!r} appears in both {seen[u.id]} and {m}; ids must be unique")
            seen[u.id] = m
            utts.append(u)
    too_long = [u.id for u in utts if max_duration is not None and u.duration > max_duration]
    utts = [u for u in utts if max_duration is None or u.duration <= max_duration]
    order = sorted(range(len(utts)), key=lambda i: (utts[i].duration, i))
    plan_utts = [utts[i] for i in order]  # plan position -> utterance
    plan = _plan(plan_utts, spec, utterances_per_shard, max_duration, dtype, manifests)
    num_shards = plan["shards"]

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ShardError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    if (out / PLAN).is_file():
        old = json.loads((out / PLAN).read_text())
        if old.get("fingerprint") != plan["fingerprint"]:
            if not overwrite:
                raise ShardError(
                    f"{out} holds shards of different data or features; refusing to mix them. Differences "
                    f"(folder -> now): {'; '.join(_plan_diff(old, plan)) or 'fingerprint'}. Use another folder, "
                    "or overwrite=True (--overwrite) to rebuild it."
                )
            for f in _own_files(out):
                f.unlink(missing_ok=True)
    elif (out / INDEX).exists() or any(out.glob("shard-*")):
        if not overwrite:
            raise ShardError(f"{out} holds shard files but no {PLAN}; use another folder, or overwrite=True to rebuild it")
        for f in _own_files(out):
            f.unlink(missing_ok=True)
    if (out / INDEX).is_file() and json.loads((out / INDEX).read_text()).get("fingerprint") == plan["fingerprint"]:
        index = json.loads((out / INDEX).read_text())
        print(f"{out}: all {num_shards} shards are present ({index['num_utterances']} utterances); nothing to do", flush=True)
        return _summary(out, index, computed=0, seconds=time.perf_counter() - start, max_error=None, nothing_to_do=True)
    _write_json(out / PLAN, plan)
    for stale in out.glob(".*.tmp-*"):  # left by a killed run
        stale.unlink(missing_ok=True)

    bounds = [(k * utterances_per_shard, min(len(plan_utts), (k + 1) * utterances_per_shard)) for k in range(num_shards)]
    missing = [k for k in range(num_shards) if not ((out / shard_name(k)).is_file() and (out / meta_name(k)).is_file())]
    if len(missing) < num_shards:
        print(f"{out}: {num_shards - len(missing)} of {num_shards} shards present, computing the {len(missing)} missing", flush=True)
    jobs = [(k, spec.to_dict(), dtype, [(p, plan_utts[p].id, plan_utts[p].audio) for p in range(*bounds[k])]) for k in missing]
    workers = workers or max(1, min(os.cpu_count() or 1, 8))
    max_error = 0.0
    bar = tqdm(total=len(jobs), desc="shards", unit="shard", disable=None)
    if workers > 1 and len(jobs) > 1:
        workers = min(workers, len(jobs))
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            queue, running = list(reversed(jobs)), set()
            while queue or running:
                while queue and len(running) < 2 * workers:  # a bounded window: results are large
                    running.add(pool.submit(_compute_shard, queue.pop()))
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    result = fut.result()
                    _store_shard(out, result, plan_utts)
                    max_error = max(max_error, result["max_error"])
                    bar.update()
    else:
        for job in jobs:
            result = _compute_shard(job)
            _store_shard(out, result, plan_utts)
            max_error = max(max_error, result["max_error"])
            bar.update()
    bar.close()

    index = _build_index(out, plan, plan_utts, num_shards, too_long)
    _write_json(out / INDEX, index)
    summary = _summary(out, index, computed=len(jobs), seconds=time.perf_counter() - start, max_error=max_error,
                       nothing_to_do=False)
    print(
        f"{out}: {summary['utterances']} utterances in {num_shards} shards ({summary['computed']} computed now)"
        + (f"; {len(index['problems'])} unreadable" if index["problems"] else "")
        + (f"; {len(too_long)} longer than {max_duration} s left out" if too_long else ""),
        flush=True,
    )
    return summary


def _build_index(out: Path, plan: dict, plan_utts, num_shards: int, too_long: list[str]) -> dict:
    cols = {"id": [], "text": [], "duration": [], "frames": [], "shard": []}
    shards, problems = [], []
    for k in range(num_shards):
        with np.load(out / meta_name(k), allow_pickle=True) as z:
            positions, frames = z["positions"], z["frames"]
            sums, sumsq = z["sums"], z["sumsq"]
            problems += [str(p) for p in z["problems"]]
        for pos, f in zip(positions.tolist(), frames.tolist()):
            u = plan_utts[pos]
            cols["id"].append(u.id)
            cols["text"].append(u.text)
            cols["duration"].append(u.duration)
            cols["frames"].append(int(f))
            cols["shard"].append(k)
        shards.append({
            "file": shard_name(k),
            "meta": meta_name(k),
            "utterances": int(len(positions)),
            "frames": int(frames.sum()),
            "sum": sums.sum(axis=0).tolist(),
            "sumsq": sumsq.sum(axis=0).tolist(),
        })
    return {
        "format": FORMAT,
        "fingerprint": plan["fingerprint"],
        "spec": plan["spec"],
        "dtype": plan["dtype"],
        "utterances_per_shard": plan["utterances_per_shard"],
        "max_duration": plan["max_duration"],
        "manifests": plan["manifests"],
        "num_utterances": len(cols["id"]),
        "shards": shards,
        "utterances": cols,
        "problems": problems,
        "too_long": too_long,
    }


def _summary(out: Path, index: dict, computed: int, seconds: float, max_error, nothing_to_do: bool) -> dict:
    return {
        "out_dir": str(out),
        "shards": len(index["shards"]),
        "computed": computed,
        "reused": len(index["shards"]) - computed,
        "utterances": index["num_utterances"],
        "problems": len(index["problems"]),
        "too_long": len(index["too_long"]),
        "audio_seconds": round(float(sum(index["utterances"]["duration"])), 2),
        "dtype": index["dtype"],
        "max_abs_error": max_error,
        "seconds": round(seconds, 2),
        "nothing_to_do": nothing_to_do,
    }


# ------------------------------------------------------------------------------- reading


def read_index(folder) -> dict:
    """index.json of a finished shard folder, checked: format, every shard file present."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ShardError(f"shard folder not found: {folder}")
    if not (folder / INDEX).is_file():
        raise ShardError(f"{folder} has no {INDEX}: not a finished shard folder (rerun write_shards to complete it)")
    index = json.loads((folder / INDEX).read_text())
    if index.get("format") != FORMAT:
        raise ShardError(f"{folder}: shard format {index.get('format')!r}, this version reads {FORMAT}; rebuild it")
    absent = [s["file"] for s in index["shards"] if not (folder / s["file"]).is_file()]
    if absent:
        raise ShardError(f"{folder}: shard file(s) missing: {', '.join(absent[:5])}; rerun write_shards to complete it")
    return index


def check_spec(folder, index: dict, spec: FeatureSpec) -> None:
    """Raise ShardError when the folder's features are not the ones ``spec`` asks for."""
    want = raw_spec(spec)
    diff = [f"{k}: {index['spec'].get(k)!r} (shards) vs {want.get(k)!r} (config)" for k in sorted(want) if index["spec"].get(k) != want.get(k)]
    if diff:
        raise ShardError(f"{folder} holds features of another FeatureSpec: {'; '.join(diff)}. Rewrite the shards for this config.")


def utterance_sums(folder, index: dict, shard: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-record channel sums and sums of squares of one shard: float64 [records, n_mels] each."""
    with np.load(Path(folder) / index["shards"][shard]["meta"], allow_pickle=True) as z:
        return z["sums"], z["sumsq"]


def parse_record(serialized, n_mels: int, dtype: str = DTYPE):
    """One serialized record -> float32 log-mels [frames, n_mels] (TF ops, for tf.data maps)."""
    import tensorflow as tf

    ex = tf.io.parse_single_example(
        serialized, {"frames": tf.io.FixedLenFeature([], tf.int64), "feats": tf.io.FixedLenFeature([], tf.string)}
    )
    feats = tf.io.decode_raw(ex["feats"], tf.float16 if dtype == "float16" else tf.float32, little_endian=True)
    return tf.cast(tf.reshape(feats, [ex["frames"], n_mels]), tf.float32)


def read_features(folder) -> dict[str, np.ndarray]:
    """Every utterance's stored log-mels by id, float32 (for checks and tests; small folders only)."""
    import tensorflow as tf

    folder = Path(folder)
    index = read_index(folder)
    n_mels = index["spec"]["n_mels"]
    out = {}
    for s in index["shards"]:
        for rec in tf.data.TFRecordDataset(str(folder / s["file"])):
            ex = tf.train.Example.FromString(rec.numpy())
            uid = ex.features.feature["id"].bytes_list.value[0].decode()
            out[uid] = parse_record(rec, n_mels, index["dtype"]).numpy()
    return out


def main(argv=None) -> int:
    import argparse

    from asr.config import ConfigError, load_config

    ap = argparse.ArgumentParser(prog="python -m asr.shards", description="Compute log-mel shards of manifests.")
    ap.add_argument("manifests", nargs="+")
    ap.add_argument("--out", required=True, help="shard folder")
    ap.add_argument("--config", help="experiment YAML (its features section defines the log-mels)")
    ap.add_argument("--set", nargs="*", default=[], metavar="features.KEY=VALUE")
    ap.add_argument("--per-shard", type=int, default=UTTERANCES_PER_SHARD, help="utterances per shard")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--max-duration", type=float, default=None, help="leave out utterances longer than this (s)")
    ap.add_argument("--dtype", choices=("float16", "float32"), default=DTYPE)
    ap.add_argument("--overwrite", action="store_true", help="rebuild a folder made from other data or features")
    args = ap.parse_args(argv)
    try:
        config = load_config(args.config, args.set)
        summary = write_shards(args.manifests, config.features, args.out, args.per_shard, args.workers,
                               args.max_duration, args.overwrite, args.dtype)
    except (ShardError, ConfigError, ValueError) as err:
        print(f"error: {err}", flush=True)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
