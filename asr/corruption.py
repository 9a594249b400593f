"""Corrupted copies of a manifest's audio, made once before training: additive noise at a
random SNR and reverberation through a simulated room impulse response.

Kaldi's recipes augment this way (steps/data/augment_data_dir.py, reverberate_data_dir.py):
a corrupted copy of each training utterance is written beside the clean data and listed as
more training data. Because the copies are ordinary audio files in an ordinary manifest, they
work with every training pipeline (memory, stream, shard folders) and leave the training
throughput unchanged; the price is one fixed corruption per copy instead of a fresh draw per
epoch (make more copies, with other seeds, for more variety).

    corrupt_manifest(manifest, out_manifest, kind, noise_manifest=None, seed=0) -> summary
    asr augment --manifest M --out NEW.jsonl --kind noise|reverb|both [--noise NOISE.jsonl] [--seed N]

Per utterance i (all draws from numpy's generator seeded by (seed, i), so a rerun, or a killed
run's rerun, writes the same samples and skips the files already there):
  reverb  a room impulse response from Polack's statistical model (white noise under an
          exponential decay of 60 dB over RT60 seconds, after a direct-path impulse), RT60 ~
          U(RT60_SECONDS), direct-to-reverberant energy ratio ~ U(DRR_DB); the reverberant
          signal is rescaled to the clean signal's RMS. A documented simple model rather than
          an image-source simulator (pyroomacoustics): one numpy expression, no dependency,
          and it is the late-reverberation model those simulators add to their early echoes.
  noise   a random stretch of a random clip of the noise manifest (Speech Commands'
          background noise), tiled when shorter, added at an SNR ~ U(SNR_DB) over the whole
          utterance.
  both    reverb, then noise.
Audio: read and written at 16 kHz mono (asr.audio; 16-bit PCM WAV, written atomically),
peak-limited to PEAK so that the 16-bit files do not clip. The copy keeps the utterance's
text, speaker and duration; its id is ``<id>-<kind>`` and its file
``<out manifest's folder>/<out manifest's stem>/<id>-<kind>.wav``. An unreadable utterance is
skipped, named in the summary's "problems", and never stops the others.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from asr.audio import SAMPLE_RATE, AudioError, load_audio, write_audio
from asr.manifest import read_manifest, write_manifest

KINDS = ("noise", "reverb", "both")
SNR_DB = (5.0, 20.0)  # additive-noise SNR range, dB
RT60_SECONDS = (0.2, 0.8)  # reverberation time range (a small room to a large hall)
DRR_DB = (-3.0, 10.0)  # direct-to-reverberant energy ratio range, dB
PRE_DELAY = 0.002  # s (32 samples at 16 kHz) between the direct path and the reverberant tail
PEAK = 0.99  # corrupted audio is scaled down when its peak exceeds this
RMS_FLOOR = 1e-8  # below this an utterance (or a noise stretch) counts as silent


class CorruptionError(ValueError):
    """A bad kind, a missing or empty noise manifest."""


def room_impulse_response(rng: np.random.Generator, rt60: float, drr_db: float,
                          sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """float32 [1 + PRE_DELAY * rate + rt60 * rate]: 1.0 (the direct path), then Gaussian noise
    decaying by 60 dB over ``rt60`` seconds, scaled so that the tail holds 10^(-drr_db / 10)
    of the direct path's energy."""
    delay = int(PRE_DELAY * sample_rate)
    n = max(1, int(rt60 * sample_rate))
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)  # ln(1000) = 6.9078: -60 dB at rt60
    tail *= np.sqrt(10 ** (-drr_db / 10) / max(np.sum(tail**2), RMS_FLOOR))
    return np.concatenate([[1.0], np.zeros(delay - 1), tail]).astype(np.float32)


