"""Streaming export: a unidirectional model (``ModelConfig.bidirectional: false``) -> a .tflite
whose one call takes one chunk of PCM plus every piece of state, and returns the chunk's
log-probabilities and the new state. The app owns the state (no variable tensors), so one
interpreter serves any number of streams.

Per call, F = chunk_ms / 40 output frames and C = F * 640 samples (16 kHz, hop 160):
    inputs   pcm               float32 [C]      the next C samples of the stream, [-1, 1]
             end               int32 [1]        the stream's total samples once it has ended (the
                                                final, zero-padded chunk and the flush calls), else -1
             <state>           the state returned by the previous call (zeros to start a stream)
    outputs  log_probs         float32 [F, vocab_size]
             frame_index       int32 [F]        the output frame each row is; only rows with
                                                0 <= index < num_frames(end) are frames
             <state>_out       the new state
State (names stable, listed with shapes in the metadata's "streaming" entry):
    pcm_context      float32 [416]                  last samples: the frontend's left context
    feature_context  float32 [2, n_mels]            last normalized log-mels: conv0's left context
    conv_context     float32 [2, freq, channels]    last conv0 outputs: conv1's left context
    rnn<i>_h, rnn<i>_c  float32 [1, units]          each recurrent layer's state (c: LSTM only)
    lookahead_context   float32 [frames, units]     the last recurrent outputs, for the lookahead
                                                convolution (ModelConfig.lookahead_frames > 0)
    position         int32 [1]                      samples consumed before this chunk

Exactness: every frame is computed from exactly the samples, frames and zero padding that the
whole-file graph (export/convert.py) uses: the start of a stream is the zero state (the
frontend's and the convolutions' zero padding), the end is masked from ``end``. Row k of the
output needs samples up to 640 k + 736 (look-ahead 46 ms: the convolutions' 3 frames plus half
a 32 ms window), so each call returns frames up to one behind its last sample, starting with a
row that is not a frame (index -1); after the final chunk, zero chunks with the same ``end``
flush the remaining one or two frames. The recurrent layers are unrolled over the F frames of a
chunk (one FULLY_CONNECTED for the inputs of all F steps, one per step for the recurrence):
builtin ops only, no WHILE loop, no variable tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

import asr  # noqa: F401
from asr.model import CONV_LAYERS, SUBSAMPLING, lookahead_ms
from asr.runtime import STREAMING_FORMAT
from asr.streaming import NO_END
from export.convert import ExportError, float_convolutions, write_tflite
from export.metadata import pack, unpack

CHUNK_MS = (160, 320, 640)  # offered and tested; any multiple of the 40 ms output frame works
DEFAULT_CHUNK_MS = 160  # measured: README "Streaming" (latency at 160/320/640 ms)
CELL_CLIP = 10.0  # the converter's fused LSTM clips its cell state to +-10 (its cellClip option): so does the stream
QUANTIZATIONS = ("float32", "dynamic")  # full int8 cannot hold the frontend's power spectrum in a streaming graph either


@dataclass(frozen=True)
class Geometry:
    """Where each call's frames lie. With u = position // 640 (output frames before this
    chunk), a call computes feature frames 4u + feature_first + [0, 4F), conv0 frames
    2u + conv_first + [0, 2F) and output frames u + frame_first + [0, F)."""

    chunk_frames: int  # F
    chunk_samples: int  # C
    pcm_context: int  # samples kept between calls
    feature_context: int  # feature frames kept for conv0
    conv_context: int  # conv0 frames kept for conv1
    feature_first: int
    conv_first: int
    frame_first: int


def geometry(spec, model, chunk_ms: int) -> Geometry:
    """The Geometry of a chunk of ``chunk_ms`` (a multiple of the output frame, 40 ms)."""
    frame_ms = 1000 * spec.hop_length * SUBSAMPLING / spec.sample_rate
    if chunk_ms <= 0 or chunk_ms % frame_ms:
        raise ExportError(f"chunk length must be a positive multiple of {frame_ms:g} ms (one output frame), got {chunk_ms}")
    frames = int(chunk_ms // frame_ms)
    hop, half, pad = spec.hop_length, spec.n_fft // 2, model.conv_kernel // 2
    n = frames * SUBSAMPLING  # new feature frames per call
    ahead = -(-half // hop)  # frame t is complete once sample hop * t + n_fft // 2 has arrived
    last = n - ahead  # last complete feature frame after the first chunk (u = 0)
    first = last - n + 1
    pcm_context = half - hop * first
    assert 1 + (pcm_context + frames * SUBSAMPLING * hop - spec.n_fft) // hop == n
    firsts, contexts = [first], []
    count = n
    for _ in range(CONV_LAYERS):  # a stride-2 convolution's output j needs inputs 2j - pad .. 2j + pad
        out_last, count = (last - pad) // 2, count // 2
        out_first = out_last - count + 1
        contexts.append(first - (2 * out_first - pad))
        first, last = out_first, out_last
        firsts.append(first)
    return Geometry(frames, n * hop, pcm_context, contexts[0], contexts[1], *firsts)


def state_specs(config, geo: Geometry) -> list[tuple[str, list[int], str]]:
    """[(name, shape, dtype)] of every state tensor, in the order of the inputs."""
    freq = (config.features.n_mels + 1) // 2  # conv0's output: frequency halved too
    m = config.model
    specs = [("pcm_context", [geo.pcm_context], "float32"),
             ("feature_context", [geo.feature_context, config.features.n_mels], "float32"),
             ("conv_context", [geo.conv_context, freq, m.conv_channels], "float32")]
    for i in range(m.lstm_layers):
        specs.append((f"rnn{i}_h", [1, m.lstm_units], "float32"))
        if m.rnn == "lstm":
            specs.append((f"rnn{i}_c", [1, m.lstm_units], "float32"))
    if m.lookahead_frames:
        specs.append(("lookahead_context", [m.lookahead_frames, m.lstm_units], "float32"))
    return specs + [("position", [1], "int32")]


def _conv_block(x, weights: dict, i: int, pad: int):
    """conv{i} ('valid' in time, zero-padded in frequency), its batch norm and ReLU:
    [T, freq, channels] -> [(T - kernel) // 2 + 1, ceil(freq / 2), channels]."""
    import tensorflow as tf

    kernel = weights[f"conv{i}"][0]
    gamma, beta, mean, var, epsilon = weights[f"conv{i}_bn"]
    scale = gamma / np.sqrt(var + epsilon)
    x = tf.pad(x, [[0, 0], [pad, pad], [0, 0]])
    y = tf.nn.conv2d(x[None], tf.constant(kernel), strides=[1, 2, 2, 1], padding="VALID")[0]
    return tf.nn.relu(y * tf.constant(scale) + tf.constant(beta - mean * scale))


def _rnn(x, weights: list, kind: str, state: list, valid):
    """One recurrent layer (its Keras weights) unrolled over the rows of x [F, in]; rows where
    ``valid`` [F] is false leave the state as it was. Returns (outputs [F, units], new state)."""
    import tensorflow as tf

    kernel, recurrent, bias = weights
    units = recurrent.shape[0]
    if kind == "lstm":
        xs = tf.matmul(x, tf.constant(kernel)) + tf.constant(bias)
    else:  # tf_keras GRU, reset_after=True: bias [2, 3 units] (input, recurrent)
        xs = tf.matmul(x, tf.constant(kernel)) + tf.constant(bias[0])
    h, c = state[0], (state[1] if kind == "lstm" else None)
    outputs = []
    for t in range(x.shape[0]):
        keep = valid[t]
        if kind == "lstm":
            z = xs[t : t + 1] + tf.matmul(h, tf.constant(recurrent))
            i, f, g, o = (z[:, k * units : (k + 1) * units] for k in range(4))
            c_new = tf.clip_by_value(tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g), -CELL_CLIP, CELL_CLIP)
            h_new = tf.sigmoid(o) * tf.tanh(c_new)
            c = tf.where(keep, c_new, c)
        else:
            r_all = tf.matmul(h, tf.constant(recurrent)) + tf.constant(bias[1])
            xz, xr, xh = (xs[t : t + 1, k * units : (k + 1) * units] for k in range(3))
            rz, rr, rh = (r_all[:, k * units : (k + 1) * units] for k in range(3))
            z, r = tf.sigmoid(xz + rz), tf.sigmoid(xr + rr)
            h_new = z * h + (1 - z) * tf.tanh(xh + r * rh)
        h = tf.where(keep, h_new, h)
        outputs.append(h_new)
    return tf.concat(outputs, axis=0), ([h, c] if kind == "lstm" else [h])


