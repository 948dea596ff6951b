#!/bin/sh
# `make bench`: speed of the C trainer side by side with PyTorch on the same CPU, same models,
# same token ids, same batches (file order), same schedule. Prints tables; never pass/fail.
#
#   sh bench/run_bench.sh BUILD_DIR        (BUILD_DIR/llama-adapter and BUILD_DIR/bench/bench_tool;
#                                           BUILD_DIR/bench/gemm_peak is run too when built)
#
# What runs (adapter training: batch 4, max_seq_len 512, K=10, the first 28 Alpaca examples in file
# order = 7 micro-batches, 2 warm-up + 5 timed steps; synthetic data without ../shared):
#   peaks      bench_tool peak: the f32 FMA and vdpbf16ps instruction peaks (the f32 and bf16
#              paths; AMX is named, it has no kernel here), sgemm and kn_gemm_bf16 rates;
#              PyTorch's f32 and bf16 matmul rates
#   shapes     small (dim 256 x 4, L=3), medium (768 x 12, L=10), 7b-slice (4096 x 2, hidden
#              11008, 32 heads, L=2: both layers adapted), vocab 32000, random weights in bf16
#   C          --precision bf16 and --precision f32 on the bf16 file (f32 also on the f32 file
#              for small and medium)
#   PyTorch    bench/peer_torch.py: fp32 reference-style (padded to max_seq_len 512, autograd
#              through every layer, logits everywhere), fp32 padded to the micro-batch's longest,
#              fp32 optimised (unpadded, frozen layers under no_grad, logits at labelled rows),
#              bf16 optimised and bf16 padded (model.to(torch.bfloat16): bf16 weights and
#              activations, oneDNN's AVX512-BF16 GEMMs), autocast (f32 weights, bf16 GEMMs);
#              the fastest of them is the peer of the shape
#   then       forward-only eval and greedy decoding (small, medium), full fine-tuning (small),
#              where a C step spends its time (bench_tool profile), kernel micro-benchmarks
#              (bench_tool kernels) and, not with BENCH_QUICK, gemm_peak's 7B GEMM table
# The report (bench_tool report; how each number is computed is in bench/bench_tool.c's header)
# ends with one summary table: per shape C bf16, C f32, the fastest PyTorch, PyTorch fp32
# unpadded and reference-style in loss tokens/s with MFU, and the ratios "C bf16 / fastest
# PyTorch", "C f32 / PyTorch fp32 unpadded", "C bf16 / PyTorch reference-style".
#
# Environment: BENCH_THREADS (default 2), BENCH_SIZES (default "small medium 7b-slice"),
# BENCH_QUICK=1 (one run per configuration instead of two, 1 warm-up + 3 timed steps (the 7B
# slice: 2, and without its PyTorch padded-to-longest and autocast configurations), no gemm_peak
# table),
# LLAMA_ADAPTER_SHARED (default ../shared),
# BENCH_NICE (default -15; 0 = off): as root, the scheduling priority of this session's
# autogroup while the benchmark runs (restored at exit). Other busy processes otherwise halve
# the CPU and, worse, preempt OpenMP threads mid-region: steps then take several times longer
# for C and PyTorch alike.
# Time budget on 2 idle cores: under 25 minutes (BENCH_QUICK=1: under 10), most of it the 7B
# slice's PyTorch fp32 configurations (reference-style: tens of seconds per step); each run's wall
# time is printed. The 7B slice's fixture (1.3 GB of bf16) is made once and cached.
# Fixtures (random HF models, tokens) are cached in BUILD_DIR/bench_fixtures; results and logs
# go to BUILD_DIR/bench_out (results.jsonl is the raw data the report is made from).
# What it does not do: decide anything. Correctness against PyTorch is
# tests/test_torch_reference.c; this only prints the loss cross-check it sees on the way.
set -u
BUILD=${1:-build}
BIN=$BUILD/llama-adapter
TOOL=$BUILD/bench/bench_tool
GEMM_PEAK=$BUILD/bench/gemm_peak
PY=/usr/bin/python3
PEER=bench/peer_torch.py
THREADS=${BENCH_THREADS:-2}
SIZES=${BENCH_SIZES:-small medium 7b-slice}
QUICK=${BENCH_QUICK:-0}
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
TIMEV=0
[ -x /usr/bin/time ] && TIMEV=1

