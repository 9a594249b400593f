"""Audio loading: any file libsndfile reads, as mono float32 at 16 kHz.

``load_audio(path)`` returns a float32 array of shape [num_samples] in [-1, 1] at
``SAMPLE_RATE``; ``stream_audio(path)`` yields the same samples in blocks (a streamed soxr
resampler, bit-identical to the whole-file one), so long files need not be held in memory.
Every failure raises ``AudioError`` with a one-line, specific reason.
Only numpy, soundfile and soxr are imported here, so the on-device runtime can use it.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000  # Hz; every model in this project consumes 16 kHz audio
# Data-chunk lengths that streaming writers put in a WAV header when the length is not known
# yet (a pipe, a recording still running): libsndfile reads such a file to its end.
STREAMING_DATA_LENGTHS = frozenset({
    0xFFFFFFFF,  # -1 as unsigned: sox, ffmpeg and the RF64 convention
    0x7FFFFFFF,  # the largest signed 32-bit length: ffmpeg and others writing to a pipe
    0x7FFFF000,  # 2 GiB - 4 KiB, page-aligned: arecord (alsa-utils) and others
})
BLOCK_SECONDS = 1.0  # stream_audio's read size, at the file's rate
AUDIO_EXTENSIONS = frozenset(
    ".wav .flac .ogg .oga .opus .mp3 .aiff .aif .aifc .au .snd .caf .w64 .rf64 .sph .nist .voc".split()
)


class AudioError(ValueError):
    """A file that cannot be used as audio. ``str(err)`` is one line that names the reason."""


def _check_riff_length(path: Path) -> None:
    """Raise AudioError if a RIFF/WAVE file's data chunk claims more bytes than the file holds,
    unless the claim is one of STREAMING_DATA_LENGTHS (then libsndfile reads to the end)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return
            cid, clen = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"data":
                have = size - f.tell()
                if clen not in STREAMING_DATA_LENGTHS and clen > have:
                    raise AudioError(
                        f"truncated WAV: the header declares {clen} bytes of audio, the file holds {have}"
                    )
                return
            f.seek(clen + (clen & 1), os.SEEK_CUR)


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read ``path`` and return mono float32 samples at ``sample_rate``.

    Returns: float32 array [num_samples]. Channels are averaged; other rates are resampled
    with soxr (high quality). 16/24/32-bit integer and float PCM are all scaled to [-1, 1].
    Raises AudioError: missing file, a directory, an empty or non-audio file, a truncated
    file, zero samples, or NaN/infinite samples.
    """
    with open_audio(path) as f:
        rate, declared = f.samplerate, f.frames
        try:
            data = f.read(dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as err:
            raise _decode_error(err) from None
    if 0 < declared < 2**62 and data.shape[0] < declared:
        raise AudioError(f"truncated: the header declares {declared} samples, only {data.shape[0]} could be read")
    if data.shape[0] == 0:
        raise AudioError("contains no samples")
    if not np.isfinite(data).all():
        raise AudioError("contains NaN or infinite samples")
    audio = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    del data
    if rate != sample_rate:
        audio = soxr.resample(audio, rate, sample_rate, quality="HQ")
    # Float files may exceed full scale, and resampling overshoots near it: keep [-1, 1].
    # In place: an hour at 16 kHz is 230 MB, and this array is ours.
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    return np.clip(audio, -1.0, 1.0, out=audio)


def open_audio(path: str | os.PathLike) -> sf.SoundFile:
    """``path`` opened for reading, after the checks every reader shares: AudioError for a
    missing file, a directory, an empty file, a WAV whose header claims more than it holds, or
    a file libsndfile cannot open."""
    path = Path(path)
    if not path.exists():
        raise AudioError("file not found")
    if path.is_dir():
        raise AudioError("is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    _check_riff_length(path)
    try:
        return sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"not a readable audio file ({_reason(err)})") from None


def _decode_error(err: Exception) -> AudioError:
    return AudioError(f"cannot decode audio, the file may be truncated or corrupt ({_reason(err)})")


def stream_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE,
                 block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """Yield ``path``'s audio as mono float32 blocks at ``sample_rate``, clipped to [-1, 1].

    Concatenated, the blocks equal ``load_audio(path, sample_rate)`` exactly. Each block holds
    about ``block_seconds`` of audio (the last may be shorter or empty). Raises AudioError
    (while iterating) for the same problems as load_audio: missing, empty, unreadable,
    truncated, no samples, NaN or infinite samples.
    """
    if block_seconds <= 0:
        raise ValueError(f"block_seconds must be positive, got {block_seconds}")
    with open_audio(path) as f:
        rate, declared = f.samplerate, f.frames
        stream = (soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality="HQ")
                  if rate != sample_rate else None)
        block = max(1, round(block_seconds * rate))
        read = 0
        while True:
            try:
                data = f.read(block, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as err:
                raise _decode_error(err) from None
            last = data.shape[0] < block
            if not np.isfinite(data).all():
                raise AudioError("contains NaN or infinite samples")
            read += data.shape[0]
            mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
            mono = np.ascontiguousarray(mono, dtype=np.float32)
            if stream is not None:
                mono = np.ascontiguousarray(stream.resample_chunk(mono, last=last), dtype=np.float32)
            yield np.clip(mono, -1.0, 1.0, out=mono)
            if last:
                break
    if read == 0:
        raise AudioError("contains no samples")
    if 0 < declared < 2**62 and read < declared:
        raise AudioError(f"truncated: the header declares {declared} samples, only {read} could be read")


def audio_seconds(path: str | os.PathLike) -> float:
    """Duration that ``path``'s header declares, in seconds; 0.0 when it cannot be read (the
    reason is for ``load_audio`` to report)."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError):
        return 0.0
    return info.frames / info.samplerate if 0 < info.frames < 2**62 and info.samplerate > 0 else 0.0


def _reason(err: Exception) -> str:
    text = str(err).strip().splitlines()
    msg = text[-1] if text else type(err).__name__
    # libsndfile prefixes messages with the path; keep only the reason.
    return msg.split(": ", 1)[-1] if ": " in msg else msg


def is_audio_path(path: Path) -> bool:
    """True when ``path`` has an extension libsndfile formats use."""
    return path.suffix.lower() in AUDIO_EXTENSIONS


def write_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono float samples as 16-bit PCM WAV, atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    sf.write(str(tmp), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)
