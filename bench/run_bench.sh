#!/bin/sh
# `make bench`: speed of the C trainer side by side with PyTorch on the same CPU, same models,
# same token ids, same batches (file order), same schedule. Prints tables; never pass/fail.
#
#   sh bench/run_bench.sh BUILD_DIR        (BUILD_DIR/llama-adapter and BUILD_DIR/bench/bench_tool)
#
# Environment: BENCH_THREADS (default 2), BENCH_SIZES (default "small medium"),
# BENCH_QUICK=1 (fewer timed steps), LLAMA_ADAPTER_SHARED (default ../shared),
# BENCH_NICE (default -15; 0 = off): as root, the scheduling priority of this session's
# autogroup while the benchmark runs (restored at exit). Other busy processes otherwise halve
# the CPU and, worse, preempt OpenMP threads mid-region: steps then take several times longer
# for C and PyTorch alike.
# Fixtures (random HF models, tokens) are cached in BUILD_DIR/bench_fixtures; results and logs
# go to BUILD_DIR/bench_out (results.jsonl is the raw data the report is made from).
# What it does not do: decide anything. Correctness against PyTorch is
# tests/test_torch_reference.c; this only prints the loss cross-check it sees on the way.
set -u
BUILD=${1:-build}
BIN=$BUILD/llama-adapter
TOOL=$BUILD/bench/bench_tool
PY=/usr/bin/python3
PEER=bench/peer_torch.py
THREADS=${BENCH_THREADS:-2}
SIZES=${BENCH_SIZES:-small medium}
SHARED=${LLAMA_ADAPTER_SHARED:-../shared}
FIX=$BUILD/bench_fixtures
OUT=$BUILD/bench_out
RES=$OUT/results.jsonl
B=4
K=10
MAXLEN=512

for f in "$BIN" "$TOOL"; do
  [ -x "$f" ] || { echo "bench: $f is missing: run make bench (or make BUILD=$BUILD $f)"; exit 1; }
done
mkdir -p "$OUT" "$FIX" || exit 1
: > "$RES"
T0=$(date +%s)

say() { echo "bench: $*" >&2; }
note() { printf '{"kind":"note","text":"%s"}\n' "$1" >> "$RES"; say "$1"; }

# CPU used by other processes over one second (this script is idle meanwhile): timings are only
# meaningful on an otherwise idle machine.
others_busy() {
  a=$(head -n 1 /proc/stat); sleep 1; b=$(head -n 1 /proc/stat)
  echo "$a
$b" | awk 'NR==1{for(i=2;i<=NF;i++)t1+=$i; i1=$5+$6} NR==2{for(i=2;i<=NF;i++)t2+=$i; i2=$5+$6}
             END{d=t2-t1; if(d<=0)d=1; printf "%d", 100*(1-(i2-i1)/d)}'
}
BUSY_LOG=$OUT/others_busy.txt
: > "$BUSY_LOG"
check_idle() {
  echo "$(others_busy) $1" >> "$BUSY_LOG"
}
# one note: how busy the machine was between the measurements
busy_note() {
  awk '{s+=$1; if($1>m){m=$1; w=$0}; n++} END{if(n && m>15) printf "other processes kept %.0f%% of the CPUs busy on average between the measurements (at most %d%%): timings may be disturbed despite BENCH_NICE\n", s/n, m}' "$BUSY_LOG"
}

NICE=${BENCH_NICE:--15}
if [ "$NICE" != 0 ] && [ "$(id -u)" = 0 ] && [ -w /proc/self/autogroup ]; then
  OLD_NICE=$(sed -n 's/.* nice \(-*[0-9]*\).*/\1/p' /proc/self/autogroup)
  if echo "$NICE" > /proc/self/autogroup 2>/dev/null; then
    trap 'echo "${OLD_NICE:-0}" > /proc/self/autogroup 2>/dev/null' EXIT
    trap 'exit 130' INT TERM
    note "ran at autogroup nice $NICE (BENCH_NICE) to keep other load from distorting the timings"
  fi
fi

HAVE_TORCH=0
if [ -x "$PY" ] && "$PY" -c "import torch" 2>/dev/null; then
  HAVE_TORCH=1
else
  note "PyTorch not importable by $PY (install python3-torch: scripts/deps.sh): C numbers only"
fi
HAVE_GEN=0
"$BIN" generate --help >/dev/null 2>&1 && HAVE_GEN=1

check_idle "sgemm peak"
say "measuring the sgemm peak"
"$TOOL" peak --threads "$THREADS" >> "$RES"
[ $HAVE_TORCH = 1 ] && "$PY" $PEER matmul --threads "$THREADS" >> "$RES"