def streaming_function(config, stats, net, geo: Geometry):
    """tf.function of one call (inputs and outputs of the module docstring)."""
    import tensorflow as tf

    from asr.frontend import normalize_graph, raw_log_mel_graph

    spec, m = config.features, config.model
    specs = state_specs(config, geo)
    signature = [tf.TensorSpec([geo.chunk_samples], tf.float32, name="pcm"), tf.TensorSpec([1], tf.int32, name="end")]
    signature += [tf.TensorSpec(shape, getattr(tf, dtype), name=name) for name, shape, dtype in specs]
    pad, big = m.conv_kernel // 2, np.int32(2**31 - 1)
    frame_samples = spec.hop_length * SUBSAMPLING
    weights = {f"conv{i}": net.get_layer(f"conv{i}").get_weights() for i in range(CONV_LAYERS)}
    for i in range(CONV_LAYERS):
        bn = net.get_layer(f"conv{i}_bn")
        weights[f"conv{i}_bn"] = [*bn.get_weights(), bn.epsilon]
    for i in range(m.lstm_layers):
        weights[f"rnn{i}"] = net.get_layer(m.rnn_layer_name(i)).get_weights()
    weights["logits"] = net.get_layer("logits").get_weights()
    if m.lookahead_frames:
        weights["lookahead"] = net.get_layer("lookahead").get_weights()[0]  # [frames + 1, units]

    def call(pcm, end, *state):
        named = dict(zip((s[0] for s in specs), state))
        position = named["position"]
        u = position[0] // frame_samples
        ended = end[0] >= 0
        feature_end = tf.where(ended, 1 + end[0] // spec.hop_length, big)  # frames of the whole stream
        conv_end = tf.where(ended, (feature_end + 1) // 2, big)
        frame_end = tf.where(ended, (conv_end + 1) // 2, big)

        def inside(first, count, scale, stop):
            index = scale * u + first + tf.range(count, dtype=tf.int32)
            return index, tf.logical_and(index >= 0, index < stop)

        window = tf.concat([named["pcm_context"], pcm], axis=0)
        feats = normalize_graph(raw_log_mel_graph(window, spec, center=False), spec, stats)  # [4F, n_mels]
        _, ok = inside(geo.feature_first, 4 * geo.chunk_frames, 4, feature_end)
        feats = feats * tf.cast(ok, tf.float32)[:, None]  # frames outside the stream: the zero padding
        x = tf.concat([named["feature_context"], feats], axis=0)
        y = _conv_block(x[:, :, None], weights, 0, pad)  # [2F, freq, channels]
        _, ok = inside(geo.conv_first, 2 * geo.chunk_frames, 2, conv_end)
        y = y * tf.cast(ok, tf.float32)[:, None, None]
        z = tf.concat([named["conv_context"], y], axis=0)
        h = _conv_block(z, weights, 1, pad)  # [F, freq', channels]
        h = tf.reshape(h, [geo.chunk_frames, -1])
        index, valid = inside(geo.frame_first, geo.chunk_frames, 1, frame_end)
        new_state = {"pcm_context": window[-geo.pcm_context :], "feature_context": x[-geo.feature_context :],
                     "conv_context": z[-geo.conv_context :], "position": position + geo.chunk_samples}
        for i in range(m.lstm_layers):
            names = [f"rnn{i}_h"] + ([f"rnn{i}_c"] if m.rnn == "lstm" else [])
            h, carried = _rnn(h, weights[f"rnn{i}"], m.rnn, [named[n] for n in names], valid)
            new_state.update(zip(names, carried))
        if m.lookahead_frames:  # rows shift back by its frames: each needs that many later ones
            ahead = m.lookahead_frames
            h = h * tf.cast(valid, tf.float32)[:, None]  # frames outside the stream: the zero padding
            rows = tf.concat([named["lookahead_context"], h], axis=0)  # [ahead + F, units]
            new_state["lookahead_context"] = rows[-ahead:]
            h = tf.add_n([rows[j : j + geo.chunk_frames] * tf.constant(weights["lookahead"][j]) for j in range(ahead + 1)])
            index = index - ahead
        kernel, bias = weights["logits"]
        log_probs = tf.nn.log_softmax(tf.matmul(h, tf.constant(kernel)) + tf.constant(bias))
        out = {"log_probs": log_probs, "frame_index": index}
        out.update({f"{name}_out": new_state[name] for name, _, _ in specs})
        return out

    return tf.function(call, input_signature=signature, autograph=False)


def name_tensors(tflite: bytes) -> bytes:
    """``tflite`` with each signature input and output tensor named by its signature key (the
    converter's own names, such as "StatefulPartitionedCall:3", change between versions)."""
    model = unpack(tflite)
    for sig in model.signatureDefs or []:
        graph = model.subgraphs[sig.subgraphIndex]
        for entry in list(sig.inputs) + list(sig.outputs):
            graph.tensors[entry.tensorIndex].name = entry.name
    return pack(model, len(tflite) + 64 * 1024)


def per_gate_quantization(tflite: bytes, matrices: list[np.ndarray], gates: int) -> bytes:
    """``tflite`` (dynamic-range quantized) with the int8 weights of each FULLY_CONNECTED that
    computes one of ``matrices`` (float [in, gates * units], Keras layout) quantized again with
    one symmetric scale per gate (max |w| / 127, TFLite's rule), where the converter gave
    each output channel its own.

    Why: the whole-file export's fused LSTM holds each gate's input and recurrent weights as
    separate int8 tensors with one scale each; with the same int8 values and scales (the same
    per-step quantization of the inputs, asymmetric, as both kernels do) the streaming file
    computes what the whole-file one computes, up to float rounding, so their texts agree.
    Measured on the FSDD streaming model: per-channel weights changed the greedy text of 2 of
    50 test recordings against the whole-file file; per gate, none."""
    from ai_edge_litert import schema_py_generated as schema

    model = unpack(tflite)
    graph = model.subgraphs[0]
    done = set()
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) != schema.BuiltinOperator.FULLY_CONNECTED:
            continue
        index = op.inputs[1]
        weights = graph.tensors[index]
        if weights.type != schema.TensorType.INT8 or index in done:
            continue
        buffer = model.buffers[weights.buffer]
        q = np.frombuffer(bytes(buffer.data), np.int8).reshape(weights.shape)
        scale = np.asarray(weights.quantization.scale, np.float32).reshape(-1, 1)
        found = [m.T for m in matrices if m.T.shape == q.shape and np.abs(q * scale - m.T).max() <= scale.max() * 0.51]
        if not found:
            continue
        w = found[0].astype(np.float32)
        units = w.shape[0] // gates
        scales, out = [], np.empty_like(q)
        for g in range(gates):
            block = w[g * units : (g + 1) * units]
            peak = float(np.abs(block).max()) or 1.0
            out[g * units : (g + 1) * units] = np.clip(np.round(block * np.float32(127.0 / peak)), -127, 127)
            scales += [np.float32(peak / 127.0)] * units
        buffer.data = out.reshape(-1).view(np.uint8)
        weights.quantization.scale = scales
        weights.quantization.zeroPoint = [0] * len(scales)
        done.add(index)
    return pack(model, len(tflite) + 64 * 1024)


def convert_streaming(config, stats, net, chunk_ms: int = DEFAULT_CHUNK_MS, quantization: str = "dynamic") -> bytes:
    """Flatbuffer bytes of the streaming graph of ``net`` (a Keras model of ``config``)."""
    import tensorflow as tf

    m = config.model
    if m.bidirectional:
        raise ExportError("a bidirectional model cannot stream (each frame needs the whole utterance): "
                          "train one with model.bidirectional=false, or export without --streaming")
    if config.features.normalization != "global":
        raise ExportError("per-utterance normalization needs the whole utterance and cannot stream: "
                          "train with features.normalization=global")
    if quantization not in QUANTIZATIONS:
        raise ExportError(f"a streaming export takes quantization {' or '.join(QUANTIZATIONS)}, got {quantization!r}")
    geo = geometry(config.features, m, chunk_ms)
    concrete = streaming_function(config, stats, net, geo).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], tf.Module())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        flatbuffer = float_convolutions(converter.convert())
        if m.rnn == "lstm":  # as the whole-file export's fused LSTM: one scale per gate
            rnn = [w for i in range(m.lstm_layers) for w in net.get_layer(m.rnn_layer_name(i)).get_weights()[:2]]
            flatbuffer = per_gate_quantization(flatbuffer, rnn, gates=4)
        return name_tensors(flatbuffer)
    return name_tensors(converter.convert())


