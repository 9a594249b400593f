"""Model optimization with tensorflow-model-optimization (tfmot), each technique fine-tuned
with the CTC trainer of asr.training and written as a model directory.

    prune    magnitude pruning: Conv2D and Dense through tfmot's registry, each Bidirectional
             LSTM through PrunableBidirectional (forward and backward kernels and recurrent
             kernels); sparsity ramps 0 -> target over the first PRUNE_RAMP of the fine-tuning
             steps (PolynomialDecay), then stays; the wrappers are stripped.
    cluster  weight clustering of the whole model (cluster_weights: Conv2D, Dense and both
             LSTM directions), fine-tuned, then strip_clustering: at most ``clusters`` distinct
             values per kernel.
    qat      quantization-aware training. tfmot's quantize_model rejects Bidirectional, so the
             layers are wrapped here with QuantizeConfigs that mirror what TFLite's full-int8
             graph quantizes: the features entering conv0, conv kernels (per channel; BN is
             folded per channel, which leaves per-channel grids unchanged), ReLU outputs and the
             logits kernel and output. The BiLSTMs are left to calibration: TFLite's integer
             LSTM keeps gates and cell state in int16, which tfmot cannot model, and a fake
             quantizer on a BiLSTM's output (on the Bidirectional or the Dropout after it)
             makes the converter fail ("Failed to duplicate values for the stateful op").
             Output ranges start at the float model's activation ranges (qat_start).

Pruned and clustered model directories are ordinary ones (same layer names, weights.h5 of the
with_lengths=True network), so export/convert.py converts them unchanged; gzip shrinks their
zeros and repeated values. A QAT directory holds the fine-tuned float weights in weights.h5
(usable everywhere) plus QAT_WEIGHTS, the wrapped network with its learned quantization
ranges, which ``export_int8`` converts.

``export_int8`` also keeps the log-mel frontend in float: quantizing it (what convert.py's int8
does) collapses the power spectrum to a few int8 levels before the log and costs most of the
accuracy; the network itself converts to int8 with no measurable loss (benchmarks/tfmot.py).

model.json gains "optimization": {"technique", its settings, "source", "epochs",
"dev" (WER/CER after fine-tuning), "seconds"}.
"""
from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

import numpy as np

import asr  # noqa: F401  (selects tf_keras before TensorFlow and tfmot load)

TECHNIQUES = ("prune", "cluster", "qat")  # plus "finetune", the control
DEFAULT_EPOCHS = 3  # fine-tuning passes over the training manifests
FINETUNE_LEARNING_RATE = 2e-4  # constant Adam rate: 10% of the FSDD recipe's peak (2e-3)
PRUNE_SPARSITY = 0.5  # share of zeros in every pruned kernel
PRUNE_RAMP = 0.6  # sparsity reaches its target after this share of the fine-tuning steps
PRUNE_UPDATES = 8  # mask updates during the ramp (PolynomialDecay frequency = ramp / this)
CLUSTERS = 16  # distinct values per clustered kernel (4-bit indices)
QAT_WEIGHTS = "qat_weights.h5"  # QAT network weights (with quantizer ranges) in a model dir
QAT_RANGE_BATCHES = 16  # training batches whose float activations set the initial QAT ranges
FEATURE_FACTORS = (1.0,)  # fine-tuning uses unperturbed features only (cached once)


class OptimizeError(ValueError):
    pass


# ----------------------------------------------------------------------------- fine-tuning


def load_finetune_data(config, stats, train_manifests, dev_manifests, cache_dir=None) -> dict:
    """Datasets for fine-tuning: {"train": endless tf.data of padded batches (asr.dataset),
    "steps": batches per pass, "dev": one-pass dataset or None, "train_hours": float}.
    ``stats`` are the model's own normalization statistics (never recomputed)."""
    from asr.dataset import bucket_plan, estimate_steps, load_examples, make_dataset

    spec, vocab, tc = config.features, config.vocabulary, config.training
    cache = Path(cache_dir) if cache_dir else None
    train_ex, report = load_examples(list(train_manifests), spec, vocab, FEATURE_FACTORS, cache, tc.max_duration)
    if not train_ex:
        raise OptimizeError("no usable fine-tuning utterances: " + "; ".join(report.lines("train")))
    dev_ex = load_examples(list(dev_manifests), spec, vocab, (1.0,), cache)[0] if dev_manifests else []
    frames = [e.frames for e in train_ex]
    bounds, sizes = bucket_plan(frames, tc.batch_frames, tc.max_batch_size)
    return {
        "train": make_dataset(train_ex, spec, stats, tc, train=True, seed=tc.seed),
        "steps": estimate_steps(frames, bounds, sizes),
        "dev": make_dataset(dev_ex, spec, stats, tc, train=False) if dev_ex else None,
        "train_hours": round(sum(frames) * spec.hop_length / spec.sample_rate / 3600, 4),
    }


