"""Publishing a model with its metrics: each metric must be an evaluation of the model being
published; results of another model go apart, under "reference_metrics", with what model they
belong to. The shipped FSDD model is checked for the same separation."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import REPO_ROOT

SHIPPED = REPO_ROOT / "models" / "fsdd"
SHIPPED_TFLITE = REPO_ROOT / "models" / "fsdd.tflite"


def summary(model, wer=0.1, **extra) -> dict:
    """An evaluation summary as asr.evaluation writes it (the headline keys)."""
    return {"wer": wer, "cer": wer / 2, "words": 100, "word_errors": int(100 * wer), "utterances": 50,
            "model": str(model), "manifest": "test.jsonl", **extra}


@pytest.fixture
def exp(tmp_path, monkeypatch):
    """A recipe-like folder, the working directory: exp/split/model and exp/heldout/model."""
    if not (SHIPPED / "model.json").is_file():
        pytest.skip("the shipped model is absent")
    for name in ("split", "heldout"):
        shutil.copytree(SHIPPED, tmp_path / "exp" / name / "model")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_metrics_of_the_published_model_are_kept(exp):
    from asr.checkpoint import publish_model, read_model_meta

    publish_model("exp/split/model", exp / "out", {"test": summary("exp/split/model", 0.02)})
    meta = read_model_meta(exp / "out")
    assert meta["metrics"] == {"test": {"wer": 0.02, "cer": 0.01, "words": 100, "word_errors": 2, "utterances": 50}}
    assert "reference_metrics" not in meta


def test_metrics_of_another_model_are_refused_in_one_line(exp):
    from asr.checkpoint import ModelDirError, publish_model

    with pytest.raises(ModelDirError) as err:
        publish_model("exp/split/model", exp / "out", {"test": summary("exp/split/model"),
                                                       "heldout_isolated": summary("exp/heldout/model", 0.4)})
    message = str(err.value)
    assert "\n" not in message
    assert "heldout_isolated" in message and "exp/heldout/model" in message and "--reference" in message
    assert not (exp / "out").exists()


def test_a_summary_naming_no_model_is_refused(exp):
    from asr.checkpoint import ModelDirError, publish_model

    with pytest.raises(ModelDirError, match="names no model"):
        publish_model("exp/split/model", exp / "out", {"test": {"wer": 0.1, "cer": 0.05}})


def test_the_resolved_model_path_matches_from_another_folder(exp, monkeypatch):
    from asr.checkpoint import publish_model, read_model_meta

    s = summary("model", model_path=str((exp / "exp" / "split" / "model").resolve()))
    monkeypatch.chdir(exp / "exp")
    publish_model("split/model", exp / "out", {"test": s})
    assert read_model_meta(exp / "out")["metrics"]["test"]["wer"] == 0.1


def test_references_are_stored_apart_with_their_model(exp):
    from asr.checkpoint import publish_model, read_model_meta

    publish_model("exp/split/model", exp / "out", {"test": summary("exp/split/model", 0.02)},
                  references={"heldout_isolated": summary("exp/heldout/model", 0.4)},
                  reference_note="trained without george")
    meta = read_model_meta(exp / "out")
    assert set(meta["metrics"]) == {"test"}
    assert meta["reference_metrics"] == {"heldout_isolated": {
        "model": "exp/heldout/model", "note": "trained without george",
        "wer": 0.4, "cer": 0.2, "words": 100, "word_errors": 40, "utterances": 50}}


def test_a_reference_of_the_published_model_itself_is_refused(exp):
    from asr.checkpoint import ModelDirError, publish_model

    with pytest.raises(ModelDirError, match="measured on exp/split/model itself; give it as metrics"):
        publish_model("exp/split/model", exp / "out", {}, references={"test": summary("exp/split/model")})


def test_cli_refuses_another_models_metrics_and_takes_them_as_references(exp, capsys):
    from asr.cli import main

    for name, model in (("split", "exp/split/model"), ("heldout", "exp/heldout/model")):
        (exp / f"{name}.json").write_text(json.dumps(summary(model)))
    args = ["publish", "--model", "exp/split/model", "--dest", "out", "--metrics", "test=split.json"]
    assert main(args + ["heldout=heldout.json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("asr publish: error: metrics heldout were measured on exp/heldout/model")
    assert not (exp / "out").exists()
    assert main(args + ["--reference", "heldout=heldout.json", "--reference-note", "without george"]) == 0
    meta = json.loads((exp / "out" / "model.json").read_text())
    assert set(meta["metrics"]) == {"test"}
    assert meta["reference_metrics"]["heldout"]["model"] == "exp/heldout/model"
    assert meta["reference_metrics"]["heldout"]["note"] == "without george"


def test_tflite_metrics_must_be_of_that_file(exp):
    from asr.checkpoint import ModelDirError
    from asr.runtime import read_metadata
    from export.metadata import publish_tflite

    if not SHIPPED_TFLITE.is_file():
        pytest.skip("the shipped .tflite is absent")
    shutil.copy(SHIPPED_TFLITE, exp / "exp" / "split" / "model.tflite")
    with pytest.raises(ModelDirError, match="measured on exp/split/model, not on exp/split/model.tflite"):
        publish_tflite("exp/split/model.tflite", exp / "out.tflite", {"test": summary("exp/split/model")})
    assert not (exp / "out.tflite").exists()
    publish_tflite("exp/split/model.tflite", exp / "out.tflite", {"test": summary("exp/split/model.tflite", 0.03)},
                   references={"keras": summary("exp/split/model", 0.02)})
    meta = read_metadata(exp / "out.tflite")
    assert meta["metrics"] == {"test": {"wer": 0.03, "cer": 0.015, "words": 100, "word_errors": 3, "utterances": 50}}
    assert meta["reference_metrics"]["keras"]["model"] == "exp/split/model"


EVAL_SETS = {"fsdd_seen", "fsdd_seen_connected", "fsdd_heldout", "fsdd_heldout_connected", "sc_digits", "sc_commands"}


def test_shipped_model_metrics_are_its_own():
    """Every metric of models/fsdd was measured on models/fsdd itself (recipes/fsdd/run.sh):
    the speakers it trained on, and voices it never heard (FSDD's george, the Speech Commands
    test speakers), greedy and with its lexicon and LM."""
    if not (SHIPPED / "model.json").is_file():
        pytest.skip("the shipped model is absent")
    meta = json.loads((SHIPPED / "model.json").read_text())
    assert set(meta["metrics"]) == EVAL_SETS | {f"{name}_lm" for name in EVAL_SETS}
    assert "reference_metrics" not in meta


def test_shipped_tflite_metrics_are_its_own():
    from asr.runtime import read_metadata

    if not SHIPPED_TFLITE.is_file():
        pytest.skip("the shipped .tflite is absent")
    meta = read_metadata(SHIPPED_TFLITE)
    assert set(meta["metrics"]) == EVAL_SETS
    assert "reference_metrics" not in meta