say "fixtures in $FIX (cached)"
"$TOOL" fixtures --out "$FIX" --shared "$SHARED" --sizes "$SIZES" || exit 1
. "$FIX/fixtures.sh"
note "data: $DATA_SOURCE"
TOK=$FIX/tokens.json
ETOK=$FIX/eval_tokens.json
"$TOOL" tokens --tokenizer "$TOKENIZER" --data "$DATA" --max-seq-len $MAXLEN --out "$TOK" || exit 1
"$TOOL" tokens --tokenizer "$TOKENIZER" --data "$EVAL_DATA" --max-seq-len $MAXLEN --out "$ETOK" || exit 1
REPS=2
[ "${BENCH_QUICK:-0}" = 1 ] && REPS=1
RUNNO=0

# train_c SIZE WEIGHTS METHOD L FIRST STEPS
train_c() {
  size=$1; wt=$2; method=$3; L=$4; first=$5; steps=$6
  RUNNO=$((RUNNO + 1))
  run=$OUT/c-$size-$wt-$method-$RUNNO
  rm -rf "$run"
  init=""
  [ "$method" = adapter ] && init="--init-adapter $FIX/init-$size.safetensors"
  check_idle "C $method training, $size $wt"
  say "C $method training: $size $wt, $first + $steps steps"
  "$BIN" train --model "$FIX/$size-$wt" --tokenizer "$TOKENIZER" --data "$DATA" --out "$run" --method "$method" \
    $init --no-shuffle --batch-size $B --max-seq-len $MAXLEN --max-steps $((first + steps)) --threads "$THREADS" \
    --log-every 0 --keep 1 > "$run.log" 2>&1 || { say "C training failed: see $run.log"; }
  rm -rf "$run"/ckpt-*.h5 "$run/model" # only metrics.jsonl is needed (a full run writes ~0.3 GB)
  printf '{"kind":"train","impl":"c","size":"%s","weights":"%s","method":"%s","model_dir":"%s","tokens":"%s","batch":%d,"first":%d,"steps":%d,"K":%d,"L":%d,"metrics":"%s/metrics.jsonl"}\n' \
    "$size" "$wt" "$method" "$FIX/$size-$wt" "$TOK" $B "$first" "$steps" $K "$L" "$run" >> "$RES"
}

# train_torch SIZE STYLE METHOD L FIRST STEPS (the bf16 model, converted to f32 on load)
train_torch() {
  size=$1; style=$2; method=$3; L=$4; first=$5; steps=$6
  [ $HAVE_TORCH = 1 ] || return 0
  check_idle "PyTorch $style $method training, $size"
  say "PyTorch $style $method training: $size, $first + $steps steps"
  "$PY" $PEER train --model "$FIX/$size-bf16" --tokens "$TOK" --style "$style" --method "$method" \
    --init-adapter "$FIX/init-$size.safetensors" --batch-size $B --max-seq-len $MAXLEN --first "$first" --steps "$steps" \
    --threads "$THREADS" --tag size="$size" --tag weights=f32 --tag model_dir="$FIX/$size-bf16" --tag tokens="$TOK" \
    --tag K=$K --tag L="$L" >> "$RES" 2> "$OUT/torch-$size-$style-$method.log" ||
    say "PyTorch run failed: see $OUT/torch-$size-$style-$method.log"
}

eval_both() {
  size=$1
  check_idle "eval, $size"
  say "forward-only eval: $size"
  for wt in bf16 f32; do
    line=$("$BIN" eval --model "$FIX/$size-$wt" --tokenizer "$TOKENIZER" --data "$EVAL_DATA" --batch-size $B \
      --max-seq-len $MAXLEN --threads "$THREADS" 2> "$OUT/c-eval-$size-$wt.log")
    secs=$(sed -n 's/.* in \([0-9.]*\) s:.*/\1/p' "$OUT/c-eval-$size-$wt.log")
    loss=$(echo "$line" | sed -n 's/.*"loss":\([-0-9.eE+]*\).*/\1/p')
    printf '{"kind":"eval","impl":"c","size":"%s","weights":"%s","model_dir":"%s","tokens":"%s","examples":32,"batch":%d,"seconds":%s,"loss":%s}\n' \
      "$size" "$wt" "$FIX/$size-$wt" "$ETOK" $B "${secs:--1}" "${loss:-null}" >> "$RES"
  done
  [ $HAVE_TORCH = 1 ] || return 0
  for style in ref opt; do
    "$PY" $PEER eval --model "$FIX/$size-bf16" --tokens "$ETOK" --style $style --examples 32 --batch-size $B \
      --threads "$THREADS" --tag size="$size" --tag weights=f32 --tag model_dir="$FIX/$size-bf16" --tag tokens="$ETOK" >> "$RES"
  done
}

