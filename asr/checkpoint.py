"""Model directories and training checkpoints, each written atomically.

A model directory, what ``asr transcribe --model`` and ``asr evaluate`` take:
    model.json   {"format", "version", "asr_version", "config": ExperimentConfig.to_dict(),
                  "normalization_stats": GlobalStats or null, "corpus", "metrics", ...}
                 "metrics" are this model's own results, each checked at publishing to be an
                 evaluation of this model; results of other models (for comparison) live apart
                 under "reference_metrics": {name: {"model": what was evaluated, "note", ...}}.
    weights.h5   tf_keras weights of the model built with ``with_lengths=True``

A training checkpoint ``epoch-NNNN/``: ``state.json`` (epoch, best dev loss, early-stop
counter) plus a tf.train.Checkpoint of the network and the optimizer (slots, step count).
Each is written into a temporary folder and renamed into place, so a kill never leaves a
half-written one.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from asr import __version__
from asr.config import ExperimentConfig
from asr.features import GlobalStats

MODEL_FORMAT = "asr-keras-model"
MODEL_FORMAT_VERSION = 1
MODEL_JSON = "model.json"
WEIGHTS = "weights.h5"
REFERENCE_KEY = "reference_metrics"  # results of OTHER models, kept apart from this model's "metrics"


class ModelDirError(ValueError):
    pass


def replace_dir(tmp: Path, final: Path) -> None:
    """Move folder ``tmp`` to ``final``, replacing what was there, never leaving neither."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def write_json(path: Path, data) -> None:
    """Write JSON atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def save_model_dir(path, config: ExperimentConfig, net, stats: GlobalStats | None, **info) -> Path:
    """Write a model directory for ``net`` (built with_lengths=True). ``info`` (corpus,
    metrics, epoch, ...) is stored in model.json."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    net.save_weights(str(tmp / WEIGHTS))
    meta = {
        "format": MODEL_FORMAT,
        "version": MODEL_FORMAT_VERSION,
        "asr_version": __version__,
        "config": config.to_dict(),
        "normalization_stats": stats.to_dict() if stats is not None else None,
        **info,
    }
    write_json(tmp / MODEL_JSON, meta)
    replace_dir(tmp, path)
    return path


