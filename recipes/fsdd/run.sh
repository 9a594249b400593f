#!/usr/bin/env bash
# The shipped model's recipe: FSDD digits plus Speech Commands clips, so that the model knows
# many voices; evaluated on voices it never heard.
# download -> prepare -> noisy copies -> train -> evaluate -> export -> publish.
#
#   recipes/fsdd/run.sh [--data-dir DIR] [--speech-commands DIR] [--streaming yes] [--stage N] [--stop-stage N]
#
# --data-dir DIR          use an existing FSDD copy (a folder holding recordings/) instead of
#                         downloading
# --speech-commands DIR   Speech Commands clips in the corpus layout (<word>/<speaker>_nohash_<n>.wav,
#                         e.g. the shared test-set clips or a downloaded corpus folder), split by
#                         speaker hash (which_set at --sc-split-percentages, default 11,2: the shared
#                         clips all lie in the official test band [10, 20), so 10% of them go to
#                         dev, 20% to test, 70% to train) unless the folder has the official lists.
#                         Without it the model trains on FSDD alone.
# --augment noise|reverb|both|none   corrupted copies of the training clips listed in place of
#                         their second listing (default: see AUGMENT below; asr augment)
# --streaming yes         also train, evaluate, export (asr export --streaming, 160 ms chunks) and
#                         publish a streaming model (exp/streaming -> models/local/fsdd_streaming*):
#                         the same data and config with 2 unidirectional GRU layers of 264 units
#                         and a lookahead convolution of 4 frames (1.16M parameters, about as many
#                         as the BiLSTM; 206 ms look-ahead), global normalization (the stored
#                         training-set statistics, which a stream applies frame by frame). About
#                         10 more minutes.
# Data: FSDD's held-out-speaker split: four speakers train (recordings 10-49), george is never
#       heard; the trained speakers' own test recordings (0-4) are the seen-speaker test sets.
# Stages: 0 download, 1 prepare (FSDD and Speech Commands manifests, the evaluation sets named in
#         data/manifests/eval/), 2 augment, 3 train, 4 evaluate every set greedy, then a bigram LM
#         from the training transcripts (asr lm), its weight and the word score tuned on dev
#         (asr tune), and beam search with the lexicon of every training word and that LM,
#         5 export (dynamic-int8 .tflite carrying the lexicon and LM, evaluated on every set),
#         6 publish to models/local/ (git-ignored; asr transcribe prefers it to the shipped
#         models/fsdd*).
#         Evaluation sets: fsdd_seen, fsdd_seen_connected (speakers trained on), fsdd_heldout,
#         fsdd_heldout_connected (george), sc_digits, sc_commands (Speech Commands test speakers).
#         Each stage writes exp/.done-<stage> and is skipped when that marker exists; training,
#         the copies and the feature cache resume after a kill.
# The ablation behind the choices (each augmentation, the normalization) is
# benchmarks/augmentation.py; the selection metric's, benchmarks/selection.py.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
stage=0
stop_stage=6
data_dir=""
sc_dir=""
sc_split=11,2
AUGMENT=none  # measured: no corrupted copy helped unseen voices here (README, "New voices")
augment=$AUGMENT
streaming=no
# benchmarks/architectures.py's "gru_lookahead": better than "lstm_lookahead" on dev (README, "Streaming")
STREAMING_MODEL=(model.rnn=gru model.bidirectional=false model.lstm_units=264 model.lookahead_frames=4)
. "$root/recipes/stages.sh"
recipe_option() {
  case $1 in
    --data-dir) data_dir=$(cd "$2" && pwd) ;;
    --speech-commands) sc_dir=$(cd "$2" && pwd) ;;
    --sc-split-percentages) sc_split=$2 ;;
    --augment) augment=$2 ;;
    --streaming) streaming=$2 ;;
    *) return 1 ;;
  esac
}
parse_options "$@"
"$root/tools/setup.sh"
asr="$root/.venv/bin/asr"
conf="$root/models/configs/fsdd.yaml"
cd "$here"
mkdir -p exp data
m=data/manifests/heldout
sc=data/manifests/sc
ev=data/manifests/eval

download() {
  if [ -n "$data_dir" ]; then
    echo "using the existing copy in $data_dir"
    ln -sfn "$data_dir" data/fsdd
  else
    "$asr" download fsdd --dest data/download
    ln -sfn "$here/data/download" data/fsdd
  fi
}

prepare() {  # the evaluation sets get plain names in data/manifests/eval/ (symbolic links)
  "$asr" prepare fsdd --data-dir data/fsdd --out data/manifests
  mkdir -p "$ev"
  ln -sfn ../heldout/test_seen.jsonl "$ev/fsdd_seen.jsonl"
  ln -sfn ../heldout/test_seen_connected.jsonl "$ev/fsdd_seen_connected.jsonl"
  ln -sfn ../heldout/test.jsonl "$ev/fsdd_heldout.jsonl"
  ln -sfn ../heldout/test_connected.jsonl "$ev/fsdd_heldout_connected.jsonl"
  if [ -n "$sc_dir" ]; then
    "$asr" prepare speech-commands --data-dir "$sc_dir" --out "$sc" --split-percentages "$sc_split"
    ln -sfn ../sc/test_digits.jsonl "$ev/sc_digits.jsonl"
    ln -sfn ../sc/test_commands.jsonl "$ev/sc_commands.jsonl"
  fi
}

