"""asr.evaluation: one scoring rule (``score``) for ``asr evaluate`` and the dev WER of training,
references normalized from the transcripts as written."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from asr.manifest import Utterance, write_manifest


def test_score_normalizes_the_references_as_written():
    from asr.evaluation import score

    rates = score(["Hello, World! It's $5.", "The 2nd of 3"], ["hello world it's five dollars", "the second of three"])
    assert rates["wer"] == 0.0 and rates["cer"] == 0.0
    assert rates["words"] == 9


def test_score_counts_characters_the_vocabulary_cannot_spell():
    """A reference's out-of-vocabulary word is an error the model made, not text to drop: decoding
    the reference back from label ids (which skip it) would score this pair as perfect."""
    from asr.evaluation import score

    rates = score(["caf\u00e9 \u65e5\u672c"], ["cafe"])
    assert rates["words"] == 2 and rates["deletions"] == 1 and rates["wer"] == 0.5


def test_score_ignores_stray_spaces_of_hypotheses():
    from asr.evaluation import score

    clean = score(["one two three"], ["one two tree"])
    assert score(["one two three"], ["  one  two tree "]) == clean
    assert clean["substitutions"] == 1 and clean["insertions"] == 0


def test_score_refuses_unequal_lengths():
    from asr.evaluation import score

    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        score(["a", "b"], ["a"])


def test_written_results_are_scored_on_normalized_references(tmp_path):
    from asr.evaluation import write_results

    summary = write_results(tmp_path, ["u1", "u2"], ["Seven, EIGHT!", "It costs $20."],
                            ["seven eight", "it costs twenty dollars "], [], {"model": "m"})
    assert summary["wer"] == 0.0 and summary["insertions"] == 0 and summary["words"] == 6
    rows = (tmp_path / "hyps.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[1:] == ["u1\tseven eight\tseven eight", "u2\tit costs twenty dollars\tit costs twenty dollars"]


def test_evaluate_scores_manifest_text_and_records_the_model_path(tmp_path, monkeypatch):
    import asr.transcription
    from asr.evaluation import evaluate

    manifest = tmp_path / "test.jsonl"
    write_manifest(manifest, [
        Utterance("a", str(tmp_path / "a.wav"), 1.0, "Room 101, please.", "s"),
        Utterance("b", str(tmp_path / "b.wav"), 1.0, "caf\u00e9 \u65e5\u672c", "s"),
    ])
    texts = {str(tmp_path / "a.wav"): " room one hundred and one  please", str(tmp_path / "b.wav"): "cafe"}
    recognizer = SimpleNamespace(transcribe_files=lambda paths, batch_size: [
        SimpleNamespace(error=None, text=texts[p]) for p in paths])
    monkeypatch.setattr(asr.transcription, "load_recognizer", lambda model: recognizer)
    monkeypatch.chdir(tmp_path)
    summary = evaluate("exp/model", manifest, tmp_path / "eval")
    assert summary["words"] == 8 and summary["word_errors"] == 1 and summary["deletions"] == 1
    assert summary["model"] == "exp/model" and summary["model_path"] == str((tmp_path / "exp" / "model").resolve())
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["wer"] == summary["wer"]


def test_evaluate_command_loads_the_model_once_for_several_manifests(tmp_path, monkeypatch, capsys):
    import asr.transcription
    from asr.cli import main

    for name, text in (("seen", "one"), ("unseen", "two")):
        write_manifest(tmp_path / "sets" / f"{name}.jsonl", [Utterance(name, str(tmp_path / f"{name}.wav"), 1.0, text, "s")])
    loads = []

    def load(model, decoding=None):
        loads.append(model)
        return SimpleNamespace(transcribe_files=lambda paths, batch_size: [SimpleNamespace(error=None, text="one") for _ in paths])

    monkeypatch.setattr(asr.transcription, "load_recognizer", load)
    sets = [str(tmp_path / "sets" / f"{n}.jsonl") for n in ("seen", "unseen")]
    assert main(["evaluate", "--model", "m", "--manifest", *sets, "--out", str(tmp_path / "eval"), "--decoder", "greedy"]) == 0
    assert len(loads) == 1
    assert json.loads((tmp_path / "eval" / "seen" / "summary.json").read_text())["wer"] == 0.0
    assert json.loads((tmp_path / "eval" / "unseen" / "summary.json").read_text())["wer"] == 1.0
    write_manifest(tmp_path / "other" / "seen.jsonl", [])
    assert main(["evaluate", "--model", "m", "--manifest", sets[0], str(tmp_path / "other" / "seen.jsonl"),
                 "--out", str(tmp_path / "eval2")]) == 2
    assert "several manifests named seen" in capsys.readouterr().err and len(loads) == 1
    assert main(["evaluate", "--model", "m", "--manifest", *sets, "--out", str(tmp_path / "eval" / "{stem}-lm")]) == 0
    assert (tmp_path / "eval" / "seen-lm" / "summary.json").is_file() and (tmp_path / "eval" / "unseen-lm" / "summary.json").is_file()


def _write_summary(folder, model, wer):
    from asr.evaluation import write_results

    refs = ["one two three four"]
    hyps = ["one two three four" if wer == 0 else "one two three"]
    return write_results(folder, ["u"], refs, hyps, [], {"model": model, "manifest": "test.jsonl"})


def test_results_tables_name_the_model_each_row_was_measured_on(tmp_path):
    """Rows are labelled by the model their summary records: the Keras model and its .tflite
    are told apart, and a row never passes for another model's."""
    from asr.report import eval_table, results_table

    _write_summary(tmp_path / "split" / "eval" / "test", "exp/split/model", 0)
    _write_summary(tmp_path / "split" / "eval-tflite" / "test", "exp/split/model.tflite", 0.25)
    _write_summary(tmp_path / "heldout" / "eval" / "test", "exp/heldout/model", 0.25)
    rows = results_table(tmp_path).splitlines()
    assert "| split | test | greedy | 0.00% | 0.00% | 4 | 1 | exp/split/model |" in rows
    assert "| split | test | greedy | 25.00% | 27.78% | 4 | 1 | exp/split/model.tflite |" in rows
    assert "| heldout | test | greedy | 25.00% | 27.78% | 4 | 1 | exp/heldout/model |" in rows
    table = eval_table(tmp_path / "split" / "eval", ["test", "missing"]).splitlines()
    assert "| test | greedy | 0.00% | 0.00% | 4 | 1 | exp/split/model |" in table
    assert "| missing | | not measured | not measured | | | |" in table


