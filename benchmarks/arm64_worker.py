"""The arm64 half of benchmarks/arm64.py: runs inside the emulated arm64 root, never on the host.

    chroot ROOT env PYTHONPATH=/opt/litert:/opt/asr python3 /opt/asr/worker.py /opt/asr/job

benchmarks/arm64.py copies this file to ROOT/opt/asr/worker.py and prepares JOB:
    model.tflite   the model under test
    files.json     ["name", ...], one per utterance, in order
    input.npz      pcm_0000 float32 [num_samples] per utterance (and x86_0000, the host's log-probs)
It writes back:
    output.npz     arm_0000 float32 [frames, vocab] per utterance
    output.json    {"transcripts": [...], "environment": {...}}

Only the standard library, numpy, ai-edge-litert and asr.runtime are available here
(Debian's python3 and python3-numpy, the arm64 LiteRT wheel on PYTHONPATH).
"""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from asr.runtime import TFLiteModel, decode_text, is_streaming, read_metadata
from asr.streaming import StreamingModel

NUM_THREADS = 1  # one interpreter thread: the same kernels and reduction order as the x86 run


def cpu_info() -> dict:
    """What qemu tells the guest about its CPU: /proc/cpuinfo's first 'Features' and 'CPU part' lines."""
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("Features", "CPU implementer", "CPU part") and key not in info:
                info[key] = value.strip()
    except OSError as err:
        info["error"] = str(err)
    return info


def environment() -> dict:
    from importlib import metadata

    try:
        litert = metadata.version("ai-edge-litert")
    except metadata.PackageNotFoundError:
        litert = "unknown"
    return {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "ai_edge_litert": litert,
        "cpuinfo": cpu_info(),
    }


def main(job: Path) -> int:
    names = json.loads((job / "files.json").read_text())
    kind = StreamingModel if is_streaming(read_metadata(job / "model.tflite")) else TFLiteModel  # chunk by chunk
    model = kind(job / "model.tflite", num_threads=NUM_THREADS)
    outputs, transcripts = {}, []
    with np.load(job / "input.npz") as data:
        for i, name in enumerate(names):
            pcm = data[f"pcm_{i:04d}"]
            start = time.perf_counter()
            log_probs = model.log_probs(pcm)
            seconds = time.perf_counter() - start
            outputs[f"arm_{i:04d}"] = log_probs
            transcripts.append(decode_text(log_probs, model.symbols, model.blank, model.word_boundary))
            x86 = data[f"x86_{i:04d}"]
            diff = float(np.abs(log_probs - x86).max()) if log_probs.shape == x86.shape else float("nan")
            print(f"  arm64 [{i + 1}/{len(names)}] {name}: {log_probs.shape[0]} frames, "
                  f"max |diff| vs x86 {diff:.2e}, {seconds:.2f} s emulated", flush=True)
    np.savez(job / "output.npz", **outputs)
    (job / "output.json").write_text(json.dumps({"transcripts": transcripts, "environment": environment()}, indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 worker.py JOB_DIR")
    sys.exit(main(Path(sys.argv[1])))
