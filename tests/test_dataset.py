"""asr.data.open_data: memory, stream and shard pipelines on real audio; orders, pipelines,
skipped and dropped utterances."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from conftest import tiny_config, write_fsdd_manifest

# Augmentation and speed perturbation on, 40 mels to keep it quick.
AUGMENTED = [
    "features.n_mels=40",
    "training.speed_factors=0.9,1.0,1.1",
    "training.freq_masks=2",
    "training.freq_mask_width=5",
    "training.time_masks=2",
    "training.time_mask_fraction=0.05",
]


def letters(i: int) -> str:
    """A short, distinct transcript for utterance ``i``: "ab", "ac", ..."""
    return chr(97 + i // 26) + chr(97 + i % 26)


def write_librispeech_manifest(path, librispeech_dir, copies: int = 1, unique_text: bool = False, extra=()):
    """The five sample utterances, each listed ``copies`` times under distinct ids; with
    ``unique_text`` every line gets its own short transcript (so batches name their utterances)."""
    import soundfile as sf

    from asr.manifest import Utterance, write_manifest

    utts = []
    for trans in sorted(librispeech_dir.rglob("*.trans.txt")):
        for line in trans.read_text().splitlines():
            uid, text = line.split(" ", 1)
            flac = trans.parent / f"{uid}.flac"
            info = sf.info(str(flac))
            for c in range(copies):
                t = letters(len(utts)) if unique_text else text
                utts.append(Utterance(f"{uid}-{c}", str(flac), info.frames / info.samplerate, t))
    write_manifest(path, list(utts) + list(extra))
    return path


def texts_of(batch, vocab) -> list[str]:
    return [vocab.decode(lab[:n]) for lab, n in zip(batch["labels"].numpy(), batch["label_lengths"].numpy())]


def take_utterances(ds, count: int, vocab):
    """The next ``count`` utterances of ``ds`` (batches of one): [(text, features [T, F])]."""
    out = []
    for batch in ds.take(count):
        assert batch["features"].shape[0] == 1
        out.append((texts_of(batch, vocab)[0], batch["features"].numpy()[0]))
    return out


@pytest.fixture(scope="module")
def unique_manifest(librispeech_dir, tmp_path_factory):
    """20 utterances (each sample file 4 times), transcripts "aa".."at"."""
    return write_librispeech_manifest(tmp_path_factory.mktemp("ls") / "u.jsonl", librispeech_dir, 4, unique_text=True)


@pytest.fixture(scope="module")
def unique_shards(unique_manifest, tmp_path_factory):
    from asr.shards import write_shards

    out = tmp_path_factory.mktemp("shards") / "u"
    write_shards([unique_manifest], tiny_config(*AUGMENTED).features, out, utterances_per_shard=3, workers=1)
    return out


def source_of(kind, unique_manifest, unique_shards, *overrides, train=True):
    from asr.data import open_data

    pipeline = "memory" if kind == "memory" else "stream"
    config = tiny_config(*AUGMENTED, f"training.pipeline={pipeline}", *overrides)
    return open_data([unique_shards if kind == "shards" else unique_manifest], config, train=train)


# ------------------------------------------------------------------------------ features


@pytest.mark.parametrize("normalization", ["utterance", "global"])
def test_stream_features_equal_memory_features(librispeech_dir, tmp_path, normalization):
    from asr.data import open_data

    m = write_librispeech_manifest(tmp_path / "ls.jsonl", librispeech_dir)
    sources = {p: open_data([m], tiny_config(f"features.normalization={normalization}", f"training.pipeline={p}"), train=False)
               for p in ("memory", "stream")}
    np.testing.assert_array_equal(sources["memory"].frames, sources["stream"].frames)
    stats = None
    if normalization == "global":
        stats = sources["memory"].global_stats()
        streamed = sources["stream"].global_stats()  # 5 utterances < STATS_SAMPLE: all of them
        np.testing.assert_allclose(streamed.mean, stats.mean, atol=1e-4)
        np.testing.assert_allclose(streamed.std, stats.std, atol=1e-4)
    vocab = tiny_config().vocabulary
    got = {}
    for p, src in sources.items():
        for batch in src.dataset(stats, 3000, 8):
            for text, feats, n in zip(texts_of(batch, vocab), batch["features"].numpy(), batch["feature_lengths"].numpy()):
                got.setdefault(text, {})[p] = feats[:n]
    assert len(got) == 5
    for text, pair in got.items():
        assert pair["memory"].shape == pair["stream"].shape
        np.testing.assert_allclose(pair["stream"], pair["memory"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("kind", ["memory", "stream", "shards"])
def test_batch_layout(kind, train, unique_manifest, unique_shards):
    """Shapes, dtypes and padding; "index" names each utterance's position in the source."""
    import tensorflow as tf

    src = source_of(kind, unique_manifest, unique_shards, train=train)
    vocab = src.config.vocabulary
    assert len(src.texts) == len(src.ids) and sorted(src.texts) == [letters(i) for i in range(20)]
    if kind != "shards":  # manifest order (shards: record order, by length)
        assert src.texts == [letters(i) for i in range(20)]
    batch_frames, seen = 2500, set()
    for batch in src.dataset(None, batch_frames, 4, seed=5).take(12):
        assert set(batch) == {"features", "feature_lengths", "labels", "label_lengths", "index"}
        feats, lengths = batch["features"], batch["feature_lengths"].numpy()
        labels, label_lengths = batch["labels"].numpy(), batch["label_lengths"].numpy()
        assert feats.dtype == tf.float32 and feats.shape[2] == 40 and feats.shape[1] == lengths.max()
        assert batch["feature_lengths"].dtype == tf.int32 and batch["labels"].dtype == tf.int32
        assert batch["label_lengths"].dtype == tf.int32 and batch["index"].dtype == tf.int32
        assert feats.shape[0] * feats.shape[1] <= batch_frames or feats.shape[0] == 1
        f = feats.numpy()
        for i, n in enumerate(lengths):
            assert not f[i, n:].any() and f[i, :n].any()  # zero past each length only
            assert not labels[i, label_lengths[i]:].any() and (labels[i, : label_lengths[i]] > 0).all()
        index = batch["index"].numpy()
        assert index.shape == lengths.shape
        assert texts_of(batch, vocab) == [src.texts[i] for i in index]
        if not train:  # not speed-perturbed: the source's frames
            assert lengths.tolist() == src.frames[index].tolist()
        seen.update(texts_of(batch, vocab))
    assert seen <= {letters(i) for i in range(20)} and len(seen) > 10


