#!/usr/bin/env bash
# LibriSpeech recipe: download -> prepare -> tokens -> features -> train -> evaluate -> export.
#
#   recipes/librispeech/run.sh [--size mini|960] [--stage N] [--stop-stage N] [options]
#
# --size mini|960      mini (default): Mini LibriSpeech, train-clean-5 / dev-clean-2, a CPU-sized
#                      model; 960: all 960 h, dev/test clean/other, the DeepSpeech2-sized model
# --work DIR           where data/ and exp/ go (default: this folder)
# --corpus-dir DIR     where the corpus is downloaded and unpacked (default: WORK/data/corpus)
# --base-url URL       mirror of https://www.openslr.org/resources (e.g. https://us.openslr.org/resources)
# --md5-file FILE      local md5 list instead of md5sum.txt from the mirror
# --train-sets "A B"   --dev-sets "A B"   --test-sets "A B"   override the parts of --size
# --config FILE        model/training YAML (default: models/configs/librispeech-SIZE.yaml)
# --tokens chars|bpe   output units (default chars); --bpe-size N pieces (default 500)
# --shards true|false  stage 3 writes log-mel TFRecord shards and training reads them (default false:
#                      features computed as the config's training.pipeline says)
# --nj N               parallel downloads/readers/processes (default 4)
# --avg N              epoch checkpoints averaged for evaluation and export (default 5)
# --train-args "..."   extra asr train options, e.g. "--mixed-precision" or "--distribute multi-worker"
# --exp-name NAME      experiment folder under WORK/exp (default SIZE-TOKENS)
# Stages: 0 download, 1 prepare, 2 tokens, 3 features, 4 train, 5 evaluate (average, WER/CER on
#         every test set, RESULTS.md), 6 export (dynamic-int8 .tflite, evaluated on the first test set).
#         Each stage leaves a done-marker and is skipped when it exists; the commands behind the
#         stages also skip finished parts, shards and epochs, so a killed stage resumes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
stage=0
stop_stage=6
size=mini
work=$here
corpus_dir=""
base_url=""
md5_file=""
train_sets="" dev_sets="" test_sets=""
config=""
tokens=chars
bpe_size=500
shards=false
nj=4
avg=5
train_args=""
exp_name=""
. "$root/recipes/stages.sh"
recipe_option() {
  case $1 in
    --size) size=$2 ;;
    --work) mkdir -p "$2"; work=$(cd "$2" && pwd) ;;
    --corpus-dir) mkdir -p "$2"; corpus_dir=$(cd "$2" && pwd) ;;
    --base-url) base_url=$2 ;;
    --md5-file) md5_file=$(cd "$(dirname "$2")" && pwd)/$(basename "$2") ;;
    --train-sets) train_sets=$2 ;;
    --dev-sets) dev_sets=$2 ;;
    --test-sets) test_sets=$2 ;;
    --config) config=$(cd "$(dirname "$2")" && pwd)/$(basename "$2") ;;
    --tokens) tokens=$2 ;;
    --bpe-size) bpe_size=$2 ;;
    --shards) shards=$2 ;;
    --nj) nj=$2 ;;
    --avg) avg=$2 ;;
    --train-args) train_args=$2 ;;
    --exp-name) exp_name=$2 ;;
    *) return 1 ;;
  esac
}
parse_options "$@"
case $size in
  mini) : "${train_sets:=train-clean-5}" "${dev_sets:=dev-clean-2}" "${test_sets:=dev-clean-2}" ;;
  960) : "${train_sets:=train-clean-100 train-clean-360 train-other-500}" "${dev_sets:=dev-clean dev-other}"
       : "${test_sets:=dev-clean dev-other test-clean test-other}" ;;
  *) echo "--size must be mini or 960, got $size" >&2; exit 2 ;;
esac
case $tokens in
  chars) tokens_file=data/lang/chars.json ;;
  bpe) tokens_file=data/lang/bpe$bpe_size.json ;;
  *) echo "--tokens must be chars or bpe, got $tokens" >&2; exit 2 ;;
esac
: "${config:=$root/models/configs/librispeech-$size.yaml}"
: "${corpus_dir:=$work/data/corpus}"
: "${exp_name:=$size-$tokens}"
exp=exp/$exp_name
parts=$(echo $train_sets $dev_sets $test_sets | tr ' ' '\n' | sort -u | tr '\n' ' ')
parts_key=$(echo "$parts" | cksum | cut -d' ' -f1)
manifests() { for p in "$@"; do echo "data/manifests/$p.jsonl"; done; }

"$root/tools/setup.sh"
asr="$root/.venv/bin/asr"
cd "$work"
mkdir -p data exp

download() {
  "$asr" download librispeech --dest "$corpus_dir" --parts $parts --jobs "$nj" \
    ${base_url:+--base-url "$base_url"} ${md5_file:+--md5-file "$md5_file"}
}

prepare() {
  "$asr" prepare librispeech --data-dir "$corpus_dir" --out data/manifests --parts $parts --jobs "$nj"
}

make_tokens() {
  "$asr" tokens --train $(manifests $train_sets) --kind "$tokens" --vocab-size "$bpe_size" --out "$tokens_file"
}

features() {
  if [ "$shards" != true ]; then
    echo "no shards (--shards $shards): training computes features itself"
    return 0
  fi
  "$asr" features --config "$config" --manifest $(manifests $train_sets) --out "data/shards/$parts_key" --jobs "$nj"
}

train() {
  local data
  if [ "$shards" = true ]; then data=data/shards/$parts_key; else data=$(manifests $train_sets); fi
  # shellcheck disable=SC2086  # train_args is a list of options
  "$asr" train --config "$config" --tokens "$tokens_file" --corpus librispeech --exp "$exp" \
    --train $data --dev $(manifests $dev_sets) $train_args
}

evaluate() {
  "$asr" average --exp "$exp" --last "$avg" --out "$exp/avg-$avg"
  for set in $test_sets; do
    "$asr" evaluate --model "$exp/avg-$avg" --manifest "data/manifests/$set.jsonl" --out "$exp/eval/$set"
  done
  "$asr" results --eval "$exp/eval" --sets $test_sets --out "$exp/RESULTS.md" \
    --title "LibriSpeech $size, $tokens, average of the last $avg epochs" \
    --note "Config: $(basename "$config"); training data: $train_sets."
}

export_tflite() {
  "$asr" export "$exp/avg-$avg" -o "$exp/model.tflite" --quantization dynamic
  local first=${test_sets%% *}
  "$asr" evaluate --model "$exp/model.tflite" --manifest "data/manifests/$first.jsonl" --out "$exp/eval-tflite/$first"
}

run_stage 0 "download-$parts_key" data download
run_stage 1 "prepare-$parts_key" data prepare
run_stage 2 "tokens-$tokens$bpe_size-$parts_key" data make_tokens
run_stage 3 "features-$shards-$parts_key" data features
run_stage 4 train "$exp" train
run_stage 5 evaluate "$exp" evaluate
run_stage 6 export "$exp" export_tflite