gen_both() {
  size=$1
  if [ $HAVE_GEN = 0 ]; then
    printf '{"kind":"gen","impl":"c","size":"%s","weights":"bf16","status":"skipped","reason":"llama-adapter generate is not built yet"}\n' "$size" >> "$RES"
    return 0
  fi
  # the first training example's prompt (without its bos), 64 new tokens, greedy
  ids=$("$TOOL" prompt-ids --tokens "$ETOK")
  check_idle "generation, $size"
  say "generation: $size"
  for wt in bf16 f32; do
    out=$("$BIN" generate --model "$FIX/$size-$wt" --prompt-ids "$ids" --print-ids --temperature 0 --max-new-tokens 64 \
      --threads "$THREADS" 2> "$OUT/c-gen-$size-$wt.log")
    st=$(grep 'decode steps' "$OUT/c-gen-$size-$wt.log" | tail -n 1)
    nd=$(echo "$st" | sed -n 's/.*, \([0-9]*\) decode steps in \([0-9.]*\) s.*/\1/p')
    sec=$(echo "$st" | sed -n 's/.*, \([0-9]*\) decode steps in \([0-9.]*\) s.*/\2/p')
    np=$(echo "$st" | sed -n 's/.*prompt \([0-9]*\) tokens.*/\1/p')
    ng=$(echo "$st" | sed -n 's/.*generated \([0-9]*\) tokens.*/\1/p')
    gids=$(echo "$out" | tr -s ' ,\n' ',' | sed 's/^,//; s/,$//')
    printf '{"kind":"gen","impl":"c","size":"%s","weights":"%s","model_dir":"%s","prompt":%s,"new":%s,"decode_steps":%s,"seconds":%s,"ids":[%s]}\n' \
      "$size" "$wt" "$FIX/$size-$wt" "${np:-0}" "${ng:-0}" "${nd:-0}" "${sec:--1}" "$gids" >> "$RES"
  done
  [ $HAVE_TORCH = 1 ] || return 0
  "$PY" $PEER gen --model "$FIX/$size-bf16" --prompt-ids "$ids" --new 64 --threads "$THREADS" \
    --tag size="$size" --tag weights=f32 --tag model_dir="$FIX/$size-bf16" >> "$RES"
}

for size in $SIZES; do
  case $size in
    small) L=3; FIRST=2; STEPS=8; [ "${BENCH_QUICK:-0}" = 1 ] && STEPS=3 ;;
    medium) L=11; FIRST=2; STEPS=6; [ "${BENCH_QUICK:-0}" = 1 ] && STEPS=2 ;;
    *) say "unknown size $size"; continue ;;
  esac
  "$TOOL" adapter --model "$FIX/$size-f32" --adapter-len $K --adapter-layer $L --out "$FIX/init-$size.safetensors" || exit 1
  # C and optimised PyTorch interleaved, REPS times each (the report keeps each one's best run)
  rep=0
  while [ $rep -lt $REPS ]; do
    train_c "$size" bf16 adapter $L $FIRST "$STEPS"
    train_c "$size" f32 adapter $L $FIRST "$STEPS"
    train_torch "$size" opt adapter $L $FIRST "$STEPS"
    rep=$((rep + 1))
  done
  train_torch "$size" ref adapter $L $FIRST "$STEPS"
  [ "$size" = small ] && train_torch "$size" ref512 adapter $L $FIRST "$STEPS"
  eval_both "$size"
  gen_both "$size"
  if [ "$size" = small ]; then
    rep=0
    while [ $rep -lt $REPS ]; do
      train_c small bf16 full 0 $FIRST "$STEPS"
      train_torch small opt full 0 $FIRST "$STEPS"
      rep=$((rep + 1))
    done
    train_torch small ref full 0 $FIRST "$STEPS"
  fi
done

bn=$(busy_note)
[ -n "$bn" ] && note "$bn"
"$TOOL" report --results "$RES"
echo
psize=medium
case " $SIZES " in *" medium "*) ;; *) psize=small ;; esac
pl=11; [ $psize = small ] && pl=3
echo "where a C adapter training step goes ($psize bf16; the real step, each op timed through the tape hook):"
"$TOOL" profile --model "$FIX/$psize-bf16" --tokenizer "$TOKENIZER" --data "$DATA" --adapter-layer $pl --first 2 --steps 4 \
  --threads "$THREADS"
echo
PEAK=$(sed -n 's/.*"kind":"peak".*"gflops":\([0-9.]*\).*/\1/p' "$RES" | head -n 1)
"$TOOL" kernels --threads "$THREADS" --model medium ${PEAK:+--peak $PEAK}
echo
echo "bench: done in $(( $(date +%s) - T0 )) s; raw results in $RES, logs in $OUT"
