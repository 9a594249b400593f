"""tf.distribute: two MultiWorkerMirroredStrategy workers on 127.0.0.1 train exactly like one
process with the same global batch.

The utterances have mixed lengths (0.35 to 1 s), so every batch is padded: the convolutions'
batch statistics skip padded frames (asr/model.py), which is what makes "the same global batch"
the same computation however it is split. One length bucket (training.buckets=1) keeps each
global batch the union of the workers' batches. Dropout, speed perturbation and SpecAugment
are off, so nothing random differs between the runs.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, TINY_OVERRIDES

UTTERANCES = 16  # 4 global batches of 4 per epoch
LONGEST = 1.0  # seconds; utterance i is cut to a length between SHORTEST and LONGEST
SHORTEST = 0.35
ASR = ["-m", "asr"]  # how launch() starts the asr command
WORKER_TIMEOUT = 300  # seconds; a stuck collective must fail the test, not hang CI
WEIGHT_TOLERANCE = 5e-5  # max |difference| between the 2-worker and the 1-process weights (measured 3.1e-6)
LOSS_RTOL = 1e-5  # relative tolerance of the logged epoch losses


def mixed_length_manifest(path: Path, fsdd_dir: Path) -> Path:
    """UTTERANCES FSDD digits resampled to 16 kHz, each cut or zero-padded to its own length
    between SHORTEST and LONGEST seconds (a different one for every utterance)."""
    import soundfile as sf

    from asr.audio import load_audio
    from asr.manifest import Utterance, write_manifest
    from asr.text import DIGIT_WORDS

    lengths = np.linspace(SHORTEST, LONGEST, UTTERANCES)[np.random.default_rng(0).permutation(UTTERANCES)]
    utts = []
    for i in range(UTTERANCES):
        digit, speaker = i % 10, ("jackson", "nicolas")[i // 10]
        n = int(16000 * lengths[i])
        audio = load_audio(fsdd_dir / f"{digit}_{speaker}_{i}.wav", 16000)[:n]
        wav = path.parent / f"utt{i:02d}.wav"
        sf.write(wav, np.pad(audio, (0, n - len(audio))), 16000)
        utts.append(Utterance(f"utt{i:02d}", str(wav), n / 16000, DIGIT_WORDS[digit], speaker))
    write_manifest(path, utts)
    return path


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# `asr` in a process whose CPU is split into two logical devices before TensorFlow starts:
# MirroredStrategy then has two replicas, as on a machine with two GPUs.
TWO_CPU_REPLICAS = [
    "-c",
    "import sys, asr, tensorflow as tf; cpu = tf.config.list_physical_devices('CPU')[0]; "
    "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2); "
    "from asr.cli import main; sys.exit(main())",
]


def launch(manifest: Path, exp: Path, batch: int, env_extra: dict, prefix=None, extra=()) -> subprocess.Popen:
    overrides = TINY_OVERRIDES + [
        "training.epochs=2", "training.sortagrad=true", "training.batch_frames=100000",
        f"training.max_batch_size={batch}", "training.warmup_steps=2", "training.buckets=1",
    ]
    cmd = [sys.executable, *(prefix or ASR), "train", *extra, "--train", str(manifest), "--exp", str(exp), "--threads", "1",
           "--feature-cache", str(exp.parent / f"cache-{exp.name}"), "--set", *overrides]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **env_extra}
    return subprocess.Popen(cmd + (["--distribute", "multi-worker"] if "TF_CONFIG" in env_extra else []),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(procs: list[subprocess.Popen]) -> list[str]:
    """Wait for every process (killing all when one fails or the timeout passes); their output."""
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=WORKER_TIMEOUT)[0])
            if p.returncode != 0:
                break
    except subprocess.TimeoutExpired:
        outputs.append("timeout")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    return outputs


def weights(model_dir: Path) -> list[np.ndarray]:
    import h5py

    arrays = []
    with h5py.File(model_dir / "weights.h5", "r") as f:
        f.visititems(lambda name, obj: arrays.append((name, obj[()])) if isinstance(obj, h5py.Dataset) else None)
    return [a for _, a in sorted(arrays, key=lambda x: x[0])]


def epoch_losses(exp: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (exp / "train.log").read_text().splitlines()]


@pytest.mark.slow
def test_two_workers_match_one_process_with_the_same_global_batch(fsdd_dir, tmp_path):
    manifest = mixed_length_manifest(tmp_path / "train.jsonl", fsdd_dir)
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = [
        launch(manifest, tmp_path / "multi", 2, {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
        for i in range(2)
    ]
    reference = launch(manifest, tmp_path / "single", 4, {})
    outputs = finish(workers + [reference])

    assert "2 replica(s)" in outputs[0] and "1 replica(s)" in outputs[2]
    chief, other, single = tmp_path / "multi", tmp_path / "multi" / "worker-1", tmp_path / "single"
    w_chief, w_other, w_single = weights(chief / "final"), weights(other / "final"), weights(single / "final")
    assert len(w_chief) == len(w_single) > 0
    for a, b in zip(w_chief, w_other):
        np.testing.assert_array_equal(a, b)  # the two workers hold the same model
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(w_chief, w_single))
    assert diff < WEIGHT_TOLERANCE, f"2 workers vs 1 process: max weight difference {diff}"
    np.testing.assert_allclose(epoch_losses(chief), epoch_losses(single), rtol=LOSS_RTOL)
    assert epoch_losses(chief) == epoch_losses(other)
    # Equal weights also prove the sharding: had both workers trained on the same half of each
    # global batch, their gradient would be the mean over 2 utterances, not over the 4.
    losses = epoch_losses(single)
    assert len(losses) == 2 and losses[1] < losses[0]


@pytest.mark.slow
def test_mirrored_strategy_over_two_devices_matches_one_process(fsdd_dir, tmp_path):
    manifest = mixed_length_manifest(tmp_path / "train.jsonl", fsdd_dir)
    mirrored = launch(manifest, tmp_path / "mirrored", 2, {}, prefix=TWO_CPU_REPLICAS, extra=["--distribute", "mirrored"])
    reference = launch(manifest, tmp_path / "single", 4, {})
    outputs = finish([mirrored, reference])

    assert "2 replica(s)" in outputs[0] and "1 replica(s)" in outputs[1]
    w_mirrored, w_single = weights(tmp_path / "mirrored" / "final"), weights(tmp_path / "single" / "final")
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(w_mirrored, w_single))
    assert diff < WEIGHT_TOLERANCE, f"2 replicas vs 1 process: max weight difference {diff}"
    np.testing.assert_allclose(epoch_losses(tmp_path / "mirrored"), epoch_losses(tmp_path / "single"), rtol=LOSS_RTOL)
