"""Experiment configuration: frozen dataclasses, overridden by a YAML file, then by a few
``section.key=value`` pairs from the command line. No code is evaluated from configs.

YAML layout (every key optional; unknown keys are errors):
    features: {fmax: 4000, normalization: utterance, ...}   -> FeatureSpec
    model:    {lstm_units: 128, ...}                        -> ModelConfig
    training: {epochs: 40, ...}                             -> TrainConfig
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from asr.features import FeatureSpec
from asr.model import ModelConfig
from asr.text import Vocabulary

PIPELINES = ("memory", "stream")  # TrainConfig.pipeline; shard folders as training data always stream
SELECTIONS = ("dev_loss", "dev_wer")  # TrainConfig.selection
MAX_VTLP_WARP = 0.5  # TrainConfig.vtlp_warp must be below this (warp factors stay in (0.5, 1.5))
DIFF_MAX = 80  # config_diff prints values whose repr is longer than this shortened ...
DIFF_SHOWN = 40  # ... to their first this many characters and their length


@dataclass(frozen=True)
class TrainConfig:
    """Optimization and data-pipeline settings."""

    epochs: int = 40
    batch_frames: int = 12000  # padded input frames per batch (120 s of audio)
    max_batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 300
    final_lr_ratio: float = 0.05  # cosine decay ends at learning_rate * this
    clip_norm: float = 5.0
    early_stop_patience: int = 8  # epochs without a better selection metric
    seed: int = 1234
    speed_factors: tuple[float, ...] = (0.9, 1.0, 1.1)
    freq_masks: int = 2
    freq_mask_width: int = 10
    time_masks: int = 2
    time_mask_fraction: float = 0.05  # each time mask covers at most this share of frames
    # Vocal-tract-length perturbation as a mel-axis warp (asr.data.augment.mel_warp): each
    # training utterance's factor is drawn from [1 - vtlp_warp, 1 + vtlp_warp] (0: off).
    vtlp_warp: float = 0.0
    max_duration: float = 30.0  # seconds; longer training utterances are skipped and counted
    dev_wer_every: int = 1  # epochs
    average_last: int = 1  # average the weights of this many last epochs (1: no averaging)
    buckets: int = 8  # length buckets of the batching (frame-count quantiles of the training set)
    sortagrad: bool = False  # first epoch in order of length (shortest first), then shuffled buckets
    grad_accum_steps: int = 1  # micro-batches whose gradients are summed per optimizer step
    pipeline: str = "memory"  # memory: log-mels cached and held in RAM; stream: computed on the fly
    # The dev metric that picks the best epoch, stops early and decides whether the average of
    # the last epochs replaces the best one: dev_loss (CTC) or dev_wer (ties: the lower dev loss).
    selection: str = "dev_loss"

    def __post_init__(self):
        object.__setattr__(self, "speed_factors", tuple(float(f) for f in self.speed_factors))
        if not self.speed_factors or min(self.speed_factors) <= 0:
            raise ValueError(f"speed_factors must be one or more positive numbers, got {self.speed_factors}")
        if self.buckets < 1:
            raise ValueError(f"buckets must be >= 1, got {self.buckets}")
        if not 0.0 <= self.vtlp_warp < MAX_VTLP_WARP:
            raise ValueError(f"vtlp_warp must be in [0, {MAX_VTLP_WARP}), got {self.vtlp_warp}")
        if self.grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        if self.pipeline not in PIPELINES:
            raise ValueError(f"pipeline must be one of {', '.join(PIPELINES)}, got {self.pipeline!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        if self.selection == "dev_wer" and self.dev_wer_every != 1:
            raise ValueError(f"selection dev_wer needs the dev WER of every epoch (dev_wer_every: 1, got {self.dev_wer_every})")


@dataclass(frozen=True)
class ExperimentConfig:
    features: FeatureSpec = field(default_factory=FeatureSpec)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    vocabulary: Vocabulary = field(default_factory=Vocabulary)

    def to_dict(self) -> dict:
        return {
            "features": asdict(self.features),
            "model": asdict(self.model),
            "training": _jsonable(asdict(self.training)),
            # chars: {chars, blank} (as before BPE existed); bpe: {blank, pieces, sp_model}
            "vocabulary": self.vocabulary.to_dict(derived=False),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ExperimentConfig":
        return cls(
            features=_build(FeatureSpec, d.get("features", {}), "features"),
            model=_build(ModelConfig, d.get("model", {}), "model"),
            training=_build(TrainConfig, d.get("training", {}), "training"),
            vocabulary=_build_vocabulary(d.get("vocabulary", {})),
        )


SECTIONS = {"features": FeatureSpec, "model": ModelConfig, "training": TrainConfig, "vocabulary": Vocabulary}


class ConfigError(ValueError):
    pass


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d))


def _build(cls, values: dict | None, section: str):
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(f"config section {section!r} must be a mapping")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) in {section!r}: {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    values = {k: _check_type(cls, k, v, section) for k, v in values.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"bad value in {section!r}: {err}") from None


def _build_vocabulary(values: dict | None) -> Vocabulary:
    """The vocabulary section: Vocabulary.from_dict checks its keys and values (its pieces are
    a list of strings, which _check_type does not handle)."""
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError("config section 'vocabulary' must be a mapping")
    try:
        return Vocabulary.from_dict(values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"bad value in 'vocabulary': {err}") from None


def _check_type(cls, key: str, value, section: str):
    """``value`` from YAML, checked against the field's annotation (ints pass as floats)."""
    hint = typing.get_type_hints(cls)[key]
    args = typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    if typing.get_origin(hint) is tuple:
        if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
            return tuple(float(v) for v in value)
    else:
        allowed = tuple(t for t in (args or (hint,)) if isinstance(t, type) and t is not type(None))
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed):
            return value
    raise ConfigError(f"{section}.{key}: {value!r} is not a valid {hint}")


