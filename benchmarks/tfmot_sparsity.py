"""Pruning and weight clustering with tfmot, for the benchmark (benchmarks/tfmot.py), each
fine-tuned by tfmot_finetuning.run_technique and written as a model directory.

    prune    magnitude pruning: Conv2D and Dense through tfmot's registry, each Bidirectional
             LSTM through PrunableBidirectional (forward and backward kernels and recurrent
             kernels); sparsity ramps 0 -> target over the first PRUNE_RAMP of the fine-tuning
             steps (PolynomialDecay), then stays; the wrappers are stripped.
    cluster  weight clustering of the whole model (cluster_weights: Conv2D, Dense and both
             LSTM directions), fine-tuned, then strip_clustering: at most ``clusters`` distinct
             values per kernel.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from benchmarks.tfmot_finetuning import DEFAULT_EPOCHS, OptimizeError, plain_copy, run_technique

PRUNE_SPARSITY = 0.5  # share of zeros in every pruned kernel
PRUNE_RAMP = 0.6  # sparsity reaches its target after this share of the fine-tuning steps
PRUNE_UPDATES = 8  # mask updates during the ramp (PolynomialDecay frequency = ramp / this)
CLUSTERS = 16  # distinct values per clustered kernel (4-bit indices)


# ----------------------------------------------------------------------------- pruning


@functools.lru_cache(maxsize=None)
def prunable_bidirectional_class():
    """keras.layers.Bidirectional that is also a tfmot PrunableLayer (created once)."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    class PrunableBidirectional(keras.layers.Bidirectional, tfmot.sparsity.keras.PrunableLayer):
        """A Bidirectional RNN whose forward and backward kernels [in, 4 * units] and recurrent
        kernels [units, 4 * units] are pruned; biases are not."""

        def get_prunable_weights(self):
            return [
                getattr(direction.cell, name)
                for direction in (self.forward_layer, self.backward_layer)
                for name in ("kernel", "recurrent_kernel")
            ]

    return PrunableBidirectional


def prune_schedule(total_steps: int, sparsity: float = PRUNE_SPARSITY):
    """PolynomialDecay from 0 to ``sparsity``: up to PRUNE_UPDATES mask updates over the first
    PRUNE_RAMP of ``total_steps`` (at least one step), the last one exactly at the ramp's end,
    so the target is reached even in a short run."""
    import tensorflow_model_optimization as tfmot

    ramp = max(1, int(PRUNE_RAMP * total_steps))
    updates = min(PRUNE_UPDATES, ramp)
    frequency = ramp // updates
    return tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=sparsity, begin_step=0, end_step=frequency * updates,
        frequency=frequency,
    )


def prune_wrap(net, schedule):
    """Copy of ``net`` with Conv2D, Dense and Bidirectional layers in PruneLowMagnitude
    wrappers (named prune_low_magnitude_<layer>), weights kept. Other layers are shared."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    prune = functools.partial(tfmot.sparsity.keras.prune_low_magnitude, pruning_schedule=schedule)
    rebuilt = {}

    def wrap(layer):
        if isinstance(layer, keras.layers.Bidirectional):
            rebuilt[layer.name] = layer  # a new PrunableBidirectional: weights copied below
            return prune(prunable_bidirectional_class().from_config(layer.get_config()))
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            return prune(layer)
        return layer

    model = keras.models.clone_model(net, clone_function=wrap)
    for name, original in rebuilt.items():
        model.get_layer(f"prune_low_magnitude_{name}").layer.set_weights(original.get_weights())
    return model


def _strip_pruning(config, wrapped):
    import tensorflow_model_optimization as tfmot

    return plain_copy(config, tfmot.sparsity.keras.strip_pruning(wrapped))


def prune(model_dir, train_manifests, dev_manifests, out_dir, sparsity: float = PRUNE_SPARSITY,
          epochs: int = DEFAULT_EPOCHS, cache_dir=None) -> Path:
    """Magnitude-prune ``model_dir`` to ``sparsity`` while fine-tuning ``epochs`` passes over
    ``train_manifests``; write a plain model directory to ``out_dir`` and return it."""
    import tensorflow_model_optimization as tfmot

    if not 0.0 < sparsity < 1.0:
        raise OptimizeError(f"sparsity must be between 0 and 1, got {sparsity}")
    out, _ = run_technique(
        "prune", model_dir, train_manifests, dev_manifests, out_dir, epochs, cache_dir,
        {"sparsity": sparsity, "schedule": "PolynomialDecay", "ramp": PRUNE_RAMP},
        wrap=lambda net, data, total: prune_wrap(net, prune_schedule(total, sparsity)),
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
        unwrap=_strip_pruning,
    )
    return out


def prunable_kernels(net) -> dict[str, np.ndarray]:
    """The kernels pruning touches, by "<layer>/<weight>": conv and logits kernels, each LSTM
    direction's kernel [in, 4 * units] and recurrent kernel [units, 4 * units]."""
    import tf_keras as keras

    out = {}
    for layer in net.layers:
        if isinstance(layer, keras.layers.Bidirectional):
            for side, direction in (("forward", layer.forward_layer), ("backward", layer.backward_layer)):
                out[f"{layer.name}/{side}/kernel"] = direction.cell.kernel.numpy()
                out[f"{layer.name}/{side}/recurrent_kernel"] = direction.cell.recurrent_kernel.numpy()
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            out[f"{layer.name}/kernel"] = layer.kernel.numpy()
    return out