def finetune(net, config, data: dict, epochs: int, callbacks=(), learning_rate: float = FINETUNE_LEARNING_RATE):
    """Train ``net`` (a with_lengths=True network, possibly tfmot-wrapped) for ``epochs``
    passes with the CTC trainer at a constant learning rate; returns the loss per epoch."""
    import tf_keras as keras

    from asr.training import _trainer_class

    keras.utils.set_random_seed(config.training.seed)
    trainer = _trainer_class()(net, config.vocabulary.blank)
    trainer.compile(optimizer=keras.optimizers.Adam(learning_rate, global_clipnorm=config.training.clip_norm))
    history = trainer.fit(
        data["train"],
        epochs=epochs,
        steps_per_epoch=data["steps"],
        callbacks=list(callbacks),
        verbose=1 if sys.stdout.isatty() else 2,
    )
    return [round(float(x), 4) for x in history.history["loss"]]


def dev_error_rates(net, config, dataset) -> dict | None:
    """{"wer", "cer"} of greedy decoding with ``net`` over ``dataset`` (None: no dataset)."""
    if dataset is None:
        return None
    from asr.evaluation import error_rates
    from asr.model import make_forward
    from asr.training import decode_dataset

    refs, hyps = decode_dataset(make_forward(net, config.features.n_mels), dataset, config.vocabulary)
    rates = error_rates(refs, hyps)
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


def _run(technique: str, model_dir, train_manifests, dev_manifests, out_dir, epochs, cache_dir, settings: dict,
         wrap, callbacks, unwrap) -> tuple[Path, object]:
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
    """The control for the techniques below: the same fine-tuning with nothing applied, to
    tell their effect from the fine-tuning's. Writes a model directory to ``out_dir``."""
    out, _ = _run("finetune", model_dir, train_manifests, dev_manifests, out_dir, epochs, cache_dir, {},
                  wrap=lambda net, data, total: net, callbacks=[], unwrap=plain_copy)
    return out


# ----------------------------------------------------------------------------- pruning


@functools.lru_cache(maxsize=None)
def prunable_bidirectional_class():
    """keras.layers.Bidirectional that is also a tfmot PrunableLayer (created once)."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    class PrunableBidirectional(keras.layers.Bidirectional, tfmot.sparsity.keras.PrunableLayer):
        """A Bidirectional RNN whose forward and backward kernels [in, 4 * units] and recurrent
        kernels [units, 4 * units] are pruned; biases are not."""

        def get_prunable_weights(self):
            return [
                getattr(direction.cell, name)
                for direction in (self.forward_layer, self.backward_layer)
                for name in ("kernel", "recurrent_kernel")
            ]

    return PrunableBidirectional


def prune_schedule(total_steps: int, sparsity: float = PRUNE_SPARSITY):
    """PolynomialDecay from 0 to ``sparsity``: up to PRUNE_UPDATES mask updates over the first
    PRUNE_RAMP of ``total_steps`` (at least one step), the last one exactly at the ramp's end,
    so the target is reached even in a short run."""
    import tensorflow_model_optimization as tfmot

    ramp = max(1, int(PRUNE_RAMP * total_steps))
    updates = min(PRUNE_UPDATES, ramp)
    frequency = ramp // updates
    return tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=sparsity, begin_step=0, end_step=frequency * updates,
        frequency=frequency,
    )


def prune_wrap(net, schedule):
    """Copy of ``net`` with Conv2D, Dense and Bidirectional layers in PruneLowMagnitude
    wrappers (named prune_low_magnitude_<layer>), weights kept. Other layers are shared."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    prune = functools.partial(tfmot.sparsity.keras.prune_low_magnitude, pruning_schedule=schedule)
    rebuilt = {}

    def wrap(layer):
        if isinstance(layer, keras.layers.Bidirectional):
            rebuilt[layer.name] = layer  # a new PrunableBidirectional: weights copied below
            return prune(prunable_bidirectional_class().from_config(layer.get_config()))
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            return prune(layer)
        return layer

    model = keras.models.clone_model(net, clone_function=wrap)
    for name, original in rebuilt.items():
        model.get_layer(f"prune_low_magnitude_{name}").layer.set_weights(original.get_weights())
    return model


