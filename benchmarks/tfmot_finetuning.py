"""Fine-tuning for the tensorflow-model-optimization (tfmot) benchmark (benchmarks/tfmot.py):
the shared flow of every technique (load a model directory, wrap, fine-tune with the CTC trainer
of asr.training, unwrap, score on dev, save a model directory) and the control, fine-tuning
with nothing applied. The techniques are in tfmot_sparsity.py (pruning, clustering) and
tfmot_quantization.py (QAT, full-int8 export).

None of them is an ``asr export`` option: measured on FSDD (benchmarks/results/tfmot.md), each
cost more WER than the bar of +0.3 points on both test sets, or (QAT) did not converge.

Optimized model directories are ordinary ones (same layer names, weights.h5 of the
with_lengths=True network), so export/convert.py converts them unchanged; gzip shrinks their
zeros and repeated values. model.json gains "optimization": {"technique", its settings,
"source", "epochs", "dev" (WER/CER after fine-tuning), "seconds"}.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import asr  # noqa: F401  (selects tf_keras before TensorFlow and tfmot load)

TECHNIQUES = ("prune", "cluster", "qat")  # plus "finetune", the control
DEFAULT_EPOCHS = 3  # fine-tuning passes over the training manifests
FINETUNE_LEARNING_RATE = 2e-4  # constant Adam rate: 10% of the FSDD recipe's peak (2e-3)
FEATURE_FACTORS = (1.0,)  # fine-tuning uses unperturbed features only (cached once)


class OptimizeError(ValueError):
    pass


# ----------------------------------------------------------------------------- fine-tuning


def load_finetune_data(config, stats, train_manifests, dev_manifests, cache_dir=None) -> dict:
    """Datasets for fine-tuning: {"train": endless tf.data of padded batches (asr.data),
    "steps": batches per pass, "dev": (one-pass dataset, its DataSource, vocabulary) or None,
    "train_hours": float}.
    ``stats`` are the model's own normalization statistics (never recomputed)."""
    from asr.data import bucket_plan, estimate_steps, load_examples, make_dataset, open_data

    spec, vocab, tc = config.features, config.vocabulary, config.training
    cache = Path(cache_dir) if cache_dir else None
    train_ex, report = load_examples(list(train_manifests), spec, vocab, FEATURE_FACTORS, cache, tc.max_duration)
    if not train_ex:
        raise OptimizeError("no usable fine-tuning utterances: " + "; ".join(report.lines("train")))
    dev = None
    if dev_manifests:
        source = open_data(list(dev_manifests), config, train=False, cache_dir=cache)
        dev = (source.dataset(stats, tc.batch_frames, tc.max_batch_size), source, vocab)
    frames = [e.frames for e in train_ex]
    bounds, sizes = bucket_plan(frames, tc.batch_frames, tc.max_batch_size)
    return {
        "train": make_dataset(train_ex, spec, stats, tc, train=True, seed=tc.seed),
        "steps": estimate_steps(frames, bounds, sizes),
        "dev": dev,
        "train_hours": round(sum(frames) * spec.hop_length / spec.sample_rate / 3600, 4),
    }


def finetune(net, config, data: dict, epochs: int, callbacks=(), learning_rate: float = FINETUNE_LEARNING_RATE):
    """Train ``net`` (a with_lengths=True network, possibly tfmot-wrapped) for ``epochs``
    passes with the CTC trainer at a constant learning rate; returns the loss per epoch."""
    import tf_keras as keras

    from asr.trainer import trainer_class

    keras.utils.set_random_seed(config.training.seed)
    trainer = trainer_class()(net, config.vocabulary.blank)
    trainer.compile(optimizer=keras.optimizers.Adam(learning_rate, global_clipnorm=config.training.clip_norm))
    history = trainer.fit(
        data["train"],
        epochs=epochs,
        steps_per_epoch=data["steps"],
        callbacks=list(callbacks),
        verbose=1 if sys.stdout.isatty() else 2,
    )
    return [round(float(x), 4) for x in history.history["loss"]]


def dev_error_rates(net, config, dev) -> dict | None:
    """{"wer", "cer"} of greedy decoding with ``net`` over ``dev`` (load_finetune_data's
    "dev"; None: no dev set), scored like asr evaluate."""
    if dev is None:
        return None
    from asr.model import make_forward
    from asr.training import dev_error_rates as rates_of

    rates = rates_of(make_forward(net, config.features.n_mels), dev)
    return {"wer": rates["wer"], "cer": rates["cer"]}


def plain_copy(config, source):
    """A fresh asr.model.build_model network (with_lengths=True) holding the weights of the
    same-named layers of ``source`` (a stripped or unwrapped model)."""
    from asr.model import build_model

    net = build_model(config.model, config.features.n_mels, config.vocabulary.size)
    for layer in net.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())
    return net


def _save(out_dir, config, stats, net, meta: dict, optimization: dict) -> Path:
    """Model directory for ``net`` (plain, with_lengths=True) with the source's corpus and the
    optimization record; the source's test metrics are dropped (they no longer apply)."""
    from asr.checkpoint import save_model_dir

    info = {k: v for k, v in meta.items() if k in ("corpus", "train_hours")}
    return save_model_dir(out_dir, config, net, stats, **info, optimization=optimization)


def run_technique(technique: str, model_dir, train_manifests, dev_manifests, out_dir, epochs, cache_dir,
                  settings: dict, wrap, callbacks, unwrap) -> tuple[Path, object]:
    """Shared flow: load, wrap, fine-tune, unwrap, score on dev, save. ``wrap(net, data,
    total_steps)`` -> wrapped model; ``unwrap(config, wrapped)`` -> plain network. Records wall
    and process CPU seconds (CPU time is what a busy machine does not inflate). Returns
    (out_dir, wrapped model)."""
    from asr.checkpoint import load_model_dir

    start, cpu_start = time.perf_counter(), time.process_time()
    config, stats, meta, net = load_model_dir(model_dir)
    data = load_finetune_data(config, stats, train_manifests, dev_manifests, cache_dir)
    wrapped = wrap(net, data, data["steps"] * epochs)
    losses = finetune(wrapped, config, data, epochs, callbacks)
    plain = unwrap(config, wrapped)
    optimization = {
        "technique": technique,
        **settings,
        "source": str(model_dir),
        "epochs": epochs,
        "steps": data["steps"] * epochs,
        "learning_rate": FINETUNE_LEARNING_RATE,
        "train_hours": data["train_hours"],
        "loss": losses,
        "dev": dev_error_rates(plain, config, data["dev"]),
        "seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),
    }
    return _save(out_dir, config, stats, plain, meta, optimization), wrapped


def finetune_only(model_dir, train_manifests, dev_manifests, out_dir, epochs: int = DEFAULT_EPOCHS,
                  cache_dir=None) -> Path:
    """The control for the techniques (tfmot_sparsity, tfmot_quantization): the same fine-tuning with nothing applied, to
    tell their effect from the fine-tuning's. Writes a model directory to ``out_dir``."""
    out, _ = run_technique("finetune", model_dir, train_manifests, dev_manifests, out_dir, epochs, cache_dir,
                           {}, wrap=lambda net, data, total: net, callbacks=[], unwrap=plain_copy)
    return out
