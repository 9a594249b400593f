"""Size and training-step time of a model config, with synthetic batches, printed and written as JSON.

    python benchmarks/train_step.py [--config models/configs/librispeech-960.yaml] [--vocab 501]
        [--utterances 16] [--seconds 15] [--steps 3] [--threads N] [--mixed-precision]
        [--out benchmarks/results/train_step.json]

Builds the network of ``--config`` with a ``--vocab``-symbol output (501: blank + 500 BPE
pieces), counts its parameters, and times the real training step of ``asr.training``
(CTC over true lengths, gradient clipping, Adam) on a synthetic batch of ``--utterances``
utterances of ``--seconds`` seconds (random log-mels; random labels, 15 per second of audio,
LibriSpeech's character rate). The first step (graph tracing) is reported apart; the figure
is the median of the next ``--steps``.

From it: the time of one 960 h epoch on this machine, and the training FLOPs per step
(analytic: 3x the forward multiply-adds of the convolutions, the LSTMs and the output layer),
which with a stated sustained throughput gives the GPU estimate used in the recipe README.
On a GPU machine it reports steps per second there, with and without --mixed-precision.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_CONFIG = ROOT / "models" / "configs" / "librispeech-960.yaml"
CORPUS_HOURS = 960.0  # LibriSpeech train-clean-100 + train-clean-360 + train-other-500
LABELS_PER_SECOND = 15  # LibriSpeech averages about 15 characters per second of speech


def forward_flops(config, frames: int, vocab: int) -> float:
    """Multiply-adds x 2 of one utterance of ``frames`` input frames through the network."""
    from asr.model import CONV_LAYERS, output_length

    m, f = config.model, config.features.n_mels
    flops, t, channels = 0.0, frames, 1
    for _ in range(CONV_LAYERS):
        t, f = (t + 1) // 2, (f + 1) // 2
        flops += 2 * t * f * m.conv_kernel**2 * channels * m.conv_channels
        channels = m.conv_channels
    t_out = output_length(frames)
    width = f * m.conv_channels
    directions, gates = (2 if m.bidirectional else 1), (4 if m.rnn == "lstm" else 3)
    for _ in range(m.lstm_layers):
        flops += 2 * directions * t_out * gates * m.lstm_units * (width + m.lstm_units)
        width = directions * m.lstm_units
    return flops + 2 * t_out * width * vocab


def synthetic_batch(config, utterances: int, seconds: float, vocab: int, seed: int = 0) -> dict:
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    frames = int(seconds * config.features.sample_rate / config.features.hop_length)
    labels = int(seconds * LABELS_PER_SECOND)
    return {
        "features": tf.constant(rng.standard_normal((utterances, frames, config.features.n_mels)), tf.float32),
        "feature_lengths": tf.fill([utterances], frames),
        "labels": tf.constant(rng.integers(1, vocab, (utterances, labels)), tf.int32),
        "label_lengths": tf.fill([utterances], labels),
    }


def time_steps(config, vocab: int, batch: dict, steps: int, mixed: bool) -> dict:
    import tensorflow as tf
    import tf_keras as keras

    from asr.model import build_model
    from asr.trainer import trainer_class

    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    net = build_model(config.model, config.features.n_mels, vocab)
    optimizer = keras.optimizers.Adam(1e-4, global_clipnorm=config.training.clip_norm)
    if mixed:
        optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
    trainer = trainer_class()(net, 0, config.training.grad_accum_steps)
    trainer.compile(optimizer=optimizer)
    step = tf.function(trainer.train_step)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = float(step(batch)["loss"])
        times.append(time.perf_counter() - start)
    keras.mixed_precision.set_global_policy("float32")
    return {"parameters": int(net.count_params()), "first_step_seconds": round(times[0], 3),
            "step_seconds": round(statistics.median(times[1:]), 3), "loss": round(loss, 3)}


def main(argv=None) -> int:
    import asr  # noqa: F401  (tf_keras before TensorFlow)

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--vocab", type=int, default=501, help="model outputs, blank included")
    p.add_argument("--utterances", type=int, default=16)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--mixed-precision", action="store_true")
    p.add_argument("--assumed-tflops", type=float, default=10.0,
                   help="sustained training TFLOP/s per GPU assumed for the estimate (not measured)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_step.json")
    args = p.parse_args(argv)
    args.config = args.config.resolve()

    from asr.config import load_config
    from asr.report import machine
    from asr.distribute import configure_threads

    configure_threads(args.threads)
    import tensorflow as tf

    config = load_config(args.config)
    batch = synthetic_batch(config, args.utterances, args.seconds, args.vocab)
    timing = time_steps(config, args.vocab, batch, args.steps, args.mixed_precision)
    frames = int(args.seconds * config.features.sample_rate / config.features.hop_length)
    step_flops = 3 * args.utterances * forward_flops(config, frames, args.vocab)
    audio_per_step = args.utterances * args.seconds
    steps_per_epoch = CORPUS_HOURS * 3600 / audio_per_step
    gpus = tf.config.list_physical_devices("GPU")
    result = {
        "config": str(args.config.relative_to(ROOT)) if args.config.is_relative_to(ROOT) else args.config.name,
        "vocab": args.vocab,
        "batch": {"utterances": args.utterances, "seconds_each": args.seconds, "frames_each": frames},
        "mixed_precision": args.mixed_precision,
        **timing,
        "steps_per_second": round(1 / timing["step_seconds"], 4),
        "train_tflop_per_step": round(step_flops / 1e12, 2),
        "achieved_tflops": round(step_flops / 1e12 / timing["step_seconds"], 3),
        "steps_per_960h_epoch": round(steps_per_epoch),
        "hours_per_960h_epoch_here": round(steps_per_epoch * timing["step_seconds"] / 3600, 1),
        "estimate": {
            "assumed_sustained_tflops_per_gpu": args.assumed_tflops,
            "gpu_hours_per_960h_epoch": round(steps_per_epoch * step_flops / (args.assumed_tflops * 1e12) / 3600, 2),
            "note": "an estimate from analytic FLOPs and an assumed throughput, not a measurement",
        },
        "device": f"GPU: {gpus[0].name}" if gpus else "CPU",
        "threads": args.threads or "all",
        "machine": machine(),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
