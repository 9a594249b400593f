"""Quantization-aware training with tfmot and full-int8 export, for the benchmark
(benchmarks/tfmot.py).

    qat      tfmot's quantize_model rejects Bidirectional, so the layers are wrapped here with
             QuantizeConfigs that mirror what TFLite's full-int8 graph quantizes: the features
             entering conv0, conv kernels (per channel; BN is folded per channel, which leaves
             per-channel grids unchanged), ReLU outputs and the logits kernel and output. The
             BiLSTMs are left to calibration: TFLite's integer LSTM keeps gates and cell state
             in int16, which tfmot cannot model, and a fake quantizer on a BiLSTM's output (on
             the Bidirectional or the Dropout after it) makes the converter fail ("Failed to
             duplicate values for the stateful op"). Output ranges start at the float model's
             activation ranges (qat_start).

A QAT directory holds the fine-tuned float weights in weights.h5 (usable everywhere) plus
QAT_WEIGHTS, the wrapped network with its learned quantization ranges, which ``export_int8``
converts. ``export_int8`` also keeps the log-mel frontend in float: quantizing it collapses the
power spectrum to a few int8 levels before the log and costs most of the accuracy; the network
itself converts to int8 with no measurable loss.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from benchmarks.tfmot_finetuning import DEFAULT_EPOCHS, run_technique

QAT_WEIGHTS = "qat_weights.h5"  # QAT network weights (with quantizer ranges) in a model dir
QAT_RANGE_BATCHES = 16  # training batches whose float activations set the initial QAT ranges


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
    out, wrapped = run_technique(
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
