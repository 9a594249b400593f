"""``asr transcribe`` on good and bad input, all in one call: every bad file gets a one-line
error naming it, every good one is still transcribed, the exit status is 1.

Good files are real FSDD test-split digits (never trained on) rewritten in other formats, so
the expected text is the digit word in the file name. The default model is used, as a user
without --model gets it: models/local/fsdd.tflite or models/local/fsdd when a recipe published
one on this machine, else the shipped models/fsdd.tflite (else the Keras models/fsdd).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from conftest import REPO_ROOT

SHIPPED = (REPO_ROOT / "models" / "fsdd.tflite", REPO_ROOT / "models" / "fsdd" / "model.json")
SOURCE = "7_nicolas_3"  # a test-split recording: "seven"


def run_transcribe(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "asr", "transcribe", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def parse(stdout: str, stderr: str, paths) -> tuple[dict, dict]:
    """({path: text} from stdout, {path: reason} from the stderr lines "error: PATH: reason")."""
    texts = dict(line.split("\t", 1) for line in stdout.splitlines() if "\t" in line)
    errors = {}
    for line in stderr.splitlines():
        for path in map(str, paths):
            if line.startswith(f"error: {path}: "):
                errors[path] = line[len(f"error: {path}: "):]
    return texts, errors


@pytest.fixture(scope="module")
def shipped():
    if not any(p.is_file() for p in SHIPPED):
        pytest.skip("the shipped model is absent: run recipes/fsdd/run.sh")
    return SHIPPED


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, fsdd_dir):
    """(good: {path: expected text}, bad: {path: words its error must contain})."""
    d = tmp_path_factory.mktemp("inputs")
    audio, rate = sf.read(str(fsdd_dir / f"{SOURCE}.wav"), dtype="float32")
    good, bad = {}, {}
    for new_rate in (8000, 22050, 44100, 48000):
        p = d / f"rate{new_rate}.wav"
        sf.write(str(p), soxr.resample(audio, rate, new_rate), new_rate, subtype="PCM_16")
        good[p] = "seven"
    stereo = np.stack([audio, 0.6 * audio], axis=1)
    sf.write(str(d / "stereo.wav"), stereo, rate, subtype="PCM_16")
    sf.write(str(d / "pcm24.wav"), audio, rate, subtype="PCM_24")
    sf.write(str(d / "float.wav"), audio, rate, subtype="FLOAT")
    sf.write(str(d / "ñandú_音声.wav"), audio, rate, subtype="PCM_16")
    sf.write(str(d / "digit.flac"), audio, rate, format="FLAC")
    for name in ("stereo.wav", "pcm24.wav", "float.wav", "ñandú_音声.wav", "digit.flac"):
        good[d / name] = "seven"
    sf.write(str(d / "silence.wav"), np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    good[d / "silence.wav"] = ""
    sf.write(str(d / "short20ms.wav"), audio[:160], rate, subtype="PCM_16")
    good[d / "short20ms.wav"] = None  # any transcript, but no error

    (d / "empty.wav").write_bytes(b"")
    bad[d / "empty.wav"] = ["empty", "0 bytes"]
    (d / "text.wav").write_text("this is not audio at all\n" * 20)
    bad[d / "text.wav"] = ["not a readable audio file"]
    wav_bytes = (d / "pcm24.wav").read_bytes()
    (d / "truncated.wav").write_bytes(wav_bytes[: len(wav_bytes) // 2])
    bad[d / "truncated.wav"] = ["truncated"]
    flac_bytes = (d / "digit.flac").read_bytes()
    (d / "truncated.flac").write_bytes(flac_bytes[: len(flac_bytes) // 2])
    bad[d / "truncated.flac"] = ["truncated"]
    sf.write(str(d / "zero.wav"), np.zeros(0, np.float32), 16000, subtype="PCM_16")
    bad[d / "zero.wav"] = ["no samples"]
    nan = audio.copy()
    nan[100] = np.nan
    sf.write(str(d / "nan.wav"), nan, rate, subtype="FLOAT")
    bad[d / "nan.wav"] = ["NaN"]
    bad[d / "does-not-exist.wav"] = ["no such file"]
    (d / "no-audio-here").mkdir()
    (d / "no-audio-here" / "notes.txt").write_text("nothing")
    bad[d / "no-audio-here"] = ["no audio files"]
    return good, bad


def test_every_bad_input_is_named_and_the_rest_are_transcribed(shipped, inputs):
    good, bad = inputs
    out = run_transcribe(*good, *bad)
    assert out.returncode == 1, out.stderr
    texts, errors = parse(out.stdout, out.stderr, [*good, *bad])
    for path, words in bad.items():
        assert str(path) in errors, f"no error line for {path}:\n{out.stderr}"
        for word in words:
            assert word in errors[str(path)], (path, errors[str(path)])
    for path, expected in good.items():
        assert str(path) in texts, f"{path} was not transcribed:\n{out.stderr}"
        if expected is not None:
            assert texts[str(path)] == expected, (path, texts[str(path)])
    error_lines = [x for x in out.stderr.splitlines() if x.startswith("error: ")]
    assert len(error_lines) == len(bad)  # one line each, nothing for the good files


def test_directory_and_manifest_inputs_and_json_output(shipped, inputs, tmp_path, fsdd_dir):
    from asr.manifest import Utterance, write_manifest

    good, _ = inputs
    folder = next(iter(good)).parent
    names = [f"{d}_lucas_1" for d in (2, 5)]
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, [Utterance(n, str(fsdd_dir / f"{n}.wav"), 0.5, "") for n in names])
    out = run_transcribe("--format", "json", folder, manifest)
    assert out.returncode == 1  # the folder holds the bad files too
    records = {r["path"]: r for r in map(json.loads, out.stdout.splitlines())}  # one object per file
    assert records[str(fsdd_dir / "2_lucas_1.wav")]["text"] == "two"
    assert records[str(fsdd_dir / "5_lucas_1.wav")]["text"] == "five"
    assert records[str(folder / "stereo.wav")]["text"] == "seven"
    assert "error" in records[str(folder / "empty.wav")]
    assert str(folder / "no-audio-here" / "notes.txt") not in records  # not audio: not searched


def test_all_good_inputs_exit_zero(shipped, fsdd_dir):
    out = run_transcribe(fsdd_dir / "0_yweweler_4.wav")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{fsdd_dir / '0_yweweler_4.wav'}\tzero\n"


def test_subtitle_and_table_outputs_one_file_per_input(shipped, fsdd_dir, tmp_path):
    """--output-dir writes <stem>.<format> per input; the VTT parses with webvtt-py and the SRT
    with srt, and their cue times are the JSON's segment; the word lies inside it."""
    import srt
    import webvtt

    wavs = [fsdd_dir / "3_lucas_2.wav", fsdd_dir / "8_george_1.wav"]
    for fmt in ("srt", "vtt", "tsv", "json"):
        out = run_transcribe(*wavs, "--format", fmt, "--output-dir", tmp_path / fmt)
        assert out.returncode == 0, out.stderr
        assert sorted(p.name for p in (tmp_path / fmt).iterdir()) == [f"3_lucas_2.{fmt}", f"8_george_1.{fmt}"]
    record = json.loads((tmp_path / "json" / "3_lucas_2.json").read_text())
    (segment,) = record["segments"]
    (word,) = segment["words"]
    assert word["word"] == "three" and segment["start"] <= word["start"] < word["end"] <= segment["end"]
    assert segment["end"] <= record["duration"]
    (cue,) = srt.parse((tmp_path / "srt" / "3_lucas_2.srt").read_text())
    assert (cue.content, cue.start.total_seconds(), cue.end.total_seconds()) == ("three", segment["start"], segment["end"])
    (caption,) = webvtt.from_string((tmp_path / "vtt" / "3_lucas_2.vtt").read_text())
    seconds = lambda t: sum(float(x) * 60 ** k for k, x in enumerate(reversed(t.split(":"))))  # [HH:]MM:SS.mmm
    assert (caption.text, seconds(caption.start), seconds(caption.end)) == ("three", segment["start"], segment["end"])
    rows = (tmp_path / "tsv" / "3_lucas_2.tsv").read_text().splitlines()
    assert rows == ["start\tend\ttext", f"{round(segment['start'] * 1000)}\t{round(segment['end'] * 1000)}\tthree"]