def test_results_tables_name_the_decoder_of_each_row(tmp_path):
    from asr.evaluation import write_results
    from asr.report import decoder_label, eval_table

    decoder = {"kind": "beam", "beam": 50, "lexicon": "lang/words.txt", "lm": "lang/3gram.arpa", "lm_weight": 1.5,
               "word_score": -1.0}
    write_results(tmp_path / "test-lm", ["u"], ["one two"], ["one two"], [],
                  {"model": "exp/model", "manifest": "test.jsonl", "decoder": decoder})
    assert decoder_label({"decoder": decoder}) == "beam 50, lexicon, LM x1.5, word score -1"
    assert decoder_label({}) == "greedy"
    assert "| test-lm | beam 50, lexicon, LM x1.5, word score -1 | 0.00% |" in eval_table(tmp_path)


def test_training_dev_wer_is_scored_like_evaluate(fsdd_dir, tmp_path):
    """The dev WER of training scores the same references as ``asr evaluate``: the transcripts
    as written (normalized), not labels decoded back, which lose what the vocabulary cannot spell."""
    import numpy as np
    import tensorflow as tf

    from asr.data import open_data
    from asr.evaluation import score
    from asr.training import dev_error_rates
    from conftest import tiny_config, write_fsdd_manifest

    config = tiny_config()
    manifest = write_fsdd_manifest(tmp_path / "dev.jsonl", fsdd_dir, ["0_jackson_0", "0_nicolas_0"], text="zero \u65e5\u672c")
    source = open_data([manifest], config, train=False, cache_dir=tmp_path / "cache")
    vocab = config.vocabulary
    path = [vocab.symbols.index(c) for c in "zero"]

    def forward(features, lengths):  # every utterance decodes to "zero"
        frames = int(tf.shape(features)[1]) // 4 + 1
        scores = np.full((int(tf.shape(features)[0]), frames, vocab.size), -10.0, np.float32)
        scores[:, :, vocab.blank] = 0.0
        for t, i in enumerate(path):
            scores[:, 2 * t, i] = 1.0
        return tf.constant(scores)

    dataset = source.dataset(None, config.training.batch_frames, config.training.max_batch_size)
    rates = dev_error_rates(forward, (dataset, source, vocab))
    expected = score(["zero \u65e5\u672c"] * 2, ["zero"] * 2)
    assert rates == expected and rates["wer"] == 0.5