def reverberate(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``audio`` [n] through ``rir``: float32 [n] (the tail past the end is cut, so the
    duration and the transcript's times stay), rescaled to ``audio``'s RMS."""
    from scipy.signal import fftconvolve

    out = fftconvolve(audio, rir)[: len(audio)]
    return (out * _rms(audio) / max(_rms(out), RMS_FLOOR)).astype(np.float32)


def add_noise(audio: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """``audio`` [n] plus a random stretch of ``noise`` (tiled when shorter than n) scaled to
    ``snr_db`` below the audio's RMS; float32 [n]. Silent audio or noise adds nothing."""
    reps = -(-len(audio) // len(noise)) + 1
    tiled = np.tile(noise, reps)
    start = int(rng.integers(0, len(tiled) - len(audio) + 1))
    piece = tiled[start : start + len(audio)]
    speech, level = _rms(audio), _rms(piece)
    if speech < RMS_FLOOR or level < RMS_FLOOR:
        return audio.astype(np.float32)
    return (audio + piece * (speech / level) * 10 ** (-snr_db / 20)).astype(np.float32)


def corrupt(audio: np.ndarray, kind: str, rng: np.random.Generator, noises: list[np.ndarray]) -> np.ndarray:
    """One corrupted copy of ``audio`` [n] (16 kHz): ``kind`` as in the module docstring."""
    out = audio
    if kind in ("reverb", "both"):
        rir = room_impulse_response(rng, float(rng.uniform(*RT60_SECONDS)), float(rng.uniform(*DRR_DB)))
        out = reverberate(out, rir)
    if kind in ("noise", "both"):
        noise = noises[int(rng.integers(len(noises)))]
        out = add_noise(out, noise, float(rng.uniform(*SNR_DB)), rng)
    peak = float(np.max(np.abs(out))) if len(out) else 0.0
    return out * (PEAK / peak) if peak > PEAK else out


def load_noises(noise_manifest) -> list[np.ndarray]:
    """The audio of every readable, non-silent clip of ``noise_manifest`` (16 kHz float32)."""
    noises = []
    for u in read_manifest(noise_manifest):
        try:
            audio = load_audio(u.audio)
        except AudioError:
            continue
        if len(audio) and _rms(audio) >= RMS_FLOOR:
            noises.append(audio)
    if not noises:
        raise CorruptionError(f"{noise_manifest}: no readable, non-silent noise clip")
    return noises


def corrupt_manifest(manifest, out_manifest, kind: str, noise_manifest=None, seed: int = 0,
                     progress: bool = True) -> dict:
    """Write a corrupted copy of every utterance of ``manifest`` and the manifest
    ``out_manifest`` listing them (module docstring). Returns {"written", "reused",
    "problems": ["id: reason", ...], "manifest"}."""
    from tqdm import tqdm

    if kind not in KINDS:
        raise CorruptionError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind != "reverb" and noise_manifest is None:
        raise CorruptionError(f"kind {kind!r} needs a noise manifest (--noise)")
    noises = load_noises(noise_manifest) if kind != "reverb" else []
    out_manifest = Path(out_manifest)
    audio_dir = out_manifest.parent / out_manifest.name.removesuffix(".jsonl")
    audio_dir.mkdir(parents=True, exist_ok=True)
    utts, problems, written, reused = [], [], 0, 0
    for i, u in enumerate(tqdm(read_manifest(manifest), desc=f"{kind} copies", unit="file", disable=None)):
        path = audio_dir / f"{u.id}-{kind}.wav"
        if path.exists():
            reused += 1
        else:
            try:
                audio = load_audio(u.audio)
            except AudioError as err:
                problems.append(f"{u.id}: {err}")
                continue
            write_audio(path, corrupt(audio, kind, np.random.default_rng([seed, i]), noises))
            written += 1
        utts.append(replace(u, id=f"{u.id}-{kind}", audio=str(path)))
    write_manifest(out_manifest, utts)
    return {"written": written, "reused": reused, "problems": problems, "manifest": str(out_manifest)}


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


# --------------------------------------------------------------------------- command line


def add_parser(sub) -> None:
    """The ``asr augment`` subcommand."""
    p = sub.add_parser("augment", help="write noisy / reverberant copies of a manifest's audio")
    p.add_argument("--manifest", required=True, type=Path, help="the utterances to copy")
    p.add_argument("--out", required=True, type=Path, help="manifest of the copies (their audio goes "
                   "to a folder of the same name beside it)")
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--noise", type=Path, default=None, help="noise manifest (Speech Commands' noise.jsonl)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    s = corrupt_manifest(args.manifest, args.out, args.kind, args.noise, args.seed)
    for problem in s["problems"]:
        print(f"warning: {problem} (left out)", file=sys.stderr)
    print(f"{args.kind} copies: {s['written']} written, {s['reused']} already there, "
          f"{len(s['problems'])} unreadable -> {s['manifest']}")
    return 0