@pytest.mark.parametrize("kind", ["memory", "stream", "shards"])
def test_sorted_first_pass_is_sorted(kind, unique_manifest, unique_shards):
    """Shortest first. Batches of 2 over lengths that come 4 times each: every bucket fills, so
    no partial bucket is flushed at the end and the pass is exactly in order."""
    src = source_of(kind, unique_manifest, unique_shards, "training.sortagrad=true")
    lengths, texts = [], []
    assert src.steps_per_epoch(100_000, 2) == 10
    for batch in src.dataset(None, 100_000, 2, seed=3).take(10):
        lengths += batch["feature_lengths"].numpy().tolist()
        texts += texts_of(batch, src.config.vocabulary)
    assert sorted(texts) == [letters(i) for i in range(20)]  # one pass: each utterance once
    assert lengths == sorted(src.frames.tolist())  # in order, and not speed-perturbed


@pytest.mark.parametrize("kind", ["memory", "stream", "shards"])
def test_pass_orders_differ_and_are_reproducible(kind, unique_manifest, unique_shards):
    src = source_of(kind, unique_manifest, unique_shards)
    vocab, n = src.config.vocabulary, src.num_utterances
    first = take_utterances(src.dataset(None, 2500, 1, seed=7), 2 * n, vocab)
    again = take_utterances(src.dataset(None, 2500, 1, seed=7), 2 * n, vocab)
    pass0, pass1 = [t for t, _ in first[:n]], [t for t, _ in first[n:]]
    assert sorted(pass0) == sorted(pass1) == [letters(i) for i in range(n)]
    assert pass0 != pass1
    assert [t for t, _ in again] == pass0 + pass1
    for (_, a), (_, b) in zip(first, again):
        np.testing.assert_array_equal(a, b)  # same speed factors and masks
    resumed = take_utterances(src.dataset(None, 2500, 1, seed=7, first_pass=1), n, vocab)
    assert [t for t, _ in resumed] == pass1
    other_seed = take_utterances(src.dataset(None, 2500, 1, seed=8), n, vocab)
    assert [t for t, _ in other_seed] != pass0


@pytest.fixture(scope="module")
def one_shard(unique_manifest, tmp_path_factory):
    """The 20 utterances in a single shard file: fewer files than two pipelines."""
    from asr.shards import write_shards

    out = tmp_path_factory.mktemp("shards") / "one"
    write_shards([unique_manifest], tiny_config(*AUGMENTED).features, out, utterances_per_shard=20, workers=1)
    return out


