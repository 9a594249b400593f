"""The LibriSpeech recipe end to end, offline: a local HTTP mirror on 127.0.0.1 serves
LibriSpeech-layout .tar.gz archives (the real sample utterances plus generated digit speech),
their md5sum.txt lists and a mini SPEAKERS.TXT; recipes/librispeech/run.sh then downloads,
prepares, builds tokens (BPE, then characters), writes feature shards, trains a tiny model,
averages checkpoints, evaluates four test sets into RESULTS.md and exports a .tflite, running
the commands of recipes/librispeech/README.md."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from http_server import FileServer
from librispeech_fixture import build_mirror

RUN = REPO_ROOT / "recipes" / "librispeech" / "run.sh"
PARTS = {"train-clean-5": 40, "dev-clean-2": 6, "dev-clean": 4, "dev-other": 4, "test-clean": 3, "test-other": 4}
TEST_SETS = "dev-clean dev-other test-clean test-other"
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
    conf = tmp_path / "tiny.yaml"
    conf.write_text(TINY_YAML)
    work = tmp_path / "work"
    with FileServer(tmp_path / "mirror") as server:
        common = ["--base-url", server.url("").rstrip("/"), "--config", conf, "--train-sets", "train-clean-5",
                  "--dev-sets", "dev-clean-2", "--test-sets", TEST_SETS, "--nj", "2", "--avg", "2"]
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
        results = (exp / "RESULTS.md").read_text()
        for name in TEST_SETS.split():
            summary = json.loads((exp / "eval" / name / "summary.json").read_text())
            assert summary["utterances"] == len(mirror["utterances"][name])
            assert f"| {name} | {100 * summary['wer']:.2f}% | {100 * summary['cer']:.2f}% |" in results
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
        assert again.stdout.count("done already") == 7, again.stdout
        assert len(server.requests) == requests
        assert "== stage 0 (download" in first.stdout

        # Characters, features on the fly: only the tokens, train, evaluate and export stages run.
        chars = run_recipe(*common, "--tokens", "chars", "--stage", "2", work=work)
        assert (work / "data" / "lang" / "chars.json").is_file()
        assert (work / "exp" / "mini-chars" / "model.tflite").is_file()
        assert "done already" not in chars.stdout.split("== stage 3")[0]
