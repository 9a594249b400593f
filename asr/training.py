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
import logging
import math
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

log = logging.getLogger(__name__)
KEEP_CHECKPOINTS = 5  # newest epoch checkpoints kept (averaging can use them all)
DISTRIBUTE = ("auto", "none", "mirrored", "multi-worker")  # choices of train(distribute=...)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _schedule_class():
    import tensorflow as tf
    import tf_keras as keras

    class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
        """Linear warmup to ``peak`` over ``warmup`` steps, cosine decay to peak*final_ratio at ``total``."""

        def __init__(self, peak, warmup, total, final_ratio):
            self.peak, self.warmup, self.total, self.final_ratio = peak, warmup, total, final_ratio

        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            warm = self.peak * (step + 1.0) / max(1, self.warmup)
            progress = tf.clip_by_value((step - self.warmup) / max(1, self.total - self.warmup), 0.0, 1.0)
            cosine = self.final_ratio + (1 - self.final_ratio) * 0.5 * (1 + tf.cos(math.pi * progress))
            return tf.where(step < self.warmup, warm, self.peak * cosine)

        def get_config(self):
            return {"peak": self.peak, "warmup": self.warmup, "total": self.total, "final_ratio": self.final_ratio}

    return WarmupCosine


def _trainer_class():
    import tensorflow as tf
    import tf_keras as keras

    from asr.ctc import ctc_loss
    from asr.model import output_length

    class CTCTrainer(keras.Model):
        """Wraps the network: fit() computes CTC with each utterance's true lengths.

        One train step takes a per-replica batch, splits it into ``accum_steps`` interleaved
        micro-batches (rows k, k + accum_steps, ...), sums their gradients and applies them
        once. The loss of a step is sum(per-utterance CTC) / (utterances in the GLOBAL batch,
        all-reduced over replicas), so replicas and micro-batches never change the gradient.
        """

        def __init__(self, net, blank, accum_steps: int = 1):
            super().__init__()
            self.net, self.blank, self.accum_steps = net, blank, accum_steps
            self.loss_tracker = keras.metrics.Mean(name="loss")

        def call(self, inputs, training=False):
            return self.net(inputs, training=training)

        def per_utterance_loss(self, batch, training):
            logits = self.net([batch["features"], batch["feature_lengths"]], training=training)
            return ctc_loss(
                batch["labels"], batch["label_lengths"], logits, output_length(batch["feature_lengths"]), self.blank
            )

        def _micro_batch(self, batch, k):
            """Rows k, k + accum, ... of ``batch``, trimmed to their longest utterance and label;
            returns (micro-batch, weights [rows]) where weights are 0 for the filler rows a
            batch smaller than ``accum_steps`` needs."""
            size = tf.shape(batch["feature_lengths"])[0]
            rows = tf.range(k, tf.maximum(size, self.accum_steps), self.accum_steps)
            weights = tf.cast(rows < size, tf.float32)
            rows = tf.minimum(rows, size - 1)
            micro = {key: tf.gather(value, rows) for key, value in batch.items()}
            frames = tf.reduce_max(micro["feature_lengths"])
            labels = tf.maximum(tf.reduce_max(micro["label_lengths"]), 1)
            micro["features"] = micro["features"][:, :frames]
            micro["labels"] = micro["labels"][:, :labels]
            return micro, weights

        def train_step(self, batch):
            variables = self.net.trainable_variables
            count = tf.cast(tf.shape(batch["feature_lengths"])[0], tf.float32)
            context = tf.distribute.get_replica_context()
            if context is not None and context.num_replicas_in_sync > 1:
                count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
            scaled = isinstance(self.optimizer, keras.mixed_precision.LossScaleOptimizer)
            total = None
            for k in range(self.accum_steps):
                micro, weights = self._micro_batch(batch, k) if self.accum_steps > 1 else (batch, None)
                with tf.GradientTape() as tape:
                    per = self.per_utterance_loss(micro, True)
                    summed = tf.reduce_sum(per if weights is None else per * weights)
                    loss = summed / tf.maximum(count, 1.0)
                    if scaled:
                        loss = self.optimizer.get_scaled_loss(loss)
                grads = tape.gradient(loss, variables)
                if scaled:
                    grads = self.optimizer.get_unscaled_gradients(grads)
                total = grads if total is None else [a + b for a, b in zip(total, grads)]
                self.loss_tracker.update_state(per, sample_weight=weights)
            self.optimizer.apply_gradients(zip(total, variables))
            return {"loss": self.loss_tracker.result()}

        def test_step(self, batch):
            self.loss_tracker.update_state(self.per_utterance_loss(batch, False))
            return {"loss": self.loss_tracker.result()}

        @property
        def metrics(self):
            return [self.loss_tracker]

    return CTCTrainer


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


def make_strategy(distribute: str = "auto"):
    """The tf.distribute strategy for ``distribute`` (one of DISTRIBUTE) and this worker's
    index (0 = chief). auto: multi-worker when TF_CONFIG names more than one task, mirrored
    when there are several GPUs, else TensorFlow's default strategy. Must run before
    TensorFlow does any work (TF_CONFIG and thread settings are read at creation)."""
    import tensorflow as tf

    if distribute not in DISTRIBUTE:
        raise ValueError(f"distribute must be one of {', '.join(DISTRIBUTE)}, got {distribute!r}")
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}")
    tasks = sum(len(v) for v in cluster.get("cluster", {}).values())
    if distribute == "multi-worker" and tasks < 1:
        raise ValueError("distribute=multi-worker needs TF_CONFIG with the cluster and this task (see the recipe README)")
    if distribute == "multi-worker" or (distribute == "auto" and tasks > 1):
        task = cluster.get("task", {})
        index = int(task.get("index", 0))
        # The chief is task "chief", or worker 0 when the cluster has no chief.
        if task.get("type") == "chief":
            index = 0
        elif "chief" in cluster.get("cluster", {}):
            index += 1
        return tf.distribute.MultiWorkerMirroredStrategy(), index
    gpus = tf.config.list_logical_devices("GPU")
    if distribute == "mirrored" or (distribute == "auto" and len(gpus) > 1):
        # Every GPU; without one, every logical CPU device (one, unless the process split the
        # CPU with tf.config.set_logical_device_configuration, as the tests do).
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices), 0
    return tf.distribute.get_strategy(), 0


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
        schedule = _schedule_class()(tc.learning_rate, tc.warmup_steps, steps * tc.epochs, tc.final_lr_ratio)
        optimizer = keras.optimizers.Adam(schedule, global_clipnorm=tc.clip_norm)
        if mixed:
            optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
        trainer = _trainer_class()(net, vocab.blank, tc.grad_accum_steps)
        trainer.compile(optimizer=optimizer)
        trainer.distribute_reduction_method = "first"  # the loss metric is already all-reduced

    state = {"epoch": 0, "best_dev_loss": float("inf"), "best_epoch": 0, "bad_epochs": 0, "history": []}
    done = checkpoint_dirs(out_dir / "checkpoints")
    if done:
        state = restore_checkpoint(done[-1], net, optimizer)
        print(f"resuming from {done[-1].name}: {state['epoch']} epoch(s) done, optimizer step restored", flush=True)

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


def configure_threads(threads: int | None) -> None:
    """Limit TensorFlow's CPU threads (None: all cores). Must run before TF does any work."""
    if not threads:
        return
    import tensorflow as tf

    if tf.config.threading.get_intra_op_parallelism_threads() == threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already ran something in this process: keep its threads
        log.warning("TensorFlow is already initialized; its thread counts stay as they are")
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)