@pytest.mark.parametrize("kind", ["memory", "stream", "one-shard"])
@pytest.mark.parametrize("sortagrad", [False, True])
def test_two_pipelines_partition_each_pass(kind, sortagrad, unique_manifest, one_shard):
    """Pipeline k gets positions i % 2 == k of the single pipeline's order, with the same
    features (speed factor and masks do not depend on the pipeline). For a shard folder, when
    it has fewer files than pipelines (with more, they share it by files: next test)."""
    src = source_of("shards" if kind == "one-shard" else kind, unique_manifest, one_shard,
                    f"training.sortagrad={str(sortagrad).lower()}")
    vocab, n = src.config.vocabulary, src.num_utterances
    single = take_utterances(src.dataset(None, 2500, 1, seed=11), 2 * n, vocab)
    parts = [take_utterances(src.dataset(None, 2500, 1, seed=11, num_pipelines=2, pipeline_id=k), n, vocab)
             for k in range(2)]
    for p in range(2):  # each of two passes
        mine = [parts[k][p * n // 2 : (p + 1) * n // 2] for k in range(2)]
        texts = [{t for t, _ in mine[k]} for k in range(2)]
        assert not texts[0] & texts[1]
        assert texts[0] | texts[1] == {letters(i) for i in range(n)}
        whole = single[p * n : (p + 1) * n]
        for i, (text, feats) in enumerate(whole):
            got_text, got_feats = mine[i % 2][i // 2]
            assert got_text == text
            np.testing.assert_array_equal(got_feats, feats)


@pytest.mark.parametrize("sortagrad", [False, True])
def test_two_pipelines_share_a_shard_folder_by_files(sortagrad, unique_manifest, unique_shards):
    """7 shard files, 2 pipelines: each pipeline reads only its own files (the utterances it
    yields come from shards the other never yields), together every utterance exactly once per
    pass, with the same features as a single pipeline gives them; the shortest-first pass is in
    order within each pipeline."""
    from asr.shards import read_index

    src = source_of("shards", unique_manifest, unique_shards, f"training.sortagrad={str(sortagrad).lower()}")
    vocab, n = src.config.vocabulary, src.num_utterances
    cols = read_index(unique_shards)["utterances"]
    shard_of = dict(zip(cols["text"], cols["shard"]))
    streams = [src.dataset(None, 2500, 1, seed=11, num_pipelines=2, pipeline_id=k) for k in range(2)]
    heads = [take_utterances(ds, 6, vocab) for ds in streams]  # every share holds >= 8 records
    assert not {shard_of[t] for t, _ in heads[0]} & {shard_of[t] for t, _ in heads[1]}

    single = {}  # (pass, text) -> features of the single pipeline
    whole = take_utterances(src.dataset(None, 2500, 1, seed=11), 2 * n, vocab)
    for i, (t, f) in enumerate(whole):
        single[i // n, t] = f
    part = src.parts[0]
    plans = [[part.pass_plan("sorted" if sortagrad and p == 0 else "shuffled", p, 11, 0, 2, k) for p in range(2)]
             for k in range(2)]
    got = [take_utterances(streams[k], sum(plan[2] for plan in plans[k]), vocab) for k in range(2)]
    for p in range(2):
        texts = []
        for k in range(2):
            start = sum(plan[2] for plan in plans[k][:p])
            mine = got[k][start : start + plans[k][p][2]]
            files = set(plans[k][p][0].tolist())
            assert {shard_of[t] for t, _ in mine} <= files
            texts.append([t for t, _ in mine])
            for t, f in mine:
                np.testing.assert_array_equal(f, single[p, t])
            if sortagrad and p == 0:
                lengths = [f.shape[0] for _, f in mine]
                assert lengths == sorted(lengths)
        assert set(plans[0][p][0].tolist()).isdisjoint(plans[1][p][0].tolist())
        assert sorted(texts[0] + texts[1]) == [letters(i) for i in range(n)]  # each exactly once


@pytest.mark.parametrize("pipeline", ["memory", "stream"])
def test_manifests_and_shard_folders_together(pipeline, librispeech_dir, unique_shards, tmp_path):
    """One source over a manifest and a shard folder: the sorted pass merged in order, then
    shuffled passes with every utterance once, two pipelines partitioning the evaluation pass."""
    from asr.data import open_data

    m = write_librispeech_manifest(tmp_path / "more.jsonl", librispeech_dir, 2)  # real transcripts, other texts
    config = tiny_config(*AUGMENTED, f"training.pipeline={pipeline}", "training.sortagrad=true")
    src = open_data([m, unique_shards], config, train=True)
    assert src.num_utterances == 30 and [p.kind for p in src.parts] == [pipeline, "shards"]
    lengths = []
    texts = []
    for batch in src.dataset(None, 2500, 1, seed=2).take(90):
        lengths.append(int(batch["feature_lengths"][0]))
        texts += texts_of(batch, config.vocabulary)
    assert lengths[:30] == sorted(src.frames.tolist())
    unique = {letters(i) for i in range(20)}
    for p in range(3):
        assert sorted(t for t in texts[30 * p : 30 * (p + 1)] if t in unique) == sorted(unique)
    assert texts[30:60] != texts[60:90]
    ev = open_data([m, unique_shards], config, train=False)
    halves = [ev.dataset(None, 2500, 1, num_pipelines=2, pipeline_id=k) for k in range(2)]
    count = sum(1 for h in halves for _ in h)
    assert count == 30


def test_memory_source_matches_make_dataset(fsdd_dir, tmp_path):
    """sortagrad off, one pipeline: the memory source gives make_dataset's batches exactly."""
    from asr.data import load_examples, make_dataset, open_data

    m = write_fsdd_manifest(tmp_path / "f.jsonl", fsdd_dir, [f"{d}_jackson_0" for d in range(5)], copies=2)
    config = tiny_config(*AUGMENTED, "features.normalization=global")
    src = open_data([m], config, train=True, cache_dir=tmp_path / "cache")
    stats = src.global_stats()
    tc = config.training
    examples, _ = load_examples([m], config.features, config.vocabulary, tc.speed_factors, tmp_path / "cache", tc.max_duration)
    old = make_dataset(examples, config.features, stats, tc, train=True, seed=4, first_pass=2)
    new = src.dataset(stats, tc.batch_frames, tc.max_batch_size, seed=4, first_pass=2)
    assert src.steps_per_epoch(tc.batch_frames, tc.max_batch_size) > 1
    for a, b in zip(old.take(8), new.take(8)):
        for key in a:
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())


# ---------------------------------------------------------------- skipped and dropped


def test_unreadable_audio_is_skipped_while_streaming_and_reported(librispeech_dir, tmp_path, caplog):
    from asr.data import open_data
    from asr.manifest import Utterance

    bad = tmp_path / "broken.flac"
    bad.write_bytes(b"fLaC" + bytes(range(256)) * 8)  # a FLAC signature, then garbage
    m = write_librispeech_manifest(tmp_path / "ls.jsonl", librispeech_dir,
                                   extra=[Utterance("broken", str(bad), 3.0, "a broken file")])
    config = tiny_config(*AUGMENTED, "training.pipeline=stream")
    src = open_data([m], config, train=True)
    assert src.num_utterances == 6  # known only when read
    with caplog.at_level(logging.WARNING, logger="asr.data.stream"):
        texts = []
        for batch in src.dataset(None, 2500, 1, seed=1).take(10):  # two passes of the 5 readable ones
            texts += texts_of(batch, config.vocabulary)
        ev = [t for b in open_data([m], config, train=False).dataset(None, 2500, 8) for t in texts_of(b, config.vocabulary)]
    assert len(texts) == 10 and "a broken file" not in texts and len(set(texts)) == 5
    assert len(ev) == 5 and "a broken file" not in ev
    lines = "\n".join(src.report_lines("train"))
    assert "skipped 1 unreadable audio file(s) while streaming: broken:" in lines
    warned = [r.getMessage() for r in caplog.records if "broken" in r.getMessage()]
    assert len(warned) == 2  # once for the training source, once for the evaluation source
    assert "skipping unreadable audio broken" in warned[0]


@pytest.mark.parametrize("kind", ["stream", "shards"])
def test_labels_too_long_for_their_audio_are_dropped(kind, librispeech_dir, tmp_path):
    from asr.data import open_data
    from asr.manifest import Utterance
    from asr.model import output_length
    from asr.shards import write_shards

    short = next(librispeech_dir.rglob("1089-134691-0000.flac"))  # 2.085 s: 209 frames, 53 outputs
    extra = [Utterance("long-label", str(short), 2.085, "seven " * 20), Utterance("fits", str(short), 2.085, "seven " * 8)]
    m = write_librispeech_manifest(tmp_path / "ls.jsonl", librispeech_dir, extra=extra)
    config = tiny_config("features.n_mels=40", "training.pipeline=stream")
    path = m
    if kind == "shards":
        path = tmp_path / "shards"
        write_shards([m], config.features, path, utterances_per_shard=4, workers=1)
    src = open_data([path], config, train=True)
    assert src.num_utterances == 6 and "long-label" not in src.ids and "fits" in src.ids
    assert "dropped 1 utterance(s) whose label cannot fit" in "\n".join(src.report_lines("train"))
    for batch in src.dataset(None, 2500, 8).take(3):
        assert (output_length(batch["feature_lengths"].numpy()) >= batch["label_lengths"].numpy()).all()


# ------------------------------------------------------------------------- feature cache


def _cached_features(manifest, cache):
    from asr.data import load_examples

    config = tiny_config()
    examples, _ = load_examples([manifest], config.features, config.vocabulary, (1.0,), cache)
    return examples


def test_regenerated_audio_at_the_same_path_gets_new_features(fsdd_dir, tmp_path):
    """Audio rewritten at the same path (as `asr prepare fsdd --seed 1` into the same folder
    does) with another text: the cached log-mels of the old audio are not reused."""
    import shutil

    from asr.audio import load_audio
    from asr.features import log_mel

    wav = tmp_path / "audio" / "0_utt_0.wav"
    wav.parent.mkdir()
    shutil.copy(fsdd_dir / "3_jackson_0.wav", wav)
    first = _cached_features(write_fsdd_manifest(tmp_path / "m.jsonl", tmp_path / "audio", ["0_utt_0"], text="three"),
                             tmp_path / "cache")
    shutil.copy(fsdd_dir / "7_george_1.wav", wav)  # new audio, same path and id
    again = _cached_features(write_fsdd_manifest(tmp_path / "m.jsonl", tmp_path / "audio", ["0_utt_0"], text="seven"),
                             tmp_path / "cache")
    np.testing.assert_array_equal(first[0].feats[0], log_mel(load_audio(fsdd_dir / "3_jackson_0.wav"), tiny_config().features))
    np.testing.assert_array_equal(again[0].feats[0], log_mel(load_audio(fsdd_dir / "7_george_1.wav"), tiny_config().features))
    assert again[0].text == "seven"


def test_cache_disagreeing_with_the_durations_is_recomputed(fsdd_dir, tmp_path, caplog):
    """A cache file under the right name whose frame counts do not fit the manifest durations
    (audio replaced with its size and mtime kept, say) is recomputed, with a warning."""
    from asr.data.feature_cache import cache_key, compute_features, write_cache
    from asr.manifest import read_manifest

    m = write_fsdd_manifest(tmp_path / "m.jsonl", fsdd_dir, ["3_jackson_0", "5_nicolas_1"])
    utts, spec = read_manifest(m), tiny_config().features
    stale = [np.zeros((3, spec.n_mels), np.float32), np.zeros((500, spec.n_mels), np.float32)]
    write_cache(tmp_path / f"feats-{cache_key(utts, spec, 1.0)}.npz", stale, [])
    with caplog.at_level(logging.WARNING, logger="asr.data.feature_cache"):
        feats, errors = compute_features(utts, spec, [1.0], tmp_path)
    assert "does not match the manifest durations" in caplog.text and not errors
    assert [f[0].shape[0] for f in feats] == [spec.num_frames(round(u.duration * spec.sample_rate)) for u in utts]
    again, _ = compute_features(utts, spec, [1.0], tmp_path)  # the rewritten file is used as is
    np.testing.assert_array_equal(again[1][0], feats[1][0])


def test_two_cache_writers_do_not_clobber_each_other(fsdd_dir, tmp_path, monkeypatch):
    """Two processes computing the same cache file at once (several training workers sharing a
    cache folder): the second finishes its write while the first is between writing and
    renaming. Both succeed, the file loads, no temporary file is left."""
    import os

    from asr.data import compute_features
    from asr.manifest import read_manifest

    utts = read_manifest(write_fsdd_manifest(tmp_path / "m.jsonl", fsdd_dir, ["3_jackson_0", "5_nicolas_1"]))
    spec, cache = tiny_config().features, tmp_path / "cache"
    real_replace, temporaries = os.replace, []

    def replace_after_the_other_writer(src, dst):
        temporaries.append(str(src))
        if len(temporaries) == 1:  # the other worker writes the same file meanwhile
            compute_features(utts, spec, [1.0], cache, workers=1)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_after_the_other_writer)
    feats, _ = compute_features(utts, spec, [1.0], cache, workers=1)
    monkeypatch.undo()
    assert len(temporaries) == 2 and temporaries[0] != temporaries[1]
    assert [p.name for p in cache.iterdir()] == [p.name for p in cache.glob("feats-*.npz")] and len(list(cache.iterdir())) == 1
    again, _ = compute_features(utts, spec, [1.0], cache, workers=1)
    for a, b in zip(feats, again):
        np.testing.assert_array_equal(a[0], b[0])