def _parse_value(cls, key: str, text: str):
    """Cast a command-line string to the type of field ``key`` of ``cls``."""
    hints = typing.get_type_hints(cls)
    hint = hints[key]
    origin = typing.get_origin(hint)
    if text.lower() in ("none", "null") and type(None) in typing.get_args(hint):
        return None
    if origin is tuple:
        return tuple(float(v) for v in text.split(",") if v)
    for t in (int, float, bool):
        if hint is t or t in typing.get_args(hint):
            if t is bool:
                return text.lower() in ("1", "true", "yes")
            return t(text)
    return text


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Defaults, then the YAML file at ``path``, then ``section.key=value`` overrides."""
    import yaml

    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)} (known: {', '.join(SECTIONS)})")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in SECTIONS:
            raise ConfigError(f"override {item!r} must look like section.key=value, section one of {', '.join(SECTIONS)}")
        cls = SECTIONS[section]
        if name not in {f.name for f in dataclasses.fields(cls)}:
            raise ConfigError(f"unknown key {name!r} in override {item!r}")
        if data.get(section) is None:
            data[section] = {}
        try:
            data[section][name] = _parse_value(cls, name, value)
        except ValueError:
            raise ConfigError(f"cannot parse value in override {item!r}") from None
    return ExperimentConfig.from_dict(data)


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two nested config dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        name = f"{prefix}{key}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, name + ".")
        elif va != vb:
            out.append(f"{name}: {_shorten(va)} -> {_shorten(vb)}")
    return out


def _shorten(value) -> str:
    """repr(value), cut to its first DIFF_SHOWN characters plus its length when longer than
    DIFF_MAX (a BPE model's base64 or piece list would fill the screen)."""
    text = repr(value)
    return text if len(text) <= DIFF_MAX else f"{text[:DIFF_SHOWN]}... ({len(text)} chars)"
