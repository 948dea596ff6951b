#!/bin/sh
# `make demo`: the whole LLaMA-Adapter story on a machine with no network, in a few minutes.
#   1. an invented world (countries with a capital, flag color, national animal and founder)
#      -> a text corpus of facts and an Alpaca instruction set about them, split by country
#      into train and held-out instructions (demo_tool data)
#   2. a SentencePiece tokenizer trained on the corpus (demo_tool tokenizer)
#   3. a small LLaMA pre-trained on the corpus with `llama-adapter train --method full`
#      (demo_tool init-model writes its random start), checked to recall the facts (probe)
#   4. an adapter trained on the train instructions with `llama-adapter train`, and the
#      zero-init check (step-1 loss = the base model's loss on the same micro-batch)
#   5. greedy answers to the held-out instructions before and after, exact-match accuracy
#   6. full fine-tuning on the same instructions for the same steps, the loss curves
#      (demo_out/loss.svg) and the comparison table
#   7. the adapter exported as safetensors
#   8. the closing line "held-out accuracy: before X%, after Y% (full fine-tune Z%)"
# Usage: sh scripts/demo.sh [BUILD_DIR]   (make demo passes its build directory)
# Environment: DEMO_OUT (default demo_out), DEMO_SEED (default 2), DEMO_THREADS (0 = all cores).
# Seeds 1-5 all end near 91-98% held-out with the adapter; the default is a typical one, whose
# base model rambles off-topic after the Alpaca template (seed 1's base already starts its replies
# with the right fact, so there the adapter mostly teaches the short answer and the stop).
# Cache: each step writes OUT/STEP.tmp and renames it to OUT/STEP when complete, and is skipped
# when OUT/STEP exists, so a second run reuses the corpus, tokenizer and trained models, and an
# interrupted run never leaves a half-made entry. A step that runs removes the steps after it
# (they depend on it); a change of seed, of a configs/demo-*.json preset or of this script
# clears everything (OUT/stamp). Answers, the plot, the table and the export are redone every
# run (seconds). Nothing from ../shared is used.
# Deliberately not here: downloads, GPU, MPI; `make test` covers correctness, this tells a story.
set -eu

BUILD=${1:-build}
OUT=${DEMO_OUT:-demo_out}
SEED=${DEMO_SEED:-2}
THREADS=${DEMO_THREADS:-0}
BIN=$BUILD/llama-adapter
TOOL=$BUILD/demo/demo_tool
CFG=configs

# The world and the base model. The Alpaca template puts "\n\n### Response:" (tokens the corpus
# never has) between a question and its answer. A base pre-trained only on "Q: ...? A: ..." answers
# right after "? A:" and nowhere else, and the frozen model + adapter then reached ~50% held-out
# (invented names ~20%). With 0..MAX_GAP filler words between question and "A:" in the corpus the
# base answers across a gap, and the adapter only has to route the template to it (~90%).
ENTITIES=60       # invented countries, 4 facts each; 2/3 train the adapter, 1/3 held out
PASSES=10         # corpus passes: each a new shuffle of all sentences into documents
PER_DOC=8         # sentences per document (facts seen at many positions and contexts)
QA_FORMS=1        # question-and-answer sentence forms per fact ("Q: ... A: ...")
MAX_GAP=14        # up to this many filler words between a question and "A:"
VOCAB=768
DIM=128 LAYERS=4 HEADS=4 SEQ=256
STEPS="data tokenizer init pretrain adapter full"

for f in "$BIN" "$TOOL"; do
  [ -x "$f" ] || { echo "demo: $f is missing: run 'make demo' (it builds it first)" >&2; exit 1; }
done
for f in demo-pretrain demo-adapter demo-full; do
  [ -f "$CFG/$f.json" ] || { echo "demo: $CFG/$f.json is missing" >&2; exit 1; }
done

T0=$(date +%s)
section() { printf '\n==== %s ====\n' "$*"; }

