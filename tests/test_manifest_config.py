"""asr.manifest (JSONL manifests) and asr.config (YAML + overrides)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from asr.config import ConfigError, ExperimentConfig, TrainConfig, config_diff, load_config
from asr.features import FeatureSpec
from asr.manifest import ManifestError, Utterance, read_manifest, write_manifest
from asr.model import ModelConfig
from asr.text import Vocabulary

# ================================================================ manifests


def make_audio_files(folder: Path, names) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        p = folder / name
        p.write_bytes(b"RIFF")  # only existence matters to the manifest
        paths.append(p)
    return paths


def write_lines(path: Path, lines) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def entry(uid: str, audio: str = "a.wav", **extra) -> str:
    d = {"id": uid, "audio": audio, "duration": 1.5, "text": "one two"}
    d.update(extra)
    return json.dumps(d)


@pytest.fixture
def utterances(tmp_path) -> list[Utterance]:
    audio = make_audio_files(tmp_path / "data" / "wavs", ["a.wav", "b.wav", "ñ 音.wav"])
    return [
        Utterance("a", str(audio[0]), 1.25, "one two", "george"),
        Utterance("b", str(audio[1]), 0.5, "three"),
        Utterance("ü", str(audio[2]), 2.0, "don't stop", "yweweler"),
    ]


def test_manifest_round_trip_with_relative_paths(tmp_path, utterances):
    path = tmp_path / "data" / "lists" / "train.jsonl"
    write_manifest(path, utterances)
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [d["audio"] for d in raw] == [str(Path("..") / "wavs" / Path(u.audio).name) for u in utterances]
    assert all(not Path(d["audio"]).is_absolute() for d in raw)
    back = read_manifest(path, check_audio=True)
    assert [(u.id, u.duration, u.text, u.speaker) for u in back] == [
        (u.id, u.duration, u.text, u.speaker) for u in utterances
    ]
    assert [Path(u.audio).resolve() for u in back] == [Path(u.audio).resolve() for u in utterances]
    assert all(Path(u.audio).is_absolute() for u in back)


def test_manifest_survives_moving_the_folder(tmp_path, utterances):
    write_manifest(tmp_path / "data" / "train.jsonl", utterances)
    moved = tmp_path / "elsewhere"
    (tmp_path / "data").rename(moved)
    back = read_manifest(moved / "train.jsonl", check_audio=True)
    assert [Path(u.audio).name for u in back] == [Path(u.audio).name for u in utterances]
    assert all(Path(u.audio).is_relative_to(moved) for u in back)


def test_manifest_absolute_paths_when_asked(tmp_path, utterances):
    path = tmp_path / "abs.jsonl"
    write_manifest(path, utterances, relative=False)
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [d["audio"] for d in raw] == [u.audio for u in utterances]
    assert read_manifest(path) == utterances


def test_manifest_skips_blank_lines_and_defaults_speaker(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", ["", entry("a"), "   ", entry("b", speaker="s1"), ""])
    back = read_manifest(path)
    assert [(u.id, u.speaker) for u in back] == [("a", ""), ("b", "s1")]
    assert back[0].audio == str(tmp_path.resolve() / "a.wav")


def test_manifest_write_is_atomic_and_leaves_no_temp_file(tmp_path, utterances):
    path = tmp_path / "m.jsonl"
    write_manifest(path, utterances)
    write_manifest(path, utterances[:1])
    assert len(read_manifest(path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["m.jsonl"]


@pytest.mark.parametrize(
    "lines, bad_line, words",
    [
        ([entry("a"), "{not json"], 2, ["not valid JSON"]),
        ([entry("a"), "", '{"id": "b", "audio": "b.wav"}'], 3, ["missing key", "duration", "text"]),
        ([entry("a"), entry("b"), entry("a")], 3, ["duplicate id", "'a'"]),
    ],
    ids=["bad-json", "missing-keys", "duplicate-id"],
)
def test_manifest_errors_name_file_and_line(tmp_path, lines, bad_line, words):
    path = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{bad_line}: ")
    for word in words:
        assert word in message


def test_manifest_missing_audio_only_checked_when_asked(tmp_path):
    make_audio_files(tmp_path, ["a.wav"])
    path = write_lines(tmp_path / "m.jsonl", [entry("a", "a.wav"), entry("b", "gone.wav")])
    assert len(read_manifest(path)) == 2
    with pytest.raises(ManifestError) as info:
        read_manifest(path, check_audio=True)
    message = str(info.value)
    assert message.startswith(f"{path}:2: ")
    assert "audio file not found" in message and "gone.wav" in message and "'b'" in message


def test_manifest_not_found(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("line", ["42", "null"])
def test_manifest_non_object_line_is_a_manifest_error(tmp_path, line):
    path = write_lines(tmp_path / "m.jsonl", [entry("a"), line])
    with pytest.raises(ManifestError, match=rf"^{path}:2: "):
        read_manifest(path)


def test_manifest_bad_duration_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", [entry("a"), entry("b", duration="long")])
    with pytest.raises(ValueError) as info:
        read_manifest(path)
    assert isinstance(info.value, ManifestError) and str(info.value).startswith(f"{path}:2: ")


# ================================================================ configs


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults():
    cfg = load_config()
    assert cfg == ExperimentConfig()
    assert cfg.features == FeatureSpec() and cfg.model == ModelConfig()
    assert cfg.training == TrainConfig() and cfg.vocabulary == Vocabulary()


def test_yaml_then_overrides(tmp_path):
    path = write_yaml(
        tmp_path / "exp.yaml",
        {"training": {"epochs": 10, "learning_rate": 0.002}, "model": {"lstm_units": 64}, "features": {"fmax": 7000}},
    )
    cfg = load_config(
        path, ["training.epochs=3", "features.fmax=4000", "training.speed_factors=0.9,1.0", "model.dropout=0.1"]
    )
    assert cfg.training.epochs == 3 and type(cfg.training.epochs) is int  # override beats YAML
    assert cfg.training.learning_rate == 0.002  # YAML kept where not overridden
    assert cfg.features.fmax == 4000.0 and isinstance(cfg.features.fmax, float)
    assert cfg.training.speed_factors == (0.9, 1.0)
    assert cfg.model.lstm_units == 64 and cfg.model.dropout == 0.1
    # everything else stays at its default
    assert cfg.training.batch_frames == TrainConfig().batch_frames
    assert cfg.features.n_mels == FeatureSpec().n_mels


def test_yaml_lists_become_tuples(tmp_path):
    cfg = load_config(write_yaml(tmp_path / "c.yaml", {"training": {"speed_factors": [1, 1.1]}}))
    assert cfg.training.speed_factors == (1.0, 1.1)
    assert all(type(f) is float for f in cfg.training.speed_factors)


@pytest.mark.parametrize(
    "override, check",
    [
        ("features.fmax=none", lambda c: c.features.fmax is None),
        ("features.normalization=global", lambda c: c.features.normalization == "global"),
        ("training.speed_factors=1.0", lambda c: c.training.speed_factors == (1.0,)),
        ("training.learning_rate=3e-4", lambda c: c.training.learning_rate == 3e-4),
        ("vocabulary.blank=5", lambda c: c.vocabulary.blank == 5),
        ("model.conv_channels=8", lambda c: c.model.conv_channels == 8),
    ],
)
def test_override_types(override, check):
    assert check(load_config(overrides=[override]))


def test_empty_yaml_is_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == ExperimentConfig()


@pytest.mark.parametrize(
    "data, words",
    [
        ({"trainin": {"epochs": 3}}, ["unknown section", "trainin"]),
        ({"training": {"epoch": 3}}, ["unknown key", "epoch", "training"]),
        ({"features": {"n_fft": 500}}, ["bad value", "features", "power of two"]),
        ({"training": [1, 2]}, ["training", "mapping"]),
    ],
)
def test_yaml_errors(tmp_path, data, words):
    with pytest.raises(ConfigError) as info:
        load_config(write_yaml(tmp_path / "bad.yaml", data))
    for word in words:
        assert word in str(info.value)


def test_yaml_top_level_must_be_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write_yaml(tmp_path / "list.yaml", [1, 2]))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "override, words",
    [
        ("training.epoch=3", ["unknown key", "'epoch'"]),
        ("optimizer.lr=3", ["optimizer.lr=3", "section.key=value"]),
        ("epochs=3", ["epochs=3", "section.key=value"]),
        ("training.epochs", ["training.epochs", "section.key=value"]),
        ("training.epochs=many", ["cannot parse", "training.epochs=many"]),
        ("training.epochs=3.5", ["cannot parse", "training.epochs=3.5"]),
        ("features.n_fft=500", ["bad value", "power of two"]),
    ],
)
def test_override_errors_name_the_key(override, words):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    for word in words:
        assert word in str(info.value)


def test_override_into_empty_yaml_section(tmp_path):
    """An empty section (YAML null) means no overrides; a command-line key still applies."""
    path = tmp_path / "c.yaml"
    path.write_text("training:\n")
    config = load_config(path, ["training.epochs=3"])
    assert config.training.epochs == 3
    assert config.training.learning_rate == TrainConfig().learning_rate


@pytest.mark.parametrize("data", [{"features": {"fmax": "four"}}, {"training": {"epochs": "3"}}])
def test_yaml_wrong_value_type_is_a_config_error(tmp_path, data):
    with pytest.raises(ConfigError):
        load_config(write_yaml(tmp_path / "c.yaml", data))


def test_config_diff_lists_changed_keys():
    base = ExperimentConfig().to_dict()
    changed = load_config(overrides=["training.epochs=3", "features.fmax=4000", "model.lstm_units=64"]).to_dict()
    assert config_diff(base, changed) == [
        "features.fmax: None -> 4000.0",
        "model.lstm_units: 128 -> 64",
        "training.epochs: 40 -> 3",
    ]
    assert config_diff(base, base) == []


def test_config_diff_added_and_removed_keys():
    assert config_diff({"a": {"x": 1}}, {"a": {"x": 1, "y": 2}, "b": 3}) == ["a.y: None -> 2", "b: None -> 3"]
    assert config_diff({"a": 1}, {}) == ["a: 1 -> None"]


def test_experiment_config_dict_round_trip():
    cfg = ExperimentConfig(
        features=FeatureSpec(fmax=4000.0, normalization="global"),
        model=ModelConfig(lstm_units=64, lstm_layers=3),
        training=TrainConfig(epochs=7, speed_factors=(0.95, 1.05)),
        vocabulary=Vocabulary(chars="abc ", blank=4),
    )
    d = cfg.to_dict()
    assert ExperimentConfig.from_dict(d) == cfg
    # and through JSON (tuples become lists) and YAML
    assert ExperimentConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert ExperimentConfig.from_dict(yaml.safe_load(yaml.safe_dump(d))) == cfg


def test_saved_config_reloads_through_load_config(tmp_path):
    cfg = load_config(overrides=["training.epochs=3", "training.speed_factors=0.9,1.0"])
    assert load_config(write_yaml(tmp_path / "saved.yaml", cfg.to_dict())) == cfg
