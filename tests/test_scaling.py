"""Training at scale on one machine: gradient accumulation, mixed precision, checkpoint
averaging at evaluation time, and the results table."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from conftest import TINY_OVERRIDES, write_fsdd_manifest
from test_training import _optimizer_step, run_asr

DIGITS = [f"{d}_jackson_{i}" for d in range(10) for i in range(2)]


def test_micro_batches_cover_every_row_once_with_zero_weight_fillers():
    import tensorflow as tf

    from asr.model import ModelConfig, build_model
    from asr.trainer import trainer_class

    net = build_model(ModelConfig(conv_channels=4, lstm_layers=1, lstm_units=8), 16, 5)
    for size, accum in [(5, 2), (4, 4), (2, 3), (7, 3)]:
        trainer = trainer_class()(net, 0, accum)
        lengths = tf.constant(np.arange(size) + 3, tf.int32)
        batch = {
            "features": tf.random.normal([size, size + 4, 16]),
            "feature_lengths": lengths,
            "labels": tf.constant(np.arange(size)[:, None] * np.ones((1, 3), int), tf.int32),
            "label_lengths": tf.fill([size], 1),
        }
        seen = []
        for k in range(accum):
            micro, weights = trainer._micro_batch(batch, k)
            rows = micro["labels"][:, 0].numpy()
            real = rows[weights.numpy() > 0]
            seen += list(real)
            assert micro["features"].shape[1] == int(tf.reduce_max(micro["feature_lengths"]))  # trimmed
            assert micro["labels"].shape[1] == 1
        assert sorted(seen) == list(range(size)), (size, accum)


@pytest.mark.slow
def test_mixed_precision_with_gradient_accumulation_trains_and_average_evaluates(fsdd_dir, tmp_path):
    manifest = write_fsdd_manifest(tmp_path / "train.jsonl", fsdd_dir, DIGITS)
    exp = tmp_path / "exp"
    sets = TINY_OVERRIDES + ["training.epochs=3", "training.grad_accum_steps=2", "training.max_batch_size=4",
                             "training.average_last=2"]
    r = run_asr("train", "--train", manifest, "--dev", manifest, "--exp", exp, "--threads", "1",
                "--mixed-precision", "--set", *sets)
    assert r.returncode == 0, r.stderr[-3000:]
    steps = int(re.search(r"(\d+) steps per epoch; 1 replica\(s\) x 2 micro-batch", r.stdout).group(1))
    # one optimizer step per global batch, not one per micro-batch
    assert _optimizer_step(exp / "checkpoints" / "epoch-0003") == 3 * steps
    losses = [json.loads(x)["loss"] for x in (exp / "train.log").read_text().splitlines()]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]

    r = run_asr("average", "--exp", exp, "--last", "2", "--out", exp / "avg-2")
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads((exp / "avg-2" / "model.json").read_text())
    assert meta["averaged_epochs"] == [2, 3]
    r = run_asr("evaluate", "--model", exp / "avg-2", "--manifest", manifest, "--out", exp / "eval" / "train")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_asr("results", "--eval", exp / "eval", "--sets", "train", "missing", "--out", exp / "RESULTS.md")
    table = (exp / "RESULTS.md").read_text()
    summary = json.loads((exp / "eval" / "train" / "summary.json").read_text())
    assert f"| train | greedy | {100 * summary['wer']:.2f}% |" in table  # a trained model ships no decoder
    assert "| missing | | not measured |" in table

    r = run_asr("average", "--exp", tmp_path / "nothing", "--last", "2", "--out", tmp_path / "x")
    assert r.returncode == 2 and "no finished epoch checkpoints" in r.stderr
