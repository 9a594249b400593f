"""Reading shard folders (written by asr.shards.write_shards): un-normalized float16 log-mels
from TFRecord files, always streamed. Speed factor 1.0 only.

A shard folder cannot be read in an arbitrary order, only file by file, so its passes are:
- evaluation: the files in order, each from start to end (record order);
- shortest-first (the sortagrad pass): an exact merge of its files (each sorted by length);
- shuffled: ``shuffle_plan`` permutes the files and gives each a stagger, a number of empty
  turns uniform in [0, its records]; up to SHARD_CYCLE files are interleaved record by record (a
  file starts after its empty turns, so the files side by side are at different places in their
  length slices). A batch then draws from about as many shards as it has utterances, and
  batch-mates seldom meet again: benchmarks/shuffle.py (LibriSpeech 960 h layout: 281k
  utterances, 1099 shards) measured 22.4 shards per batch of 23.3 utterances (a global shuffle:
  21.4) and batch-mates meeting again in the next pass 1.4 times as often as under a global
  shuffle (before: 16 files interleaved and blocks of 512 records shuffled, 2.9 shards per
  batch, 142 times as often). Shuffling blocks of records
  after the interleave made it worse (it keeps neighbours together), so there is none.
  Memory: at most SHARD_CYCLE open files, each with a read buffer of SHARD_READ_BUFFER bytes
  (64 MiB in all), whatever the size of the folder; one record at a time is read.

Several pipelines (num_pipelines > 1, multi-worker training): when the folder has at least as
many files as pipelines, pipeline k reads only the files at positions i % num_pipelines == k of
the pass's file order (shuffled passes: the permuted order; evaluation and shortest-first: the
files in order; its shortest-first pass merges its own files exactly), so every record is read
by one pipeline per pass; the pipelines' shares then differ by the size of a shard at most.
With fewer files than pipelines, every pipeline reads every record and keeps the positions
i % num_pipelines == k of the pass (as for manifests).
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from asr.data.part import DataReport, Part, encode_text, label_fits

SHARD_CYCLE = 1024  # shuffled passes: files read side by side, record by record
SHARD_READ_BUFFER = 64 * 1024  # bytes of read buffer per open file -> 64 MiB for SHARD_CYCLE files


def shuffle_plan(num_records: np.ndarray, seed: int, p: int, j: int) -> tuple[np.ndarray, np.ndarray]:
    """File order and stagger (int64 [num_files] each) of shuffled pass ``p`` over the files of
    part ``j``, whose record counts are ``num_records``: a permutation, then per file (in that
    order) a number of empty turns uniform in [0, num_records of that file]."""
    rng = np.random.default_rng([seed, p, j + 1])
    order = rng.permutation(len(num_records)).astype(np.int64)
    stagger = rng.integers(0, np.asarray(num_records, np.int64)[order] + 1).astype(np.int64)
    return order, stagger


class ShardPart(Part):
    """The utterances of one shard folder (module docstring)."""

    kind = "shards"
    addressable = False

    def __init__(self, folder, config, train: bool):
        from asr.shards import ShardError, check_spec, read_index

        tc, spec = config.training, config.features
        self.folder, self.train, self.spec = Path(folder), train, spec
        self.index = index = read_index(folder)
        check_spec(folder, index, spec)
        self.dtype = index["dtype"]
        self.report = DataReport()
        self.report.unreadable = list(index["problems"])
        self.report.too_long_audio = len(index["too_long"])
        self.speed_note = train and tuple(tc.speed_factors) != (1.0,)
        cols = index["utterances"]
        n_rec = len(cols["id"])
        self.record_kept = np.full(n_rec, -1, np.int64)  # record -> index in this part, -1: dropped
        self.ids, self.texts, self.labels, frames = [], [], [], []
        for r in range(n_rec):
            if train and tc.max_duration and cols["duration"][r] > tc.max_duration:
                self.report.too_long_audio += 1
                continue
            text, labels = encode_text(config.vocabulary, cols["text"][r], self.report)
            if not label_fits(labels, cols["frames"][r]):
                self.report.too_long_label += 1
                continue
            self.record_kept[r] = len(self.ids)
            self.ids.append(cols["id"][r])
            self.texts.append(text)
            self.labels.append(labels)
            frames.append(cols["frames"][r])
        self.report.kept = len(self.ids)
        self.frames = np.array(frames, np.int64)
        self.plan_frames = self.frames
        self.num_shards = len(index["shards"])
        counts = [s["utterances"] for s in index["shards"]]
        self.record_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.files = [str(self.folder / s["file"]) for s in index["shards"]]
        rec_frames, self.record_shard = np.asarray(cols["frames"], np.int64), np.asarray(cols["shard"], np.int64)
        self.kept_per_shard = np.bincount(self.record_shard[self.record_kept >= 0], minlength=self.num_shards)
        # The shortest-first pass merges the shards: the shard of each record, all records in
        # order of length (ties: record order). Exact when each shard is sorted by length.
        if np.any((np.diff(rec_frames) < 0) & (np.diff(self.record_shard) == 0)):
            raise ShardError(f"{folder}: a shard is not sorted by length (not written by asr.shards); rewrite it")
        self.merge_selector = self.record_shard[np.argsort(rec_frames, kind="stable")]

    def sums(self):
        """Per-shard sums from index.json, less the records dropped here (from the shard's meta)."""
        from asr.shards import utterance_sums

        n_mels = self.spec.n_mels
        total, total_sq, count = np.zeros(n_mels), np.zeros(n_mels), 0
        cols = self.index["utterances"]
        for s, shard in enumerate(self.index["shards"]):
            lo, hi = self.record_start[s], self.record_start[s + 1]
            dropped = np.nonzero(self.record_kept[lo:hi] < 0)[0]
            if shard["utterances"]:
                total += np.asarray(shard["sum"])
                total_sq += np.asarray(shard["sumsq"])
                count += shard["frames"]
            if len(dropped):
                sums, sq = utterance_sums(self.folder, self.index, s)
                total -= sums[dropped].sum(axis=0)
                total_sq -= sq[dropped].sum(axis=0)
                count -= int(sum(cols["frames"][lo + d] for d in dropped))
        return total, total_sq, count

    def file_level(self, num_pipelines: int) -> bool:
        """Whether pipelines share this folder's passes by files (module docstring)."""
        return num_pipelines > 1 and self.num_shards >= num_pipelines

    def pass_plan(self, kind: str, p: int, seed: int, j: int, num_pipelines: int, pipeline_id: int):
        """What pipeline ``pipeline_id`` reads in pass ``p`` (part ``j`` of its DataSource):
        (files, stagger, count). ``files``: int64, the shards in reading order (eval, shuffled)
        or the shard of every record in merged order (sorted); ``stagger``: int64 per file
        (zeros but in shuffled passes); ``count``: kept records it yields with file-level
        sharing, else None (it reads all files and keeps positions, see DataSource._plan)."""
        if kind == "shuffled":
            files, stagger = shuffle_plan(self.record_start[1:] - self.record_start[:-1], seed, p, j)
        else:
            files, stagger = np.arange(self.num_shards, dtype=np.int64), np.zeros(self.num_shards, np.int64)
        if not self.file_level(num_pipelines):
            return (self.merge_selector if kind == "sorted" else files), stagger, None
        files, stagger = files[pipeline_id::num_pipelines], stagger[pipeline_id::num_pipelines]
        count = int(self.kept_per_shard[files].sum())
        if kind == "sorted":
            return self.merge_selector[np.isin(self.merge_selector, files)], stagger, count
        return files, stagger, count

    @cached_property
    def _kept_global(self) -> np.ndarray:
        """Record -> utterance index in the DataSource (-1: dropped); needs ``offset`` set."""
        return np.where(self.record_kept >= 0, self.record_kept + self.offset, -1)

    def _shard(self, s):
        """(serialized record, utterance) of shard ``s`` (an int, or a tensor inside interleave),
        dropped records included (utterance -1)."""
        import tensorflow as tf

        kept = self._kept_global
        if isinstance(s, (int, np.integer)):  # only this shard's slice becomes a constant
            utterances = kept[self.record_start[s] : self.record_start[s + 1]]
            records = tf.data.TFRecordDataset(self.files[s], buffer_size=SHARD_READ_BUFFER)
        else:
            start = tf.constant(self.record_start)
            utterances = tf.constant(kept)[start[s] : start[s + 1]]
            records = tf.data.TFRecordDataset(tf.gather(tf.constant(self.files), s), buffer_size=SHARD_READ_BUFFER)
        return tf.data.Dataset.zip((records, tf.data.Dataset.from_tensor_slices(utterances)))

    def _staggered(self, s, stagger):
        """Shard ``s`` after ``stagger`` empty turns (records b"" of utterance -1, filtered out)."""
        import tensorflow as tf

        empty = tf.data.Dataset.from_tensors((tf.constant(b""), tf.constant(-1, tf.int64))).repeat(stagger)
        return empty.concatenate(self._shard(s))

    def records(self, kind: str, keep, files, stagger, p, seed):
        """This part's records in pass order, the positions this pipeline keeps, parsed:
        (utterance, log-mels [frames, n_mels]). ``keep``: bool per rank (of the kept records
        read); ``files``, ``stagger``: from ``pass_plan`` (sorted passes: numpy arrays)."""
        import tensorflow as tf

        from asr.shards import parse_record

        if kind == "sorted":  # exact merge of the frame-sorted shards
            mine = np.unique(files)
            shards = [self._shard(int(s)) for s in mine]
            choice = np.searchsorted(mine, files).astype(np.int64)
            ds = tf.data.Dataset.choose_from_datasets(shards, tf.data.Dataset.from_tensor_slices(choice))
        elif kind == "shuffled":
            ds = tf.data.Dataset.from_tensor_slices((files, stagger)).interleave(
                self._staggered, cycle_length=SHARD_CYCLE, block_length=1
            )
        else:
            ds = tf.data.Dataset.from_tensor_slices(files).interleave(self._shard, cycle_length=1, block_length=1)
        ds = ds.filter(_kept_record)
        keep = tf.convert_to_tensor(keep, tf.bool)

        def mine_only(i, x):
            return tf.gather(keep, i)

        def parse(i, x):
            record, g = x
            return g, parse_record(record, self.spec.n_mels, self.dtype)

        return ds.enumerate().filter(mine_only).map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _kept_record(record, g):
    return g >= 0
