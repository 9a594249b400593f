"""asr.corruption: noisy and reverberant copies of a manifest (asr augment), on real clips."""
from __future__ import annotations

import numpy as np
import pytest

from asr.audio import load_audio
from asr.corruption import (CorruptionError, add_noise, corrupt_manifest, reverberate,
                            room_impulse_response)
from asr.manifest import Utterance, read_manifest, write_manifest

try:  # tests/ as a package or as a plain folder on sys.path
    from tests.conftest import DATA_DIR, _require
except ImportError:
    from conftest import DATA_DIR, _require


def energy_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.sum(np.square(x, dtype=np.float64)))


def test_room_impulse_response_decays_60_db_over_rt60_at_the_drawn_ratio():
    rate, rt60, drr = 16000, 0.5, 4.0
    rir = room_impulse_response(np.random.default_rng(0), rt60, drr, rate)
    assert rir[0] == 1.0 and len(rir) == int(0.002 * rate) + int(rt60 * rate)
    tail = rir[int(0.002 * rate):]
    assert energy_db(rir[:1]) - energy_db(tail) == pytest.approx(drr, abs=1e-3)
    # energy of the first and the last 50 ms of the tail: about 60 dB * (0.45 / 0.5) apart
    first, last = tail[: rate // 20], tail[-rate // 20:]
    assert 45 < energy_db(first) - energy_db(last) < 62


def test_reverberation_keeps_length_and_level_and_noise_sits_at_the_snr():
    rng = np.random.default_rng(1)
    speech = load_audio(_require(DATA_DIR / "fsdd" / "recordings") / "3_jackson_0.wav")
    wet = reverberate(speech, room_impulse_response(rng, 0.6, 0.0))
    assert wet.shape == speech.shape and wet.dtype == np.float32
    assert np.sqrt(np.mean(wet ** 2)) == pytest.approx(np.sqrt(np.mean(speech ** 2)), rel=1e-4)
    assert not np.allclose(wet, speech, atol=1e-3)
    noise = rng.standard_normal(4000).astype(np.float32)  # shorter than the speech: tiled
    noisy = add_noise(speech, noise, 10.0, rng)
    added = noisy - speech
    assert 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(added.astype(np.float64) ** 2)) == pytest.approx(10.0, abs=1e-3)
    assert np.array_equal(add_noise(np.zeros(800, np.float32), noise, 10.0, rng), np.zeros(800, np.float32))


@pytest.fixture
def clips(tmp_path):
    sc = _require(DATA_DIR / "speech-commands")
    words = [Utterance(f"yes-{p.stem}", str(p), 1.0, "yes", p.name.split("_")[0])
             for p in sorted((sc / "yes").glob("*.wav"))[:4]]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEfmt nonsense")
    words.insert(2, Utterance("yes-bad", str(bad), 1.0, "yes", "x"))
    noise = [Utterance(f"silence-{p.stem}", str(p), 1.0, "", "") for p in sorted((sc / "_silence_").glob("*.wav"))[:3]]
    write_manifest(tmp_path / "train.jsonl", words)
    write_manifest(tmp_path / "noise.jsonl", noise)
    return tmp_path


@pytest.mark.parametrize("kind", ["noise", "reverb", "both"])
def test_copies_of_a_manifest_are_deterministic_resumable_and_skip_bad_audio(clips, kind):
    out = clips / "copies" / f"train_{kind}.jsonl"
    s = corrupt_manifest(clips / "train.jsonl", out, kind, clips / "noise.jsonl", seed=3, progress=False)
    assert s["written"] == 4 and s["reused"] == 0
    assert len(s["problems"]) == 1 and s["problems"][0].startswith("yes-bad: ")
    copies, originals = read_manifest(out, check_audio=True), read_manifest(clips / "train.jsonl")
    assert [u.id for u in copies] == [f"{u.id}-{kind}" for u in originals if u.id != "yes-bad"]
    for copy, orig in zip(copies, [u for u in originals if u.id != "yes-bad"]):
        a, b = load_audio(copy.audio), load_audio(orig.audio)
        assert a.shape == b.shape and not np.allclose(a, b, atol=1e-3) and np.max(np.abs(a)) <= 0.99 + 1e-4
        assert (copy.text, copy.speaker, copy.duration) == (orig.text, orig.speaker, orig.duration)
    first = copies[0].audio
    before = load_audio(first)
    again = corrupt_manifest(clips / "train.jsonl", out, kind, clips / "noise.jsonl", seed=3, progress=False)
    assert again["written"] == 0 and again["reused"] == 4  # a rerun keeps what is there
    import os

    os.unlink(first)
    corrupt_manifest(clips / "train.jsonl", out, kind, clips / "noise.jsonl", seed=3, progress=False)
    assert np.array_equal(load_audio(first), before)  # the same draws: a killed run resumes exactly


def test_bad_requests_are_clear(clips, tmp_path):
    with pytest.raises(CorruptionError, match="kind must be one of noise, reverb, both"):
        corrupt_manifest(clips / "train.jsonl", tmp_path / "x.jsonl", "echo")
    with pytest.raises(CorruptionError, match="needs a noise manifest"):
        corrupt_manifest(clips / "train.jsonl", tmp_path / "x.jsonl", "noise")
    write_manifest(tmp_path / "silent.jsonl", [Utterance("s", str(clips / "bad.wav"), 1.0, "", "")])
    with pytest.raises(CorruptionError, match="no readable, non-silent noise clip"):
        corrupt_manifest(clips / "train.jsonl", tmp_path / "x.jsonl", "both", tmp_path / "silent.jsonl")


def test_asr_augment_command(clips, capsys):
    from asr.cli import main

    out = clips / "cli" / "train_reverb.jsonl"
    assert main(["augment", "--manifest", str(clips / "train.jsonl"), "--out", str(out), "--kind", "reverb"]) == 0
    captured = capsys.readouterr()
    assert "reverb copies: 4 written, 0 already there, 1 unreadable" in captured.out
    assert "yes-bad" in captured.err and len(read_manifest(out)) == 4
