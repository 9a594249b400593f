"""Training: overfit-then-decode, resume after a kill, refusals, and bad training data."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, tiny_config, write_fsdd_manifest

DIGITS = [f"{d}_jackson_0" for d in range(6)]


def run_asr(*args, **kw):
    """``python -m asr ARGS`` in a subprocess, one TensorFlow thread."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "asr", *map(str, args)], capture_output=True, text=True, env=env, **kw)


def tiny_set(*extra):
    from conftest import TINY_OVERRIDES

    return TINY_OVERRIDES + list(extra)


@pytest.mark.slow
def test_overfit_tiny_model_then_decode(fsdd_dir, tmp_path):
    """A tiny model trained on six digits must transcribe exactly those six recordings."""
    from asr.evaluation import evaluate
    from asr.distribute import configure_threads
    from asr.training import train
    from asr.transcription import load_recognizer

    configure_threads(1)
    train_m = write_fsdd_manifest(tmp_path / "train.jsonl", fsdd_dir, DIGITS, copies=8)
    dev_m = write_fsdd_manifest(tmp_path / "dev.jsonl", fsdd_dir, DIGITS)
    best = train(tiny_config("training.epochs=40"), [train_m], [dev_m], tmp_path / "exp")

    results = load_recognizer(best).transcribe_files([str(fsdd_dir / f"{n}.wav") for n in DIGITS])
    assert [r.text for r in results] == ["zero", "one", "two", "three", "four", "five"]

    summary = evaluate(best, dev_m, tmp_path / "eval")
    assert summary["wer"] == 0.0 and summary["utterances"] == 6
    for name in ("hyps.tsv", "errors.txt", "summary.json", "wer.txt"):
        assert (tmp_path / "eval" / name).is_file()
    meta = json.loads((best / "model.json").read_text())
    assert meta["config"]["model"]["lstm_units"] == 48  # the config travels with the model


