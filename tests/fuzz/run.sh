#!/usr/bin/env bash
# Coverage-guided fuzzing of Kiln's front ends with cargo-fuzz (libFuzzer).
#
#   bash tests/fuzz/run.sh [SECONDS_PER_TARGET] [TARGET ...]
#
# Targets (tests/fuzz/fuzz_targets/): onnx_import (bytes -> load_onnx_bytes),
# text_parse (.kir parser, verifier, printer round trip), compile_run
# (import + -O2 on the interpreter and the cpu backend + a run, small limits).
#
# Works on the stable toolchain: cargo-fuzz needs nightly-only flags
# (-Zsanitizer=address), which RUSTC_BOOTSTRAP=1 lets stable rustc accept.
# The first run installs cargo-fuzz and builds each target with
# AddressSanitizer (minutes). Corpora are seeded from the ONNX node suite,
# the shared models under 2 MB (onnx_import only) and the repository's
# .kir files; they grow
# in tests/fuzz/corpus/<target>/ (ignored by git). A crash leaves its
# input in tests/fuzz/artifacts/<target>/: turn each into a regression test
# under tests/ (tests/tests/hostile.rs) before fixing it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(onnx_import text_parse compile_run)
export RUSTC_BOOTSTRAP=1

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

seed() {
  local target=$1 dir="$here/corpus/$1"
  mkdir -p "$dir"
  [ -n "$(ls -A "$dir" 2>/dev/null)" ] && return
  case $target in
    text_parse)
      find "$root/tests" "$root/ir-spec" -name '*.kir' -size -64k \
        -exec sh -c 'cp "$1" "$2/$(basename "$(dirname "$1")")_$(basename "$1")"' _ {} "$dir" \; ;;
    *)
      local suite
      suite="$(bash "$root/tests/fetch-node-suite.sh" | tail -n1)"
      for m in "$suite"/*/model.onnx; do
        cp "$m" "$dir/$(basename "$(dirname "$m")").onnx"
      done
      # Whole real models only for import: compile_run would interpret
      # ResNet-50's 8 GFLOP under AddressSanitizer for 10 s an input.
      if [ "$target" = onnx_import ]; then
        find "$root/../shared/models" "$root/tests/models" -name model.onnx -size -2M 2>/dev/null |
          while read -r m; do cp "$m" "$dir/$(basename "$(dirname "$m")").onnx"; done
      fi ;;
  esac
}

cd "$here"
failed=0
for t in "${targets[@]}"; do
  seed "$t"
  mkdir -p "$here/artifacts/$t"
  echo "== $t for ${secs}s" >&2
  # -rss_limit_mb: a model that asks for too much must fail by Kiln's
  # limits, not by exhausting memory; -timeout: no input may take 10 s.
  set +e
  cargo fuzz run --fuzz-dir "$here" --release "$t" "$here/corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
    -artifact_prefix="$here/artifacts/$t/" -print_final_stats=1 2>&1 |
    tee "$here/artifacts/$t/last-run.log" | grep -E "^(#[0-9]+.*DONE|stat::|==.*ERROR|SUMMARY|Done)"
  status=${PIPESTATUS[0]}
  set -e
  # A crash, leak, timeout or memory blow-up: libFuzzer exits non-zero
  # and leaves the input in artifacts/; the script fails too.
  if [ "$status" -ne 0 ]; then
    echo "== $t: cargo fuzz exited $status; the input is in $here/artifacts/$t/" >&2
    failed=1
  fi
done
exit "$failed"
