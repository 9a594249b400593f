"""Log-mels of a list of utterances, computed in parallel processes and cached on disk.

``compute_features(utts, spec, factors, cache_dir)`` returns the un-normalized log-mels
[frames, n_mels] of every utterance at every speed factor. The cache holds one .npz per factor:
    data     float32 [total_frames, n_mels]   every utterance's log-mels, concatenated
    lengths  int64   [num_utterances]         frames of each (-1: unreadable audio)
    errors   object  [num_errors]             "id: reason" of the unreadable ones

Its file name is a hash of the cache version, the FeatureSpec, the factor and, per utterance,
the id, audio path, the audio file's size and modification time (ns), the duration and the
text: audio regenerated at the same path gets new features. A cached file is also checked
against the manifest durations on reading (frames = 1 + samples // hop at the speed factor,
within FRAME_TOLERANCE); one that disagrees is recomputed, with a warning. Files are written
to a temporary name unique to the writer (several training processes may share a cache folder)
and renamed atomically.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from asr.audio import AudioError, load_audio
from asr.data.augment import speed_perturb
from asr.features import FeatureSpec, log_mel
from asr.manifest import Utterance

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: content-keyed (file size, mtime, duration, text); 1 keyed on id and path only
FRAME_TOLERANCE = (2, 0.01)  # cached frames may differ from the manifest duration's by 2 + 1%
PARALLEL_MIN_FILES = 50  # fewer files are computed in this process


def _features_for_file(args):
    """Worker: (audio path, spec dict, factors) -> list of log-mels, or an error string."""
    path, spec_dict, factors = args
    spec = FeatureSpec(**spec_dict)
    try:
        audio = load_audio(path, spec.sample_rate)
    except AudioError as err:
        return str(err)
    return [log_mel(speed_perturb(audio, f, spec.sample_rate), spec) for f in factors]


def _file_stamp(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def cache_key(utts: list[Utterance], spec: FeatureSpec, factor: float) -> str:
    """16 hex digits naming the cache file of ``utts`` at ``factor`` (module docstring)."""
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, spec.to_dict(), factor]).encode())
    stamps: dict[str, str] = {}
    for u in utts:
        stamp = stamps.setdefault(u.audio, _file_stamp(u.audio))
        h.update(json.dumps([u.id, u.audio, stamp, repr(u.duration), u.text]).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def expected_frames(utts: list[Utterance], spec: FeatureSpec, factor: float) -> np.ndarray:
    """int64 [num_utterances]: frames of each utterance's audio played ``factor`` times faster,
    from the manifest durations."""
    samples = np.array([int(round(u.duration * spec.sample_rate / factor)) for u in utts], np.int64)
    return spec.num_frames(samples)


def compute_features(
    utts: list[Utterance], spec: FeatureSpec, factors, cache_dir: Path | None, workers: int | None = None
) -> tuple[list[list[np.ndarray] | None], list[str]]:
    """Un-normalized log-mels of every utterance at every speed factor.

    Returns (feats, errors): feats[i] is a list (one [frames, n_mels] per factor) or None when
    the audio was unreadable; errors lists "id: reason" for those. Cached in ``cache_dir``
    (module docstring), so a second run, or a killed run's rerun, reads them back.
    """
    factors = list(factors)
    cache_dir = Path(cache_dir) if cache_dir else None
    paths = {f: cache_dir / f"feats-{cache_key(utts, spec, f)}.npz" for f in factors} if cache_dir else {}
    if cache_dir and all(p.exists() for p in paths.values()):
        cached = _read_cache(paths, factors, utts, spec)
        if cached is not None:
            return cached
    from tqdm import tqdm

    workers = workers or max(1, min(os.cpu_count() or 1, 8))
    unique = list(dict.fromkeys(u.audio for u in utts))  # a file listed twice is computed once
    jobs = [(path, spec.to_dict(), factors) for path in unique]
    desc = f"features x{len(factors)}"
    if workers > 1 and len(jobs) > PARALLEL_MIN_FILES:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            done = list(tqdm(pool.map(_features_for_file, jobs, chunksize=16), total=len(jobs), desc=desc, leave=False, disable=None))
    else:
        done = [_features_for_file(j) for j in tqdm(jobs, desc=desc, leave=False, disable=None)]
    by_path = dict(zip(unique, done))
    results = [by_path[u.audio] for u in utts]
    feats = [r if isinstance(r, list) else None for r in results]
    errors = [f"{u.id}: {r}" for u, r in zip(utts, results) if isinstance(r, str)]
    if cache_dir:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for k, f in enumerate(factors):
            write_cache(paths[f], [x[k] if x is not None else None for x in feats], errors)
    return feats, errors


def write_cache(path: Path, arrays: list, errors: list[str]) -> None:
    """One cache file: ``arrays`` ([frames, n_mels] or None per utterance) and ``errors``,
    through a temporary file unique to this call, renamed atomically."""
    lengths = np.array([-1 if a is None else a.shape[0] for a in arrays], np.int64)
    data = np.concatenate([a for a in arrays if a is not None] or [np.zeros((0, 1), np.float32)])
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".{os.getpid()}.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, data=data, lengths=lengths, errors=np.array(errors, dtype=object))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_cache(paths: dict, factors: list, utts: list[Utterance], spec: FeatureSpec):
    """(feats, errors) as compute_features returns them, or None when a file does not match
    the utterances (count, or frames against the manifest durations)."""
    n = len(utts)
    per_factor = []
    errors: list[str] = []
    for f in factors:
        try:
            with np.load(paths[f], allow_pickle=True) as z:
                data, lengths = z["data"], z["lengths"]
                errors = list(z["errors"])
        except (OSError, ValueError, KeyError) as err:
            log.warning("feature cache %s is unreadable (%s): recomputing", paths[f], err)
            return None
        expected = expected_frames(utts, spec, f)
        slack = FRAME_TOLERANCE[0] + FRAME_TOLERANCE[1] * expected
        if len(lengths) != n or np.any((lengths >= 0) & (np.abs(lengths - expected) > slack)):
            log.warning("feature cache %s does not match the manifest durations: recomputing", paths[f])
            return None
        offsets = np.concatenate([[0], np.cumsum(np.maximum(lengths, 0))])
        per_factor.append([None if lengths[i] < 0 else data[offsets[i] : offsets[i + 1]] for i in range(n)])
    feats = [None if per_factor[0][i] is None else [pf[i] for pf in per_factor] for i in range(n)]
    return feats, errors
