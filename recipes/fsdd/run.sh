#!/usr/bin/env bash
# Free Spoken Digit Dataset recipe: download -> prepare -> train -> evaluate -> publish.
#
#   recipes/fsdd/run.sh [--data-dir DIR] [--stage N] [--stop-stage N]
#
# --data-dir DIR   use an existing copy (a folder holding recordings/) instead of downloading
# Stages: 0 download, 1 prepare, 2 train (dataset split and held-out speaker, side by side),
#         3 evaluate, 4 export (dynamic-int8 .tflite, evaluated too), 5 publish to models/.
#         Each stage writes exp/.done-<stage> and is skipped when that marker exists; training
#         and the feature cache resume after a kill.
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

train_one() {  # train_one SPLIT: one model, logged with a [SPLIT] prefix; isolated digits listed twice
  local m=data/manifests/$1
  "$asr" train --config "$conf" --corpus fsdd --threads 1 --exp "exp/$1" \
    --train "$m/train.jsonl" "$m/train.jsonl" "$m/train_connected.jsonl" "$m/train_nonspeech.jsonl" \
    --dev "$m/dev.jsonl" "$m/dev_connected.jsonl" 2>&1 | grep --line-buffered -v '^[IWE]0000\|absl::InitializeLog' | sed -u "s/^/[$1] /"
}

side_by_side() {  # side_by_side FUNCTION: FUNCTION split and FUNCTION heldout in parallel
  "$1" split & local a=$!
  "$1" heldout & local b=$!
  local status=0
  wait $a || status=1
  wait $b || status=1
  return $status
}

train() { side_by_side train_one; }

evaluate_one() {  # evaluate_one SPLIT: its model on its isolated and connected test sets
  for part in test test_connected; do
    "$asr" evaluate --model "exp/$1/model" --manifest "data/manifests/$1/$part.jsonl" --out "exp/$1/eval/$part"
  done
}

evaluate() { side_by_side evaluate_one; }

export_tflite() {
  "$asr" export exp/split/model -o exp/split/model.tflite --quantization dynamic
  for part in test test_connected; do
    "$asr" evaluate --model exp/split/model.tflite --manifest "data/manifests/split/$part.jsonl" \
      --out "exp/split/eval-tflite/$part"
  done
}

publish() {
  "$asr" publish --model exp/split/model --dest "$root/models/fsdd" \
    --metrics "isolated_test=exp/split/eval/test/summary.json" \
              "connected_test=exp/split/eval/test_connected/summary.json" \
              "heldout_isolated=exp/heldout/eval/test/summary.json" \
              "heldout_connected=exp/heldout/eval/test_connected/summary.json" \
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
