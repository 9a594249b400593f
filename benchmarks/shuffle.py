"""Shuffle quality of the shard pipeline's shuffled passes, simulated at LibriSpeech 960 h scale.

    python benchmarks/shuffle.py [--utterances 281241] [--epochs 3] [--out benchmarks/results/shuffle.json]

Shard folders cannot be read in an arbitrary order, so a shuffled pass over them is an
approximation of a global shuffle. This simulates, in numpy, the order in which one pipeline
reads the records of a shard folder (the logic of asr.data.shard_source, record by record) and
the real length bucketing (asr.data.batching.bucket_plan, bucket_by_sequence_length's
semantics), for:
- old:    the shard files permuted, OLD_CYCLE of them interleaved record by record, blocks of
          OLD_BLOCK records shuffled (the scheme before this benchmark was written);
- new:    the current asr.data.shard_source scheme (shard_source.shuffle_plan: permuted files,
          each file staggered by a random number of empty turns, SHARD_CYCLE files interleaved
          record by record);
- global: a permutation of all utterances (what manifests get; the reference).

Layout: ``--utterances`` utterances (LibriSpeech 960 h has 281,241) with a synthetic length
distribution like LibriSpeech's training set (65% uniform in 13-17 s, 35% uniform in 2-13 s:
mean 12.4 s), cut into shards as asr.shards writes them (sorted by length,
UTTERANCES_PER_SHARD per shard, each shard a length slice), batched with the
librispeech-960 config's batch_frames 32000 and max_batch_size 64.

Reported per scheme (JSON to --out, and a table):
- distinct_shards_per_batch: mean over the batches of the number of shards its utterances come from;
- batch_mates_kept: of the pairs of utterances sharing a batch in pass e, the fraction that share
  one again in pass e + 1 (mean over the consecutive passes simulated);
- recurrence_vs_global: that fraction divided by the global shuffle's.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asr.data.batching import bucket_plan  # noqa: E402
from asr.data.shard_source import SHARD_CYCLE, shuffle_plan  # noqa: E402
from asr.shards import UTTERANCES_PER_SHARD  # noqa: E402

LIBRISPEECH_960_UTTERANCES = 281_241
BATCH_FRAMES, MAX_BATCH = 32_000, 64  # models/configs/librispeech-960.yaml
FRAMES_PER_SECOND = 100  # 16 kHz, hop 160
OLD_CYCLE, OLD_BLOCK = 16, 512  # the previous scheme's constants


def layout(n: int, per_shard: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """(frames int64 [n], records of each shard: utterance indices in file order), as
    asr.shards writes them: sorted by length, cut into shards of ``per_shard``."""
    rng = np.random.default_rng(seed)
    long = rng.random(n) < 0.65
    seconds = np.where(long, rng.uniform(13.0, 17.0, n), rng.uniform(2.0, 13.0, n))
    frames = 1 + (seconds * FRAMES_PER_SECOND).astype(np.int64)
    order = np.argsort(frames, kind="stable")
    return frames, [order[i : i + per_shard] for i in range(0, n, per_shard)]


def interleave(streams: list[np.ndarray], cycle: int) -> np.ndarray:
    """tf.data.Dataset.interleave(cycle_length=cycle, block_length=1) over ``streams``, in order."""
    slots: list = [None] * cycle
    pos = [0] * cycle
    nxt, open_, i, out = 0, 0, 0, []
    while nxt < len(streams) or open_ > 0:
        if slots[i] is not None:
            if pos[i] < len(slots[i]):
                out.append(slots[i][pos[i]])
                pos[i] += 1
                i = (i + 1) % cycle
                continue
            slots[i] = None
            open_ -= 1
            i = (i + 1) % cycle
        elif nxt < len(streams):
            slots[i], pos[i] = streams[nxt], 0
            nxt += 1
            open_ += 1
        else:
            i = (i + 1) % cycle
    return np.asarray(out, np.int64)


def block_shuffle(order: np.ndarray, block: int, rng: np.random.Generator) -> np.ndarray:
    out = order.copy()
    for start in range(0, len(out), block):
        out[start : start + block] = rng.permutation(out[start : start + block])
    return out


def old_order(shards: list[np.ndarray], seed: int, p: int) -> np.ndarray:
    rng = np.random.default_rng([seed, p, 1])
    perm = rng.permutation(len(shards))
    return block_shuffle(interleave([shards[s] for s in perm], OLD_CYCLE), OLD_BLOCK, rng)


def new_order(shards: list[np.ndarray], seed: int, p: int) -> np.ndarray:
    order, stagger = shuffle_plan(np.array([len(s) for s in shards]), seed, p, 0)
    streams = [np.concatenate([np.full(o, -1, np.int64), shards[s]]) for s, o in zip(order, stagger)]
    records = interleave(streams, SHARD_CYCLE)
    return records[records >= 0]  # the empty turns are filtered out, as dropped records are


def global_order(n: int, seed: int, p: int) -> np.ndarray:
    return np.random.default_rng([seed, p]).permutation(n)


def batches(order: np.ndarray, frames: np.ndarray, bounds: list[int], sizes: list[int]) -> list[np.ndarray]:
    """bucket_by_sequence_length over ``order``: a batch when a bucket is full, partial buckets last."""
    which = np.searchsorted(np.asarray(bounds), frames[order], side="right")
    pending: list[list[int]] = [[] for _ in sizes]
    out = []
    for u, b in zip(order.tolist(), which.tolist()):
        pending[b].append(u)
        if len(pending[b]) == sizes[b]:
            out.append(np.asarray(pending[b]))
            pending[b] = []
    return out + [np.asarray(b) for b in pending if b]


def pairs(batch_list: list[np.ndarray], n: int) -> np.ndarray:
    """Every unordered pair of batch-mates, as a * n + b (a < b), sorted."""
    out = []
    for b in batch_list:
        b = np.sort(b)
        i, j = np.triu_indices(len(b), 1)
        out.append(b[i] * n + b[j])
    return np.unique(np.concatenate(out))


def measure(name: str, orders: list[np.ndarray], frames, shard_of, bounds, sizes) -> dict:
    n = len(frames)
    per_pass = [batches(o, frames, bounds, sizes) for o in orders]
    distinct = [len(np.unique(shard_of[b])) for bl in per_pass for b in bl]
    mates = [pairs(bl, n) for bl in per_pass]
    kept = [len(np.intersect1d(a, b, assume_unique=True)) / len(a) for a, b in zip(mates, mates[1:])]
    assert all(np.array_equal(np.sort(o), np.arange(n)) for o in orders), f"{name}: not a permutation"
    return {
        "scheme": name,
        "batches_per_pass": round(float(np.mean([len(bl) for bl in per_pass])), 1),
        "mean_batch_size": round(float(np.mean([len(b) for bl in per_pass for b in bl])), 2),
        "distinct_shards_per_batch": round(float(np.mean(distinct)), 2),
        "batch_mates_kept": float(np.mean(kept)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--utterances", type=int, default=LIBRISPEECH_960_UTTERANCES)
    ap.add_argument("--per-shard", type=int, default=UTTERANCES_PER_SHARD)
    ap.add_argument("--epochs", type=int, default=3, help="shuffled passes simulated (>= 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "shuffle.json"))
    args = ap.parse_args()

    t0 = time.perf_counter()
    frames, shards = layout(args.utterances, args.per_shard)
    shard_of = np.empty(args.utterances, np.int64)
    for s, recs in enumerate(shards):
        shard_of[recs] = s
    bounds, sizes = bucket_plan(frames.tolist(), BATCH_FRAMES, MAX_BATCH)
    passes = range(1, args.epochs + 1)  # pass 0 is the shortest-first pass under sortagrad
    schemes = {
        "old": [old_order(shards, args.seed, p) for p in passes],
        "new": [new_order(shards, args.seed, p) for p in passes],
        "global": [global_order(args.utterances, args.seed, p) for p in passes],
    }
    rows = [measure(name, orders, frames, shard_of, bounds, sizes) for name, orders in schemes.items()]
    reference = rows[-1]["batch_mates_kept"]
    for r in rows:
        r["recurrence_vs_global"] = round(r["batch_mates_kept"] / reference, 2)
        r["batch_mates_kept"] = round(r["batch_mates_kept"], 6)
    result = {
        "utterances": args.utterances,
        "utterances_per_shard": args.per_shard,
        "shards": len(shards),
        "mean_seconds": round(float(frames.mean()) / FRAMES_PER_SECOND, 2),
        "bucket_bounds": bounds,
        "bucket_batch_sizes": sizes,
        "shuffled_passes": args.epochs,
        "old": {"cycle": OLD_CYCLE, "shuffle_block": OLD_BLOCK},
        "new": {"cycle": SHARD_CYCLE, "stagger": "empty turns uniform in [0, records of the shard]"},
        "schemes": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{args.utterances} utterances in {len(shards)} shards of {args.per_shard}; {args.epochs} shuffled passes")
    print(f"{'scheme':8} {'batches':>8} {'batch':>6} {'shards/batch':>13} {'mates kept':>11} {'vs global':>10}")
    for r in rows:
        print(f"{r['scheme']:8} {r['batches_per_pass']:>8} {r['mean_batch_size']:>6} {r['distinct_shards_per_batch']:>13} "
              f"{r['batch_mates_kept']:>11.6f} {r['recurrence_vs_global']:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
