"""Long inputs (asr.windows, the .tflite runtime and the Keras recognizer), reading by duration,
metadata errors, standard error of ``asr transcribe``, and the default model.

Long real speech is FSDD test-split digits (resampled to 16 kHz) joined by pauses. Exactness of
windowing is checked with the shipped model's weights made float (``float_weights``) and with
the shipped dynamic-range int8 model, whose convolutions stay float (a hybrid int8 convolution
would quantize its input with one scale per pass, making every output depend a little on the
whole input).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asr.corpora.fsdd import digits_with_pauses
from benchmarks.long_audio import float_weights  # int8 weights dequantized: the float network
from conftest import REPO_ROOT

SHIPPED_TFLITE = REPO_ROOT / "models" / "fsdd.tflite"
SHIPPED_KERAS = REPO_ROOT / "models" / "fsdd"
SAMPLE_RATE = 16000
STEP = 640  # samples per output frame


def run_asr(*args, timeout: int = 600):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "asr", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def shipped():
    if not SHIPPED_TFLITE.is_file():
        pytest.skip("the shipped model is absent: run recipes/fsdd/run.sh")
    return SHIPPED_TFLITE


@pytest.fixture(scope="module")
def float_tflite(shipped, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("float") / "fsdd-float.tflite"
    path.write_bytes(float_weights(shipped.read_bytes()))
    return path


@pytest.fixture(scope="module")
def twenty_seconds(fsdd_dir):
    return digits_with_pauses(fsdd_dir, 20, seed=1)


# ------------------------------------------------------------------ the window plan


@pytest.mark.parametrize("num_samples", [1, 639, 640, 16000, 16000 * 20 + 333, 16000 * 61, 16000 * 600 + 1])
@pytest.mark.parametrize("window, context", [(1, 0), (7, 3), (50, 250), (1500, 750)])
def test_windows_cover_every_output_frame_once_on_the_frame_grid(num_samples, window, context):
    from asr.windows import output_frames, plan_windows

    windows = plan_windows(num_samples, window_frames=window, context_frames=context, max_frames=0)
    total = output_frames(num_samples)
    assert [f for w in windows for f in range(w.first, w.first + w.keep)] == list(range(total))
    for w in windows:
        assert w.start % STEP == 0 and w.start == (w.first - w.skip) * STEP  # the whole input's grid
        assert 0 <= w.skip <= context and 0 < w.keep <= window
        assert output_frames(w.end - w.start) >= w.skip + w.keep  # the pass has the rows kept
        if w.end < num_samples:  # full context after the kept frames
            assert w.end == (w.first + w.keep + context) * STEP
        assert w.end - w.start <= (window + 2 * context) * STEP


def test_short_inputs_are_one_window():
    from asr.windows import SUBSAMPLING, output_frames, plan_windows

    assert plan_windows(16000 * 60) == [plan_windows(16000 * 60)[0]]
    w = plan_windows(16000 * 60)[0]
    assert (w.start, w.end, w.skip, w.keep) == (0, 16000 * 60, 0, output_frames(16000 * 60))
    assert SUBSAMPLING * 160 == STEP


# ------------------------------------------------------------------ windowed == one pass


def test_tiny_windows_on_a_short_file_equal_the_whole_pass(float_tflite, shipped, twenty_seconds):
    """20 s of real digits, windows keeping 1.6 s with 16 s of context each side (13 windows):
    with float weights the log-probabilities of one pass up to what the BiLSTM state still
    remembers 16 s away (a frame off the grid would differ by several units) and the same
    argmax everywhere; the shipped int8 model gives the same text. (Measured with the shipped network:
    0.011 at 16 s, 0.20 at 10 s, identical at 20 s; its five-speaker predecessor forgot sooner.)"""
    from asr.runtime import TFLiteModel
    from asr.windows import output_frames, plan_windows

    pcm, _ = twenty_seconds
    assert len(plan_windows(pcm.size, window_frames=40, context_frames=400, max_frames=0)) >= 10
    for path, atol in ((float_tflite, 0.1), (shipped, None)):
        whole = TFLiteModel(path, num_threads=1)
        windowed = TFLiteModel(path, num_threads=1, window_frames=40, context_frames=400, max_frames=0)
        a, b = whole.log_probs(pcm), windowed.log_probs(pcm)
        assert a.shape == b.shape == (output_frames(pcm.size), len(whole.symbols))
        assert windowed.decode(b) == whole.decode(a)
        if atol is not None:
            np.testing.assert_allclose(b, a, atol=atol)
            assert (b.argmax(1) == a.argmax(1)).all()


@pytest.mark.slow
def test_four_minutes_windowed_give_the_whole_pass_transcript(float_tflite, shipped, fsdd_dir):
    """Default windows (60 s kept, 40 s of context) on 4 minutes of real digits and pauses: the
    whole pass's text, float and dynamic int8 (whose convolutions stay float)."""
    from asr.evaluation import error_rates
    from asr.runtime import TFLiteModel
    from asr.windows import plan_windows

    pcm, words = digits_with_pauses(fsdd_dir, 240, seed=2)
    assert len(plan_windows(pcm.size)) >= 4
    whole = TFLiteModel(float_tflite, num_threads=1, max_frames=10**9)
    text = whole.transcribe(pcm)
    assert TFLiteModel(float_tflite, num_threads=1).transcribe(pcm) == text
    assert error_rates([words], [text])["wer"] < 0.1  # real recognition, not an empty string
    whole, windowed = (TFLiteModel(shipped, num_threads=1, max_frames=m) for m in (10**9, None))
    assert windowed.transcribe(pcm) == whole.transcribe(pcm)


