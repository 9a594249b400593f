#!/usr/bin/env bash
# Google Speech Commands v0.02 recipe: download -> prepare -> noisy copies -> train -> evaluate
# -> export.
#
#   recipes/speech_commands/run.sh [--stage N] [--stop-stage N] [options]
#
# --work DIR         where data/ and exp/ go (default: this folder)
# --data-dir DIR     use an unpacked copy (the corpus folder) instead of downloading
# --url URL          archive URL (a mirror; default: download.tensorflow.org); it must hold the
#                    published v0.02 archive (sha256 checked) unless --sha256 names another one
# --sha256 HEX       checksum of the archive at --url, when it is not the published release
# --split-percentages DEV,TEST  which_set's percentages for a copy without the official lists
#                    (default 10,10; the lists, when present, always win)
# --words "A B"      only these words (default: all 35)
# --config FILE      model/training YAML (default: models/configs/speech_commands.yaml)
# --augment noise|reverb|both|none  a corrupted copy of the training clips listed as more training
#                    data (noise: the corpus's _background_noise_ at 5-20 dB SNR); default none:
#                    on the shared clips no copy helped unseen voices (README, "New voices")
# Stages: 0 download (2.3 GB, sha256-verified, resumable, safely extracted), 1 prepare (manifests
#         from the official validation/testing lists: speaker-disjoint, checked), 2 augment
#         (asr augment), 3 train, 4 evaluate (greedy, and beam search over the lexicon of the
#         words, on the test speakers; RESULTS.md), 5 export (dynamic-int8 .tflite carrying the
#         lexicon, evaluated on the test set).
#         Each stage writes exp/.done-<stage> and is skipped when that marker exists; downloads,
#         copies and training resume after a kill.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
stage=0
stop_stage=5
work=$here
data_dir=""
url=""
sha256=""
percentages=""
words=""
config="$root/models/configs/speech_commands.yaml"
augment=none
. "$root/recipes/stages.sh"
recipe_option() {
  case $1 in
    --work) mkdir -p "$2"; work=$(cd "$2" && pwd) ;;
    --data-dir) data_dir=$(cd "$2" && pwd) ;;
    --url) url=$2 ;;
    --sha256) sha256=$2 ;;
    --split-percentages) percentages=$2 ;;
    --words) words=$2 ;;
    --config) config=$(cd "$(dirname "$2")" && pwd)/$(basename "$2") ;;
    --augment) augment=$2 ;;
    *) return 1 ;;
  esac
}
parse_options "$@"
"$root/tools/setup.sh"
asr="$root/.venv/bin/asr"
cd "$work"
mkdir -p exp data
m=data/manifests

download() {
  if [ -n "$data_dir" ]; then
    echo "using the existing copy in $data_dir"
    ln -sfn "$data_dir" data/corpus
  else
    "$asr" download speech-commands --dest data/download ${url:+--url "$url"} ${sha256:+--sha256 "$sha256"}
    ln -sfn "$work/data/download/speech_commands_v0.02" data/corpus
  fi
}

prepare() {  # exits 1 when a speaker is in two splits
  # shellcheck disable=SC2086
  "$asr" prepare speech-commands --data-dir data/corpus --out "$m" ${words:+--words $words} \
    ${percentages:+--split-percentages "$percentages"}
}

augment_copies() {
  if [ "$augment" != none ]; then
    "$asr" augment --manifest "$m/train.jsonl" --out "data/copies/train_$augment.jsonl" --kind "$augment" \
      --noise "$m/noise.jsonl"
  fi
}

train() {
  local copies=()
  [ "$augment" = none ] || copies=("data/copies/train_$augment.jsonl")
  "$asr" train --config "$config" --corpus speech-commands --exp exp/model --train "$m/train.jsonl" "${copies[@]}" --dev "$m/dev.jsonl" \
    2>&1 | grep --line-buffered -v '^[IWE]0000\|absl::InitializeLog'
}

evaluate() {  # greedy, then beam search restricted to the words of the training set
  "$asr" evaluate --model exp/model/model --manifest "$m/test.jsonl" --out exp/model/eval/test --decoder greedy
  "$asr" lm --text "$m/train.jsonl" --order 2 --out exp/lm/words.arpa  # and its word list, words.vocab.txt
  printf '{"kind": "beam", "lexicon": "%s", "lm": "none"}\n' "$work/exp/lm/words.vocab.txt" > exp/decoder.json
  "$asr" evaluate --model exp/model/model --manifest "$m/test.jsonl" --out exp/model/eval/test-lexicon \
    --decoder-config exp/decoder.json
  "$root/.venv/bin/python" -m asr.report exp > exp/RESULTS.md
  cat exp/RESULTS.md
}

export_tflite() {  # the .tflite decodes with the word lexicon by default
  "$asr" export exp/model/model -o exp/model/model.tflite --quantization dynamic --decoder-config exp/decoder.json
  "$asr" evaluate --model exp/model/model.tflite --manifest "$m/test.jsonl" --out exp/model/eval-tflite/test
  "$root/.venv/bin/python" -m asr.report exp > exp/RESULTS.md
}

run_stage 0 download exp download
run_stage 1 prepare exp prepare
run_stage 2 augment exp augment_copies
run_stage 3 train exp train
run_stage 4 evaluate exp evaluate
run_stage 5 export exp export_tflite