check_idle "peaks"
say "measuring the peak of each compute path"
PEAKLINE=$("$TOOL" peak --threads "$THREADS")
echo "$PEAKLINE" >> "$RES"
# the C bf16 runs need AVX512-BF16 (--precision bf16 refuses otherwise)
HAVE_BF16=$(echo "$PEAKLINE" | sed -n 's/.*"bf16_peak":\([0-9.]*\).*/\1/p' | awk '{print ($1 > 0) ? 1 : 0}')
[ "$HAVE_BF16" = 1 ] || note "this CPU has no AVX512-BF16: C runs at --precision f32 only"
[ $HAVE_TORCH = 1 ] && "$PY" $PEER matmul --threads "$THREADS" >> "$RES"

say "fixtures in $FIX (cached; the 7B slice takes a minute the first time)"
"$TOOL" fixtures --out "$FIX" --shared "$SHARED" --sizes "$SIZES" || exit 1
. "$FIX/fixtures.sh"
note "data: $DATA_SOURCE"
TOK=$FIX/tokens.json
ETOK=$FIX/eval_tokens.json
"$TOOL" tokens --tokenizer "$TOKENIZER" --data "$TRAIN_DATA" --max-seq-len $MAXLEN --out "$TOK" || exit 1
"$TOOL" tokens --tokenizer "$TOKENIZER" --data "$EVAL_DATA" --max-seq-len $MAXLEN --out "$ETOK" || exit 1
RUNNO=0

# The peak RSS of a finished C run, MB (10^6 bytes): /usr/bin/time -v's, else the train log's.
c_rss() {
  kb=$( [ -f "$1.time" ] && sed -n 's/.*Maximum resident set size (kbytes): //p' "$1.time")
  if [ -n "$kb" ]; then
    awk -v k="$kb" 'BEGIN{printf "%.1f", k * 1024 / 1e6}'
  else
    v=$(sed -n 's/^peak RSS: \([0-9.]*\) MB.*/\1/p' "$1.log" | tail -n 1)
    echo "${v:-0}"
  fi
}

# train_c SIZE PRECISION WEIGHTS METHOD L FIRST STEPS (WEIGHTS: which file, bf16 or f32)
train_c() {
  size=$1; prec=$2; wt=$3; method=$4; L=$5; first=$6; steps=$7
  RUNNO=$((RUNNO + 1))
  run=$OUT/c-$size-$prec-$wt-$method-$RUNNO
  rm -rf "$run"
  init=""
  [ "$method" = adapter ] && init="--init-adapter $FIX/init-$size.safetensors"
  check_idle "C $method training, $size $prec"
  say "C $method training: $size, --precision $prec, $wt weights, $first + $steps steps"
  tv=""
  [ $TIMEV = 1 ] && tv="/usr/bin/time -v -o $run.time"
  t=$(date +%s)
  $tv "$BIN" train --model "$FIX/$size-$wt" --tokenizer "$TOKENIZER" --data "$TRAIN_DATA" --out "$run" --method "$method" \
    $init --no-shuffle --batch-size $B --max-seq-len $MAXLEN --max-steps $((first + steps)) --threads "$THREADS" \
    --precision "$prec" --log-every 0 --keep 1 > "$run.log" 2>&1 || { say "C training failed: see $run.log"; }
  say "  $(( $(date +%s) - t )) s"
  rm -rf "$run"/ckpt-*.h5 "$run/model" # only metrics.jsonl is needed (a full run writes ~0.3 GB)
  printf '{"kind":"train","impl":"c","size":"%s","precision":"%s","weights":"%s","method":"%s","model_dir":"%s","tokens":"%s","batch":%d,"first":%d,"steps":%d,"K":%d,"L":%d,"metrics":"%s/metrics.jsonl","peak_rss_mb":%s}\n' \
    "$size" "$prec" "$wt" "$method" "$FIX/$size-$wt" "$TOK" $B "$first" "$steps" $K "$L" "$run" "$(c_rss "$run")" >> "$RES"
}

