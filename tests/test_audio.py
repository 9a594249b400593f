"""Contract of asr.audio.load_audio: mono float32 at 16 kHz, or an AudioError with a specific reason."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.audio import SAMPLE_RATE, AudioError, load_audio

TONE_HZ = 440.0


def sine(rate: int, seconds: float = 1.0, freq: float = TONE_HZ, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_frequency(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1.0 / rate)[spectrum.argmax()])


def write(path: Path, audio: np.ndarray, rate: int = SAMPLE_RATE, **kwargs) -> Path:
    sf.write(str(path), audio, rate, **kwargs)
    return path


def truncate_to_half(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_sine_dominant_frequency_is_a_real_fft_peak():
    # sanity check of the helper itself, independent of load_audio
    assert dominant_frequency(sine(16000), 16000) == pytest.approx(TONE_HZ, abs=1.0)


# ---------------------------------------------------------------- resampling


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_any_rate_becomes_16k_and_keeps_pitch(tmp_path, rate):
    seconds = 1.0
    path = write(tmp_path / f"tone_{rate}.wav", sine(rate, seconds), rate, subtype="FLOAT")
    audio = load_audio(path)
    assert audio.dtype == np.float32
    assert audio.ndim == 1
    assert abs(len(audio) - seconds * SAMPLE_RATE) <= 0.01 * seconds * SAMPLE_RATE
    assert dominant_frequency(audio, SAMPLE_RATE) == pytest.approx(TONE_HZ, abs=5.0)
    # resampling must not change the level of an in-band tone (RMS of a 0.5 sine is 0.5/sqrt(2))
    core = audio[len(audio) // 10 : -len(audio) // 10]
    assert np.sqrt(np.mean(core**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_sample_rate_argument_is_honoured(tmp_path):
    path = write(tmp_path / "tone.wav", sine(16000), 16000, subtype="FLOAT")
    audio = load_audio(path, sample_rate=8000)
    assert abs(len(audio) - 8000) <= 80
    assert dominant_frequency(audio, 8000) == pytest.approx(TONE_HZ, abs=5.0)


# ---------------------------------------------------------------- channels


def test_stereo_is_channel_mean(tmp_path, rng):
    left = sine(SAMPLE_RATE, 0.5)
    right = (0.3 * rng.uniform(-1, 1, len(left))).astype(np.float32)
    path = write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), subtype="FLOAT")
    audio = load_audio(path)
    np.testing.assert_allclose(audio, (left + right) / 2, rtol=0, atol=1e-7)


def test_stereo_at_other_rate_is_mono_16k(tmp_path):
    left, right = sine(44100, 0.5, amp=0.6), sine(44100, 0.5, amp=0.2)
    path = write(tmp_path / "stereo44.wav", np.stack([left, -right], axis=1), 44100, subtype="FLOAT")
    audio = load_audio(path)
    assert audio.ndim == 1 and abs(len(audio) - 8000) <= 80
    core = audio[800:-800]
    # (0.6 sin - 0.2 sin) / 2 = 0.2 sin: RMS 0.2 / sqrt(2)
    assert np.sqrt(np.mean(core**2)) == pytest.approx(0.2 / np.sqrt(2), rel=0.02)


# ---------------------------------------------------------------- formats

QUANT = {"PCM_16": 2.0**-15, "PCM_24": 2.0**-23, "PCM_32": 2.0**-31}


@pytest.mark.parametrize(
    "fmt, subtype, atol",
    [
        ("WAV", "PCM_16", 2 * QUANT["PCM_16"]),
        ("WAV", "PCM_24", 2 * QUANT["PCM_24"]),
        ("WAV", "PCM_32", 1e-7),  # float32 output cannot hold 32 bits: float32 rounding dominates
        ("WAV", "FLOAT", 0.0),
        ("WAV", "DOUBLE", 1e-7),  # rounded to float32
        ("FLAC", "PCM_16", 2 * QUANT["PCM_16"]),
        ("FLAC", "PCM_24", 2 * QUANT["PCM_24"]),
    ],
)
def test_lossless_formats_match_written_signal(tmp_path, rng, fmt, subtype, atol):
    signal = np.clip(sine(SAMPLE_RATE, 0.5, amp=0.8) + 0.1 * rng.standard_normal(8000), -0.99, 0.99)
    if subtype != "DOUBLE":
        signal = signal.astype(np.float32)
    path = write(tmp_path / f"sig.{fmt.lower()}", signal, format=fmt, subtype=subtype)
    audio = load_audio(path)
    assert audio.dtype == np.float32
    assert audio.shape == signal.shape
    assert np.abs(audio).max() <= 1.0
    np.testing.assert_allclose(audio, signal, rtol=0, atol=atol)


def test_full_scale_pcm16_stays_in_range(tmp_path):
    extremes = np.array([-1.0, 1.0, -1.0, 0.0, 1.0] * 200, np.float64)
    path = write(tmp_path / "full.wav", extremes, subtype="PCM_16")
    audio = load_audio(path)
    assert audio.min() >= -1.0 and audio.max() <= 1.0
    assert audio.min() == -1.0  # int16 -32768 maps exactly to -1
    assert audio.max() == pytest.approx(1.0, abs=2 * QUANT["PCM_16"])


# load_audio promises [-1, 1]: float files can exceed full scale and resampling overshoots.


def test_float_wav_above_full_scale_stays_in_range(tmp_path):
    audio = load_audio(write(tmp_path / "loud.wav", np.full(1000, 1.7, np.float32), subtype="FLOAT"))
    assert np.abs(audio).max() <= 1.0


def test_resampled_full_scale_square_wave_stays_in_range(tmp_path):
    t = np.arange(44100) / 44100
    square = (0.999 * np.sign(np.sin(2 * np.pi * 1000 * t))).astype(np.float32)
    audio = load_audio(write(tmp_path / "square.wav", square, 44100, subtype="PCM_16"))
    assert np.abs(audio).max() <= 1.0


def test_ogg_vorbis_loads_close_to_signal(tmp_path):
    signal = sine(SAMPLE_RATE, 1.0, amp=0.5)
    path = write(tmp_path / "tone.ogg", signal, format="OGG", subtype="VORBIS")
    audio = load_audio(path)
    assert audio.dtype == np.float32
    assert np.abs(audio).max() <= 1.0
    assert abs(len(audio) - len(signal)) <= 0.01 * len(signal)
    n = min(len(audio), len(signal))
    assert np.corrcoef(audio[:n], signal[:n])[0, 1] > 0.9
    assert dominant_frequency(audio, SAMPLE_RATE) == pytest.approx(TONE_HZ, abs=5.0)


def test_twenty_milliseconds_loads(tmp_path):
    signal = sine(SAMPLE_RATE, 0.02)
    assert len(signal) == 320
    audio = load_audio(write(tmp_path / "short.wav", signal, subtype="FLOAT"))
    np.testing.assert_array_equal(audio, signal)


def test_twenty_milliseconds_at_8k_becomes_320_samples(tmp_path):
    audio = load_audio(write(tmp_path / "short8k.wav", sine(8000, 0.02), 8000, subtype="FLOAT"))
    assert len(audio) == 320


def test_non_ascii_file_name(tmp_path):
    signal = sine(SAMPLE_RATE, 0.25)
    path = write(tmp_path / "ñandú_音声.wav", signal, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path), signal)
    np.testing.assert_array_equal(load_audio(str(path)), signal)


# ---------------------------------------------------------------- failures


def _missing(tmp_path):
    return tmp_path / "does_not_exist.wav"


def _directory(tmp_path):
    d = tmp_path / "folder.wav"
    d.mkdir()
    return d


def _empty(tmp_path):
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    return p


def _text(tmp_path):
    p = tmp_path / "x.wav"
    p.write_text("this is a transcript, not a recording\n" * 20)
    return p


def _truncated_wav(tmp_path):
    return truncate_to_half(write(tmp_path / "cut.wav", sine(SAMPLE_RATE), subtype="PCM_16"))


def _truncated_flac(tmp_path):
    noisy = sine(SAMPLE_RATE) + 0.05 * np.random.default_rng(0).standard_normal(SAMPLE_RATE).astype(np.float32)
    return truncate_to_half(write(tmp_path / "cut.flac", noisy, format="FLAC", subtype="PCM_16"))


def _zero_samples(tmp_path):
    return write(tmp_path / "zero.wav", np.zeros(0, np.float32), subtype="PCM_16")


def _with_value(value):
    def make(tmp_path):
        signal = sine(SAMPLE_RATE, 0.1)
        signal[17] = value
        return write(tmp_path / "bad_value.wav", signal, subtype="FLOAT")

    return make


@pytest.mark.parametrize(
    "make, keywords",
    [
        (_missing, ["not found"]),
        (_directory, ["directory"]),
        (_empty, ["empty", "0 bytes"]),
        (_text, ["not a readable audio file"]),
        (_truncated_wav, ["truncated", "header declares"]),
        (_truncated_flac, ["truncated"]),
        (_zero_samples, ["no samples"]),
        (_with_value(np.nan), ["NaN"]),
        (_with_value(np.inf), ["infinite"]),
        (_with_value(-np.inf), ["infinite"]),
    ],
    ids=["missing", "directory", "empty", "text", "truncated-wav", "truncated-flac", "zero-samples", "nan", "inf", "-inf"],
)
def test_failures_raise_specific_audio_error(tmp_path, make, keywords):
    path = make(tmp_path)
    with pytest.raises(AudioError) as info:
        load_audio(path)
    message = str(info.value)
    assert "\n" not in message
    for word in keywords:
        assert word in message, f"{word!r} missing from {message!r}"


def test_audio_error_is_a_value_error():
    assert issubclass(AudioError, ValueError)


def test_failure_messages_are_distinct(tmp_path):
    """Each kind of failure gets its own reason, so a user can tell them apart."""
    makers = [_missing, _directory, _empty, _text, _truncated_wav, _zero_samples, _with_value(np.nan)]
    messages = []
    for i, make in enumerate(makers):
        sub = tmp_path / str(i)
        sub.mkdir()
        with pytest.raises(AudioError) as info:
            load_audio(make(sub))
        messages.append(str(info.value))
    assert len(set(messages)) == len(messages), messages


# ---------------------------------------------------------------- streamed WAV headers


def wav_with_data_length(path: Path, signal: np.ndarray, data_length: int, riff_length: int | None = None,
                         keep_bytes: int | None = None) -> Path:
    """A 16-bit WAV of ``signal`` whose data chunk header declares ``data_length`` bytes (and
    the RIFF header ``riff_length``), cut to ``keep_bytes`` bytes of audio when given."""
    import io
    import struct

    buf = io.BytesIO()
    sf.write(buf, signal, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    data = bytearray(buf.getvalue())
    at = data.index(b"data")
    data[at + 4 : at + 8] = struct.pack("<I", data_length)
    if riff_length is not None:
        data[4:8] = struct.pack("<I", riff_length)
    if keep_bytes is not None:
        data = data[: at + 8 + keep_bytes]
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("placeholder", [0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000], ids=hex)
@pytest.mark.parametrize("riff_length", [None, 0xFFFFFFFF], ids=["riff-exact", "riff-unknown"])
def test_streamed_wav_with_a_placeholder_length_reads_to_the_end(tmp_path, placeholder, riff_length):
    """Writers that stream (to a pipe, or while recording) put a placeholder in the data length;
    libsndfile reads such a file to its end, and so must load_audio."""
    signal = sine(SAMPLE_RATE, 0.5)
    path = wav_with_data_length(tmp_path / "streamed.wav", signal, placeholder, riff_length)
    np.testing.assert_allclose(load_audio(path), signal, atol=1 / 32768)


@pytest.mark.parametrize("declared", [2 * 8000 * 2, 0x7FFFF000 - 2, 0x40000000], ids=["double", "near-placeholder", "1GiB"])
def test_a_data_length_beyond_the_file_that_is_no_placeholder_is_truncation(tmp_path, declared):
    signal = sine(SAMPLE_RATE, 0.5)  # 8000 samples, 16000 bytes
    path = wav_with_data_length(tmp_path / "cut.wav", signal, declared)
    with pytest.raises(AudioError, match="truncated WAV: the header declares"):
        load_audio(path)


def test_truncated_wav_with_an_exact_length_is_still_refused(tmp_path):
    path = wav_with_data_length(tmp_path / "cut.wav", sine(SAMPLE_RATE, 0.5), 16000, keep_bytes=6000)
    with pytest.raises(AudioError, match="truncated"):
        load_audio(path)


# ---------------------------------------------------------------- real recordings


def test_real_fsdd_8k_recording(fsdd_wav):
    frames = sf.info(str(fsdd_wav)).frames
    audio = load_audio(fsdd_wav)
    assert audio.dtype == np.float32
    assert abs(len(audio) - 2 * frames) <= 1
    assert 0 < np.abs(audio).max() <= 1.0


def test_real_44k_clip(clips_dir):
    path = clips_dir / "sr_english.wav"
    info = sf.info(str(path))
    assert info.samplerate == 44100, "fixture assumption: this clip is 44.1 kHz"
    audio = load_audio(path)
    assert abs(len(audio) - info.frames * SAMPLE_RATE / 44100) <= 1
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0


def test_real_librispeech_flac_is_unchanged_at_16k(librispeech_dir):
    path = next(librispeech_dir.rglob("*.flac"))
    expected, rate = sf.read(str(path), dtype="float32")
    assert rate == SAMPLE_RATE
    np.testing.assert_array_equal(load_audio(path), expected)