mkdir -p "$OUT"
STAMP="seed=$SEED entities=$ENTITIES passes=$PASSES per_doc=$PER_DOC qa=$QA_FORMS gap=$MAX_GAP vocab=$VOCAB dim=$DIM layers=$LAYERS heads=$HEADS seq=$SEQ $(cat "$CFG/demo-pretrain.json" "$CFG/demo-adapter.json" "$CFG/demo-full.json" "$0" | cksum)"
if [ "$(cat "$OUT/stamp" 2>/dev/null || true)" != "$STAMP" ]; then
  [ -f "$OUT/stamp" ] && echo "demo: the settings changed since the cached run: starting over in $OUT"
  for s in $STEPS; do rm -rf "${OUT:?}/$s" "${OUT:?}/$s.tmp"; done
  printf '%s\n' "$STAMP" > "$OUT/stamp.tmp" && mv "$OUT/stamp.tmp" "$OUT/stamp"
fi

# have STEP: true (and says so) when OUT/STEP is complete.
have() {
  if [ -d "$OUT/$1" ]; then echo "(cached: $OUT/$1; delete it to redo this step)"; return 0; fi
  return 1
}
# begin STEP [keep]: the steps after STEP depend on it: remove them (finished or not); start
# OUT/STEP.tmp afresh unless "keep" (an interrupted training run resumes from it).
begin() {
  after=0
  for s in $STEPS; do
    [ "$after" = 1 ] && rm -rf "${OUT:?}/$s" "${OUT:?}/$s.tmp"
    [ "$s" = "$1" ] && after=1
  done
  [ "${2:-}" = keep ] || rm -rf "${OUT:?}/$1.tmp"
}
# commit STEP: OUT/STEP.tmp becomes OUT/STEP (one rename).
commit() { mv "$OUT/$1.tmp" "$OUT/$1" && echo "(complete: $OUT/$1.tmp -> $OUT/$1)"; }

# train STEP CONFIG ARGS...: llama-adapter train into OUT/STEP.tmp; the log goes to
# OUT/STEP.log, the wall time to OUT/STEP/wall_seconds. A run that was interrupted (Ctrl-C: the
# trainer writes a checkpoint and stops) is resumed from its checkpoint, bit for bit.
train() {
  step=$1 cfg=$2
  shift 2
  have "$step" && return 0
  if ls "$OUT/$step.tmp"/ckpt-*.h5 > /dev/null 2>&1; then
    echo "resuming the interrupted run in $OUT/$step.tmp from its last checkpoint"
    begin "$step" keep
    set -- --resume "$OUT/$step.tmp" "$@"
  else
    begin "$step"
    : > "$OUT/$step.log"
  fi
  t=$("$TOOL" now)
  rc=0
  "$BIN" train --config "$cfg" --out "$OUT/$step.tmp" --threads "$THREADS" "$@" >> "$OUT/$step.log" 2>&1 || rc=$?
  if [ "$rc" = 130 ]; then
    echo "demo: $step interrupted; its checkpoint is kept: run 'make demo' again to resume it" >&2
    exit 130
  elif [ "$rc" != 0 ]; then
    echo "demo: training $step failed; the end of $OUT/$step.log:" >&2
    tail -n 5 "$OUT/$step.log" >&2
    exit 1
  fi
  awk -v a="$t" -v b="$("$TOOL" now)" 'BEGIN { printf "%.1f\n", b - a }' > "$OUT/$step.tmp/wall_seconds"
  grep -E '^(training:|  loss tokens)' "$OUT/$step.log" || true
  grep -E '^step ' "$OUT/$step.log" | tail -n 3
  commit "$step"
  echo "trained in $(cat "$OUT/$step/wall_seconds") s -> $OUT/$step (log: $OUT/$step.log)"
}

section "1. An invented world: fact corpus and instructions (seed $SEED)"
if ! have data; then
  begin data
  "$TOOL" data --out "$OUT/data.tmp" --seed "$SEED" --entities "$ENTITIES" --repeat "$PASSES" \
    --per-doc "$PER_DOC" --qa-forms "$QA_FORMS" --max-gap "$MAX_GAP"
  commit data
fi
D=$OUT/data
echo "corpus ($D/corpus.txt), the start of its first document:"
head -n 1 "$D/corpus.txt" | cut -c1-240
echo "an instruction ($D/train.json):"
sed -n '2,4p' "$D/train.json"

