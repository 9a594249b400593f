"""Where training runs: the tf.distribute strategy and TensorFlow's CPU threads.

``make_strategy(distribute)`` picks TensorFlow's own strategy: ``MultiWorkerMirroredStrategy``
when ``TF_CONFIG`` names a cluster, ``MirroredStrategy`` over the local GPUs when there are
several, else the default strategy. ``configure_threads`` limits the CPU threads. Both must run
before TensorFlow does any work.
"""
from __future__ import annotations

import json
import logging
import os

import asr  # noqa: F401  (selects tf_keras before TensorFlow loads)

log = logging.getLogger(__name__)
DISTRIBUTE = ("auto", "none", "mirrored", "multi-worker")  # choices of make_strategy / train(distribute=...)


def make_strategy(distribute: str = "auto"):
    """The tf.distribute strategy for ``distribute`` (one of DISTRIBUTE) and this worker's
    index (0 = chief). auto: multi-worker when TF_CONFIG names more than one task, mirrored
    when there are several GPUs, else TensorFlow's default strategy. Must run before
    TensorFlow does any work (TF_CONFIG and thread settings are read at creation)."""
    import tensorflow as tf

    if distribute not in DISTRIBUTE:
        raise ValueError(f"distribute must be one of {', '.join(DISTRIBUTE)}, got {distribute!r}")
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}")
    tasks = sum(len(v) for v in cluster.get("cluster", {}).values())
    if distribute == "multi-worker" and tasks < 1:
        raise ValueError("distribute=multi-worker needs TF_CONFIG with the cluster and this task (see the recipe README)")
    if distribute == "multi-worker" or (distribute == "auto" and tasks > 1):
        task = cluster.get("task", {})
        index = int(task.get("index", 0))
        # The chief is task "chief", or worker 0 when the cluster has no chief.
        if task.get("type") == "chief":
            index = 0
        elif "chief" in cluster.get("cluster", {}):
            index += 1
        return tf.distribute.MultiWorkerMirroredStrategy(), index
    gpus = tf.config.list_logical_devices("GPU")
    if distribute == "mirrored" or (distribute == "auto" and len(gpus) > 1):
        # Every GPU; without one, every logical CPU device (one, unless the process split the
        # CPU with tf.config.set_logical_device_configuration, as the tests do).
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices), 0
    return tf.distribute.get_strategy(), 0


def configure_threads(threads: int | None) -> None:
    """Limit TensorFlow's CPU threads (None: all cores). Must run before TF does any work."""
    if not threads:
        return
    import tensorflow as tf

    if tf.config.threading.get_intra_op_parallelism_threads() == threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already ran something in this process: keep its threads
        log.warning("TensorFlow is already initialized; its thread counts stay as they are")
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)
