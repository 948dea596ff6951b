#!/bin/sh
# bf16 against f32 over real runs (issue: the bf16 loss curve stays within 1% of the f32 curve at
# every logged step). Not part of CI; a few minutes on 2 cores.
#
#   sh bench/quality_bf16.sh BUILD_DIR        (make quality)
#
# 1. The demo's adapter run (configs/demo-adapter.json on the demo's base model and train
#    questions; needs demo_out from `make demo`, which it runs when absent) at --precision f32 and
#    bf16, then the held-out accuracy of each adapter (demo_tool answer: the demo's greedy
#    scoring, which runs the forward at the default precision).
# 2. 200 steps of Alpaca (../shared/data/alpaca_small.json, the LLaMA-2 tokenizer; the bench's
#    synthetic data otherwise) on the bench's small random model (dim 256, 4 layers, vocab 32000,
#    bf16 weights), K=10 L=3, batch 4, max_seq_len 512, lr 0.01, at both precisions.
# Prints, per run, the largest relative loss difference over the steps and at which step.
set -u
BUILD=${1:-build}
BIN=$BUILD/llama-adapter
TOOL=$BUILD/bench/bench_tool
DEMO_TOOL=$BUILD/demo/demo_tool
SHARED=${LLAMA_ADAPTER_SHARED:-../shared}
OUT=$BUILD/bench_out/quality
DEMO=${DEMO_OUT:-demo_out}
THREADS=${BENCH_THREADS:-2}
mkdir -p "$OUT" || exit 1

# compare A B: max relative difference of the per-step losses of two metrics.jsonl
compare() {
  paste -d '|' "$1" "$2" | awk -F '|' '
    function loss(j) { sub(/.*"loss":/, "", j); sub(/[,}].*/, "", j); return j + 0 }
    { a = loss($1); b = loss($2); d = a - b; if (d < 0) d = -d; r = d / (a < 0 ? -a : a);
      if (r >= m) { m = r; at = NR; fa = a; fb = b } n++ }
    END { printf "%d steps, largest relative difference %.4f%% at step %d (f32 %.6f, bf16 %.6f)\n", n, 100 * m, at, fa, fb }'
}

[ -d "$DEMO/pretrain/model" ] || { echo "quality: no $DEMO/pretrain/model: running make demo first"; make demo >/dev/null || exit 1; }
for p in f32 bf16; do
  rm -rf "$OUT/demo-$p"
  "$BIN" train --config configs/demo-adapter.json --model "$DEMO/pretrain/model" --tokenizer "$DEMO/tokenizer/tokenizer.model" \
    --data "$DEMO/data/train.json" --seed 2 --precision $p --threads "$THREADS" --out "$OUT/demo-$p" > "$OUT/demo-$p.log" 2>&1 \
    || { echo "quality: demo adapter run ($p) failed: see $OUT/demo-$p.log"; exit 1; }
done
echo "demo adapter run: $(compare "$OUT/demo-f32/metrics.jsonl" "$OUT/demo-bf16/metrics.jsonl")"
for p in f32 bf16; do
  "$DEMO_TOOL" answer --model "$DEMO/pretrain/model" --tokenizer "$DEMO/tokenizer/tokenizer.model" --adapter "$OUT/demo-$p" \
    --data "$DEMO/data/heldout.json" --label "adapter trained at $p" --result "$OUT/acc-$p.txt" --show 0 \
    --threads "$THREADS" 2>/dev/null | tail -n 1
done

"$TOOL" fixtures --out "$BUILD/bench_fixtures" --shared "$SHARED" --sizes small >/dev/null || exit 1
. "$BUILD/bench_fixtures/fixtures.sh"
for p in f32 bf16; do
  rm -rf "$OUT/alpaca-$p"
  "$BIN" train --model "$BUILD/bench_fixtures/small-bf16" --tokenizer "$TOKENIZER" --data "$DATA" --adapter-len 10 \
    --adapter-layer 3 --batch-size 4 --max-seq-len 512 --max-steps 200 --epochs 100 --warmup-epochs 1 --lr 0.01 \
    --no-shuffle --precision $p --threads "$THREADS" --log-every 0 --keep 1 --out "$OUT/alpaca-$p" > "$OUT/alpaca-$p.log" 2>&1 \
    || { echo "quality: alpaca run ($p) failed: see $OUT/alpaca-$p.log"; exit 1; }
done
echo "alpaca, 200 steps ($DATA_SOURCE): $(compare "$OUT/alpaca-f32/metrics.jsonl" "$OUT/alpaca-bf16/metrics.jsonl")"
