#!/usr/bin/env bash
# Free Spoken Digit Dataset recipe: download -> prepare -> train -> evaluate -> publish.
#
#   recipes/fsdd/run.sh [--data-dir DIR] [--stage N] [--stop-stage N]
#
# --data-dir DIR   use an existing copy (a folder holding recordings/) instead of downloading
# Stages: 0 download, 1 prepare, 2 train (the dataset's own split: all five speakers),
#         3 evaluate: greedy, then a digit bigram LM from the training transcripts (asr lm), its
#           weight and the word score tuned on dev (asr tune), and beam search with the digit
#           lexicon and that LM, 4 export (dynamic-int8 .tflite carrying the lexicon and LM,
#           evaluated too), 5 publish to models/local/
#         (git-ignored; asr transcribe prefers it to the shipped models/fsdd*).
#         Each stage writes exp/.done-<stage> and is skipped when that marker exists; training
#         and the feature cache resume after a kill.
# The model trained without one speaker (accuracy on a voice it has never heard) and the
# choice of the selection metric are measured by benchmarks/selection.py, not here.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
stage=0
stop_stage=5
data_dir=""
. "$root/recipes/stages.sh"
recipe_option() {
  case $1 in
    --data-dir) data_dir=$(cd "$2" && pwd) ;;
    *) return 1 ;;
  esac
}
parse_options "$@"
"$root/tools/setup.sh"
asr="$root/.venv/bin/asr"
conf="$root/models/configs/fsdd.yaml"
cd "$here"
mkdir -p exp data

download() {
  if [ -n "$data_dir" ]; then
    echo "using the existing copy in $data_dir"
    ln -sfn "$data_dir" data/fsdd
  else
    "$asr" download fsdd --dest data/download
    ln -sfn "$here/data/download" data/fsdd
  fi
}

prepare() {
  "$asr" prepare fsdd --data-dir data/fsdd --out data/manifests
}

train() {  # isolated digits listed twice
  local m=data/manifests/split
  "$asr" train --config "$conf" --corpus fsdd --exp exp/split \
    --train "$m/train.jsonl" "$m/train.jsonl" "$m/train_connected.jsonl" "$m/train_nonspeech.jsonl" \
    --dev "$m/dev.jsonl" "$m/dev_connected.jsonl" 2>&1 | grep --line-buffered -v '^[IWE]0000\|absl::InitializeLog'
}

evaluate() {  # the model on the isolated and connected test sets: greedy, then lexicon + LM
  local m=data/manifests/split
  for part in test test_connected; do
    "$asr" evaluate --model exp/split/model --manifest "$m/$part.jsonl" --out "exp/split/eval/$part" --decoder greedy
  done
  "$asr" lm --text "$m/train.jsonl" "$m/train_connected.jsonl" --order 2 --out exp/lm/digits.arpa
  "$asr" tune --model exp/split/model --manifest "$m/dev.jsonl" "$m/dev_connected.jsonl" \
    --lexicon exp/lm/digits.vocab.txt --lm exp/lm/digits.arpa --out exp/split/decoder.json
  for part in test test_connected; do
    "$asr" evaluate --model exp/split/model --manifest "$m/$part.jsonl" --out "exp/split/eval/$part-lm" \
      --decoder-config exp/split/decoder.json
  done
}

export_tflite() {  # the .tflite decodes with the lexicon and LM by default
  "$asr" export exp/split/model -o exp/split/model.tflite --quantization dynamic --decoder-config exp/split/decoder.json
  for part in test test_connected; do
    "$asr" evaluate --model exp/split/model.tflite --manifest "data/manifests/split/$part.jsonl" \
      --out "exp/split/eval-tflite/$part"
  done
}

publish() {
  "$asr" publish --model exp/split/model --dest "$root/models/local/fsdd" --decoder-config exp/split/decoder.json \
    --metrics "isolated_test=exp/split/eval/test/summary.json" \
              "connected_test=exp/split/eval/test_connected/summary.json" \
              "isolated_test_lm=exp/split/eval/test-lm/summary.json" \
              "connected_test_lm=exp/split/eval/test_connected-lm/summary.json" \
    --tflite exp/split/model.tflite \
    --tflite-metrics "isolated_test=exp/split/eval-tflite/test/summary.json" \
                     "connected_test=exp/split/eval-tflite/test_connected/summary.json"
  "$root/.venv/bin/python" -m asr.report exp > exp/RESULTS.md
  cat exp/RESULTS.md
}

run_stage 0 download exp download
run_stage 1 prepare exp prepare
run_stage 2 train exp train
run_stage 3 evaluate exp evaluate
run_stage 4 export exp export_tflite
run_stage 5 publish exp publish