# train_torch SIZE STYLE PRECISION METHOD L FIRST STEPS (always the bf16 file: converted exactly to
# f32 on load for f32 and autocast, kept in bf16 for bf16)
train_torch() {
  size=$1; style=$2; prec=$3; method=$4; L=$5; first=$6; steps=$7
  [ $HAVE_TORCH = 1 ] || return 0
  wts=f32
  [ "$prec" = bf16 ] && wts=bf16
  log=$OUT/torch-$size-$style-$prec-$method.log
  check_idle "PyTorch $style $prec $method training, $size"
  say "PyTorch $style $prec $method training: $size, $first + $steps steps"
  t=$(date +%s)
  "$PY" $PEER train --model "$FIX/$size-bf16" --tokens "$TOK" --style "$style" --precision "$prec" --method "$method" \
    --init-adapter "$FIX/init-$size.safetensors" --batch-size $B --max-seq-len $MAXLEN --first "$first" --steps "$steps" \
    --threads "$THREADS" --tag size="$size" --tag weights=$wts --tag model_dir="$FIX/$size-bf16" --tag tokens="$TOK" \
    --tag K=$K --tag L="$L" >> "$RES" 2> "$log" || say "PyTorch run failed: see $log"
  say "  $(( $(date +%s) - t )) s"
}

eval_both() {
  size=$1
  check_idle "eval, $size"
  say "forward-only eval: $size"
  for cfg in "bf16 bf16" "f32 bf16" "f32 f32"; do
    set -- $cfg
    prec=$1; wt=$2
    [ "$prec" = bf16 ] && [ "$HAVE_BF16" != 1 ] && continue
    log=$OUT/c-eval-$size-$prec-$wt.log
    line=$("$BIN" eval --model "$FIX/$size-$wt" --tokenizer "$TOKENIZER" --data "$EVAL_DATA" --batch-size $B \
      --max-seq-len $MAXLEN --threads "$THREADS" --precision "$prec" 2> "$log")
    secs=$(sed -n 's/.* in \([0-9.]*\) s:.*/\1/p' "$log")
    loss=$(echo "$line" | sed -n 's/.*"loss":\([-0-9.eE+]*\).*/\1/p')
    printf '{"kind":"eval","impl":"c","size":"%s","precision":"%s","weights":"%s","model_dir":"%s","tokens":"%s","examples":32,"batch":%d,"seconds":%s,"loss":%s}\n' \
      "$size" "$prec" "$wt" "$FIX/$size-$wt" "$ETOK" $B "${secs:--1}" "${loss:-null}" >> "$RES"
  done
  [ $HAVE_TORCH = 1 ] || return 0
  for cfg in "ref f32" "opt f32" "opt bf16"; do
    set -- $cfg
    wts=f32
    [ "$2" = bf16 ] && wts=bf16
    "$PY" $PEER eval --model "$FIX/$size-bf16" --tokens "$ETOK" --style "$1" --precision "$2" --examples 32 --batch-size $B \
      --threads "$THREADS" --tag size="$size" --tag weights=$wts --tag model_dir="$FIX/$size-bf16" --tag tokens="$ETOK" >> "$RES"
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
  for cfg in "f32 bf16" "bf16 bf16" "f32 f32"; do
    set -- $cfg
    prec=$1; wt=$2
    [ "$prec" = bf16 ] && [ "$HAVE_BF16" != 1 ] && continue
    log=$OUT/c-gen-$size-$prec-$wt.log
    out=$("$BIN" generate --model "$FIX/$size-$wt" --prompt-ids "$ids" --print-ids --temperature 0 --max-new-tokens 64 \
      --threads "$THREADS" --precision "$prec" 2> "$log")
    st=$(grep 'decode steps' "$log" | tail -n 1)
    nd=$(echo "$st" | sed -n 's/.*, \([0-9]*\) decode steps in \([0-9.]*\) s.*/\1/p')
    sec=$(echo "$st" | sed -n 's/.*, \([0-9]*\) decode steps in \([0-9.]*\) s.*/\2/p')
    np=$(echo "$st" | sed -n 's/.*prompt \([0-9]*\) tokens.*/\1/p')
    ng=$(echo "$st" | sed -n 's/.*generated \([0-9]*\) tokens.*/\1/p')
    gids=$(echo "$out" | tr -s ' ,\n' ',' | sed 's/^,//; s/,$//')
    printf '{"kind":"gen","impl":"c","size":"%s","precision":"%s","weights":"%s","model_dir":"%s","prompt":%s,"new":%s,"decode_steps":%s,"seconds":%s,"ids":[%s]}\n' \
      "$size" "$prec" "$wt" "$FIX/$size-$wt" "${np:-0}" "${ng:-0}" "${nd:-0}" "${sec:--1}" "$gids" >> "$RES"
  done
  [ $HAVE_TORCH = 1 ] || return 0
  "$PY" $PEER gen --model "$FIX/$size-bf16" --prompt-ids "$ids" --new 64 --threads "$THREADS" \
    --tag size="$size" --tag precision=f32 --tag weights=f32 --tag model_dir="$FIX/$size-bf16" >> "$RES"
}

