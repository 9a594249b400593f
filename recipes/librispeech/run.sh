#!/usr/bin/env bash
# LibriSpeech recipe: download -> prepare -> tokens -> features -> train -> evaluate -> export
# -> LM download -> LM prepare -> tune -> evaluate with the LM.
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
# --lm 3gram|4gram|none  word LM of openslr resource 11 for beam decoding (default 3gram: the pruned
#                      3-gram, 34 MB; 4gram: the full 4-gram, 1.36 GB download, several GB of memory
#                      to decode; none: stages 7-10 do nothing)
# --lm-weights "..."   LM weights tried on the dev sets (default "0 0.5 1 1.5 2")
# --word-scores "..."  word insertion scores tried with each (default "-1 0 1")
# --beam N             beam size of the LM decoder (default 50)
# Stages: 0 download, 1 prepare, 2 tokens, 3 features, 4 train, 5 evaluate (average, WER/CER on
#         every test set, RESULTS.md), 6 export (dynamic-int8 .tflite, evaluated on the first test set;
#         a unidirectional config, e.g. models/configs/librispeech-960-streaming.yaml, also gets
#         model_streaming.tflite from asr export --streaming),
#         7 LM download (resource 11: the ARPA, the vocabulary, the lexicon; md5-verified, resumable),
#         8 LM prepare (lower-cased ARPA, word lexicon from the vocabulary), 9 tune (LM weight and word
#         score on the dev sets), 10 evaluate every test set with the tuned decoder; RESULTS.md then
#         has a greedy and an LM row per test set.
#         Each stage leaves a done-marker and is skipped when it exists; the commands behind the
#         stages also skip finished parts, shards and epochs, so a killed stage resumes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
stage=0
stop_stage=10
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
lm=3gram
lm_weights="0 0.5 1 1.5 2"
word_scores="-1 0 1"
beam=50
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
    --lm) lm=$2 ;;
    --lm-weights) lm_weights=$2 ;;
    --word-scores) word_scores=$2 ;;
    --beam) beam=$2 ;;
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
case $lm in
  3gram) lm_arpa=3-gram.pruned.1e-7.arpa.gz ;;
  4gram) lm_arpa=4-gram.arpa.gz ;;
  none) lm_arpa="" ;;
  *) echo "--lm must be 3gram, 4gram or none, got $lm" >&2; exit 2 ;;
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
lm_tool() { "$root/.venv/bin/python" -m asr.corpora.librispeech_lm "$@"; }
decoder_dir=$exp/decoder-$lm
decode_key=$(echo "$lm $lm_weights $word_scores $beam" | cksum | cut -d' ' -f1)
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
  # shellcheck disable=SC2046  # one process for every test set: the model loads once
  "$asr" evaluate --model "$exp/avg-$avg" --manifest $(manifests $test_sets) --out "$exp/eval/{stem}"
  results $test_sets
}

results() {  # RESULTS.md with a row for each eval/<set> given
  local set tuned_on="" notes=(--note "Config: $(basename "$config"); training data: $train_sets.")
  if [[ " $* " == *"-$lm "* ]]; then
    notes+=(--note "Rows <set>-$lm: beam search (beam $beam), lexicon from librispeech-vocab.txt, $lm_arpa"
            --note "(openslr resource 11); LM weight and word score tuned on $dev_sets ($decoder_dir/tuning.json).")
    for set in $dev_sets; do
      if [[ " $test_sets " == *" $set "* ]]; then tuned_on+=" $set"; fi
    done
    [ -z "$tuned_on" ] || notes+=(--note "The LM rows of$tuned_on are not held out: the decoder was tuned on them.")
  fi
  "$asr" results --eval "$exp/eval" --sets "$@" --out "$exp/RESULTS.md" \
    --title "LibriSpeech $size, $tokens, average of the last $avg epochs" "${notes[@]}"
}

export_tflite() {
  "$asr" export "$exp/avg-$avg" -o "$exp/model.tflite" --quantization dynamic
  if grep -q '"bidirectional": false' "$exp/avg-$avg/model.json"; then  # a streaming config: its phone file too
    "$asr" export --streaming "$exp/avg-$avg" -o "$exp/model_streaming.tflite"
  fi
  local first=${test_sets%% *}
  "$asr" evaluate --model "$exp/model.tflite" --manifest "data/manifests/$first.jsonl" --out "$exp/eval-tflite/$first"
}

no_lm() { [ "$lm" = none ] && echo "no LM (--lm none): nothing to do"; }

lm_download() {
  no_lm && return 0
  lm_tool download --dest data/lm/download --files "$lm_arpa" librispeech-vocab.txt librispeech-lexicon.txt \
    ${base_url:+--url "${base_url%/}/11"} ${md5_file:+--md5-file "$md5_file"}
}

lm_prepare() {
  no_lm && return 0
  lm_tool prepare --lm-dir data/lm/download --out data/lm --arpa "$lm_arpa"
}

tune() {
  no_lm && return 0
  # shellcheck disable=SC2086  # the grids are lists of numbers
  "$asr" tune --model "$exp/avg-$avg" --manifest $(manifests $dev_sets) --lexicon data/lm/lexicon.txt \
    --lm "data/lm/${lm_arpa%.gz}" --lm-weights $lm_weights --word-scores $word_scores --beam "$beam" \
    --out "$decoder_dir/decoder.json"
}

evaluate_lm() {
  no_lm && return 0
  local set sets=()
  # shellcheck disable=SC2046
  "$asr" evaluate --model "$exp/avg-$avg" --manifest $(manifests $test_sets) --out "$exp/eval/{stem}-$lm" \
    --decoder-config "$decoder_dir/decoder.json"
  for set in $test_sets; do sets+=("$set" "$set-$lm"); done
  results "${sets[@]}"
}

run_stage 0 "download-$parts_key" data download
run_stage 1 "prepare-$parts_key" data prepare
run_stage 2 "tokens-$tokens$bpe_size-$parts_key" data make_tokens
run_stage 3 "features-$shards-$parts_key" data features
run_stage 4 train "$exp" train
run_stage 5 evaluate "$exp" evaluate
run_stage 6 export "$exp" export_tflite
run_stage 7 "lm-download-$lm" data lm_download
run_stage 8 "lm-prepare-$lm" data lm_prepare
run_stage 9 "tune-$lm-$decode_key" "$exp" tune
run_stage 10 "evaluate-$lm-$decode_key" "$exp" evaluate_lm
