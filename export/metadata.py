"""Metadata embedded in the .tflite, so the file is the whole contract.

Stored as one entry of the flatbuffer's ``Model.metadata`` list, named ``METADATA_NAME``, whose
buffer holds UTF-8 JSON (see docs/deployment.md for the keys). ``asr.runtime.read_metadata``
reads it back with the flatbuffers schema that ships with ai-edge-litert, without TensorFlow.
"""
from __future__ import annotations

import json
from types import MappingProxyType

import numpy as np

from asr import __version__
from asr.model import SUBSAMPLING
from asr.text import WORD_BOUNDARY

METADATA_NAME = "asr_metadata"
METADATA_VERSION = 2  # 2: decoding.tokenizer, decoding.text (and word_boundary for BPE); 1 had none (= chars)
INPUT_NAME = "pcm"  # float32 [num_samples], 16 kHz, [-1, 1]
OUTPUT_NAME = "log_probs"  # float32 [num_frames, vocab_size]
# decoding.text, the rule asr.text.join_symbols applies to the kept symbols, per tokenizer. Files
# exported before spaces were collapsed for characters say "concatenate the symbols"; asr.runtime
# applies join_symbols to them all the same, so their text is clean too.
TEXT_RULES = MappingProxyType({
    "chars": "concatenate the symbols, collapse runs of spaces, trim",
    "bpe": "concatenate the symbols, replace each word_boundary with a space, collapse runs of spaces, trim",
})


def build_metadata(config, stats, meta: dict, quantization: str) -> dict:
    """Everything an app needs to feed the model and turn its output into text."""
    spec = config.features
    return {
        "format": "asr-tflite",
        "metadata_version": METADATA_VERSION,
        "asr_version": __version__,
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "shape": ["num_samples"],
            "sample_rate": spec.sample_rate,
            "range": [-1.0, 1.0],
            "channels": 1,
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": ["num_frames", config.vocabulary.size],
            "meaning": "log-probabilities per output frame (log-softmax over the vocabulary)",
            "num_frames": f"ceil((1 + num_samples // {spec.hop_length}) / {SUBSAMPLING})",
            "frame_shift_seconds": spec.hop_length * SUBSAMPLING / spec.sample_rate,
        },
        "decoding": decoding_metadata(config.vocabulary),
        "reset_state_before_each_utterance": True,
        "features": config.features.to_dict(),
        "normalization_stats": stats.to_dict() if stats is not None else None,
        "model": config.model.to_dict(),
        "quantization": quantization,
        "training_corpus": meta.get("corpus", ""),
        "metrics": meta.get("metrics", {}),
    }


def decoding_metadata(vocab) -> dict:
    """The "decoding" entry: how log-probabilities become text with ``vocab`` (asr.text.Vocabulary).
    The BPE model itself is not embedded: decoding needs only the pieces (the vocabulary)."""
    out = {
        "method": "greedy CTC: argmax per frame, collapse repeats, drop blanks",
        "blank_index": vocab.blank,
        "vocabulary": vocab.symbols,
        "tokenizer": vocab.kind,
        "text": TEXT_RULES[vocab.kind],
    }
    if vocab.kind == "bpe":
        out["word_boundary"] = WORD_BOUNDARY
    return out


def unpack(tflite: bytes):
    """The flatbuffer as an editable object tree (the schema's ModelT)."""
    from ai_edge_litert import schema_py_generated as schema

    return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(tflite, 0))


def pack(model, size_hint: int) -> bytes:
    """A ModelT back to flatbuffer bytes; ``size_hint``: the builder's initial size."""
    import flatbuffers

    builder = flatbuffers.Builder(size_hint)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def embed(tflite: bytes, metadata: dict) -> bytes:
    """Return ``tflite`` with ``metadata`` (JSON) added as the METADATA_NAME entry."""
    from ai_edge_litert import schema_py_generated as schema

    model = unpack(tflite)
    data = json.dumps(metadata, ensure_ascii=False, sort_keys=True).encode("utf-8")
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(data, np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != METADATA_NAME.encode()] + [entry]
    return pack(model, len(tflite) + len(data) + 1024)


def with_decoder(metadata: dict, decoder_config: dict) -> dict:
    """``metadata`` with ``decoder_config`` (DecoderConfig fields with file paths) shipped in its
    "decoding" entry: the defaults, the lexicon's words and the ARPA text (asr.decoding.bundle)."""
    from asr.decoding import META_DECODER, META_LEXICON, META_LM, bundle

    defaults, words, lm_text = bundle(decoder_config)
    decoding = {k: v for k, v in metadata["decoding"].items() if k not in (META_DECODER, META_LEXICON, META_LM)}
    decoding.update({k: v for k, v in {META_DECODER: defaults, META_LEXICON: words, META_LM: lm_text}.items() if v})
    return {**metadata, "decoding": decoding}


def publish_tflite(src, dest, metrics: dict, references: dict | None = None, reference_note: str = "",
                   decoder_config: dict | None = None):
    """Copy ``src`` to ``dest`` (atomically) with ``metrics`` (name -> evaluation summary of
    this very file, checked by asr.checkpoint.own_metrics) in its metadata, and ``references``
    (summaries of other models) apart under "reference_metrics"; ``decoder_config`` (optional)
    replaces the decoder it ships (``with_decoder``)."""
    import os
    from pathlib import Path

    from asr.checkpoint import REFERENCE_KEY, own_metrics, reference_metrics
    from asr.runtime import read_metadata

    src, dest = Path(src), Path(dest)
    metadata = read_metadata(src)
    metadata["metrics"] = own_metrics(metrics, src)
    metadata.pop(REFERENCE_KEY, None)
    if references:
        metadata[REFERENCE_KEY] = reference_metrics(references, src, reference_note)
    if decoder_config is not None:
        metadata = with_decoder(metadata, decoder_config)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_bytes(embed(src.read_bytes(), metadata))
    os.replace(tmp, dest)
    return dest
