"""tfmot optimization (benchmarks/tfmot_*.py, the code of benchmarks/tfmot.py) on a tiny model:
the Bidirectional PrunableLayer, real sparsity after stripping, clustered kernels, QAT int8 export, and that optimized model
directories still export to builtin-only .tflite files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import tiny_config, write_fsdd_manifest
from test_export import op_names

@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised tiny model directory (4 conv channels, one 8-unit BiLSTM)."""
    from asr.checkpoint import save_model_dir
    from asr.model import build_model

    config = tiny_config("model.conv_channels=4", "model.lstm_units=8")
    net = build_model(config.model, config.features.n_mels, config.vocabulary.size)
    return save_model_dir(tmp_path_factory.mktemp("m") / "tiny", config, net, None, corpus="test")


@pytest.fixture(scope="module")
def manifests(tmp_path_factory, fsdd_dir):
    """(train, dev) manifests of 10 real digits: a few fine-tuning steps per pass."""
    root = tmp_path_factory.mktemp("data")
    names = [f"{d}_jackson_0" for d in range(10)]
    train = write_fsdd_manifest(root / "train.jsonl", fsdd_dir, names)
    dev = write_fsdd_manifest(root / "dev.jsonl", fsdd_dir, [f"{d}_jackson_1" for d in range(4)])
    return train, dev


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _builtin_only(tflite: bytes) -> set[str]:
    ops = op_names(tflite)
    assert not [o for o in ops if o.startswith("CUSTOM") or "FLEX" in o.upper()], ops
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in ops and "WHILE" not in ops
    return ops


def test_prunable_bidirectional_makes_prune_low_magnitude_accept_the_model(tiny_model_dir):
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    from asr.checkpoint import load_model_dir
    from benchmarks.tfmot_sparsity import prunable_bidirectional_class, prune_schedule, prune_wrap

    _, _, _, net = load_model_dir(tiny_model_dir)
    with pytest.raises(ValueError):  # what the wrapper is for
        tfmot.sparsity.keras.prune_low_magnitude(net.get_layer("bilstm0"))
    pruned = prune_wrap(net, prune_schedule(10))
    wrapper = pruned.get_layer("prune_low_magnitude_bilstm0")
    assert isinstance(wrapper.layer, prunable_bidirectional_class())
    assert len(wrapper.layer.get_prunable_weights()) == 4  # kernel + recurrent kernel, both directions
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

    assert isinstance(pruned.get_layer("prune_low_magnitude_logits"), PruneLowMagnitude)
    assert isinstance(pruned.get_layer("prune_low_magnitude_conv1"), PruneLowMagnitude)
    # weights carried over, outputs unchanged before any pruning step
    x = np.random.default_rng(0).normal(size=(2, 40, 80)).astype(np.float32)
    n = np.array([40, 23], np.int32)
    np.testing.assert_allclose(pruned([x, n], training=False), net([x, n], training=False), atol=1e-5)
    assert not isinstance(net.get_layer("bilstm0"), prunable_bidirectional_class())
    assert isinstance(net.get_layer("bilstm0"), keras.layers.Bidirectional)


def test_pruned_model_is_sparse_and_exports_builtin_only(tiny_model_dir, manifests, cache, tmp_path):
    from asr.checkpoint import load_model_dir, read_model_meta
    from export.convert import export_model
    from benchmarks.tfmot_sparsity import prune, sparsity_report

    train, _ = manifests
    out = prune(tiny_model_dir, [train], [], tmp_path / "pruned", sparsity=0.5, epochs=1, cache_dir=cache)
    _, _, meta, net = load_model_dir(out)  # a plain model directory again
    sparsity = sparsity_report(net)
    lstm = {k: v for k, v in sparsity.items() if k.startswith("bilstm0/")}
    assert len(lstm) == 4, sparsity
    for name, zeros in lstm.items():
        assert 0.45 <= zeros <= 0.55, (name, zeros)
    assert 0.45 <= sparsity["logits/kernel"] <= 0.55
    opt = read_model_meta(out)["optimization"]
    assert opt["technique"] == "prune" and opt["sparsity"] == 0.5 and opt["source"] == str(tiny_model_dir)
    assert "metrics" not in meta
    tflite = export_model(out, tmp_path / "pruned.tflite", "dynamic")
    _builtin_only(tflite.read_bytes())


def test_clustered_kernels_have_at_most_n_values(tiny_model_dir, manifests, cache, tmp_path):
    from asr.checkpoint import load_model_dir
    from benchmarks.tfmot_sparsity import cluster, unique_values

    train, _ = manifests
    out = cluster(tiny_model_dir, [train], [], tmp_path / "clustered", clusters=8, epochs=1, cache_dir=cache)
    _, _, meta, net = load_model_dir(out)
    counts = unique_values(net)
    assert {k for k in counts if k.startswith("bilstm0/")} == {
        f"bilstm0/{side}/{w}" for side in ("forward", "backward") for w in ("kernel", "recurrent_kernel")
    }
    for name, n in counts.items():
        assert n <= 8, (name, n)
    assert meta["optimization"]["clusters"] == 8


def test_qat_model_dir_exports_full_int8_with_float_frontend(tiny_model_dir, manifests, cache, tmp_path):
    from asr.checkpoint import load_model_dir
    from asr.runtime import TFLiteModel, read_metadata
    from benchmarks.tfmot_quantization import QAT_WEIGHTS, export_int8, qat

    train, dev = manifests
    out = qat(tiny_model_dir, [train], [dev], tmp_path / "qat", epochs=1, cache_dir=cache)
    assert (out / QAT_WEIGHTS).is_file()
    load_model_dir(out)  # the float weights load as a normal model directory
    tflite = export_int8(out, tmp_path / "qat.tflite", dev)
    ops = _builtin_only(tflite.read_bytes())
    assert {"QUANTIZE", "DEQUANTIZE", "RFFT2D"} <= ops
    meta = read_metadata(tflite)
    assert meta["quantization"] == "int8" and meta["frontend_precision"] == "float32"
    assert meta["optimization"] == {"technique": "qat"}
    audio = np.random.default_rng(1).uniform(-0.3, 0.3, 8000).astype(np.float32)
    log_probs = TFLiteModel(tflite, num_threads=1).log_probs(audio)
    assert log_probs.shape[1] == 29 and np.isfinite(log_probs).all()
    opt = json.loads((out / "model.json").read_text())["optimization"]
    assert opt["qat_weights"] == QAT_WEIGHTS and set(opt["dev"]) == {"wer", "cer"}
