"""The CTC trainer and the learning-rate schedule that ``asr.training`` fits with.

``trainer_class()`` returns a tf_keras Model subclass wrapping the network: its train step
computes CTC over each utterance's true lengths, optionally over micro-batches, normalized by
the utterances of the global batch (so replicas and micro-batches never change the gradient).
``schedule_class()`` returns the warmup + cosine learning-rate schedule. Both are made by
functions so that importing this module does not import TensorFlow.

Batch (a dict, asr.data):
    features [B, T, n_mels] float32, feature_lengths [B] int32, labels [B, L] int32,
    label_lengths [B] int32, index [B] int32 (ignored here)
"""
from __future__ import annotations

import math

import asr  # noqa: F401  (selects tf_keras before TensorFlow loads)


def schedule_class():
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


def trainer_class():
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