def _strip_pruning(config, wrapped):
    import tensorflow_model_optimization as tfmot

    return plain_copy(config, tfmot.sparsity.keras.strip_pruning(wrapped))


def prune(model_dir, train_manifests, dev_manifests, out_dir, sparsity: float = PRUNE_SPARSITY,
          epochs: int = DEFAULT_EPOCHS, cache_dir=None) -> Path:
    """Magnitude-prune ``model_dir`` to ``sparsity`` while fine-tuning ``epochs`` passes over
    ``train_manifests``; write a plain model directory to ``out_dir`` and return it."""
    import tensorflow_model_optimization as tfmot

    if not 0.0 < sparsity < 1.0:
        raise OptimizeError(f"sparsity must be between 0 and 1, got {sparsity}")
    out, _ = _run(
        "prune", model_dir, train_manifests, dev_manifests, out_dir, epochs, cache_dir,
        {"sparsity": sparsity, "schedule": "PolynomialDecay", "ramp": PRUNE_RAMP},
        wrap=lambda net, data, total: prune_wrap(net, prune_schedule(total, sparsity)),
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
        unwrap=_strip_pruning,
    )
    return out


def prunable_kernels(net) -> dict[str, np.ndarray]:
    """The kernels pruning touches, by "<layer>/<weight>": conv and logits kernels, each LSTM
    direction's kernel [in, 4 * units] and recurrent kernel [units, 4 * units]."""
    import tf_keras as keras

    out = {}
    for layer in net.layers:
        if isinstance(layer, keras.layers.Bidirectional):
            for side, direction in (("forward", layer.forward_layer), ("backward", layer.backward_layer)):
                out[f"{layer.name}/{side}/kernel"] = direction.cell.kernel.numpy()
                out[f"{layer.name}/{side}/recurrent_kernel"] = direction.cell.recurrent_kernel.numpy()
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            out[f"{layer.name}/kernel"] = layer.kernel.numpy()
    return out


def sparsity_report(net) -> dict[str, float]:
    """Share of exact zeros in each of ``prunable_kernels(net)``."""
    return {name: float(np.mean(w == 0)) for name, w in prunable_kernels(net).items()}


# ----------------------------------------------------------------------------- clustering


def cluster_wrap(net, clusters: int = CLUSTERS):
    """tfmot.clustering.keras.cluster_weights over the whole network (k-means++ centroids);
    layers become cluster_<layer>."""
    import tensorflow_model_optimization as tfmot

    ck = tfmot.clustering.keras
    return ck.cluster_weights(net, number_of_clusters=clusters,
                              cluster_centroids_init=ck.CentroidInitialization.KMEANS_PLUS_PLUS)


def _strip_clustering(config, wrapped):
    import tensorflow_model_optimization as tfmot

    return plain_copy(config, tfmot.clustering.keras.strip_clustering(wrapped))


def cluster(model_dir, train_manifests, dev_manifests, out_dir, clusters: int = CLUSTERS,
            epochs: int = DEFAULT_EPOCHS, cache_dir=None) -> Path:
    """Cluster every kernel of ``model_dir`` to ``clusters`` values, fine-tune the centroids
    ``epochs`` passes, strip; write a plain model directory to ``out_dir`` and return it."""
    if clusters < 2:
        raise OptimizeError(f"clusters must be at least 2, got {clusters}")
    out, _ = _run(
        "cluster", model_dir, train_manifests, dev_manifests, out_dir, epochs, cache_dir,
        {"clusters": clusters, "init": "KMEANS_PLUS_PLUS"},
        wrap=lambda net, data, total: cluster_wrap(net, clusters),
        callbacks=[],
        unwrap=_strip_clustering,
    )
    return out


def unique_values(net) -> dict[str, int]:
    """Distinct values in each of ``prunable_kernels(net)``."""
    return {name: int(np.unique(w).size) for name, w in prunable_kernels(net).items()}


# ----------------------------------------------------------------------------- QAT