second() {  # the second listing of a training manifest: its corrupted copy, or itself
  if [ "$augment" = none ]; then echo "$1"; else echo "data/copies/$(basename "$1" .jsonl)_$augment.jsonl"; fi
}

augment_copies() {
  [ "$augment" != none ] || return 0
  local noise=()
  [ "$augment" = reverb ] || noise=(--noise "$sc/noise.jsonl")
  for list in "$m/train.jsonl" ${sc_dir:+"$sc/train.jsonl"}; do
    "$asr" augment --manifest "$list" --out "$(second "$list")" --kind "$augment" "${noise[@]}"
  done
}

x=heldout  # the experiment the stages below work on: exp/$x (heldout: the BiLSTM; streaming)
model_set=()  # --set overrides of that experiment

train() {  # every training list twice, the second time as its corrupted copy
  local lists=("$m/train.jsonl" "$(second "$m/train.jsonl")" "$m/train_connected.jsonl" "$m/train_nonspeech.jsonl")
  local dev=("$m/dev.jsonl" "$m/dev_connected.jsonl")
  if [ -n "$sc_dir" ]; then
    lists+=("$sc/train.jsonl" "$(second "$sc/train.jsonl")")
    dev+=("$sc/dev.jsonl")
  fi
  "$asr" train --config "$conf" --corpus "fsdd${sc_dir:++speech-commands}" --exp "exp/$x" --train "${lists[@]}" --dev "${dev[@]}" \
    ${model_set[@]:+--set "${model_set[@]}"} 2>&1 | grep --line-buffered -v '^[IWE]0000\|absl::InitializeLog'
}

eval_sets() { ls "$ev"/*.jsonl; }

evaluate() {  # every evaluation set: greedy, then the lexicon of the training words + a tuned bigram LM
  local texts=("$m/train.jsonl" "$m/train_connected.jsonl") dev=("$m/dev.jsonl" "$m/dev_connected.jsonl")
  [ -z "$sc_dir" ] || { texts+=("$sc/train.jsonl"); dev+=("$sc/dev.jsonl"); }
  # shellcheck disable=SC2046
  "$asr" evaluate --model "exp/$x/model" --manifest $(eval_sets) --out "exp/$x/eval" --decoder greedy
  "$asr" lm --text "${texts[@]}" --order 2 --out exp/lm/words.arpa
  "$asr" tune --model "exp/$x/model" --manifest "${dev[@]}" \
    --lexicon exp/lm/words.vocab.txt --lm exp/lm/words.arpa --out "exp/$x/decoder.json"
  # shellcheck disable=SC2046
  "$asr" evaluate --model "exp/$x/model" --manifest $(eval_sets) --out "exp/$x/eval-lm" \
    --decoder-config "exp/$x/decoder.json"
}

export_tflite() {  # the .tflite decodes with the lexicon and LM by default
  local kind=()
  [ "$x" != streaming ] || kind=(--streaming)
  "$asr" export "${kind[@]}" "exp/$x/model" -o "exp/$x/model.tflite" --quantization dynamic \
    --decoder-config "exp/$x/decoder.json"
  # shellcheck disable=SC2046
  "$asr" evaluate --model "exp/$x/model.tflite" --manifest $(eval_sets) --out "exp/$x/eval-tflite"
}

metrics() {  # NAME=SUMMARY.json of every evaluation set in eval folder $1, suffixed $2
  local f
  for f in $(eval_sets); do f=$(basename "$f" .jsonl); echo "$f$2=exp/$x/$1/$f/summary.json"; done
}

publish() {
  local name=fsdd
  [ "$x" != streaming ] || name=fsdd_streaming
  # shellcheck disable=SC2046
  "$asr" publish --model "exp/$x/model" --dest "$root/models/local/$name" \
    --decoder-config "exp/$x/decoder.json" \
    --metrics $(metrics eval "") $(metrics eval-lm _lm) \
    --tflite "exp/$x/model.tflite" --tflite-metrics $(metrics eval-tflite "")
  "$root/.venv/bin/python" -m asr.report exp > exp/RESULTS.md
  cat exp/RESULTS.md
}

run_stage 0 download exp download
run_stage 1 prepare exp prepare
run_stage 2 augment exp augment_copies
run_stage 3 train exp train
run_stage 4 evaluate exp evaluate
run_stage 5 export exp export_tflite
run_stage 6 publish exp publish
if [ "$streaming" = yes ]; then  # the same stages for the streaming model (markers in exp/streaming)
  x=streaming
  model_set=("${STREAMING_MODEL[@]}")
  run_stage 3 train exp/streaming train
  run_stage 4 evaluate exp/streaming evaluate
  run_stage 5 export exp/streaming export_tflite
  run_stage 6 publish exp/streaming publish
elif [ "$streaming" != no ]; then
  echo "--streaming takes yes or no, got $streaming" >&2
  exit 2
fi