def streaming_metadata(config, stats, meta: dict, quantization: str, chunk_ms: int) -> dict:
    """build_metadata's entries, with "input" the chunk and a "streaming" entry: the call's
    inputs, outputs and state (names, shapes, dtypes) and how to start and end a stream."""
    from export.metadata import build_metadata

    spec = config.features
    geo = geometry(spec, config.model, chunk_ms)
    metadata = build_metadata(config, stats, meta, quantization)
    metadata["format"] = STREAMING_FORMAT
    metadata["input"] = {**metadata["input"], "shape": [geo.chunk_samples], "chunk_ms": chunk_ms}
    metadata["output"] = {**metadata["output"], "shape": [geo.chunk_frames, config.vocabulary.size]}
    metadata["reset_state_before_each_utterance"] = False
    metadata["streaming"] = {
        "chunk_ms": chunk_ms,
        "chunk_samples": geo.chunk_samples,
        "frames_per_chunk": geo.chunk_frames,
        "lookahead_ms": lookahead_ms(config.model, spec.n_fft, spec.hop_length, spec.sample_rate),
        "end_input": {"name": "end", "dtype": "int32", "shape": [1],
                      "meaning": f"{NO_END} while the stream goes on; its total number of samples from the "
                                 "final (zero-padded) chunk on"},
        "frame_index_output": {"name": "frame_index", "dtype": "int32", "shape": [geo.chunk_frames],
                               "meaning": "output frame of each row; keep rows with 0 <= index < num_frames "
                                          "(num_frames as in 'output', of the samples given in 'end')"},
        "state": [{"input": name, "output": f"{name}_out", "shape": shape, "dtype": dtype, "initial": 0}
                  for name, shape, dtype in state_specs(config, geo)],
        "loop": "start with every state zero; per chunk: set pcm, end = -1 and the state, invoke, keep the "
                "valid rows, pass each <name>_out back as <name>; at the end: the last samples zero-padded to "
                "a chunk with end = total samples, then zero chunks with the same end until a row's index "
                "reaches num_frames - 1",
    }
    return metadata


def export_streaming(model_dir, out, chunk_ms: int = DEFAULT_CHUNK_MS, quantization: str = "dynamic",
                     decoder_config: dict | None = None) -> Path:
    """``model_dir`` (a unidirectional, globally normalized model) -> the streaming .tflite
    ``out`` with its metadata and the decoder it ships (as export.convert.export_model),
    written atomically."""
    from asr.checkpoint import load_model_dir
    from asr.decoding import model_decoder_config
    from export.metadata import embed, with_decoder

    config, stats, meta, net = load_model_dir(model_dir)
    flatbuffer = convert_streaming(config, stats, net, chunk_ms, quantization)
    metadata = streaming_metadata(config, stats, meta, quantization, chunk_ms)
    decoder_config = decoder_config if decoder_config is not None else model_decoder_config(model_dir)
    if decoder_config is not None:
        metadata = with_decoder(metadata, decoder_config)
    return write_tflite(out, embed(flatbuffer, metadata))
