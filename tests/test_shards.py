"""asr.shards: write, read back, resume after a kill, refuse a mismatched folder, global stats."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, tiny_config
from test_dataset import texts_of, write_librispeech_manifest

FLOAT16_RTOL = 2.0**-11  # float16 storage: half an ulp, relative (0.0039 at the log floor's -13.8)
SMALL = ["features.n_mels=24"]


def spec(*extra):
    return tiny_config(*SMALL, *extra).features


def record_ids(folder) -> list[str]:
    """Every record's id, in file order, duplicates included."""
    import tensorflow as tf

    from asr.shards import read_index

    ids = []
    for s in read_index(folder)["shards"]:
        for rec in tf.data.TFRecordDataset(str(folder / s["file"])):
            ids.append(tf.train.Example.FromString(rec.numpy()).features.feature["id"].bytes_list.value[0].decode())
    return ids


@pytest.fixture(scope="module")
def manifest(librispeech_dir, tmp_path_factory):
    """The five LibriSpeech sample utterances, each twice: 10 utterances, 2-10 s."""
    return write_librispeech_manifest(tmp_path_factory.mktemp("ls") / "ls.jsonl", librispeech_dir, copies=2)


def test_round_trip_equals_log_mel(manifest, tmp_path, capsys):
    """Written by two spawned processes; read back within float16's precision; shards hold
    length slices, shortest first, and the index describes them."""
    from asr.audio import load_audio
    from asr.features import log_mel
    from asr.manifest import read_manifest
    from asr.shards import read_features, read_index, write_shards

    summary = write_shards([manifest], spec(), tmp_path / "s", utterances_per_shard=3, workers=2)
    assert (summary["shards"], summary["computed"], summary["utterances"], summary["problems"]) == (4, 4, 10, 0)
    assert 0 < summary["max_abs_error"] <= 13.9 * FLOAT16_RTOL
    stored = read_features(tmp_path / "s")
    utts = read_manifest(manifest)
    assert sorted(stored) == sorted(u.id for u in utts)
    for u in utts:
        ref = log_mel(load_audio(u.audio), spec())
        assert stored[u.id].shape == ref.shape
        np.testing.assert_allclose(stored[u.id], ref, rtol=FLOAT16_RTOL, atol=1e-6)
    index = read_index(tmp_path / "s")
    cols = index["utterances"]
    assert cols["frames"] == sorted(cols["frames"])  # shard k = k-th length slice, records by length
    assert cols["shard"] == sorted(cols["shard"]) and [s["utterances"] for s in index["shards"]] == [3, 3, 3, 1]
    by_id = {u.id: u for u in utts}
    assert all(by_id[i].text == t for i, t in zip(cols["id"], cols["text"]))
    assert index["spec"]["n_mels"] == 24 and "normalization" not in index["spec"] and index["dtype"] == "float16"
    assert "10 utterances in 4 shards (4 computed now)" in capsys.readouterr().out


def test_rerun_does_nothing_and_says_so(manifest, tmp_path, capsys):
    from asr.shards import write_shards

    write_shards([manifest], spec(), tmp_path / "s", utterances_per_shard=4, workers=1)
    files = sorted((tmp_path / "s").iterdir())
    stamps = [f.stat().st_mtime_ns for f in files]
    capsys.readouterr()
    summary = write_shards([manifest], spec("features.normalization=global"), tmp_path / "s", utterances_per_shard=4, workers=1)
    assert summary["nothing_to_do"] and summary["computed"] == 0 and summary["reused"] == 3
    assert "all 3 shards are present (10 utterances); nothing to do" in capsys.readouterr().out
    assert sorted((tmp_path / "s").iterdir()) == files and [f.stat().st_mtime_ns for f in files] == stamps


KILL_AFTER_FIRST_SHARD = """
import os, signal, sys
import asr, asr.shards as shards
from asr.features import FeatureSpec
real = shards._store_shard
def store_then_die(*args):
    real(*args)
    os.kill(os.getpid(), signal.SIGKILL)  # killed right after the first shard landed
shards._store_shard = store_then_die
shards.write_shards([sys.argv[1]], FeatureSpec(n_mels=24), sys.argv[2], utterances_per_shard=2, workers=1)
"""


def test_killed_run_resumes_with_each_utterance_once(manifest, tmp_path):
    from asr.manifest import read_manifest
    from asr.shards import read_index, write_shards

    out = tmp_path / "s"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_SHARD, str(manifest), str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert sorted(p.name for p in out.glob("shard-*.tfrecord")) == ["shard-00000.tfrecord"]
    assert not (out / "index.json").exists() and (out / "plan.json").exists()
    (out / ".shard-00001.tfrecord.tmp-99999").write_bytes(b"half a shard")  # as a kill mid-write leaves

    summary = write_shards([manifest], spec(), out, utterances_per_shard=2, workers=1)
    assert (summary["shards"], summary["computed"], summary["reused"]) == (5, 4, 1)
    ids = record_ids(out)
    assert sorted(ids) == sorted(u.id for u in read_manifest(manifest))  # each exactly once
    assert read_index(out)["utterances"]["id"] == ids
    assert not list(out.glob(".*tmp*"))


