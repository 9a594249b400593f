"""Model selection: the metric that picks the best epoch, stops early and decides averaging is a
config choice (training.selection: dev_loss or dev_wer), and training without a dev set says so."""
from __future__ import annotations

import json

import pytest

from conftest import tiny_config, write_fsdd_manifest

DIGITS = [f"{d}_jackson_0" for d in range(4)]


def test_selection_is_a_config_choice_checked_on_load():
    from asr.config import ConfigError, load_config

    assert load_config(None).training.selection == "dev_loss"
    assert load_config(None, ["training.selection=dev_wer"]).training.selection == "dev_wer"
    with pytest.raises(ConfigError, match="selection must be one of dev_loss, dev_wer"):
        load_config(None, ["training.selection=accuracy"])
    with pytest.raises(ConfigError, match="dev_wer_every"):
        load_config(None, ["training.selection=dev_wer", "training.dev_wer_every=2"])


def test_selection_score_ranks_by_wer_then_loss():
    from asr.training import selection_score

    a = {"dev_loss": 3.0, "dev_wer": 0.10}
    b = {"dev_loss": 2.0, "dev_wer": 0.20}
    c = {"dev_loss": 2.5, "dev_wer": 0.10}
    assert selection_score(b, "dev_loss") < selection_score(a, "dev_loss")
    assert selection_score(a, "dev_wer") < selection_score(b, "dev_wer")
    assert selection_score(c, "dev_wer") < selection_score(a, "dev_wer")  # equal WER: lower loss wins


def test_config_saved_before_selection_existed_still_resumes(tmp_path):
    """An experiment folder whose config.json predates a new key resumes (the key takes its default)."""
    from asr.training import _check_config

    config = tiny_config()
    old = config.to_dict()
    del old["training"]["selection"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    _check_config(tmp_path, config)  # no ConfigError


@pytest.mark.slow
def test_best_epoch_follows_dev_wer_when_selected(fsdd_dir, tmp_path, capsys):
    from asr.distribute import configure_threads
    from asr.training import train

    configure_threads(1)
    train_m = write_fsdd_manifest(tmp_path / "train.jsonl", fsdd_dir, DIGITS, copies=4)
    dev_m = write_fsdd_manifest(tmp_path / "dev.jsonl", fsdd_dir, DIGITS)
    config = tiny_config("training.epochs=6", "training.selection=dev_wer", "training.average_last=3")
    model = train(config, [train_m], [dev_m], tmp_path / "exp")
    history = [json.loads(x) for x in (tmp_path / "exp" / "train.log").read_text().splitlines()]
    assert all("dev_wer" in line for line in history)
    expected = min(history, key=lambda e: (e["dev_wer"], e["dev_loss"]))["epoch"]
    best = json.loads((tmp_path / "exp" / "best" / "model.json").read_text())
    assert best["epoch"] == expected and best["selection"] == "dev_wer"
    averaged = json.loads((tmp_path / "exp" / "averaged" / "model.json").read_text())
    assert "dev_wer" in averaged["dev"]  # the average is judged by WER too
    out = capsys.readouterr().out
    assert "-> EXP/model is the" in out and "dev WER" in out
    assert (model / "model.json").is_file()


@pytest.mark.slow
def test_training_without_dev_set_says_what_it_selects_on(fsdd_dir, tmp_path, capsys):
    from asr.distribute import configure_threads
    from asr.training import train

    configure_threads(1)
    train_m = write_fsdd_manifest(tmp_path / "train.jsonl", fsdd_dir, DIGITS, copies=2)
    train(tiny_config("training.epochs=2", "training.average_last=2"), [train_m], [], tmp_path / "exp")
    out = capsys.readouterr().out
    assert "no dev set" in out and "TRAINING loss" in out
    assert "train loss (no dev set)" in out
    best = json.loads((tmp_path / "exp" / "best" / "model.json").read_text())
    assert best["selection"] == "train_loss"