section "2. SentencePiece tokenizer trained on the corpus"
if ! have tokenizer; then
  begin tokenizer
  mkdir -p "$OUT/tokenizer.tmp"
  "$TOOL" tokenizer --corpus "$D/corpus.txt" --out "$OUT/tokenizer.tmp/tokenizer.model" --vocab "$VOCAB"
  commit tokenizer
fi
TOK=$OUT/tokenizer/tokenizer.model

section "3. Pre-training a small LLaMA on the corpus (llama-adapter train --method full)"
if ! have init; then
  begin init
  "$TOOL" init-model --tokenizer "$TOK" --out "$OUT/init.tmp" --dim "$DIM" --layers "$LAYERS" --heads "$HEADS" \
    --max-seq-len "$SEQ" --seed "$SEED"
  commit init
fi
train pretrain "$CFG/demo-pretrain.json" --model "$OUT/init" --tokenizer "$TOK" --data "$D/corpus.txt" --seed "$SEED"
BASE=$OUT/pretrain/model
echo "does the base model know the facts? greedy completions of \"The capital of X is\" and the like:"
"$TOOL" probe --model "$BASE" --tokenizer "$TOK" --facts "$D/facts.tsv" --threads "$THREADS" --show 4

section "4. Adapter fine-tuning on the train instructions (the base model frozen)"
train adapter "$CFG/demo-adapter.json" --model "$BASE" --tokenizer "$TOK" --data "$D/train.json" --seed "$SEED"
key() { sed -n "s/.*\"$1\": *\([0-9]*\).*/\1/p" "$CFG/demo-adapter.json"; }
echo "zero-init check: the gates start at 0, so the adapted model computes exactly the base model:"
"$TOOL" zero-check --model "$BASE" --tokenizer "$TOK" --data "$D/train.json" --run "$OUT/adapter" \
  --batch-size "$(key batch_size)" --max-seq-len "$(key max_seq_len)" --adapter-len "$(key adapter_len)" \
  --adapter-layer "$(key adapter_layer)" --seed "$SEED" --threads "$THREADS"

section "5. Held-out instructions (countries the adapter never saw): greedy answers"
echo "before: the base model alone"
"$TOOL" answer --model "$BASE" --tokenizer "$TOK" --data "$D/heldout.json" --label "before (base model)" \
  --result "$OUT/acc_before.txt" --show 8 --threads "$THREADS"
echo "after: the base model + the adapter"
"$TOOL" answer --model "$BASE" --tokenizer "$TOK" --adapter "$OUT/adapter" --data "$D/heldout.json" \
  --label "after (base + adapter)" --result "$OUT/acc_adapter.txt" --show 8 --threads "$THREADS"

section "6. Full fine-tuning on the same instructions for the same steps (--method full)"
train full "$CFG/demo-full.json" --model "$BASE" --tokenizer "$TOK" --data "$D/train.json" --seed "$SEED"
"$TOOL" answer --model "$OUT/full/model" --tokenizer "$TOK" --data "$D/heldout.json" \
  --label "full fine-tune" --result "$OUT/acc_full.txt" --show 4 --threads "$THREADS"
"$TOOL" plot --out "$OUT/loss.svg" "Pre-training (full, the corpus)" "pre-training=$OUT/pretrain/metrics.jsonl" \
  "Instruction tuning (same steps)" "adapter=$OUT/adapter/metrics.jsonl" "full fine-tune=$OUT/full/metrics.jsonl"

section "7. Exporting the adapter"
"$BIN" export --adapter "$OUT/adapter" --format safetensors --out "$OUT/adapter.safetensors"

section "Adapter vs full fine-tuning"
"$TOOL" table adapter "$OUT/adapter" "$OUT/adapter.safetensors" "$OUT/acc_adapter.txt" \
  "full fine-tune" "$OUT/full" "$OUT/full/model/model.safetensors" "$OUT/acc_full.txt"

pct() { awk '{ if ($2 > 0) printf "%.1f", 100 * $1 / $2; else printf "?" }' "$1"; }
echo
echo "demo finished in $(( $(date +%s) - T0 )) s; outputs in $OUT/ (loss curves: $OUT/loss.svg)"
echo "held-out accuracy: before $(pct "$OUT/acc_before.txt")%, after $(pct "$OUT/acc_adapter.txt")% (full fine-tune $(pct "$OUT/acc_full.txt")%)"