def _optimizer_step(ckpt_dir: Path) -> int:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(ckpt_dir / "ckpt"))
    return int(reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"))


@pytest.mark.slow
def test_killed_training_resumes_from_last_epoch(fsdd_dir, tmp_path):
    """SIGKILL mid-run; the same command continues after the last finished epoch, with the
    optimizer's step count carried over, and no finished epoch is trained twice."""
    train_m = write_fsdd_manifest(tmp_path / "train.jsonl", fsdd_dir, DIGITS, copies=4)
    cmd = ["train", "--train", train_m, "--dev", train_m, "--exp", tmp_path / "exp", "--threads", "1",
           "--set", *tiny_set("training.epochs=40")]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "asr", *map(str, cmd)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "exp" / "checkpoints"
    deadline = time.monotonic() + 300
    while not (ckpts / "epoch-0002" / "state.json").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "no second checkpoint within 300 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in ckpts.glob("epoch-*"))
    last = int(done[-1].split("-")[1])
    assert last >= 2
    step_at_kill = _optimizer_step(ckpts / done[-1])

    out = run_asr(*cmd, "--max-epochs", last + 2)
    assert out.returncode == 0, out.stderr
    assert f"resuming from epoch-{last:04d}: {last} epoch(s) done" in out.stdout
    epochs = [json.loads(x)["epoch"] for x in (tmp_path / "exp" / "train.log").read_text().splitlines()]
    assert epochs == list(range(1, last + 3))  # each epoch exactly once
    step_after = _optimizer_step(ckpts / f"epoch-{last + 2:04d}")
    step_one_epoch = _optimizer_step(ckpts / f"epoch-{last + 1:04d}") - step_at_kill
    assert step_one_epoch > 0
    assert step_after == step_at_kill + 2 * step_one_epoch  # continued, not restarted from 0


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(fsdd_dir, tmp_path, monkeypatch):
    import tensorflow as tf

    import asr.ctc
    from asr.distribute import configure_threads
    from asr.training import TrainingDiverged, train

    configure_threads(1)
    m = write_fsdd_manifest(tmp_path / "train.jsonl", fsdd_dir, DIGITS[:4], copies=2)
    config = tiny_config("training.epochs=5")
    train(config, [m], [m], tmp_path / "exp", max_epochs=1)
    good = tmp_path / "exp" / "checkpoints" / "epoch-0001"
    step = _optimizer_step(good)

    real = asr.ctc.ctc_loss
    monkeypatch.setattr(asr.ctc, "ctc_loss", lambda *a, **k: real(*a, **k) * tf.constant(float("nan")))
    with pytest.raises(TrainingDiverged, match="nan") as info:
        train(config, [m], [m], tmp_path / "exp")
    assert "epoch 1" in str(info.value)
    assert sorted(p.name for p in (tmp_path / "exp" / "checkpoints").glob("epoch-*")) == ["epoch-0001"]
    assert _optimizer_step(good) == step
    assert (tmp_path / "exp" / "best" / "model.json").is_file()


@pytest.mark.slow
def test_different_config_is_refused(fsdd_dir, tmp_path):
    from asr.config import ConfigError
    from asr.distribute import configure_threads
    from asr.training import train

    configure_threads(1)
    m = write_fsdd_manifest(tmp_path / "train.jsonl", fsdd_dir, DIGITS[:2])
    train(tiny_config("training.epochs=1"), [m], [], tmp_path / "exp")
    with pytest.raises(ConfigError, match=r"model\.lstm_units: 48 -> 64"):
        train(tiny_config("training.epochs=1", "model.lstm_units=64"), [m], [], tmp_path / "exp")


# ------------------------------------------------------------------ bad training data


def test_missing_audio_error_names_the_manifest_line(fsdd_dir, tmp_path):
    m = write_fsdd_manifest(tmp_path / "train.jsonl", fsdd_dir, DIGITS[:3])
    lines = m.read_text().splitlines()
    bad = json.loads(lines[1])
    bad["audio"] = str(tmp_path / "gone.wav")
    lines[1] = json.dumps(bad)
    m.write_text("\n".join(lines) + "\n")
    out = run_asr("train", "--train", m, "--exp", tmp_path / "exp", "--set", *tiny_set("training.epochs=1"))
    assert out.returncode == 2
    assert f"{m}:2: audio file not found" in out.stderr and "gone.wav" in out.stderr
    assert "Traceback" not in out.stderr


def _load(manifest, fsdd_dir):
    from asr.data import load_examples

    config = tiny_config()
    return load_examples([manifest], config.features, config.vocabulary)


def test_characters_outside_vocabulary_are_reported_with_counts(fsdd_dir, tmp_path):
    m = write_fsdd_manifest(tmp_path / "t.jsonl", fsdd_dir, DIGITS[:2], text="zero 日本 ß")
    examples, report = _load(m, fsdd_dir)
    assert report.unknown_chars == {"日": 2, "本": 2, "ß": 2}
    line = "\n".join(report.lines("train"))
    assert "'日'x2" in line and "'ß'x2" in line
    from asr.text import Vocabulary

    symbols = Vocabulary().symbols
    assert "".join(symbols[i] for i in examples[0].labels) == "zero  "  # known characters kept, unknown skipped


def test_labels_too_long_for_their_audio_are_dropped_with_a_count(fsdd_dir, tmp_path):
    from asr.model import output_length

    long_text = "seven " * 40
    ok = write_fsdd_manifest(tmp_path / "a.jsonl", fsdd_dir, DIGITS[:3])
    bad = write_fsdd_manifest(tmp_path / "b.jsonl", fsdd_dir, DIGITS[3:5], text=long_text)
    merged = tmp_path / "m.jsonl"
    merged.write_text(ok.read_text() + bad.read_text().replace('-0"', '-long"'))
    examples, report = _load(merged, fsdd_dir)
    assert report.too_long_label == 2 and report.kept == 3
    assert all(output_length(e.frames) >= len(e.labels) for e in examples)
    assert "dropped 2 utterance(s) whose label cannot fit" in "\n".join(report.lines("train"))


@pytest.mark.slow
def test_averaging_the_last_epochs(fsdd_dir, tmp_path):
    """EXP/averaged holds the exact mean of the last N checkpoints; EXP/model is whichever of
    it and the best epoch has the lower dev loss."""
    import tensorflow as tf

    from asr.checkpoint import checkpoint_dirs, load_model_dir
    from asr.distribute import configure_threads
    from asr.training import train

    configure_threads(1)
    m = write_fsdd_manifest(tmp_path / "train.jsonl", fsdd_dir, DIGITS, copies=2)
    model = train(tiny_config("training.epochs=4", "training.average_last=3"), [m], [m], tmp_path / "exp")
    assert model == tmp_path / "exp" / "model"
    _, _, meta, averaged = load_model_dir(tmp_path / "exp" / "averaged")
    assert meta["averaged_epochs"] == [2, 3, 4]
    _, _, _, probe = load_model_dir(tmp_path / "exp" / "averaged")
    weights = []
    for d in checkpoint_dirs(tmp_path / "exp" / "checkpoints")[-3:]:
        tf.train.Checkpoint(net=probe).read(str(d / "ckpt")).expect_partial()
        weights.append(probe.get_weights())
    for got, *epochs in zip(averaged.get_weights(), *weights):
        np.testing.assert_allclose(got, np.mean(epochs, axis=0), rtol=1e-6, atol=1e-7)
    best = json.loads((tmp_path / "exp" / "best" / "model.json").read_text())["dev"]["dev_loss"]
    chosen = "averaged" if meta["dev"]["dev_loss"] < best else "best"  # training.selection: dev_loss
    assert (tmp_path / "exp" / "model" / "weights.h5").read_bytes() == (tmp_path / "exp" / chosen / "weights.h5").read_bytes()


@pytest.mark.slow
def test_log_line_without_its_checkpoint_is_dropped_on_resume(fsdd_dir, tmp_path):
    """A kill after an epoch's train.log line but before its checkpoint: the resumed run's
    train.log holds each epoch once."""
    from asr.distribute import configure_threads
    from asr.training import train

    configure_threads(1)
    train_m = write_fsdd_manifest(tmp_path / "train.jsonl", fsdd_dir, DIGITS[:2], copies=2)
    config = tiny_config("training.epochs=3")
    train(config, [train_m], [train_m], tmp_path / "exp", max_epochs=2)
    log = tmp_path / "exp" / "train.log"
    log.write_text(log.read_text() + json.dumps({"epoch": 3, "loss": 1.0, "dev_loss": 1.0}) + "\n")  # no checkpoint 3
    train(config, [train_m], [train_m], tmp_path / "exp")
    assert [json.loads(x)["epoch"] for x in log.read_text().splitlines()] == [1, 2, 3]