def read_model_meta(path) -> dict:
    """model.json of a model directory, checked for format; raises ModelDirError."""
    path = Path(path)
    meta_path = path / MODEL_JSON
    if not path.is_dir():
        raise ModelDirError(f"{path}: model directory not found")
    if not meta_path.is_file() or not (path / WEIGHTS).is_file():
        raise ModelDirError(f"{path}: not a model directory (needs {MODEL_JSON} and {WEIGHTS})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ModelDirError(f"{meta_path}: corrupt ({err.msg})") from None
    if meta.get("format") != MODEL_FORMAT:
        raise ModelDirError(f"{meta_path}: unknown format {meta.get('format')!r}")
    return meta


def load_model_dir(path):
    """Returns (config, stats, meta, net); net is the tf_keras model built with_lengths=True."""
    from asr.model import build_model

    meta = read_model_meta(path)
    config = ExperimentConfig.from_dict(meta["config"])
    stats = GlobalStats.from_dict(meta["normalization_stats"]) if meta.get("normalization_stats") else None
    net = build_model(config.model, config.features.n_mels, config.vocabulary.size)
    net.load_weights(str(Path(path) / WEIGHTS))
    return config, stats, meta, net


def checkpoint_dirs(ckpt_root: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.glob("epoch-*") if p.is_dir() and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(ckpt_root: Path, epoch: int, net, optimizer, state: dict, keep: int) -> Path:
    """Write checkpoint ``epoch-{epoch}`` atomically and keep only the newest ``keep``."""
    import tensorflow as tf

    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"epoch-{epoch:04d}"
    tmp = ckpt_root / f".epoch-{epoch:04d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tf.train.Checkpoint(net=net, optimizer=optimizer).write(str(tmp / "ckpt"))
    write_json(tmp / "state.json", state)
    replace_dir(tmp, final)
    for old in checkpoint_dirs(ckpt_root)[:-keep]:
        shutil.rmtree(old)
    return final


def average_checkpoints(ckpt_dirs: list[Path], net) -> None:
    """Set ``net``'s weights (BatchNorm statistics included) to their mean over the
    checkpoints in ``ckpt_dirs``."""
    import numpy as np
    import tensorflow as tf

    total = None
    for d in ckpt_dirs:
        tf.train.Checkpoint(net=net).read(str(d / "ckpt")).expect_partial()
        weights = net.get_weights()
        total = weights if total is None else [t + w for t, w in zip(total, weights)]
    net.set_weights([np.asarray(t / len(ckpt_dirs), dtype=t.dtype) for t in total])


def average_experiment(exp_dir, last: int, out) -> tuple[Path, list[int]]:
    """Model directory ``out`` holding the mean of the newest ``last`` epoch checkpoints of
    experiment ``exp_dir`` (asr.training's layout: config.json, checkpoints/epoch-NNNN).
    Normalization statistics and corpus come from the experiment's best/ model. Returns
    (out, averaged epoch numbers). Raises ModelDirError when there is nothing to average."""
    from asr.model import build_model

    exp_dir = Path(exp_dir)
    if last < 1:
        raise ModelDirError(f"--last must be at least 1, got {last}")
    ckpts = checkpoint_dirs(exp_dir / "checkpoints")
    if not ckpts or not (exp_dir / "config.json").is_file():
        raise ModelDirError(f"{exp_dir}: no finished epoch checkpoints to average (is it an asr train folder?)")
    if len(ckpts) < last:
        print(f"{exp_dir}: only {len(ckpts)} checkpoint(s) kept, averaging those", flush=True)
    ckpts = ckpts[-last:]
    config = ExperimentConfig.from_dict(json.loads((exp_dir / "config.json").read_text()))
    meta = read_model_meta(exp_dir / "best") if (exp_dir / "best").is_dir() else {}
    stats = GlobalStats.from_dict(meta["normalization_stats"]) if meta.get("normalization_stats") else None
    net = build_model(config.model, config.features.n_mels, config.vocabulary.size)
    average_checkpoints(ckpts, net)
    epochs = [int(d.name.split("-")[1]) for d in ckpts]
    save_model_dir(out, config, net, stats, corpus=meta.get("corpus", ""), epoch=epochs[-1], averaged_epochs=epochs)
    return Path(out), epochs


def restore_checkpoint(ckpt_dir: Path, net, optimizer) -> dict:
    """Restore network and optimizer state; returns the checkpoint's state.json."""
    import tensorflow as tf

    tf.train.Checkpoint(net=net, optimizer=optimizer).read(str(ckpt_dir / "ckpt")).expect_partial()
    return json.loads((ckpt_dir / "state.json").read_text())


def metric_summary(metrics: dict) -> dict:
    """The headline numbers of evaluation summaries: {name: {wer, cer, words, utterances}}."""
    keep = ("wer", "cer", "words", "word_errors", "utterances")
    return {name: {k: s[k] for k in keep if k in s} for name, s in metrics.items()}


def _evaluated(summary: dict) -> Path | None:
    """The model an evaluation summary was measured on (asr.evaluation records "model" as given
    and "model_path" resolved), resolved; None when it names none."""
    path = summary.get("model_path") or summary.get("model")
    return Path(path).resolve() if path else None


def own_metrics(metrics: dict, model) -> dict:
    """``metric_summary`` of ``metrics`` (name -> evaluation summary) once each is checked to be
    an evaluation of ``model`` (a model directory or a .tflite). ModelDirError, one line, for a
    summary of another model or of none."""
    target = Path(model).resolve()
    for name, summary in metrics.items():
        evaluated = _evaluated(summary)
        if evaluated is None:
            raise ModelDirError(f"metrics {name}: the summary names no model, so it cannot be shown to be {model}'s")
        if evaluated != target:
            raise ModelDirError(f"metrics {name} were measured on {summary.get('model', evaluated)}, not on {model}; "
                                f"give another model's result as a reference (--reference {name}=SUMMARY.json)")
    return metric_summary(metrics)


def reference_metrics(references: dict, model, note: str = "") -> dict:
    """Results of other models, for comparison: {name: {"model": the evaluated model as its
    summary names it, "note" (when given), "wer", "cer", ...}}. ModelDirError for a summary of
    ``model`` itself (its results belong in the metrics) or of no model."""
    target = Path(model).resolve()
    out = {}
    for name, summary in references.items():
        evaluated = _evaluated(summary)
        if evaluated is None:
            raise ModelDirError(f"reference {name}: the summary names no model")
        if evaluated == target:
            raise ModelDirError(f"reference {name} was measured on {model} itself; give it as metrics")
        out[name] = {"model": summary.get("model", str(evaluated)), **({"note": note} if note else {}), **metric_summary({name: summary})[name]}
    return out


def publish_model(src, dest, metrics: dict, references: dict | None = None, reference_note: str = "") -> Path:
    """Copy model directory ``src`` to ``dest`` (atomically), adding ``metrics`` (name -> an
    evaluation summary of ``src``: ``own_metrics`` checks it) to its model.json, and
    ``references`` (name -> a summary of another model) under REFERENCE_KEY with
    ``reference_note``. Nothing is written when a summary is refused."""
    src, dest = Path(src), Path(dest)
    meta = read_model_meta(src)
    meta["metrics"] = own_metrics(metrics, src)
    meta.pop(REFERENCE_KEY, None)
    if references:
        meta[REFERENCE_KEY] = reference_metrics(references, src, reference_note)
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    write_json(tmp / MODEL_JSON, meta)
    replace_dir(tmp, dest)
    return dest
