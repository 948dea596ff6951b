#!/bin/sh
# Runs every test binary in BUILD/tests (from the repository root) and sums their results.
# The last line is "N passed, N failed" (", N skipped" after it); exit status 1 on any failure.
BUILD=${1:-build}
# tests that drive the binary use the one of this build (debug/asan builds have their own)
export LLAMA_ADAPTER_BIN="$BUILD/llama-adapter"
passed=0; failed=0; skipped=0; broken=""
for t in "$BUILD"/tests/test_*; do
  [ -x "$t" ] || continue
  case "$t" in *.o|*.d) continue ;; esac
  name=$(basename "$t")
  out=$(mktemp)
  "$t" >"$out" 2>&1
  rc=$?
  cat "$out"
  line=$(grep "^# $name: " "$out" | tail -n 1)
  rm -f "$out"
  if [ -z "$line" ]; then
    echo "# $name: crashed or ended early (exit $rc)"
    failed=$((failed + 1)); broken="$broken $name"; continue
  fi
  p=$(echo "$line" | sed -n 's/.*: \([0-9]*\) passed, \([0-9]*\) failed, \([0-9]*\) skipped/\1/p')
  f=$(echo "$line" | sed -n 's/.*: \([0-9]*\) passed, \([0-9]*\) failed, \([0-9]*\) skipped/\2/p')
  s=$(echo "$line" | sed -n 's/.*: \([0-9]*\) passed, \([0-9]*\) failed, \([0-9]*\) skipped/\3/p')
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then failed=$((failed + 1)); broken="$broken $name"; fi
done
[ -n "$broken" ] && echo "broken test binaries:$broken"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