@pytest.mark.slow
def test_keras_recognizer_windows_equal_its_whole_pass(fsdd_dir, twenty_seconds):
    from asr.transcription import Recognizer
    from asr.windows import output_frames

    if not (SHIPPED_KERAS / "model.json").is_file():
        pytest.skip("the shipped Keras model is absent")
    pcm, _ = twenty_seconds
    whole = Recognizer(SHIPPED_KERAS)
    windowed = Recognizer(SHIPPED_KERAS, window_frames=40, context_frames=400, max_frames=0)
    short = pcm[: 3 * SAMPLE_RATE]
    (a, a_short), (b, b_short) = whole.audio_log_probs([pcm, short]), windowed.audio_log_probs([pcm, short])
    assert a.shape == b.shape == (output_frames(pcm.size), whole.config.vocabulary.size)
    np.testing.assert_allclose(b, a, atol=0.1)  # the BiLSTM state 16 s away, as in the .tflite test
    assert (b.argmax(1) == a.argmax(1)).all()
    np.testing.assert_allclose(b_short, a_short, atol=1e-5)  # context spans all 3 s: every window is all of it
    assert windowed.transcribe_audio([pcm]) == whole.transcribe_audio([pcm])


# ------------------------------------------------------------------ memory


def peak_rss_mb(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``cmd`` from a small launcher (a child's peak RSS starts from its parent's at fork)."""
    launcher = ("import os, subprocess, sys\nchild = subprocess.Popen(sys.argv[1:])\n"
                "_, status, usage = os.wait4(child.pid, 0)\nprint(usage.ru_maxrss, file=sys.stderr)\n"
                "sys.exit(os.waitstatus_to_exitcode(status))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", launcher, *cmd], capture_output=True, text=True, env=env, timeout=900)
    return out, int(out.stderr.splitlines()[-1]) / 1024


@pytest.mark.slow
@pytest.mark.parametrize("minutes, limit_mb", [(10, 400), (60, 1000)])
def test_long_file_transcribes_in_bounded_memory(shipped, fsdd_dir, tmp_path, minutes, limit_mb):
    """An hour of speech with pauses, as subtitles: files over a minute are read in blocks and
    cut at pauses (asr.segmentation), so memory does not grow with the duration; every cue time
    is in order and inside the file. Decoded as the model ships (lexicon and LM)."""
    import soundfile as sf
    import srt

    from asr.evaluation import error_rates

    wav = tmp_path / "long.wav"
    words = []
    with sf.SoundFile(str(wav), "w", SAMPLE_RATE, 1, "PCM_16") as f:
        for k in range(0, minutes, 2):  # 2 minutes at a time: the test itself stays small
            pcm, spoken = digits_with_pauses(fsdd_dir, 120, seed=k)
            f.write(pcm)
            words.append(spoken)
    out, rss = peak_rss_mb([sys.executable, "-m", "asr", "transcribe", "--model", str(shipped), "--threads", "1",
                            str(wav), "--format", "srt", "--output-dir", str(tmp_path / "out")])
    assert out.returncode == 0, out.stderr
    assert rss < limit_mb, f"peak RSS {rss:.0f} MB for {minutes} minutes"
    cues = list(srt.parse((tmp_path / "out" / "long.srt").read_text()))  # a maintained SRT parser
    times = [t.total_seconds() for c in cues for t in (c.start, c.end)]
    assert times == sorted(times) and 0 <= times[0] and times[-1] <= sf.info(str(wav)).duration
    assert all(c.end > c.start for c in cues)
    text = " ".join(c.content for c in cues)
    assert error_rates([" ".join(words)], [text])["wer"] < 0.1


def test_files_are_read_by_duration_not_by_count(fsdd_dir, monkeypatch, tmp_path):
    """Never more than MAX_CHUNK_SECONDS of audio in memory, except one file longer than that,
    which is read alone; results stay in order."""
    import soundfile as sf

    from asr import transcription
    from asr.transcription import FileTranscriber

    class Recorder(FileTranscriber):
        sample_rate = SAMPLE_RATE
        symbols, blank, word_boundary = ["<blank>", " ", "a"], 0, None

        def __init__(self):
            self.calls = []

        def audio_log_probs(self, audios, batch_size=16):
            self.calls.append([a.size / SAMPLE_RATE for a in audios])
            return [np.zeros((1 + a.size // 640, 3), np.float32) for a in audios]

    long_wav = tmp_path / "long.wav"
    sf.write(str(long_wav), np.zeros(5 * SAMPLE_RATE, np.float32), SAMPLE_RATE)
    paths = [str(p) for p in sorted(fsdd_dir.glob("*_jackson_[0-4].wav"))[:30]]
    paths = paths[:10] + [str(long_wav)] + paths[10:] + [str(tmp_path / "missing.wav")]
    monkeypatch.setattr(transcription, "MAX_CHUNK_SECONDS", 2.0)
    rec = Recorder()
    results = rec.transcribe_files(paths)
    assert [r.path for r in results] == paths
    assert results[-1].error and all(not r.error for r in results[:-1])
    assert [c for c in rec.calls if 5.0 in c] == [[5.0]]  # the long file alone
    assert all(sum(c) <= 2.0 for c in rec.calls if 5.0 not in c)
    assert sum(len(c) for c in rec.calls) == len(paths) - 1


# ------------------------------------------------------------------ metadata errors


def _without(metadata: dict, dotted: str) -> dict:
    meta = json.loads(json.dumps(metadata))
    *parents, last = dotted.split(".")
    node = meta
    for key in parents:
        node = node[key]
    del node[last]
    return meta


@pytest.mark.parametrize("missing", ["decoding", "decoding.blank_index", "decoding.vocabulary", "input",
                                     "input.sample_rate"])
def test_metadata_without_a_needed_key_is_a_model_file_error(shipped, tmp_path, missing):
    from asr.runtime import ModelFileError, TFLiteModel, read_metadata
    from export.metadata import embed

    bad = tmp_path / "bad.tflite"
    bad.write_bytes(embed(shipped.read_bytes(), _without(read_metadata(shipped), missing)))
    with pytest.raises(ModelFileError, match=rf"bad\.tflite: the metadata has no '{missing}' entry"):
        TFLiteModel(bad)


def test_cli_reports_incomplete_metadata_in_one_line(shipped, tmp_path, fsdd_wav):
    from asr.runtime import read_metadata
    from export.metadata import embed

    bad = tmp_path / "bad.tflite"
    bad.write_bytes(embed(shipped.read_bytes(), _without(read_metadata(shipped), "decoding")))
    out = run_asr("transcribe", "--model", bad, fsdd_wav)
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [f"asr transcribe: error: {bad}: the metadata has no 'decoding' entry: "
                                       f"it is incomplete (export the model again with 'asr export')"]


# ------------------------------------------------------------------ standard error


def test_tflite_transcription_keeps_stderr_empty(shipped, fsdd_wav, clips_dir):
    out = run_asr("transcribe", "--model", shipped, fsdd_wav, clips_dir / "sr_english.wav")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert out.stdout.splitlines()[1].endswith("\tone two three")


def test_litert_lines_other_than_its_start_up_notice_still_reach_stderr():
    """C++ writes to file descriptor 2 inside the captured region are passed on, except the
    XNNPACK INFO line; the interpreter's errors (raised as exceptions) reach stderr via main."""
    code = ("import os\nfrom asr.runtime import quiet_litert_info\nwith quiet_litert_info():\n"
            "    os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n')\n"
            "    os.write(2, b'ERROR: a kernel failed\\n')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert out.returncode == 0
    assert out.stderr == "ERROR: a kernel failed\n"


def test_a_failing_interpreter_is_reported_on_stderr(shipped, tmp_path, fsdd_wav):
    """A .tflite whose logits weights have the wrong shape: LiteRT's error reaches the user."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(shipped.read_bytes(), 0))
    graph = model.subgraphs[0]
    fc = next(op for op in graph.operators
              if model.operatorCodes[op.opcodeIndex].builtinCode == schema.BuiltinOperator.FULLY_CONNECTED)
    graph.tensors[fc.inputs[1]].shape = np.array([7, 3], np.int32)
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(bytes(builder.Output()))
    out = run_asr("transcribe", "--model", bad, fsdd_wav)
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1 and out.stderr.startswith("asr transcribe: error: ")
    assert "failed to prepare" in out.stderr and "XNNPACK delegate for CPU" not in out.stderr


# ------------------------------------------------------------------ the default model


def test_default_model_note_is_printed_once_and_only_without_model(shipped, fsdd_dir, clips_dir):
    from asr.transcription import default_model

    files = [fsdd_dir / "0_yweweler_4.wav", clips_dir / "cards_001.wav", fsdd_dir / "7_nicolas_3.wav"]
    out = run_asr("transcribe", *files)
    assert out.returncode == 0, out.stderr
    from asr.transcription import CORPUS_SCOPE, load_recognizer

    shown = default_model().relative_to(REPO_ROOT / "models").as_posix()
    scope = CORPUS_SCOPE[load_recognizer(default_model()).corpus]
    assert out.stderr.splitlines() == [f"note: the default model (models/{shown}) recognizes {scope}; "
                                       f"pass --model for another model"]
    assert len(out.stdout.splitlines()) == 3
    with_model = run_asr("transcribe", "--model", default_model(), *files)  # shipped, or what a recipe published
    assert with_model.stderr == "" and with_model.stdout == out.stdout


def test_default_model_prefers_what_a_recipe_published_in_models_local(tmp_path):
    from asr.transcription import default_model

    models = tmp_path / "models"
    assert default_model(models) is None
    (models / "fsdd").mkdir(parents=True)
    assert default_model(models) is None  # a directory without model.json is no model
    (models / "fsdd" / "model.json").write_text("{}")
    assert default_model(models) == models / "fsdd"
    (models / "fsdd.tflite").write_bytes(b"x")
    assert default_model(models) == models / "fsdd.tflite"
    (models / "local" / "fsdd").mkdir(parents=True)
    (models / "local" / "fsdd" / "model.json").write_text("{}")
    assert default_model(models) == models / "local" / "fsdd"
    (models / "local" / "fsdd.tflite").write_bytes(b"x")
    assert default_model(models) == models / "local" / "fsdd.tflite"
