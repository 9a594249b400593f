"""Training with Keras ``fit``: CTC over true lengths, atomic per-epoch checkpoints, resume
after a kill, best-on-dev model, early stopping, a warmup + cosine learning rate, gradient
clipping, TensorBoard logs, and a dev WER each epoch.

Experiment folder layout:
    config.json      the ExperimentConfig; a later run with a different one is refused
    checkpoints/     epoch-NNNN/ (network + optimizer + state.json), newest few kept
    best/            model directory of the best epoch on training.selection (dev loss or dev WER)
    final/           model directory of the last finished epoch
    averaged/        the mean of the last ``average_last`` epochs (when average_last > 1)
    model/           the result: best/, or averaged/ when it scores better on training.selection
    tensorboard/     TensorBoard logs
    train.log        one line per epoch
    worker-N/        the same layout, written by worker N > 0 of a multi-worker run

Scaling out uses TensorFlow's own ``tf.distribute``: ``MultiWorkerMirroredStrategy`` when
``TF_CONFIG`` names a cluster, ``MirroredStrategy`` over the local GPUs when there are several,
else the default strategy. ``training.batch_frames`` and ``max_batch_size`` are per replica
and per micro-batch: the global batch is ``replicas * grad_accum_steps`` times larger, and the
loss is the mean over the utterances of the global batch however they are split.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import asr  # noqa: F401
from asr.checkpoint import (
    checkpoint_dirs,
    replace_dir,
    restore_checkpoint,
    save_checkpoint,
    save_model_dir,
    write_json,
)
from asr.config import ConfigError, ExperimentConfig, config_diff
from asr.distribute import make_strategy
from asr.trainer import schedule_class, trainer_class

KEEP_CHECKPOINTS = 5  # newest epoch checkpoints kept (averaging can use them all)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def decode_dataset(forward, dataset, source, vocab) -> tuple[list[str], list[str]]:
    """Greedy-decode every batch of ``dataset`` (from ``source``, an asr.data DataSource) with
    ``forward`` (asr.model.make_forward); returns (references, hypotheses): the references are
    the utterances' normalized transcripts (``source.texts``), as ``asr evaluate`` scores them,
    not the labels decoded back (those lose what the vocabulary cannot spell)."""
    from asr.decoding import greedy_decode_batch
    from asr.model import output_length

    refs, hyps = [], []
    for batch in dataset:
        logits = forward(batch["features"], batch["feature_lengths"]).numpy()
        lengths = output_length(batch["feature_lengths"].numpy())
        for ids in greedy_decode_batch(logits, lengths, vocab.blank):
            hyps.append(vocab.decode(ids))
        refs += [source.texts[int(i)] for i in batch["index"].numpy()]
    return refs, hyps


def dev_error_rates(forward, dev) -> dict:
    """WER/CER of the model behind ``forward`` on ``dev`` = (dataset, DataSource, vocabulary),
    scored like ``asr evaluate`` (asr.evaluation.score)."""
    from asr.evaluation import score

    refs, hyps = decode_dataset(forward, *dev)
    return score(refs, hyps)


def _check_config(exp_dir: Path, config: ExperimentConfig) -> None:
    path = exp_dir / "config.json"
    new = config.to_dict()
    if path.exists():
        old = json.loads(path.read_text())
        try:  # keys added to the config since that run take their defaults
            old = ExperimentConfig.from_dict(old).to_dict()
        except ConfigError:
            pass
        diff = config_diff(old, new)
        if diff:
            raise ConfigError(
                f"{exp_dir} was started with a different config; refusing to resume. Differences (saved -> new): "
                + "; ".join(diff)
                + ". Use a new experiment folder, or the saved config."
            )
    else:
        exp_dir.mkdir(parents=True, exist_ok=True)
        write_json(path, new)


def selection_score(line: dict, selection: str) -> tuple[float, float]:
    """The value an epoch's log ``line`` is ranked by (lower is better): (dev WER, dev loss) for
    selection dev_wer, (dev loss, 0) for dev_loss. Without a dev set, ``dev_loss`` is the
    training loss (see _train)."""
    if selection == "dev_wer" and "dev_wer" in line:
        return (float(line["dev_wer"]), float(line["dev_loss"]))
    return (float(line["dev_loss"]), 0.0)


def _epoch_callback(net, optimizer, config, stats, exp_dir, dev, state, info):
    import tensorflow as tf
    import tf_keras as keras

    from asr.model import make_forward

    writer = tf.summary.create_file_writer(str(exp_dir / "tensorboard" / "dev_wer"))
    clock: dict[str, float] = {}  # perf_counter at the epoch's start and its validation's start
    forward = make_forward(net, config.features.n_mels)
    tc = config.training
    selection = tc.selection if dev is not None else "train_loss"

    class EpochEnd(keras.callbacks.Callback):
        """Checkpoint, best model, dev WER, early stopping and NaN detection, every epoch."""

        def on_epoch_begin(self, epoch, logs=None):
            clock["start"] = time.perf_counter()
            clock.pop("validation", None)

        def on_test_begin(self, logs=None):
            clock.setdefault("validation", time.perf_counter())

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not np.isfinite(loss):
                state["diverged"] = f"loss became {loss} at step {int(optimizer.iterations.numpy())}"
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            if state.get("diverged"):
                return
            number = epoch + 1
            dev_loss = float(logs.get("val_loss", logs.get("loss", np.nan)))
            if not np.isfinite(dev_loss):
                state["diverged"] = f"dev loss became {dev_loss} in epoch {number}"
                self.model.stop_training = True
                return
            t_train = clock.get("validation", time.perf_counter()) - clock["start"]
            line = {
                "epoch": number,
                "loss": float(logs.get("loss", np.nan)),
                "dev_loss": dev_loss,
                "train_seconds": round(t_train, 2),
                "train_audio_seconds": round(info["train_hours"] * 3600, 1),
            }
            if dev is not None and number % tc.dev_wer_every == 0:
                rates = dev_error_rates(forward, dev)
                line["dev_wer"], line["dev_cer"] = rates["wer"], rates["cer"]
                with writer.as_default():
                    tf.summary.scalar("wer", rates["wer"], step=number)
                    tf.summary.scalar("cer", rates["cer"], step=number)
            score = selection_score(line, tc.selection)
            best = tuple(state.get("best_score") or (state["best_dev_loss"], 0.0))
            improved = score < best
            if improved:
                state.update(best_score=list(score), best_dev_loss=dev_loss, best_epoch=number, bad_epochs=0)
                save_model_dir(exp_dir / "best", config, net, stats, epoch=number, dev=line, selection=selection, **info)
            else:
                state["bad_epochs"] += 1
            state["epoch"] = number
            state["stopped_early"] = state["bad_epochs"] >= tc.early_stop_patience
            line["epoch_seconds"] = round(time.perf_counter() - clock["start"], 2)
            state["history"].append(line)
            with open(exp_dir / "train.log", "a") as f:
                f.write(json.dumps(line) + "\n")
            keep = max(KEEP_CHECKPOINTS, tc.average_last)
            save_checkpoint(exp_dir / "checkpoints", number, net, optimizer, state, keep)
            wer = f" dev WER {100 * line['dev_wer']:.2f}% CER {100 * line['dev_cer']:.2f}%" if "dev_wer" in line else ""
            loss_name = "dev loss" if dev is not None else "train loss (no dev set)"
            msg = f"epoch {number}: loss {line['loss']:.3f} {loss_name} {dev_loss:.3f}{wer}{' (best)' if improved else ''}"
            print(msg, flush=True)
            if state["stopped_early"]:
                print(f"early stop: {selection.replace('_', ' ')} has not improved for {state['bad_epochs']} epochs", flush=True)
                self.model.stop_training = True

    return EpochEnd()


def train(
    config: ExperimentConfig,
    train_paths: list,
    dev_paths: list,
    exp_dir,
    corpus: str = "",
    max_epochs: int | None = None,
    cache_dir=None,
    distribute: str = "auto",
    mixed_precision: bool = False,
) -> Path:
    """Train (or resume) in ``exp_dir``; returns the resulting model directory, EXP/model.

    ``train_paths``/``dev_paths``: JSONL manifests or shard folders (asr.shards). The same
    call after a kill continues from the last finished epoch with the optimizer state
    restored. ``max_epochs`` stops this call after that many epochs in total (for tests and
    time-boxed runs) without changing the config. ``cache_dir`` holds the log-mel cache of
    the memory pipeline (default: EXP_DIR/../feature-cache). ``distribute``: see
    make_strategy. ``mixed_precision``: float16 compute with float32 weights and dynamic loss
    scaling (for GPUs; slower on CPUs).
    Raises ConfigError if exp_dir holds a different config, TrainingDiverged on a NaN loss.
    """
    import tf_keras as keras

    strategy, worker = make_strategy(distribute)
    exp_dir = Path(exp_dir)
    out_dir = exp_dir if worker == 0 else exp_dir / f"worker-{worker}"
    _check_config(out_dir, config)
    keras.utils.set_random_seed(config.training.seed)
    policy = keras.mixed_precision.global_policy()
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        return _train(config, train_paths, dev_paths, out_dir, exp_dir, corpus, max_epochs, cache_dir, strategy,
                      mixed_precision)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _open(paths, config, train: bool, cache):
    from asr.data import open_data

    name = "train" if train else "dev"
    source = open_data(paths, config, train=train, cache_dir=cache)
    for line in source.report_lines(name):
        print(line, flush=True)
    return source


def _train(config, train_paths, dev_paths, out_dir, exp_dir, corpus, max_epochs, cache_dir, strategy, mixed) -> Path:
    import tensorflow as tf
    import tf_keras as keras

    tc, spec, vocab = config.training, config.features, config.vocabulary
    cache = Path(cache_dir) if cache_dir else exp_dir.parent / "feature-cache"
    train_src = _open(train_paths, config, True, cache)
    if len(train_src.frames) == 0:
        raise ValueError("no usable training utterances (see the report above)")
    dev_src = _open(dev_paths, config, False, cache) if dev_paths else None
    stats = train_src.global_stats() if spec.normalization == "global" else None

    replicas = strategy.num_replicas_in_sync
    # Per-replica batches hold grad_accum_steps micro-batches; steps count global batches.
    frames_per_replica, size_per_replica = tc.batch_frames * tc.grad_accum_steps, tc.max_batch_size * tc.grad_accum_steps
    steps = train_src.steps_per_epoch(frames_per_replica * replicas, size_per_replica * replicas)
    audio_s = train_src.audio_seconds
    print(
        f"train: {audio_s / 3600:.2f} h of audio, {steps} steps per epoch; {replicas} replica(s) x "
        f"{tc.grad_accum_steps} micro-batch(es) of up to {tc.batch_frames} frames"
        f"{', mixed precision' if mixed else ''}",
        flush=True,
    )

    from asr.model import build_model

    with strategy.scope():
        net = build_model(config.model, spec.n_mels, vocab.size)
        schedule = schedule_class()(tc.learning_rate, tc.warmup_steps, steps * tc.epochs, tc.final_lr_ratio)
        optimizer = keras.optimizers.Adam(schedule, global_clipnorm=tc.clip_norm)
        if mixed:
            optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
        trainer = trainer_class()(net, vocab.blank, tc.grad_accum_steps)
        trainer.compile(optimizer=optimizer)
        trainer.distribute_reduction_method = "first"  # the loss metric is already all-reduced

    state = {"epoch": 0, "best_dev_loss": float("inf"), "best_epoch": 0, "bad_epochs": 0, "history": []}
    done = checkpoint_dirs(out_dir / "checkpoints")
    if done:
        state = restore_checkpoint(done[-1], net, optimizer)
        print(f"resuming from {done[-1].name}: {state['epoch']} epoch(s) done, optimizer step restored", flush=True)
        # A kill between an epoch's train.log line and its checkpoint leaves a line the
        # checkpoint does not know: the log restarts from the checkpoint's own history.
        lines = "".join(json.dumps(line) + "\n" for line in state.get("history", []))
        tmp = out_dir / "train.log.tmp"
        tmp.write_text(lines)
        os.replace(tmp, out_dir / "train.log")

    def train_dataset(context=None):
        pipelines, pipeline = (context.num_input_pipelines, context.input_pipeline_id) if context else (1, 0)
        return train_src.dataset(stats, frames_per_replica, size_per_replica, seed=tc.seed, first_pass=state["epoch"],
                                 num_pipelines=pipelines, pipeline_id=pipeline)

    if replicas > 1:
        train_ds = keras.utils.experimental.DatasetCreator(train_dataset)
    else:
        train_ds = train_dataset()
    dev_ds = None
    if dev_src is not None:
        dev_ds = dev_src.dataset(stats, tc.batch_frames, tc.max_batch_size)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        dev_ds = dev_ds.with_options(options)
        dev = (dev_ds, dev_src, vocab)
    else:
        dev = None
        print("no dev set (--dev): the best epoch and early stopping use the TRAINING loss, which says "
              f"nothing about new data; training.selection ({tc.selection}) needs a dev set", flush=True)
    last_epoch = tc.epochs if max_epochs is None else min(tc.epochs, max_epochs)
    info = {"corpus": corpus, "train_hours": round(audio_s / 3600, 4)}
    if state["epoch"] >= last_epoch or state.get("stopped_early"):
        print(f"training already finished ({state['epoch']} epochs)", flush=True)
    else:
        callbacks = [
            _epoch_callback(net, optimizer, config, stats, out_dir, dev, state, info),
            keras.callbacks.TensorBoard(str(out_dir / "tensorboard"), write_graph=False, profile_batch=0),
        ]
        trainer.fit(
            train_ds,
            validation_data=dev_ds,
            epochs=last_epoch,
            initial_epoch=state["epoch"],
            steps_per_epoch=steps,
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 2,
        )
        if state.get("diverged"):
            raise TrainingDiverged(
                f"training stopped: {state['diverged']}. The last good checkpoint "
                f"(epoch {state['epoch']}) is kept in {out_dir / 'checkpoints'}; lower training.learning_rate "
                "or training.clip_norm and resume."
            )
        save_model_dir(out_dir / "final", config, net, stats, epoch=state["epoch"], **info)
    best = out_dir / "best"
    if not best.exists():
        save_model_dir(best, config, net, stats, epoch=state["epoch"], **info)
    chosen = best
    if tc.average_last > 1 and dev is not None:
        chosen = _average(out_dir, config, net, trainer, stats, dev, state, info)
    elif tc.average_last > 1:
        print(f"no dev set: the average of the last {tc.average_last} epochs is not made (nothing to compare it on)",
              flush=True)
    model = out_dir / "model"
    tmp = out_dir / "model.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(chosen, tmp)
    replace_dir(tmp, model)
    return model


def _average(exp_dir: Path, config, net, trainer, stats, dev, state, info) -> Path:
    """Average the last ``average_last`` epoch checkpoints into EXP/averaged; returns it when
    it scores better on ``dev`` (training.selection) than the best single epoch, else EXP/best."""
    from asr.checkpoint import average_checkpoints
    from asr.model import make_forward

    tc = config.training
    ckpts = checkpoint_dirs(exp_dir / "checkpoints")[-tc.average_last :]
    average_checkpoints(ckpts, net)
    dev_ds = dev[0]
    line = {"dev_loss": float(trainer.evaluate(dev_ds, verbose=0))}
    if tc.selection == "dev_wer":
        rates = dev_error_rates(make_forward(net, config.features.n_mels), dev)
        line["dev_wer"], line["dev_cer"] = rates["wer"], rates["cer"]
    epochs = [int(d.name.split("-")[1]) for d in ckpts]
    averaged = save_model_dir(
        exp_dir / "averaged", config, net, stats, epoch=state["epoch"], averaged_epochs=epochs, dev=line,
        selection=tc.selection, **info
    )
    score = selection_score(line, tc.selection)
    best = tuple(state.get("best_score") or (state["best_dev_loss"], 0.0))
    better = score < best
    shown = "dev WER" if tc.selection == "dev_wer" else "dev loss"
    print(
        f"average of epochs {epochs[0]}-{epochs[-1]}: {shown} {score[0]:.4f}, best single epoch "
        f"{state['best_epoch']}: {best[0]:.4f} -> EXP/model is the {'average' if better else 'best epoch'}",
        flush=True,
    )
    return averaged if better else exp_dir / "best"