REPS=2
[ "$QUICK" = 1 ] && REPS=1
CB=""
[ "$HAVE_BF16" = 1 ] && CB=bf16
PSIZE=""
for size in $SIZES; do
  FIRST=2; STEPS=5; reps=$REPS; extra=1
  [ "$QUICK" = 1 ] && { FIRST=1; STEPS=3; }
  case $size in
    small) L=3 ;;
    medium) L=10 ;;
    7b-slice) L=2; reps=1; [ "$QUICK" = 1 ] && { FIRST=1; STEPS=2; extra=0; } ;;
    *) say "unknown size $size"; continue ;;
  esac
  PSIZE=$size; PL=$L; PFIRST=$FIRST; PSTEPS=$STEPS
  mdir=$FIX/$size-f32
  [ -d "$mdir" ] || mdir=$FIX/$size-bf16
  "$TOOL" adapter --model "$mdir" --adapter-len $K --adapter-layer $L --out "$FIX/init-$size.safetensors" || exit 1
  # C and the likely fastest PyTorch configurations interleaved, `reps` times each (the report
  # keeps each configuration's best run)
  rep=0
  while [ $rep -lt $reps ]; do
    for p in $CB f32; do train_c "$size" $p bf16 adapter $L $FIRST $STEPS; done
    train_torch "$size" opt bf16 adapter $L $FIRST $STEPS
    train_torch "$size" opt f32 adapter $L $FIRST $STEPS
    rep=$((rep + 1))
  done
  [ -d "$FIX/$size-f32" ] && train_c "$size" f32 f32 adapter $L $FIRST $STEPS
  train_torch "$size" ref512 f32 adapter $L $FIRST $STEPS
  if [ $extra = 1 ]; then
    train_torch "$size" ref f32 adapter $L $FIRST $STEPS
    train_torch "$size" ref bf16 adapter $L $FIRST $STEPS
    train_torch "$size" opt autocast adapter $L $FIRST $STEPS
  fi
  [ "$size" = 7b-slice ] && continue # eval and decoding: small and medium
  eval_both "$size"
  gen_both "$size"
  if [ "$size" = small ]; then
    rep=0
    while [ $rep -lt $REPS ]; do
      for p in $CB f32; do train_c small $p bf16 full 0 $FIRST $STEPS; done
      train_torch small opt f32 full 0 $FIRST $STEPS
      rep=$((rep + 1))
    done
    train_torch small opt autocast full 0 $FIRST $STEPS
    train_torch small ref f32 full 0 $FIRST $STEPS
  fi
done

bn=$(busy_note)
[ -n "$bn" ] && note "$bn"
"$TOOL" report --results "$RES"
echo
if [ -n "$PSIZE" ]; then
  pp=f32
  [ "$HAVE_BF16" = 1 ] && pp=bf16
  echo "where a C adapter training step goes ($PSIZE, --precision $pp; the real step, each op timed through the tape hook):"
  "$TOOL" profile --model "$FIX/$PSIZE-bf16" --tokenizer "$TOKENIZER" --data "$TRAIN_DATA" --adapter-layer "$PL" --first $PFIRST --steps $PSTEPS \
    --threads "$THREADS" --precision $pp
  echo
fi
PEAK=$(echo "$PEAKLINE" | sed -n 's/.*"gflops":\([0-9.]*\).*/\1/p')
"$TOOL" kernels --threads "$THREADS" --model medium ${PEAK:+--peak $PEAK}
if [ "$QUICK" != 1 ] && [ -x "$GEMM_PEAK" ]; then
  echo
  echo "GEMMs at the 7B layer shapes ($GEMM_PEAK):"
  OMP_NUM_THREADS=$THREADS "$GEMM_PEAK"
fi
echo
echo "bench: done in $(( $(date +%s) - T0 )) s; raw results in $RES, logs in $OUT"
