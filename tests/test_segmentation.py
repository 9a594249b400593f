"""Voice-activity segmentation on real speech joined by pauses of known length.

Test audio: FSDD digit recordings (8 kHz) separated by 0.6-2.0 s pauses of silence plus
white noise at NOISE_DBFS, written at 8 kHz mono and at 44.1 kHz stereo. A piece's "core" is
its stretch of 30 ms frames within CORE_DB of the recording's loudest frame (FSDD files keep
some room silence at their edges); every core must lie inside exactly one segment.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import soxr

from asr.audio import AudioError, load_audio, stream_audio
from asr.segmentation import FRAME_MS, MAX_SEGMENT_SECONDS, PAD_SECONDS, AudioSegment, speech_segments

NOISE_DBFS = -60.0  # faint white noise under the pauses and the speech
CORE_DB = 35.0  # a frame within 35 dB of the recording's peak frame is speech
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "yweweler")
PIECES = 30  # 3 recordings of each digit, 6 of each speaker
FSDD_RATE = 8000  # Hz
MODEL_RATE = 16000  # Hz
SLACK = FRAME_MS / 1000 * 5  # 150 ms: webrtcvad's hangover after speech (measured up to 119 ms here)


def _core(x: np.ndarray, rate: int) -> tuple[float, float]:
    """Start and end (seconds) of the frames within CORE_DB of the loudest 30 ms frame."""
    fr = rate * FRAME_MS // 1000
    n = len(x) // fr
    db = 10 * np.log10(np.mean(x[:n * fr].reshape(-1, fr).astype(np.float64) ** 2, axis=1) + 1e-12)
    idx = np.nonzero(db > db.max() - CORE_DB)[0]
    return idx[0] * fr / rate, (idx[-1] + 1) * fr / rate


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    return (10 ** (NOISE_DBFS / 20) * rng.standard_normal(n)).astype(np.float32)


def _compose(fsdd_dir, rng, gaps=(0.6, 2.0)):
    """FSDD pieces joined by pauses drawn from ``gaps`` (seconds), at 8 kHz with noise.

    Returns audio float32 [n], pieces [(start, end)] of whole recordings and their cores [(start, end)].
    """
    parts, pieces, cores, t = [], [], [], 0
    for i in range(PIECES):
        x, rate = sf.read(str(fsdd_dir / f"{i % 10}_{SPEAKERS[i % 5]}_{i // 10 + 5}.wav"), dtype="float32")
        assert rate == FSDD_RATE
        gap = int(rng.uniform(*gaps) * rate)
        parts += [np.zeros(gap, np.float32), x]
        t += gap
        c0, c1 = _core(x, rate)
        pieces.append((t / rate, (t + len(x)) / rate))
        cores.append((t / rate + c0, t / rate + c1))
        t += len(x)
    parts.append(np.zeros(rate, np.float32))
    audio = np.concatenate(parts)
    return audio + _noise(rng, len(audio)), pieces, cores


def _write(path, audio: np.ndarray, rate: int, stereo: bool = False):
    """Write mono 8 kHz ``audio`` at ``rate`` (resampled), as stereo when asked (right = 0.7 x left)."""
    if rate != FSDD_RATE:
        audio = soxr.resample(audio, FSDD_RATE, rate, quality="VHQ")
    if stereo:
        audio = np.stack([audio, 0.7 * audio], axis=1)
    sf.write(str(path), audio, rate, subtype="PCM_16")
    return path


def _check_order(segs: list[AudioSegment], total: int):
    """Segments non-empty, in order, not overlapping, inside [0, total] samples."""
    assert all(isinstance(s, AudioSegment) and len(s.audio) > 0 and s.audio.dtype == np.float32 for s in segs)
    for a, b in zip(segs, segs[1:]):
        assert a.end_sample <= b.start_sample
    assert segs[0].start_sample >= 0 and segs[-1].end_sample <= total


def _check_exact(segs: list[AudioSegment], whole: np.ndarray):
    for s in segs:
        np.testing.assert_array_equal(s.audio, whole[s.start_sample:s.end_sample])
        assert s.end == pytest.approx(s.start + len(s.audio) / MODEL_RATE)


@pytest.mark.parametrize("rate,stereo", [(8000, False), (44100, True)], ids=["8k-mono", "44k-stereo"])
def test_pieces_inside_segments(fsdd_dir, rng, tmp_path, rate, stereo):
    audio, pieces, cores = _compose(fsdd_dir, rng)
    path = _write(tmp_path / "joined.wav", audio, rate, stereo)
    segs = list(speech_segments(path))
    whole = load_audio(path)
    _check_order(segs, len(whole))
    _check_exact(segs, whole)
    for c0, c1 in cores:
        inside = [s for s in segs if s.start < c1 and s.end > c0]
        assert len(inside) == 1, f"core {c0:.3f}-{c1:.3f} overlaps {[(s.start, s.end) for s in inside]}"
        assert inside[0].start <= c0 and inside[0].end >= c1
    for s in segs:  # each segment holds one piece and ends within padding of it
        (p0, p1), = [p for p in pieces if s.start < p[1] and s.end > p[0]]
        assert s.start >= p0 - PAD_SECONDS - SLACK and s.end <= p1 + PAD_SECONDS + SLACK
    assert len(segs) == PIECES


def test_short_pauses_merge(fsdd_dir, rng, tmp_path):
    audio, _, cores = _compose(fsdd_dir, rng, gaps=(0.15, 0.25))
    segs = list(speech_segments(_write(tmp_path / "close.wav", audio, FSDD_RATE)))
    assert len(segs) < PIECES / 3
    for c0, c1 in cores:
        assert sum(1 for s in segs if s.start <= c0 and s.end >= c1) == 1


def test_stream_equals_whole_file_resample(clips_dir, tmp_path, rng):
    audio = rng.uniform(-0.5, 0.5, size=(44100 * 3 + 17, 2)).astype(np.float32)
    stereo = tmp_path / "stereo.wav"
    sf.write(str(stereo), audio, 44100, subtype="FLOAT")
    for path in [stereo, *sorted(clips_dir.glob("*.wav"))]:
        for block in (0.1, 1.0, 7.0):
            got = np.concatenate(list(stream_audio(path, block_seconds=block)))
            np.testing.assert_array_equal(got, load_audio(path))


@pytest.mark.parametrize("name", ["cards_005.wav", "sr_english.wav", "ps_goforward.wav"])
def test_real_clip_segments_are_exact(clips_dir, name):
    path = clips_dir / name
    whole = load_audio(path)
    segs = list(speech_segments(path, block_seconds=0.37))
    assert segs
    _check_order(segs, len(whole))
    _check_exact(segs, whole)


def test_max_seconds_splits_in_pauses(clips_dir, tmp_path):
    clips = [load_audio(p) for p in sorted(clips_dir.glob("*.wav"))]
    joined = np.concatenate(clips * 3)  # about 45 s, no pauses added between clips
    path = tmp_path / "continuous.wav"
    sf.write(str(path), joined, MODEL_RATE, subtype="FLOAT")
    max_s = 8.0
    # min_silence 5 s: the clips' own pauses do not split, only max_seconds does
    segs = list(speech_segments(path, max_seconds=max_s, min_silence_seconds=5.0))
    _check_order(segs, len(joined))
    _check_exact(segs, joined)
    assert all(s.end - s.start <= max_s for s in segs)
    fr = MODEL_RATE * FRAME_MS // 1000
    db = 10 * np.log10(np.mean(joined[:len(joined) // fr * fr].reshape(-1, fr).astype(np.float64) ** 2, 1) + 1e-12)
    cuts = [a.end_sample for a, b in zip(segs, segs[1:]) if a.end_sample == b.start_sample]
    assert cuts, "expected splits of a continuous stretch longer than max_seconds"
    for a in segs[:-1]:
        window = db[a.start_sample // fr:a.end_sample // fr]
        assert db[a.end_sample // fr] < np.median(window) - 20, "split outside a pause"
        assert a.end - a.start >= max_s * 2 / 3 - 0.05  # split in the last third
    total = sum(len(s.audio) for s in segs)
    assert total >= 0.9 * len(joined)  # nothing but file-edge silence dropped


def test_silence_gives_no_segments(tmp_path, rng):
    for name, audio in [("zeros", np.zeros(MODEL_RATE * 20, np.float32)),
                        ("noise", _noise(rng, MODEL_RATE * 20))]:
        path = tmp_path / f"{name}.wav"
        sf.write(str(path), audio, MODEL_RATE, subtype="PCM_16")
        assert list(speech_segments(path)) == [], name


def test_speech_at_file_edges(fsdd_dir, tmp_path):
    x, rate = sf.read(str(fsdd_dir / "4_jackson_5.wav"), dtype="float32")
    path = tmp_path / "edges.wav"
    sf.write(str(path), np.concatenate([x, np.zeros(rate, np.float32), x]), rate, subtype="PCM_16")
    whole = load_audio(path)
    segs = list(speech_segments(path))
    assert len(segs) == 2
    assert segs[0].start_sample == 0 and segs[-1].end_sample == len(whole)
    _check_exact(segs, whole)


def _write_long(path, fsdd_dir, clips_dir, seconds: float, rate: int = 44100):
    """A ``seconds`` long stereo file at ``rate``, written block by block: clips joined with
    no pause (continuous speech), then FSDD digits with pauses, repeated."""
    clips = np.concatenate([load_audio(p, rate) for p in sorted(clips_dir.glob("*.wav"))])
    digits = []
    for i in range(10):
        x, r = sf.read(str(fsdd_dir / f"{i}_{SPEAKERS[i % 5]}_7.wav"), dtype="float32")
        digits += [soxr.resample(x, r, rate), np.zeros(rate, np.float32)]
    pattern = np.concatenate([clips, clips, clips, np.zeros(rate, np.float32), *digits])
    rng = np.random.default_rng(0)
    with sf.SoundFile(str(path), "w", rate, 2, subtype="PCM_16") as f:
        left = int(seconds * rate)
        while left > 0:
            block = pattern[:left] + _noise(rng, min(left, len(pattern)))
            f.write(np.stack([block, block], axis=1))
            left -= len(block)
    return len(pattern) / rate


def test_memory_is_bounded(fsdd_dir, clips_dir, tmp_path):
    minutes = 10
    path = tmp_path / "long.wav"
    _write_long(path, fsdd_dir, clips_dir, minutes * 60)
    # whole file as float32: 10 min x 44.1 kHz x 2 channels = 212 MB; at 16 kHz mono 38 MB
    tracemalloc.start()
    try:
        count, last_end, longest = 0, 0.0, 0.0
        # min_silence 2 s: the clips' pauses do not split, so 30 s segments are held and cut
        for seg in speech_segments(path, min_silence_seconds=2.0):
            assert seg.start >= last_end
            count, last_end, longest = count + 1, seg.end, max(longest, seg.end - seg.start)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count > 15 and last_end <= minutes * 60 + 1e-9
    assert MAX_SEGMENT_SECONDS - 10 < longest <= MAX_SEGMENT_SECONDS
    assert peak < 16e6, f"peak {peak / 1e6:.1f} MB"
    print(f"peak {peak / 1e6:.1f} MB, {count} segments, longest {longest:.2f} s")


def test_unreadable_files(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    cases = {tmp_path / "missing.wav": "file not found", tmp_path: "directory",
             bad: "not a readable audio file"}
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    cases[empty] = "empty file"
    for path, reason in cases.items():
        with pytest.raises(AudioError, match=reason):
            list(speech_segments(path))


def test_truncated_wav(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(str(path), np.zeros(16000, np.float32), MODEL_RATE, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(AudioError, match="truncated"):
        list(speech_segments(path))


def test_bad_arguments(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(str(path), np.zeros(1600, np.float32), MODEL_RATE)
    for kwargs in [{"sample_rate": 22050}, {"mode": 4}, {"max_seconds": 0.01}, {"pad_seconds": -1}]:
        with pytest.raises(ValueError):
            list(speech_segments(path, **kwargs))