@functools.lru_cache(maxsize=None)
def quantize_config_class():
    """A tfmot QuantizeConfig for one layer, built from three settings (created once):
    ``weights`` attributes fake-quantized (int8 symmetric, narrow range; ``per_axis``: one scale
    per output channel, the last axis), ``output``: fake-quantize the layer's output (int8
    asymmetric, moving-average range), as TFLite quantizes the tensor that leaves the layer."""
    import tensorflow_model_optimization as tfmot

    qk = tfmot.quantization.keras

    class LayerQuantizeConfig(qk.QuantizeConfig):
        def __init__(self, weights=(), per_axis=False, output=False):
            self.weights, self.per_axis, self.output = tuple(weights), bool(per_axis), bool(output)

        def get_weights_and_quantizers(self, layer):
            quantizer = qk.quantizers.LastValueQuantizer(num_bits=8, per_axis=self.per_axis, symmetric=True,
                                                         narrow_range=True)
            return [(getattr(layer, name), quantizer) for name in self.weights]

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            for name, value in zip(self.weights, quantize_weights):
                setattr(layer, name, value)

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            if not self.output:
                return []
            return [qk.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False,
                                                         narrow_range=False)]

        def get_config(self):
            return {"weights": list(self.weights), "per_axis": self.per_axis, "output": self.output}

    return LayerQuantizeConfig


def qat_configs(net) -> dict:
    """Layer name -> QuantizeConfig settings for the layers of ``net`` that QAT wraps:
    add_channel (output: the features entering conv0), conv{i} (per-channel kernel),
    conv{i}_relu (output: what enters the first BiLSTM), logits (kernel and output). The
    BiLSTMs and their outputs are left to calibration (see the module docstring)."""
    import tf_keras as keras

    out = {}
    for layer in net.layers:
        if layer.name == "add_channel" or isinstance(layer, keras.layers.ReLU):
            out[layer.name] = {"output": True}
        elif isinstance(layer, keras.layers.Conv2D):
            out[layer.name] = {"weights": ["kernel"], "per_axis": True}
        elif isinstance(layer, keras.layers.Dense):
            # per tensor: the converter cannot transpose a per-axis kernel of a Dense applied
            # to [batch, time, features] ("mismatched quantized axes"), and TFLite uses one too
            out[layer.name] = {"weights": ["kernel"], "output": True}
    return out


@functools.lru_cache(maxsize=None)
def quantize_wrapper_class():
    """tfmot's QuantizeWrapperV2, except that it keeps Keras' propagated ``mask`` from layers
    whose call() has no mask argument (Dense after the masked BiLSTMs) (created once)."""
    import inspect

    import tensorflow_model_optimization as tfmot

    class MaskSafeQuantizeWrapper(tfmot.quantization.keras.QuantizeWrapperV2):
        def call(self, inputs, training=None, **kwargs):
            if "mask" in kwargs and "mask" not in inspect.signature(self.layer.call).parameters:
                kwargs.pop("mask")
            return super().call(inputs, training=training, **kwargs)

    return MaskSafeQuantizeWrapper


def qat_wrap(net):
    """Copy of ``net`` (with or without lengths) with the ``qat_configs`` layers in
    quantize wrappers (named quant_<layer>), sharing the original layers and weights."""
    import tf_keras as keras

    configs, config_class = qat_configs(net), quantize_config_class()
    wrapper = quantize_wrapper_class()

    def wrap(layer):
        if layer.name in configs:
            return wrapper(layer, config_class(**configs[layer.name]))
        return layer

    return keras.models.clone_model(net, clone_function=wrap)


def activation_ranges(net, names, dataset, batches: int = QAT_RANGE_BATCHES) -> dict[str, tuple[float, float]]:
    """{layer name: (min(x, 0), max(x, 0))} of the float outputs x of ``names`` in ``net`` over
    ``batches`` batches of ``dataset`` (run before wrapping: a QuantizeWrapper points the
    wrapped layer's kernel at its fake-quantized tensor)."""
    import tf_keras as keras

    probe = keras.Model(net.inputs, [net.get_layer(name).output for name in names])
    low, high = np.zeros(len(names)), np.zeros(len(names))
    for batch in dataset.take(batches):
        outputs = probe([batch["features"], batch["feature_lengths"]], training=False)
        for i, x in enumerate(outputs if len(names) > 1 else [outputs]):
            low[i], high[i] = min(low[i], float(np.min(x))), max(high[i], float(np.max(x)))
    return {name: (float(lo), float(hi)) for name, lo, hi in zip(names, low, high)}


def qat_start(net, dataset):
    """``qat_wrap(net)`` with every output quantizer starting at the float activation range
    (activation_ranges over ``dataset``). tfmot starts them at [-6, 6] and moves them by an
    EMA with decay 0.999, far too slowly for a few epochs: the logits would stay clipped."""
    names = [name for name, settings in qat_configs(net).items() if settings.get("output")]
    ranges = activation_ranges(net, names, dataset)
    wrapped = qat_wrap(net)
    for name, (low, high) in ranges.items():
        variables = wrapped.get_layer(f"quant_{name}")._output_quantizer_vars
        variables["min_var"].assign(low)
        variables["max_var"].assign(high)
    return wrapped


