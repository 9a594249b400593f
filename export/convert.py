"""Keras model directory -> one self-contained .tflite: raw PCM in, log-probabilities out.

    input  "pcm"        float32 [num_samples], 16 kHz, [-1, 1], any length (resize per call)
    output "log_probs"  float32 [num_frames, vocab_size], num_frames = output_length(1 + n // hop)

The graph is the in-graph frontend (asr/frontend.py) followed by the network built without
the lengths input (asr.model.build_model(with_lengths=False)), whose fused LSTMs convert to
UNIDIRECTIONAL_SEQUENCE_LSTM builtins. Quantization modes:
    float32  no quantization
    float16  float16 weights (dequantized at load)
    dynamic  int8 LSTM and Dense weights, float activations quantized on the fly (the
             default); the convolutions compute in float from their int8 weights, so that
             windows of a long input give what one pass gives (see float_convolutions)
    int8     full integer network (weights and activations, calibrated on a manifest's
             utterances); the frontend stays float32, since int8 cannot hold a power spectrum
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import asr  # noqa: F401
from asr.frontend import log_mel_graph
from export.metadata import INPUT_NAME, OUTPUT_NAME, build_metadata, embed, pack, unpack, with_decoder

QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
DEFAULT_QUANTIZATION = "dynamic"
CALIBRATION_UTTERANCES = 200  # representative examples for full-int8 calibration
FRONTEND_SCOPE = "frontend"  # name scope of the frontend ops; full int8 leaves them float


class ExportError(ValueError):
    pass


def inference_network(config, net):
    """The with_lengths=False twin of ``net`` with its weights, for one unpadded utterance."""
    from asr.model import build_model

    twin = build_model(config.model, config.features.n_mels, config.vocabulary.size, with_lengths=False)
    for layer in twin.layers:
        if layer.weights:
            layer.set_weights(net.get_layer(layer.name).get_weights())
    return twin


DEQUANTIZE_VERSION = {True: 5, False: 2}  # TFLite's DEQUANTIZE of int8 weights: per channel, per tensor


def float_convolutions(tflite: bytes) -> bytes:
    """``tflite`` (dynamic-range quantized) with every CONV_2D that has int8 weights fed by a
    DEQUANTIZE of those weights instead: the int8 weights stay in the file (its size is
    unchanged) and the convolution runs in float, while the LSTM and FULLY_CONNECTED kernels
    stay hybrid int8.

    Why: the hybrid (int8 weight) CONV_2D kernel quantizes its whole input tensor with one
    scale per invoke, so an output frame depends a little on all the input, however far away,
    and an input cut into windows (asr.windows) no longer gives what one pass gives. The hybrid
    LSTM and FULLY_CONNECTED kernels quantize per time step and per row: no such dependence.
    The converter has no option that keeps chosen ops float under dynamic-range quantization
    (its quantizer's op denylist works on calibrated full-integer models only). Measured on the
    FSDD model (1 thread): splitting each convolution into kernels under the quantizer's
    1024-weight threshold ran 25-50% slower; writing the float Keras kernels back ran as fast
    as the hybrid convolution but made the file 2% larger (26.4% of float32, over the 26%
    target); a DEQUANTIZE of the int8 weights keeps both the speed and the size."""
    from ai_edge_litert import schema_py_generated as schema

    model = unpack(tflite)
    dequantize = None
    for graph in model.subgraphs:
        added = []
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            if max(code.builtinCode, code.deprecatedBuiltinCode) != schema.BuiltinOperator.CONV_2D:
                continue
            weights = graph.tensors[op.inputs[1]]
            if weights.type != schema.TensorType.INT8:
                continue
            if dequantize is None:
                dequantize = schema.OperatorCodeT()
                dequantize.builtinCode = dequantize.deprecatedBuiltinCode = schema.BuiltinOperator.DEQUANTIZE
                dequantize.version = DEQUANTIZE_VERSION[len(weights.quantization.scale) > 1]
                model.operatorCodes.append(dequantize)
            out = schema.TensorT()
            out.shape, out.type, out.buffer = list(weights.shape), schema.TensorType.FLOAT32, 0
            out.name = weights.name + b"/dequantized"
            graph.tensors.append(out)
            step = schema.OperatorT()
            step.opcodeIndex = len(model.operatorCodes) - 1 if dequantize is model.operatorCodes[-1] else \
                model.operatorCodes.index(dequantize)
            step.inputs, step.outputs = [op.inputs[1]], [len(graph.tensors) - 1]
            op.inputs = [len(graph.tensors) - 1 if k == 1 else i for k, i in enumerate(op.inputs)]
            added.append(step)
        graph.operators = added + list(graph.operators)  # weights are constants: dequantize first
    return pack(model, len(tflite) + 64 * 1024)


def serving_function(config, stats, twin):
    """tf.function: pcm [num_samples] -> {"log_probs": [num_frames, vocab_size]}."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name=INPUT_NAME)])
    def serve(pcm):
        with tf.name_scope(FRONTEND_SCOPE):
            feats = log_mel_graph(pcm, config.features, stats)[None]  # [1, frames, n_mels]
        logits = twin(feats, training=False)[0]  # [out_frames, vocab_size]
        return {OUTPUT_NAME: tf.nn.log_softmax(logits)}

    return serve


def calibration_audio(manifest, limit: int = CALIBRATION_UTTERANCES) -> list[np.ndarray]:
    """Audio of up to ``limit`` utterances of ``manifest``; missing or unreadable files are
    named all together in one ExportError."""
    from asr.audio import AudioError, load_audio
    from asr.manifest import read_manifest

    utts = read_manifest(manifest)[:limit]
    audio, problems = [], []
    for u in utts:
        try:
            audio.append(load_audio(u.audio))
        except AudioError as err:
            problems.append(f"{u.audio} ({err})")
    if problems:
        raise ExportError(f"calibration manifest {manifest}: {len(problems)} unusable file(s): " + "; ".join(problems))
    if not audio:
        raise ExportError(f"calibration manifest {manifest} is empty")
    return audio


def frontend_nodes(tflite: bytes) -> list[str]:
    """Names of the tensors that operators in FRONTEND_SCOPE produce."""
    from ai_edge_litert import schema_py_generated as schema

    graph = schema.Model.GetRootAsModel(tflite, 0).Subgraphs(0)
    names = set()
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        for j in range(op.OutputsLength()):
            name = graph.Tensors(op.Outputs(j)).Name().decode()
            if name.startswith(FRONTEND_SCOPE + "/"):
                names.add(name)
    return sorted(names)


def _full_integer(converter, calibration: list[np.ndarray], float_frontend: bool) -> bytes:
    """Calibrate, then quantize every op except (with float_frontend) the frontend's, which the
    MLIR quantizer gets as a denylist: int8 activations cannot hold a power spectrum spanning
    60-80 dB (quantized, 83% WER on FSDD; float, the float model's WER)."""
    from tensorflow.lite.python import convert as tflite_convert

    converter.representative_dataset = lambda: ([a] for a in calibration)
    converter._experimental_calibrate_only = True  # a float model plus calibration statistics
    calibrated = converter.convert()
    denylist = frontend_nodes(calibrated) if float_frontend else []
    return tflite_convert.mlir_quantize(calibrated, fully_quantize=False, denylisted_nodes=denylist)


def convert(config, stats, net, quantization: str, calibration: list[np.ndarray] | None = None,
            twin=None, float_frontend: bool = True) -> bytes:
    """TFLite flatbuffer bytes of the full graph (no metadata yet). ``twin`` replaces the
    with_lengths=False network built from ``net`` (a QAT network, say); ``float_frontend=False``
    quantizes the frontend too in int8 mode (for comparison only)."""
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ExportError(f"unknown quantization {quantization!r} (choose from {', '.join(QUANTIZATIONS)})")
    if quantization == "int8" and not calibration:
        raise ExportError("int8 needs calibration audio (--calibration MANIFEST)")
    twin = twin if twin is not None else inference_network(config, net)
    concrete = serving_function(config, stats, twin).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], twin)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex, no custom ops
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization == "int8":
        return _full_integer(converter, calibration, float_frontend)
    if quantization == "dynamic":  # convolutions in float: a window of the input gives what one pass gives
        return float_convolutions(converter.convert())
    return converter.convert()


