"""The LibriSpeech recipe end to end, offline: a local HTTP mirror on 127.0.0.1 serves
LibriSpeech-layout .tar.gz archives (the real sample utterances plus generated digit speech),
their md5sum.txt lists and a mini SPEAKERS.TXT, and a miniature openslr resource 11 (upper-case
ARPA 3-gram and 4-gram estimated from the transcripts, vocabulary, lexicon, md5sum.txt);
recipes/librispeech/run.sh then downloads, prepares, builds tokens (BPE, then characters), writes
feature shards, trains a tiny model, averages checkpoints, evaluates four test sets, exports a
.tflite, downloads and prepares the LM, tunes the LM weight and word score on the dev set and
evaluates every test set with the tuned decoder: RESULTS.md has a greedy and an LM row per test
set. The commands are those of recipes/librispeech/README.md."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from http_server import FileServer
from librispeech_fixture import build_lm_layout, build_mirror

RUN = REPO_ROOT / "recipes" / "librispeech" / "run.sh"
PARTS = {"train-clean-5": 40, "dev-clean-2": 6, "dev-clean": 4, "dev-other": 4, "test-clean": 3, "test-other": 4}
TEST_SETS = "dev-clean dev-other test-clean test-other"
# Stages of run.sh (0-10), each skipped with "done already" on a re-run.
STAGES = 11
TINY_YAML = """\
model: {conv_channels: 8, lstm_layers: 1, lstm_units: 48, dropout: 0.0}
training:
  epochs: 3
  batch_frames: 3000
  max_batch_size: 16
  learning_rate: 0.005
  warmup_steps: 5
  speed_factors: [0.9, 1.0, 1.1]
  sortagrad: true
  pipeline: stream
  average_last: 2
  early_stop_patience: 100
