#!/usr/bin/env bash
# Build every fuzz target and run each for a while from the committed seed corpora.
#
#   fuzz/run.sh [SECONDS] [TARGET...]       default: 30 s each, every target
#   fuzz/run.sh --merge [SECONDS] [TARGET...]
#                                           also fold what the run found into fuzz/corpus/,
#                                           minimised (hand-made seed-* files are kept)
#
# Each target fuzzes a scratch copy of fuzz/corpus/<target>/ (a CI run leaves the checkout
# clean), for SECONDS of wall time. Any crash, panic, timeout or out-of-memory fails the script;
# the input is saved in fuzz/artifacts/<target>/ (ignored by git) and its log tail printed. A
# line per target reports runs, exec/s and coverage.
#
# Toolchain: stable Rust with `cargo fuzz build -s none` (coverage instrumentation and
# libFuzzer, no sanitizer: -Zsanitizer is nightly-only). What these targets look for is panics,
# hangs and unbounded memory, which need no sanitizer; the workspace forbids unsafe code. For
# AddressSanitizer (the C of liblzma, ring): FUZZ_TOOLCHAIN=nightly FUZZ_SANITIZER=address.
#
# Environment: FUZZ_TOOLCHAIN (default: the default toolchain), FUZZ_SANITIZER (default none),
# FUZZ_TIMEOUT (seconds one input may take, default 30), FUZZ_RSS_MB (default 2048).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

ALL_TARGETS=(nbd_handshake_and_requests xz_index http_content_range fat_plan iso_plan ext4_plan qcow2)

merge=0
if [[ "${1:-}" == "--merge" ]]; then
  merge=1
  shift
fi
seconds=${1:-30}
if ! [[ "$seconds" =~ ^[0-9]+$ ]]; then
  echo "usage: fuzz/run.sh [--merge] [SECONDS] [TARGET...]" >&2
  exit 2
fi
shift || true
targets=("$@")
((${#targets[@]})) || targets=("${ALL_TARGETS[@]}")

# The default toolchain (stable) unless FUZZ_TOOLCHAIN names another (rustup's `+toolchain`).
cargo=(cargo)
rustc=(rustc)
if [[ -n "${FUZZ_TOOLCHAIN:-}" ]]; then
  cargo=(cargo "+$FUZZ_TOOLCHAIN")
  rustc=(rustc "+$FUZZ_TOOLCHAIN")
fi
sanitizer=${FUZZ_SANITIZER:-none}
timeout=${FUZZ_TIMEOUT:-30}
rss_mb=${FUZZ_RSS_MB:-2048}

if ! "${cargo[@]}" fuzz --version >/dev/null 2>&1; then
  echo "error: cargo-fuzz is not installed (cargo install cargo-fuzz --locked)" >&2
  exit 1
fi

echo "==> building the fuzz targets (${cargo[*]} fuzz build -s $sanitizer)"
"${cargo[@]}" fuzz build -s "$sanitizer"

triple=$("${rustc[@]}" -vV | sed -n 's/^host: //p')
bindir=fuzz/target/$triple/release

work=$(mktemp -d "${TMPDIR:-/tmp}/disksynth-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

failed=()
for t in "${targets[@]}"; do
  bin=$bindir/$t
  if [[ ! -x "$bin" ]]; then
    echo "error: no fuzz target $t (built: ${ALL_TARGETS[*]})" >&2
    exit 2
  fi
  mkdir -p "$work/$t" "fuzz/artifacts/$t"
  if [[ -d fuzz/corpus/$t ]]; then
    cp -r "fuzz/corpus/$t/." "$work/$t/"
  fi
  log=$work/$t.log
  echo "==> $t: ${seconds} s from $(find "$work/$t" -type f | wc -l) inputs"
  rc=0
  "$bin" "$work/$t" \
    -max_total_time="$seconds" -timeout="$timeout" -rss_limit_mb="$rss_mb" \
    -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1 || rc=$?
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(sed -n 's/.*cov: \([0-9]*\) ft: \([0-9]*\) corp: \([0-9]*\).*/cov \1, features \2, corpus \3/p' <<<"$done_line")
  if ((rc != 0)); then
    echo "FAILED: $t (exit $rc); last lines of its log:"
    tail -n 60 "$log"
    echo "the input is in fuzz/artifacts/$t/"
    failed+=("$t")
  else
    echo "    ok: ${runs:-?} runs, ${eps:-?} exec/s, ${cov:-no coverage line}"
  fi
  if ((merge)) && ((rc == 0)); then
    # Hand-made seeds stay; of everything else, what adds coverage to them.
    new=$work/$t.merged
    mkdir -p "$new"
    if compgen -G "fuzz/corpus/$t/seed-*" >/dev/null; then
      cp "fuzz/corpus/$t"/seed-* "$new/"
    fi
    "$bin" -merge=1 -timeout="$timeout" -rss_limit_mb="$rss_mb" "$new" "$work/$t" \
      >"$work/$t.merge.log" 2>&1
    rm -rf "fuzz/corpus/$t"
    mv "$new" "fuzz/corpus/$t"
    echo "    merged: fuzz/corpus/$t holds $(find "fuzz/corpus/$t" -type f | wc -l) inputs"
  fi
done

if ((${#failed[@]})); then
  echo "fuzzing found failures in: ${failed[*]}" >&2
  exit 1
fi
echo "==> every fuzz target ran ${seconds} s without a failure"