def export_model(model_dir, out, quantization: str = DEFAULT_QUANTIZATION, calibration_manifest=None,
                 decoder_config: dict | None = None) -> Path:
    """Convert ``model_dir`` to ``out`` with embedded metadata. The file is written to a
    temporary name beside ``out`` and renamed, so ``out`` is never half-written. The decoder the
    model ships (its decoder.json, word list and LM; or ``decoder_config``, DecoderConfig fields
    with file paths) goes into the metadata's "decoding" entry, so the file decodes the same."""
    from asr.checkpoint import load_model_dir
    from asr.decoding import model_decoder_config

    if quantization == "int8" and calibration_manifest is None:
        raise ExportError("--quantization int8 needs --calibration MANIFEST")
    calibration = calibration_audio(calibration_manifest) if calibration_manifest else None
    config, stats, meta, net = load_model_dir(model_dir)
    flatbuffer = convert(config, stats, net, quantization, calibration)
    metadata = build_metadata(config, stats, meta, quantization)
    decoder_config = decoder_config if decoder_config is not None else model_decoder_config(model_dir)
    if decoder_config is not None:
        metadata = with_decoder(metadata, decoder_config)
    return write_tflite(out, embed(flatbuffer, metadata))


def write_tflite(out, flatbuffer: bytes) -> Path:
    """Write ``flatbuffer`` to ``out`` through a temporary name beside it, so that ``out`` is
    never half-written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(flatbuffer)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
