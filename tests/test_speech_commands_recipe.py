"""The Speech Commands recipe end to end, offline: a v0.02-layout archive of real clips
(tests/speech_commands_fixture.py, with its own speaker-hashed validation and test lists) served
from 127.0.0.1; recipes/speech_commands/run.sh downloads it (a corrupt archive is refused and
nothing is extracted; a cut connection resumes), prepares speaker-disjoint manifests, writes
noisy copies, trains a tiny model, evaluates it (greedy and with the word lexicon) and exports a
.tflite that transcribes a clip."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from asr.corpora import speech_commands as sc
from asr.manifest import read_manifest

try:  # tests/ as a package or as a plain folder on sys.path
    from tests.conftest import DATA_DIR, REPO_ROOT, _require
    from tests.http_server import FileServer
    from tests.speech_commands_fixture import build_archive
except ImportError:
    from conftest import DATA_DIR, REPO_ROOT, _require
    from http_server import FileServer
    from speech_commands_fixture import build_archive

RUN = REPO_ROOT / "recipes" / "speech_commands" / "run.sh"
ASR = REPO_ROOT / ".venv" / "bin" / "asr"
WORDS = ("yes", "no", "up")
# test_speech_commands.py's speakers: at (13, 3) which_set puts two in dev, one in test, three in train
SPEAKERS = ("189cbabe", "1b4c9b89", "1acc97de", "18f8afd5", "0cb74144", "03401e93")
PERCENTAGES = (13, 3)
STAGES = 6
TINY_YAML = """\
features: {normalization: utterance}
model: {conv_channels: 8, lstm_layers: 1, lstm_units: 32, dropout: 0.0}
training: {epochs: 2, batch_frames: 3000, max_batch_size: 16, learning_rate: 0.005, warmup_steps: 2,
           pipeline: stream, average_last: 1, early_stop_patience: 100}
"""


def run_recipe(*args, work: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    r = subprocess.run(["bash", str(RUN), "--work", str(work), *map(str, args)], capture_output=True,
                       text=True, env=env, timeout=900)
    if check:
        assert r.returncode == 0, f"run.sh {' '.join(map(str, args))} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


@pytest.mark.slow
def test_recipe_offline_end_to_end(tmp_path):
    source = _require(DATA_DIR / "speech-commands")
    built = build_archive(source, tmp_path / "built" / sc.ARCHIVE_NAME, WORDS, SPEAKERS, noise=3,
                          validation_percentage=PERCENTAGES[0], testing_percentage=PERCENTAGES[1])
    www = tmp_path / "www"
    www.mkdir()
    served = www / sc.ARCHIVE_NAME
    corrupt = bytearray(built["path"].read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF
    served.write_bytes(bytes(corrupt))
    conf = tmp_path / "tiny.yaml"
    conf.write_text(TINY_YAML)
    work = tmp_path / "work"
    with FileServer(www) as server:
        args = ["--url", server.url(sc.ARCHIVE_NAME), "--sha256", built["sha256"], "--config", conf,
                "--augment", "noise"]
        bad = run_recipe(*args, work=work, check=False)  # a corrupt archive: refused, nothing extracted
        assert bad.returncode != 0 and "sha256 mismatch" in bad.stdout + bad.stderr
        assert not (work / "data" / "download" / sc.CORPUS_FOLDER).exists()
        assert not (work / "exp" / ".done-download").exists()

        shutil.copyfile(built["path"], served)
        server.clear_log()
        server.cut_after(built["size"] // 3)  # the connection drops once: the download resumes
        first = run_recipe(*args, work=work)
        assert server.statuses == [200, 206] and server.ranges[1] == f"bytes={built['size'] // 3}-"

        m = work / "data" / "manifests"
        summary = json.loads((m / "prepare.json").read_text())
        assert summary["split_source"] == "lists" and summary["speaker_overlap"] == {}
        speakers = {s: {json.loads(x)["speaker"] for x in (m / f"{s}.jsonl").read_text().splitlines()}
                    for s in ("train", "dev", "test")}
        assert all(speakers.values())
        assert not (speakers["train"] & speakers["dev"] or speakers["train"] & speakers["test"]
                    or speakers["dev"] & speakers["test"])
        copies = (work / "data" / "copies" / "train_noise.jsonl").read_text().splitlines()
        assert len(copies) == summary["utterances"]["train"]
        exp = work / "exp" / "model"
        for name in ("eval/test", "eval/test-lexicon", "eval-tflite/test"):
            result = json.loads((exp / name / "summary.json").read_text())
            assert result["words"] == summary["utterances"]["test"]
        assert json.loads((exp / "eval" / "test-lexicon" / "summary.json").read_text())["decoder"]["kind"] == "beam"
        results = (work / "exp" / "RESULTS.md").read_text()
        assert "eval-tflite" in results or "tflite" in results
        clip = read_manifest(m / "test.jsonl")[0].audio
        out = subprocess.run([str(ASR), "transcribe", "--model", str(exp / "model.tflite"), clip],
                             capture_output=True, text=True, check=True)
        word = out.stdout.split("\t")[1].strip()
        assert word in WORDS + ("",)  # the lexicon the .tflite carries allows nothing else

        requests = len(server.requests)
        again = run_recipe(*args, work=work)
        assert again.stdout.count("done already") == STAGES and len(server.requests) == requests
        assert "== stage 0 (download)" in first.stdout