"""


def run_recipe(*args, work: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    r = subprocess.run(["bash", str(RUN), "--work", str(work), *map(str, args)], capture_output=True, text=True,
                       env=env, timeout=900)
    assert r.returncode == 0, f"run.sh {' '.join(map(str, args))} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


@pytest.mark.slow
def test_recipe_offline_end_to_end(tmp_path, librispeech_dir, fsdd_dir):
    mirror = build_mirror(tmp_path / "mirror", PARTS, librispeech_dir, fsdd_dir)
    # The LM and its vocabulary from the training transcripts (digit words), plus two words the
    # LM text lacks: every letter of the vocabulary is then one the tiny BPE model can spell.
    train_texts = [mirror["texts"][u] for u in mirror["utterances"]["train-clean-5"]]
    lm_layout = build_lm_layout(tmp_path / "mirror", train_texts, extra_words=("SEVENTEEN", "FIFTEEN"))
    conf = tmp_path / "tiny.yaml"
    conf.write_text(TINY_YAML)
    work = tmp_path / "work"
    with FileServer(tmp_path / "mirror") as server:
        common = ["--base-url", server.url("").rstrip("/"), "--config", conf, "--train-sets", "train-clean-5",
                  "--dev-sets", "dev-clean-2", "--test-sets", TEST_SETS, "--nj", "2", "--avg", "2",
                  "--lm-weights", "0 1", "--word-scores", "0 1", "--beam", "8"]
        bpe = common + ["--tokens", "bpe", "--bpe-size", "40", "--shards", "true"]
        first = run_recipe(*bpe, work=work)
        requests = len(server.requests)

        # Stage by stage, the recipe's outputs.
        manifests = work / "data" / "manifests"
        for part, ids in mirror["utterances"].items():
            lines = [json.loads(x) for x in (manifests / f"{part}.jsonl").read_text().splitlines()]
            assert sorted(u["id"] for u in lines) == ids
        sample = json.loads((manifests / "test-clean.jsonl").read_text().splitlines()[0])
        assert sample["speaker"] and sample.get("gender") in ("M", "F")
        tokens = json.loads((work / "data" / "lang" / "bpe40.json").read_text())
        assert "bpe" in json.dumps(tokens)
        assert list((work / "data" / "shards").glob("*/index.json"))
        exp = work / "exp" / "mini-bpe"
        check_lm_and_results(work, exp, mirror, lm_layout)
        assert json.loads((exp / "avg-2" / "model.json").read_text())["averaged_epochs"] == [2, 3]
        assert (exp / "eval-tflite" / "dev-clean" / "summary.json").is_file()
        info = subprocess.run([str(REPO_ROOT / ".venv" / "bin" / "asr"), "info", str(exp / "model.tflite")],
                              capture_output=True, text=True, check=True)
        assert '"bpe"' in info.stdout
        wav = next((work / "data" / "corpus" / "LibriSpeech" / "test-clean").rglob("*.flac"))
        out = subprocess.run([str(REPO_ROOT / ".venv" / "bin" / "asr"), "transcribe", "--model",
                              str(exp / "model.tflite"), str(wav)], capture_output=True, text=True, check=True)
        assert out.stdout.startswith(str(wav) + "\t")

        # Re-running finished stages does nothing, says so, and makes no request.
        again = run_recipe(*bpe, work=work)
        assert again.stdout.count("done already") == STAGES, again.stdout
        assert len(server.requests) == requests
        assert "== stage 0 (download" in first.stdout and "== stage 7 (lm-download" in first.stdout

        # Characters, features on the fly: only the tokens, train, evaluate and export stages run.
        chars = run_recipe(*common, "--tokens", "chars", "--stage", "2", work=work)
        assert (work / "data" / "lang" / "chars.json").is_file()
        assert (work / "exp" / "mini-chars" / "model.tflite").is_file()
        assert "done already" not in chars.stdout.split("== stage 3")[0]
        assert "== stage 7 (lm-download-3gram): done already" in chars.stdout
        check_lm_and_results(work, work / "exp" / "mini-chars", mirror, lm_layout)


def check_lm_and_results(work: Path, exp: Path, mirror: dict, lm_layout: dict) -> None:
    """The LM files, the tuned decoder, the LM evaluations and RESULTS.md's two rows per set."""
    lm_dir = work / "data" / "lm"
    for name in ("3-gram.pruned.1e-7.arpa.gz", "librispeech-vocab.txt", "librispeech-lexicon.txt"):
        assert (lm_dir / "download" / name).read_bytes() == (lm_layout["folder"] / name).read_bytes()
    arpa = (lm_dir / "3-gram.pruned.1e-7.arpa").read_text()
    assert arpa.startswith("\\data\\") and "one" in arpa.split() and "ONE" not in arpa.split()
    assert (lm_dir / "lexicon.txt").read_text().split() == [w.lower() for w in lm_layout["words"]]
    decoder = json.loads((exp / "decoder-3gram" / "decoder.json").read_text())
    assert decoder["kind"] == "beam" and decoder["lm_weight"] in (0, 1) and decoder["word_score"] in (0, 1)
    assert (exp / "decoder-3gram" / "tuning.json").is_file()
    rows = [line for line in (exp / "RESULTS.md").read_text().splitlines() if line.startswith("|")]
    for name in TEST_SETS.split():
        greedy = json.loads((exp / "eval" / name / "summary.json").read_text())
        beam = json.loads((exp / "eval" / f"{name}-3gram" / "summary.json").read_text())
        assert greedy["utterances"] == beam["utterances"] == len(mirror["utterances"][name])
        assert beam["decoder"]["kind"] == "beam" and beam["decoder"]["lm_weight"] == decoder["lm_weight"]
        for set_name, summary, kind in ((name, greedy, "greedy"), (f"{name}-3gram", beam, "beam")):
            row = [r for r in rows if r.startswith(f"| {set_name} |")]
            assert len(row) == 1, (set_name, rows)
            assert f"{100 * summary['wer']:.2f}%" in row[0] and kind in row[0], row[0]