def test_mismatched_folder_is_refused(manifest, librispeech_dir, tmp_path):
    from asr.config import load_config
    from asr.data import open_data
    from asr.manifest import read_manifest
    from asr.shards import ShardError, write_shards

    out = tmp_path / "s"
    write_shards([manifest], spec(), out, utterances_per_shard=4, workers=1)
    with pytest.raises(ShardError, match=r"features\.n_mels: 24 -> 32.*overwrite"):
        write_shards([manifest], spec("features.n_mels=32"), out, utterances_per_shard=4, workers=1)
    other = write_librispeech_manifest(tmp_path / "other.jsonl", librispeech_dir, copies=1)
    with pytest.raises(ShardError, match=r"manifests: 10 utterances from ls\.jsonl -> 5 from other\.jsonl"):
        write_shards([other], spec(), out, utterances_per_shard=4, workers=1)
    with pytest.raises(ShardError, match=r"n_mels: 24 \(shards\) vs 80 \(config\)"):
        open_data([out], load_config(None, []), train=True)
    summary = write_shards([other], spec(), out, utterances_per_shard=4, workers=1, overwrite=True)
    assert summary["computed"] == 2 and sorted(record_ids(out)) == sorted(u.id for u in read_manifest(other))
    assert json.loads((out / "plan.json").read_text())["manifests"] == ["other.jsonl"]


@pytest.mark.parametrize("max_duration", [None, 9.0])
def test_global_stats_from_shards_equal_memory(manifest, tmp_path, max_duration):
    """From the stored sums; with a max_duration the utterances left out are subtracted."""
    from asr.data import open_data
    from asr.shards import write_shards

    overrides = [*SMALL, "features.normalization=global"]
    if max_duration:
        overrides.append(f"training.max_duration={max_duration}")
    config = tiny_config(*overrides)
    write_shards([manifest], config.features, tmp_path / "s", utterances_per_shard=3, workers=1)
    shards = open_data([tmp_path / "s"], config, train=True)
    memory = open_data([manifest], config, train=True)
    assert shards.num_utterances == memory.num_utterances == (8 if max_duration else 10)
    np.testing.assert_array_equal(np.sort(shards.frames), np.sort(memory.frames))
    a, b = shards.global_stats(), memory.global_stats()
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a.std, b.std, rtol=1e-6, atol=1e-6)


def test_unreadable_audio_is_reported_not_fatal(manifest, tmp_path):
    from asr.data import open_data
    from asr.manifest import Utterance, read_manifest, write_manifest
    from asr.shards import write_shards

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEfmt not really")
    m = tmp_path / "m.jsonl"
    write_manifest(m, read_manifest(manifest) + [Utterance("bad", str(bad), 1.5, "broken")])
    summary = write_shards([m], spec(), tmp_path / "s", utterances_per_shard=4, workers=1)
    assert summary["problems"] == 1 and summary["utterances"] == 10
    src = open_data([tmp_path / "s"], tiny_config(*SMALL), train=True)
    assert "bad" not in src.ids and src.num_utterances == 10
    assert "skipped 1 unreadable audio file(s): bad: " in "\n".join(src.report_lines("train"))


@pytest.fixture(scope="module")
def many_shards(fsdd_dir, tmp_path_factory):
    """2048 real FSDD recordings in 256 shards of 8 (each shard a narrow length slice)."""
    from asr.manifest import Utterance, write_manifest
    from asr.shards import write_shards

    import soundfile as sf

    tmp = tmp_path_factory.mktemp("many")
    utts = []
    for i, wav in enumerate(sorted(fsdd_dir.glob("*.wav"))[:2048]):
        info = sf.info(str(wav))
        text = chr(97 + i // 676) + chr(97 + i // 26 % 26) + chr(97 + i % 26)  # names the utterance
        utts.append(Utterance(wav.stem, str(wav), info.frames / info.samplerate, text))
    write_manifest(tmp / "m.jsonl", utts)
    write_shards([tmp / "m.jsonl"], spec("features.n_mels=8"), tmp / "s", utterances_per_shard=8, workers=2)
    return tmp / "s"


def test_a_shuffled_shard_batch_draws_from_many_shards(many_shards):
    """Batches of 16 from 256 shards (32 in each length bucket): a global shuffle would draw
    them from about 13 shards; reading 16 files side by side and shuffling blocks of 512
    records drew from 8.2 on average. Now more than 12, and the same pass again gives the
    same batches."""
    from asr.data import open_data
    from asr.shards import read_index

    config = tiny_config(*SMALL, "features.n_mels=8", "training.sortagrad=false", "training.speed_factors=1.0")
    src = open_data([many_shards], config, train=True)
    cols = read_index(many_shards)["utterances"]
    shard_of = dict(zip(cols["text"], cols["shard"]))
    steps = src.steps_per_epoch(10**6, 16)
    batches = [texts_of(b, config.vocabulary) for b in src.dataset(None, 10**6, 16, seed=4).take(steps)]
    full = [b for b in batches if len(b) == 16]
    distinct = [len({shard_of[t] for t in b}) for b in full]
    assert len(full) > 100 and np.mean(distinct) > 12, np.mean(distinct)
    again = [texts_of(b, config.vocabulary) for b in src.dataset(None, 10**6, 16, seed=4).take(steps)]
    assert again == batches