def _unwrap_qat(config, wrapped):
    """Plain network with the float weights of the QAT network. A QuantizeWrapper owns the
    variables of the weights it quantizes (the wrapped layer's attributes hold their
    fake-quantized tensors): those come from the wrapper by name, the rest from the layer."""
    from asr.model import build_model
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper import QuantizeWrapper

    def short(variable):  # "cnn/logits/kernel:0" -> "kernel"
        return variable.name.split(":")[0].split("/")[-1]

    net = build_model(config.model, config.features.n_mels, config.vocabulary.size)
    for layer in wrapped.layers:
        if not isinstance(layer, QuantizeWrapper):
            if layer.weights:
                net.get_layer(layer.name).set_weights(layer.get_weights())
            continue
        target = net.get_layer(layer.layer.name)
        if target.weights:  # Conv2D [kernel], Dense [kernel, bias]: names are unique
            source = {short(v): v for v in layer.layer.weights}
            source.update(zip(layer.quantize_config.weights, (v for v, _, _ in layer._weight_vars)))
            target.set_weights([source[short(v)].numpy() for v in target.weights])
    return net


def qat(model_dir, train_manifests, dev_manifests, out_dir, epochs: int = DEFAULT_EPOCHS, cache_dir=None) -> Path:
    """Quantization-aware fine-tuning of ``model_dir`` for ``epochs`` passes. ``out_dir`` gets
    the float weights (weights.h5, a normal model directory) and the QAT network's weights
    with its quantization ranges (QAT_WEIGHTS), for ``export_int8``."""
    out, wrapped = _run(
        "qat", model_dir, train_manifests, dev_manifests, out_dir, epochs, cache_dir,
        {"quantized": "conv0 input, conv kernels, ReLU outputs, logits kernel and output",
         "qat_weights": QAT_WEIGHTS},
        wrap=lambda net, data, total: qat_start(net, data["train"]),
        callbacks=[],
        unwrap=_unwrap_qat,
    )
    tmp = out / f".{QAT_WEIGHTS}.{os.getpid()}.tmp.h5"
    wrapped.save_weights(str(tmp))
    os.replace(tmp, out / QAT_WEIGHTS)
    return out


# ----------------------------------------------------------------------------- int8 export


def convert_int8(config, stats, twin, calibration: list[np.ndarray], float_frontend: bool = True) -> bytes:
    """Full-integer flatbuffer (no metadata) of the frontend + ``twin`` (a with_lengths=False
    network, plain or QAT-wrapped; ranges learned by QAT take precedence). The frontend stays
    float unless float_frontend=False (export.convert does the conversion)."""
    from export.convert import convert

    return convert(config, stats, None, "int8", calibration, twin=twin, float_frontend=float_frontend)


def qat_twin(config, model_dir):
    """The with_lengths=False QAT network of a ``qat`` model directory, its weights and
    quantization ranges loaded by layer name from QAT_WEIGHTS."""
    from asr.model import build_model

    twin = qat_wrap(build_model(config.model, config.features.n_mels, config.vocabulary.size, with_lengths=False))
    twin.load_weights(str(Path(model_dir) / QAT_WEIGHTS), by_name=True)
    return twin


def export_int8(model_dir, out, calibration_manifest, float_frontend: bool = True) -> Path:
    """Full-int8 .tflite of ``model_dir`` (its QAT network when it has QAT_WEIGHTS) with
    metadata; the frontend stays float unless float_frontend=False. Written atomically."""
    from asr.checkpoint import load_model_dir
    from export.convert import calibration_audio, inference_network
    from export.metadata import build_metadata, embed

    calibration = calibration_audio(calibration_manifest)
    config, stats, meta, net = load_model_dir(model_dir)
    has_qat = (Path(model_dir) / QAT_WEIGHTS).is_file()
    twin = qat_twin(config, model_dir) if has_qat else inference_network(config, net)
    flatbuffer = convert_int8(config, stats, twin, calibration, float_frontend)
    metadata = build_metadata(config, stats, meta, "int8")
    metadata["frontend_precision"] = "float32" if float_frontend else "int8"
    if meta.get("optimization"):
        metadata["optimization"] = {k: meta["optimization"][k] for k in ("technique", "sparsity", "clusters")
                                    if k in meta["optimization"]}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(embed(flatbuffer, metadata))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
