"""Streaming: the chunked .tflite gives what the whole-file pass of the same model gives, the
app owns the state, the runtime and the commands, and bad input."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, tiny_config

SHIPPED = REPO_ROOT / "models" / "fsdd_streaming"
SHIPPED_TFLITE = REPO_ROOT / "models" / "fsdd_streaming.tflite"
# 0.1 s; one sample past a chunk boundary of every offered chunk; a partial last chunk; 3.2 s exactly
LENGTHS = (1600, 10241, 23456, 51200)


def _tiny(rnn: str, *extra: str):
    """A random unidirectional model with non-trivial batch-norm and global statistics."""
    from asr.features import GlobalStats
    from asr.model import build_model

    config = tiny_config("model.conv_channels=4", "model.lstm_units=8", f"model.rnn={rnn}", "model.bidirectional=false",
                         "features.normalization=global", *extra)
    net = build_model(config.model, config.features.n_mels, config.vocabulary.size)
    rng = np.random.default_rng(0)
    for layer in net.layers:
        if layer.name.endswith("_bn"):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([gamma * 1.3, beta + 0.3, rng.normal(0, 0.5, mean.shape), rng.uniform(0.5, 2, var.shape)])
    stats = GlobalStats(mean=rng.normal(-6, 1, 80).astype(np.float32), std=rng.uniform(1, 3, 80).astype(np.float32))
    return config, stats, net


def _write(tmp, name, flatbuffer, metadata):
    from export.metadata import embed

    path = tmp / name
    path.write_bytes(embed(flatbuffer, metadata))
    return path


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """{(rnn, kernel, lookahead frames): (whole-file float32 .tflite, {chunk_ms: streaming float32 .tflite})}."""
    from export.convert import convert
    from export.metadata import build_metadata
    from export.streaming import CHUNK_MS, convert_streaming, streaming_metadata

    tmp = tmp_path_factory.mktemp("stream")
    out = {}
    for rnn, kernel, ahead, chunks in (("lstm", 3, 0, CHUNK_MS), ("gru", 3, 0, (320,)), ("lstm", 5, 0, (160,)),
                                       ("gru", 3, 5, (160,))):
        config, stats, net = _tiny(rnn, f"model.conv_kernel={kernel}", f"model.lookahead_frames={ahead}")
        if ahead:  # a lookahead kernel that is not the identity
            net.get_layer("lookahead").set_weights([np.random.default_rng(3).normal(0, 0.5, (ahead + 1, 8))])
        whole = _write(tmp, f"{rnn}{kernel}{ahead}.tflite", convert(config, stats, net, "float32"),
                       build_metadata(config, stats, {}, "float32"))
        streams = {ms: _write(tmp, f"{rnn}{kernel}{ahead}_{ms}.tflite", convert_streaming(config, stats, net, ms, "float32"),
                              streaming_metadata(config, stats, {}, "float32", ms)) for ms in chunks}
        out[rnn, kernel, ahead] = whole, streams
    return out


def _audio(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * 300 * t * (1 + t)) + rng.normal(0, 0.05, n)).astype(np.float32)


@pytest.mark.parametrize("key", [("lstm", 3, 0), ("gru", 3, 0), ("lstm", 5, 0), ("gru", 3, 5)])
def test_chunks_give_the_whole_file_pass(tiny_files, key):
    from asr.runtime import TFLiteModel
    from asr.streaming import StreamingModel

    whole, streams = tiny_files[key]
    reference = TFLiteModel(whole, num_threads=1)
    for ms, path in streams.items():
        model = StreamingModel(path, num_threads=1)
        for n in LENGTHS:
            audio = _audio(n)
            want, got = reference.log_probs(audio), model.log_probs(audio)
            assert got.shape == want.shape == (-(-(1 + n // 160) // 4), 29), (ms, n)
            np.testing.assert_allclose(got, want, atol=1e-4, err_msg=f"{key} {ms} ms, {n} samples")


def test_any_split_of_the_input_gives_the_same_frames(tiny_files):
    """accept() takes pieces of any length: the model sees the same chunks."""
    from asr.streaming import StreamingModel, StreamingRecognizer

    model = StreamingModel(tiny_files["lstm", 3, 0][1][160], num_threads=1)
    audio = _audio(23456)
    whole = model.log_probs(audio)
    session = StreamingRecognizer(model)
    for piece in np.array_split(audio, [1, 100, 3000, 3001, 9000, 20000]):
        session.accept(piece)
    np.testing.assert_array_equal(session.finish_log_probs(), whole)


def test_interleaved_streams_in_one_interpreter(tiny_files):
    """Two streams alternating call by call on one interpreter: each gets what it gets alone."""
    from asr.streaming import StreamingModel, StreamingRecognizer

    model = StreamingModel(tiny_files["lstm", 3, 0][1][320], num_threads=1)
    a, b = _audio(23456, seed=1), _audio(51200, seed=2)
    alone = [model.log_probs(a), model.log_probs(b)]
    sa, sb = StreamingRecognizer(model), StreamingRecognizer(model)
    for i in range(0, 51200, 2000):
        sa.accept(a[i : i + 2000])
        sb.accept(b[i : i + 2000])
    np.testing.assert_array_equal(sa.finish_log_probs(), alone[0])
    np.testing.assert_array_equal(sb.finish_log_probs(), alone[1])


def test_file_contract_builtin_ops_named_state_no_variables(tiny_files):
    from ai_edge_litert import schema_py_generated as schema

    from asr.runtime import read_metadata
    from asr.streaming import StreamingModel
    from test_export import op_names

    path = tiny_files["lstm", 3, 0][1][640]
    assert not any(op.startswith("CUSTOM") or op in ("FLEX", "WHILE") for op in op_names(path.read_bytes()))
    graph = schema.Model.GetRootAsModel(path.read_bytes(), 0).Subgraphs(0)
    assert not any(graph.Tensors(i).IsVariable() for i in range(graph.TensorsLength()))
    meta = read_metadata(path)["streaming"]
    assert meta["chunk_samples"] == 10240 and meta["frames_per_chunk"] == 16 and meta["lookahead_ms"] == 46.0
    names = [s["input"] for s in meta["state"]]
    assert names == ["pcm_context", "feature_context", "conv_context", "rnn0_h", "rnn0_c", "position"]
    model = StreamingModel(path)
    details = {d["name"]: d for d in model.interpreter.get_input_details()}
    assert set(details) == {"pcm", "end", *names}
    for s in meta["state"]:
        assert list(details[s["input"]]["shape"]) == s["shape"]
    outputs = {d["name"] for d in model.interpreter.get_output_details()}
    assert outputs == {"log_probs", "frame_index", *(s["output"] for s in meta["state"])}


def test_bad_chunks_states_and_files_are_refused(tiny_files):
    from asr.runtime import ModelFileError, TFLiteModel
    from asr.streaming import StreamError, StreamingModel

    whole, streams = tiny_files["lstm", 3, 0]
    model = StreamingModel(streams[160])
    state = model.initial_state()
    with pytest.raises(StreamError, match=r"a chunk of this model is 2560 samples \(160 ms at 16000 Hz\), got shape \(2000,\)"):
        model.step(np.zeros(2000, np.float32), state)
    bad = {**state, "rnn0_h": np.zeros((1, 9), np.float32)}
    with pytest.raises(StreamError, match=r"state 'rnn0_h' must have shape \[1, 8\], got \[1, 9\]"):
        model.step(np.zeros(2560, np.float32), bad)
    with pytest.raises(StreamError, match="the state must be a dict of pcm_context"):
        model.step(np.zeros(2560, np.float32), {k: v for k, v in state.items() if k != "position"})
    with pytest.raises(ModelFileError, match="a streaming model"):
        TFLiteModel(streams[160])
    with pytest.raises(ModelFileError, match="a whole-file model"):
        StreamingModel(whole)


def test_models_that_cannot_stream_are_refused():
    from export.convert import ExportError
    from export.streaming import convert_streaming

    config, stats, net = _tiny("lstm")
    with pytest.raises(ExportError, match="multiple of 40 ms"):
        convert_streaming(config, stats, net, 100)
    with pytest.raises(ExportError, match="quantization float32 or dynamic"):
        convert_streaming(config, stats, net, 160, "int8")
    from asr.model import build_model

    bi = tiny_config("model.conv_channels=4", "model.lstm_units=8", "features.normalization=global")
    with pytest.raises(ExportError, match="a bidirectional model cannot stream"):
        convert_streaming(bi, stats, build_model(bi.model, 80, bi.vocabulary.size), 160)
    utt = tiny_config("model.conv_channels=4", "model.lstm_units=8", "model.bidirectional=false")
    with pytest.raises(ExportError, match="per-utterance normalization"):
        convert_streaming(utt, None, build_model(utt.model, 80, utt.vocabulary.size), 160)


# ------------------------------------------------------------------ the shipped streaming model


def _shipped():
    if not SHIPPED_TFLITE.is_file():
        pytest.skip("the shipped streaming model is absent: recipes/fsdd/run.sh --streaming")
    return SHIPPED_TFLITE


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


@pytest.mark.slow
def test_shipped_int8_stream_matches_its_whole_file_text(fsdd_dir, tmp_path):
    """Dynamic int8: the streaming file (as shipped) and the whole-file export of the same
    Keras model give the same greedy text on 50 FSDD test recordings, at two chunk lengths (on
    all 951 FSDD test utterances one differed: benchmarks/streaming.py, README "Streaming")."""
    from asr.audio import load_audio
    from asr.runtime import TFLiteModel, decode_text
    from asr.streaming import StreamingModel
    from export.convert import export_model
    from export.streaming import export_streaming

    _shipped()
    whole = TFLiteModel(export_model(SHIPPED, tmp_path / "whole.tflite", "dynamic"), num_threads=1)
    files = sorted(fsdd_dir.glob("*.wav"))
    audios = [load_audio(f) for f in files if int(f.stem.split("_")[2]) < 5][::5]  # 50 test recordings, every speaker
    want = [whole.transcribe(a) for a in audios]
    streams = {160: StreamingModel(SHIPPED_TFLITE, num_threads=1),
               640: StreamingModel(export_streaming(SHIPPED, tmp_path / "s640.tflite", 640), num_threads=1)}
    for ms, model in streams.items():
        got = [decode_text(model.log_probs(a), model.symbols, model.blank) for a in audios]
        assert got == want, ms


def test_asr_stream_reads_raw_pcm_from_stdin(fsdd_dir):
    """`asr stream -`: partial text on stderr, final segments on stdout, never TensorFlow."""
    from asr.audio import load_audio

    model = _shipped()
    pause = np.zeros(16000, np.float32)
    clips = [load_audio(fsdd_dir / f"{d}_george_{i}.wav") for d, i in ((3, 1), (7, 2), (9, 3))]
    pcm = np.concatenate([pause] + [x for c in clips for x in (c, pause)])
    raw = (np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes()
    code = ("import sys; from asr.cli import main; rc = main(sys.argv[1:]); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'; sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, "stream", "-", "--model", str(model), "--decoder", "greedy"],
                         input=raw, capture_output=True, env=_env())
    assert out.returncode == 0, out.stderr.decode()
    lines = out.stdout.decode().splitlines()
    assert len(lines) == 3, lines  # one segment per digit: the pauses end them
    starts = [float(line.split("\t")[0]) for line in lines]
    assert starts == sorted(starts) and all(len(line.split("\t")) == 3 for line in lines)
    assert "partial: " in out.stderr.decode()
    # the same PCM as a file; a WAV is refused with the command to use instead
    wav = fsdd_dir / "3_george_1.wav"
    bad = subprocess.run([sys.executable, "-m", "asr", "stream", str(wav), "--model", str(model)],
                         capture_output=True, text=True, env=_env())
    assert bad.returncode == 2 and "not raw PCM: use 'asr transcribe --stream" in bad.stderr


def test_transcribe_stream_shows_partials_and_prints_the_final(fsdd_dir):
    model = _shipped()
    wav = fsdd_dir / "5_george_2.wav"
    out = subprocess.run([sys.executable, "-m", "asr", "transcribe", "--stream", "--model", str(model), "--decoder", "greedy",
                          str(wav)], capture_output=True, text=True, env=_env())
    assert out.returncode == 0, out.stderr
    path, text = out.stdout.rstrip("\n").split("\t")
    assert path == str(wav)
    partials = [line.removeprefix("partial: ") for line in out.stderr.splitlines() if line.startswith("partial: ")]
    # greedy partials only grow; the final text adds what the flush at the end brings
    assert partials and all(b.startswith(a) for a, b in zip(partials, partials[1:] + [text]))
    whole = subprocess.run([sys.executable, "-m", "asr", "transcribe", "--stream", "--model", str(REPO_ROOT / "models" / "fsdd.tflite"),
                            str(wav)], capture_output=True, text=True, env=_env())
    assert whole.returncode == 2 and "a whole-file model" in whole.stderr


def test_export_command_writes_a_streaming_file(tmp_path, capsys):
    from asr.checkpoint import save_model_dir
    from asr.cli import main
    from asr.runtime import read_metadata

    config, stats, net = _tiny("lstm", "model.lookahead_frames=2")
    model = save_model_dir(tmp_path / "uni", config, net, stats, corpus="test")
    out = tmp_path / "uni_streaming.tflite"
    assert main(["export", "--streaming", str(model), "-o", str(out), "--chunk-ms", "320"]) == 0
    assert "streaming, 320 ms chunks" in capsys.readouterr().out
    meta = read_metadata(out)
    assert meta["format"] == "asr-tflite-streaming" and meta["quantization"] == "dynamic"
    assert meta["streaming"]["chunk_samples"] == 5120 and meta["streaming"]["lookahead_ms"] == 126.0
    assert meta["streaming"]["state"][-2]["input"] == "lookahead_context"
    assert main(["export", str(model), "-o", str(tmp_path / "x.tflite"), "--chunk-ms", "320"]) == 2
    assert "--chunk-ms goes with --streaming" in capsys.readouterr().err
