#!/bin/sh
# The 7B recipe on this machine (issue: does the job this project exists for fit and run here?).
# Not part of CI: it writes a 13.5 GB synthetic model once and runs a real 7B step.
#
#   sh bench/probe_7b.sh BUILD_DIR          (make probe7b)
#
# 1. bench/make_model writes a random 32-layer 7B-shaped bf16 HF model (dim 4096, hidden 11008,
#    32 heads, 32 kv heads, vocab 32000) into PROBE_CACHE once (later runs find it cached).
# 2. `inspect` prints its memory plan for the recipe's adapter (K=10, L=30) at 4 x 512 tokens.
# 3. `train` runs 1 optimizer step of the recipe's shape on a micro-batch of 4 x 512 tokens
#    (4 synthetic Alpaca examples long enough to be truncated at 512), under /usr/bin/time -v.
# 4. `generate` decodes 16 tokens from the mapped weights (prompt and decode tokens/s).
# Prints the memory plan, the `memory:` line, peak RSS (time -v), step time and loss tokens/s.
# Environment: PROBE_CACHE (default ~/.cache/llama-adapter/synthetic-7b-bf16), PROBE_LAYERS
# (default 32; fewer for a quick look), PROBE_FLAGS (extra train flags, e.g. "--recompute off"),
# BENCH_THREADS (default 2), LLAMA_ADAPTER_SHARED (default ../shared: the LLaMA-2 tokenizer; a
# synthetic one is trained when it is absent).
set -u
BUILD=${1:-build}
BIN=$BUILD/llama-adapter
MAKEM=$BUILD/bench/make_model
TOOL=$BUILD/bench/bench_tool
CACHE=${PROBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llama-adapter/synthetic-7b-bf16}
LAYERS=${PROBE_LAYERS:-32}
THREADS=${BENCH_THREADS:-2}
SHARED=${LLAMA_ADAPTER_SHARED:-../shared}
OUT=$BUILD/bench_out/probe7b
for f in "$BIN" "$MAKEM" "$TOOL"; do
  [ -x "$f" ] || { echo "probe: $f is missing: run make probe7b"; exit 1; }
done
[ -x /usr/bin/time ] || sh scripts/deps.sh time || exit 1
mkdir -p "$OUT" || exit 1
rm -rf "$OUT/run"

echo "probe: CPU $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1), $(nproc) cores, $THREADS threads"
echo "probe: model in $CACHE ($LAYERS layers of the 7B shape, bf16)"
t0=$(date +%s)
"$MAKEM" --out "$CACHE" --layers "$LAYERS" --dtype bf16 || exit 1
echo "probe: model ready in $(( $(date +%s) - t0 )) s"

TOKENIZER=$SHARED/tokenizers/llama2.model
if [ ! -f "$TOKENIZER" ]; then
  "$TOOL" fixtures --out "$BUILD/bench_fixtures" --shared "$SHARED" --sizes small >/dev/null || exit 1
  . "$BUILD/bench_fixtures/fixtures.sh"
  echo "probe: $SHARED/tokenizers/llama2.model absent: synthetic tokenizer $TOKENIZER"
fi

# 4 examples whose prompt + output run past 512 tokens: every sequence is cut at 512
DATA=$OUT/data.json
awk 'BEGIN {
  split("the a river stone cloud carried bright morning across quiet valley where old stories grew into new songs of distant harbours", w, " ");
  printf "[\n";
  for (e = 0; e < 4; e++) {
    out = "";
    for (i = 0; i < 900; i++) out = out " " w[1 + (i * 7 + e * 3 + int(i / 5)) % 20];
    printf "%s{\"instruction\": \"Write a long story number %d.\", \"input\": \"\", \"output\": \"%s.\"}\n", e ? "," : "", e, out;
  }
  printf "]\n";
}' > "$DATA"

echo "probe: inspect"
"$BIN" inspect "$CACHE" --adapter-len 10 --adapter-layer 30 --batch-size 4 --max-seq-len 512 | tee "$OUT/inspect.txt"

echo "probe: train 1 step, K=10 L=30, batch 4 x 512 tokens ${PROBE_FLAGS:-}"
/usr/bin/time -v -o "$OUT/time.txt" "$BIN" train --model "$CACHE" --tokenizer "$TOKENIZER" --data "$DATA" \
  --adapter-len 10 --adapter-layer 30 --batch-size 4 --accum-iter 1 --max-seq-len 512 --epochs 1 --warmup-epochs 0 \
  --max-steps 1 --no-shuffle --threads "$THREADS" --out "$OUT/run" ${PROBE_FLAGS:-} > "$OUT/train.log" 2>&1
st=$?
grep -E "^(memory|recompute|compute|training|step|peak)" "$OUT/train.log"
[ $st = 0 ] || { echo "probe: train failed (exit $st), see $OUT/train.log"; tail -n 3 "$OUT/train.log"; exit 1; }
rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$OUT/time.txt")
wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$OUT/time.txt")
plan=$(sed -n 's/^memory plan: .*: \(.*\) in all$/\1/p' "$OUT/train.log")
step=$(sed -n 1p "$OUT/run/metrics.jsonl")
echo "probe: peak RSS $(awk -v k="$rss" 'BEGIN{printf "%.2f GiB", k/1048576}') (time -v), plan $plan, wall $wall"
echo "probe: step $(echo "$step" | sed 's/.*"tokens":\([0-9]*\).*"total_tokens":\([0-9]*\).*"tokens_per_s":\([0-9.]*\).*"total_tokens_per_s":\([0-9.]*\).*/loss tokens \1 of \2, \3 loss tokens\/s, \4 tokens\/s/')"

echo "probe: generate 16 tokens from the mapped weights"
/usr/bin/time -v -o "$OUT/time_gen.txt" "$BIN" generate --model "$CACHE" --tokenizer "$TOKENIZER" --adapter "$OUT/run" \
  --instruction "Write a long story number 5." --max-new-tokens 16 --temperature 0 --threads "$THREADS" > "$OUT/gen.log" 2>&1 \
  || { echo "probe: generate failed, see $OUT/gen.log"; exit 1; }
grep "^generate:" "$OUT/gen.log"
echo "probe: generate peak RSS $(sed -n 's/.*Maximum resident set size (kbytes): //p' "$OUT/time_gen.txt" | awk '{printf "%.2f GiB", $1/1048576}')"