def sparsity_report(net) -> dict[str, float]:
    """Share of exact zeros in each of ``prunable_kernels(net)``."""
    return {name: float(np.mean(w == 0)) for name, w in prunable_kernels(net).items()}


# ----------------------------------------------------------------------------- clustering


def cluster_wrap(net, clusters: int = CLUSTERS):
    """tfmot.clustering.keras.cluster_weights on every Conv2D, Dense and Bidirectional layer
    (k-means++ centroids); those layers become cluster_<layer>. Layer by layer, not on the
    whole model: tfmot's registry does not know the model's length-masked batch norm (it has
    nothing to cluster), and whole-model wrapping refuses unknown layers."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    ck = tfmot.clustering.keras
    kinds = (keras.layers.Conv2D, keras.layers.Dense, keras.layers.Bidirectional)

    def wrap(layer):
        if isinstance(layer, kinds):
            return ck.cluster_weights(layer, number_of_clusters=clusters,
                                      cluster_centroids_init=ck.CentroidInitialization.KMEANS_PLUS_PLUS)
        return layer.__class__.from_config(layer.get_config())

    wrapped = keras.models.clone_model(net, clone_function=wrap)
    for layer in wrapped.layers:  # clone_model makes new weights: copy the trained ones
        source = net.get_layer(layer.name.removeprefix("cluster_"))
        target = layer.layer if layer.name.startswith("cluster_") else layer
        target.set_weights(source.get_weights())
    return wrapped


def _strip_clustering(config, wrapped):
    import tensorflow_model_optimization as tfmot

    return plain_copy(config, tfmot.clustering.keras.strip_clustering(wrapped))


def cluster(model_dir, train_manifests, dev_manifests, out_dir, clusters: int = CLUSTERS,
            epochs: int = DEFAULT_EPOCHS, cache_dir=None) -> Path:
    """Cluster every kernel of ``model_dir`` to ``clusters`` values, fine-tune the centroids
    ``epochs`` passes, strip; write a plain model directory to ``out_dir`` and return it."""
    if clusters < 2:
        raise OptimizeError(f"clusters must be at least 2, got {clusters}")
    out, _ = run_technique(
        "cluster", model_dir, train_manifests, dev_manifests, out_dir, epochs, cache_dir,
        {"clusters": clusters, "init": "KMEANS_PLUS_PLUS"},
        wrap=lambda net, data, total: cluster_wrap(net, clusters),
        callbacks=[],
        unwrap=_strip_clustering,
    )
    return out


def unique_values(net) -> dict[str, int]:
    """Distinct values in each of ``prunable_kernels(net)``."""
    return {name: int(np.unique(w).size) for name, w in prunable_kernels(net).items()}
