#!/usr/bin/env bash
# disksynth vs nbdkit, side by side, same workloads, same machine, one run.
#
# Usage:  bench/run.sh                     # real comparison (builds target/release/disksynth if missing)
#         BENCH_SELF_TEST=1 bench/run.sh   # plumbing check: nbdkit on BOTH sides (ratios should be ~1.0)
#
# Environment knobs (defaults in brackets):
#   DISKSYNTH_BIN       disksynth binary            [<repo>/target/release/disksynth]
#   BENCH_SELF_TEST     1 = run nbdkit in place of disksynth                          [0]
#   BENCH_REPS          repetitions of each nbdcopy measurement; table shows MEDIAN   [5]
#   BENCH_FIO_REPS      repetitions of each fio measurement; table shows MEDIAN       [5]
#   BENCH_WARMUP        1 = one untimed nbdcopy read per side before each timed series  [1]
#   BENCH_IDLE_WAIT     max seconds to wait at start for other processes to go quiet  [300]
#   BENCH_BG_LIMIT      % of one core other processes may use before a workload is
#                       flagged as unreliable (and before the start-up wait ends)      [15]
#   BENCH_SIZE_MIB      size of the test file / memory disks in MiB                   [1024]
#   BENCH_FIO_RUNTIME   seconds per fio run                                           [10]
#   BENCH_STEP_TIMEOUT  seconds allowed for any single nbdcopy/fill/checksum step     [120]
#   BENCH_BUILD_TIMEOUT seconds allowed for `cargo build --release -p disksynth`      [1800]
#   BENCH_OUT           output directory                                              [<repo>/bench/out]
#
# Output: a table on stdout and the same table as markdown in $BENCH_OUT/latest.md,
# raw samples in $BENCH_OUT/latest.raw.tsv, server/client logs in $BENCH_OUT/logs/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DISKSYNTH_BIN=${DISKSYNTH_BIN:-$ROOT/target/release/disksynth}
SELF_TEST=${BENCH_SELF_TEST:-0}
REPS=${BENCH_REPS:-5}
FIO_REPS=${BENCH_FIO_REPS:-5}
WARMUP=${BENCH_WARMUP:-1}
IDLE_WAIT=${BENCH_IDLE_WAIT:-300}
BG_LIMIT=${BENCH_BG_LIMIT:-15}
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
FIO_RUNTIME=${BENCH_FIO_RUNTIME:-10}
STEP_TIMEOUT=${BENCH_STEP_TIMEOUT:-120}
BUILD_TIMEOUT=${BENCH_BUILD_TIMEOUT:-1800}
OUT=${BENCH_OUT:-$ROOT/bench/out}
BYTES=$((SIZE_MIB * 1024 * 1024))
SIZE_ARG=${SIZE_MIB}M # understood by nbdkit, disksynth and fio alike (powers of 1024)

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
CMDLINE="$({ env | grep -E '^(BENCH_[A-Z_]+|DISKSYNTH_BIN)=' || true; } | sort | tr '\n' ' ')bench/run.sh"

# ---------------------------------------------------------------- prerequisites
for tool in nbdkit nbdcopy nbdinfo fio timeout md5sum awk; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
if [ -x /usr/bin/python3 ]; then
    PY=/usr/bin/python3
elif command -v python3 >/dev/null; then
    PY=$(command -v python3)
elif command -v jq >/dev/null; then
    PY=
else
    die "need python3 or jq to parse fio JSON"
fi

mkdir -p "$OUT/logs"
rm -f "$OUT"/logs/*
RAW=$OUT/latest.raw.tsv
printf 'workload\tserver\trep\tvalue\tunit\n' >"$RAW"

if [ "$SELF_TEST" = 1 ]; then
    DS_LABEL="nbdkit#2 (self-test)"
    log "BENCH_SELF_TEST=1: the 'disksynth' column is a second nbdkit"
else
    DS_LABEL="disksynth"
    ensure_disksynth_bin
fi

# ---------------------------------------------------------------- machine line
fio_ver=$(fio --version)
if [ "$SELF_TEST" = 1 ]; then
    ds_ver="not used (self-test)"
else
    ds_ver=$(ds_version)
fi
MACHINE="$(host_line); $(nbd_versions), $fio_ver; disksynth $ds_ver"
log "machine: $MACHINE"

# ---------------------------------------------------------------- temp dir + cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/disksynth-bench.XXXXXX")
install_cleanup

# Pin the binary: a `cargo build` running elsewhere during the benchmark must not swap it mid-run.
if [ "$SELF_TEST" != 1 ]; then
    cp "$DISKSYNTH_BIN" "$TMP/disksynth"
    DISKSYNTH_BIN=$TMP/disksynth
fi

# start_server NAME KIND(nbdkit|disksynth) CMD...   -- foreground server, its pid is $!
start_server() {
    local name=$1 kind=$2
    shift 2
    local sock=$TMP/$name.sock uri pid
    uri=$(uri_of "$name")
    rm -f "$sock"
    log "start $name: $*"
    "$@" >"$OUT/logs/$name.stdout" 2>"$OUT/logs/$name.stderr" </dev/null &
    pid=$!
    SPID[$name]=$pid
    local deadline=$(($(date +%s) + 15))
    while [ ! -S "$sock" ]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" && rc=0 || rc=$?
            unset "SPID[$name]"
            problem "$name exited (status $rc) before creating its socket: $* -- stderr: $(tail -c 400 "$OUT/logs/$name.stderr" | tr '\n' ' ')"
            return 1
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            problem "$name did not create $sock within 15 s: $*"
            abandon "$name"
            return 1
        fi
        sleep 0.05
    done
    if ! timeout 10 nbdinfo --json "$uri" >"$OUT/logs/$name.nbdinfo.json" 2>>"$OUT/logs/$name.client.stderr"; then
        problem "$name: nbdinfo handshake failed or timed out (10 s): nbdinfo --json '$uri'"
        abandon "$name"
        return 1
    fi
    local info
    info=$(json_get "$OUT/logs/$name.nbdinfo.json" export-size can_multi_conn)
    log "$name ready (pid $pid): size/can_multi_conn = $info"
    [ "${info%% *}" = "$BYTES" ] || problem "$name: export size is ${info%% *}, expected $BYTES"
    [ "${info##* }" = true ] || problem "$name: CAN_MULTI_CONN not advertised, so nbdcopy --connections=4 silently uses 1 connection"
    if [ "$kind" = disksynth ]; then
        # CLI contract: line 1 of stdout is exactly the NBD URI.
        local line1=""
        for _ in $(seq 40); do
            line1=$(head -n1 "$OUT/logs/$name.stdout" 2>/dev/null || true)
            [ -z "$line1" ] || break
            sleep 0.05
        done
        [ "$line1" = "$uri" ] || problem "$name: stdout line 1 is '$line1', contract says '$uri' ($*)"
    fi
}

abandon() { # kill a server that is not usable, without waiting politely
    local pid=${SPID[$1]:-}
    [ -n "$pid" ] || return 0
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "SPID[$1]"
}

RSS_DECIMALS=0 # stop_server (bench/lib.sh): PEAK_RSS in whole MiB, and a log line per stop
LOG_STOPS=1

# json_get FILE KEY...  -> values of top-level keys (nbdinfo: first export) separated by spaces
json_get() {
    local f=$1
    shift
    if [ -n "$PY" ]; then
        "$PY" - "$f" "$@" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
e = d["exports"][0] if "exports" in d else d
print(" ".join(str(e.get(k)).lower() for k in sys.argv[2:]))
EOF
    else
        local k out=()
        for k in "$@"; do out+=("$(jq -r ".exports[0].$k" "$f")"); done
        echo "${out[*]}"
    fi
}

fio_iops() {
    if [ -n "$PY" ]; then
        "$PY" -c 'import json,sys
j=json.load(open(sys.argv[1]))["jobs"][0]
sys.exit("fio job error %s" % j["error"]) if j["error"] else print("%.0f" % j["read"]["iops"])' "$1"
    else
        [ "$(jq -r '.jobs[0].error' "$1")" = 0 ] || return 1
        jq -r '.jobs[0].read.iops | floor' "$1"
    fi
}

# ---------------------------------------------------------------- background-load accounting
# cpu_snapshot, cpu_delta, section_begin and wait_for_idle: bench/lib.sh. Here one row per section.
section_end() { # section_end WORKLOAD
    BG[$1]=$(cpu_delta "$SECTION_SNAP")
    local f=${BG[$1]%% *} st=${BG[$1]##* }
    if [ "$f" -gt "$BG_LIMIT" ]; then
        problem "$1: other processes used ~${f}% of a core during this workload (limit ${BG_LIMIT}%); its numbers are unreliable"
    fi
    [ "$st" -le "$BG_LIMIT" ] || problem "$1: hypervisor steal ~${st}% of a core during this workload"
}
IDLE_GIVEUP_FMT='machine still busy after waiting %ss (other processes ~%s%% of a core); measuring anyway'

# ---------------------------------------------------------------- measurements
# SAMPLES, ORDER, UNIT, TARGET, record, median and sides_for_rep: bench/lib.sh.
declare -A FAILS=()
add_workload() { ORDER+=("$1"); UNIT[$1]=$2; TARGET[$1]=$3; }

# nbdcopy_read WORKLOAD SIDE SERVERNAME CONNS REP
nbdcopy_read() {
    local wl=$1 side=$2 name=$3 c=$4 rep=$5 t0 t1 uri cmd
    uri=$(uri_of "$name")
    # --threads=N too: nbdcopy caps connections at its thread count, which defaults to nproc.
    cmd=(nbdcopy --no-extents --connections="$c" --threads="$c" "$uri" null:)
    t0=$(now_ns)
    if timeout "$STEP_TIMEOUT" "${cmd[@]}" 2>>"$OUT/logs/$name.client.stderr"; then
        t1=$(now_ns)
        local v
        v=$(awk -v b="$BYTES" -v ns="$((t1 - t0))" 'BEGIN {printf "%.3f", b / (ns / 1e9) / 1073741824}')
        record "$wl" "$side" "$rep" "$v"
        log "  $wl [$side] rep $rep: $v GiB/s"
    else
        local rc=$?
        FAILS["$wl|$side"]=$((${FAILS["$wl|$side"]:-0} + 1))
        problem "$wl [$side]: '${cmd[*]}' failed (status $rc$([ $rc = 124 ] && echo ", timed out after ${STEP_TIMEOUT}s"))"
    fi
}

# nbdcopy_write WORKLOAD SIDE SERVERNAME REP  -- copy the data file into the export (nbdcopy defaults)
nbdcopy_write() {
    local wl=$1 side=$2 name=$3 rep=$4 t0 t1 v cmd
    cmd=(nbdcopy "$DATA" "$(uri_of "$name")")
    t0=$(now_ns)
    if timeout "$STEP_TIMEOUT" "${cmd[@]}" 2>>"$OUT/logs/$name.client.stderr"; then
        t1=$(now_ns)
        v=$(awk -v b="$BYTES" -v ns="$((t1 - t0))" 'BEGIN {printf "%.3f", b / (ns / 1e9) / 1073741824}')
        record "$wl" "$side" "$rep" "$v"
        log "  $wl [$side] rep $rep: $v GiB/s"
    else
        local rc=$?
        FAILS["$wl|$side"]=$((${FAILS["$wl|$side"]:-0} + 1))
        problem "$wl [$side]: '${cmd[*]}' failed (status $rc)"
    fi
}

# fio_rand WORKLOAD SIDE SERVERNAME QD REP
fio_rand() {
    local wl=$1 side=$2 name=$3 qd=$4 rep=$5 uri json v
    uri=$(uri_of "$name")
    json=$OUT/logs/fio-$name-qd$qd-rep$rep.json
    local cmd=(fio --name=r --ioengine=nbd --uri="$uri" --rw=randread --bs=4k --iodepth="$qd"
        --runtime="$FIO_RUNTIME" --time_based --size="$SIZE_ARG" --output-format=json --output="$json")
    if timeout $((FIO_RUNTIME + 60)) "${cmd[@]}" >>"$OUT/logs/$name.client.stderr" 2>&1 && v=$(fio_iops "$json"); then
        record "$wl" "$side" "$rep" "$v"
        log "  $wl [$side] rep $rep: $v IOPS"
    else
        local rc=$?
        FAILS["$wl|$side"]=$((${FAILS["$wl|$side"]:-0} + 1))
        problem "$wl [$side]: '${cmd[*]}' failed (status $rc)"
    fi
}

# checksum NAME: full read through the server must match the source file.
checksum() {
    local name=$1 sum
    sum=$(timeout "$STEP_TIMEOUT" nbdcopy "$(uri_of "$name")" - 2>>"$OUT/logs/$name.client.stderr" | md5sum | awk '{print $1}') || sum="(read failed)"
    if [ "$sum" = "$REF_MD5" ]; then
        log "  $name content OK (md5 $sum)"
    else
        problem "$name: content read back via 'nbdcopy $(uri_of "$name") -' has md5 $sum, expected $REF_MD5"
    fi
}

# One untimed read per side before the timed repetitions (BENCH_WARMUP=0 to skip).
warmup() {
    [ "$WARMUP" = 1 ] || return 0
    local side name
    for side in nbdkit ds; do
        name=${NAME_OF[$side]}
        if avail "$name"; then
            timeout "$STEP_TIMEOUT" nbdcopy --no-extents --connections="$1" --threads="$1" "$(uri_of "$name")" null: \
                2>>"$OUT/logs/$name.client.stderr" || problem "$name: warm-up read with $1 connection(s) failed"
        fi
    done
}

SIDE_REF=nbdkit # sides_for_rep: "nbdkit ds" on odd repetitions, "ds nbdkit" on even ones

start_ds() { # start_ds NAME ARGS...  -- the disksynth side (or nbdkit#2 in self-test)
    local name=$1 sock=$TMP/$1.sock
    shift
    if [ "$SELF_TEST" = 1 ]; then
        start_server "$name" nbdkit nbdkit -f -U "$sock" "$@"
    else
        start_server "$name" disksynth "$DISKSYNTH_BIN" "$@" -U "$sock"
    fi
}

add_workload "file seq read, 1 conn" "GiB/s" 1.3
add_workload "file seq read, 4 conns" "GiB/s" 1.1
add_workload "memory (filled) seq read, 1 conn" "GiB/s" ""
add_workload "memory (filled) seq read, 4 conns" "GiB/s" ""
add_workload "memory fill (nbdcopy FILE URI, write)" "GiB/s" ""
add_workload "memory overwrite (same copy again)" "GiB/s" ""
add_workload "file 4K randread fio QD1" "IOPS" ""
add_workload "file 4K randread fio QD16" "IOPS" 1.2

wait_for_idle
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# --- data file
DATA=$TMP/data.bin
log "creating $SIZE_MIB MiB data file from /dev/urandom"
timeout "$STEP_TIMEOUT" head -c "$BYTES" /dev/urandom >"$DATA"
timeout "$STEP_TIMEOUT" cat "$DATA" >/dev/null # warm the page cache
REF_MD5=$(timeout "$STEP_TIMEOUT" md5sum "$DATA" | awk '{print $1}')

# --- workload 1 + 3: file export
start_server nbdkit-file nbdkit nbdkit -f -U "$TMP/nbdkit-file.sock" file "$DATA" || true
start_ds ds-file file "$DATA" || true
declare -A NAME_OF=([nbdkit]=nbdkit-file [ds]=ds-file)
avail() { [ -n "${SPID[$1]:-}" ]; }
if avail nbdkit-file; then checksum nbdkit-file; fi
if avail ds-file; then checksum ds-file; fi
cat "$DATA" >/dev/null
for c in 1 4; do
    wl="file seq read, $c conn"; [ $c = 1 ] || wl+="s"
    warmup "$c"
    section_begin
    for rep in $(seq "$REPS"); do
        for side in $(sides_for_rep "$rep"); do
            if avail "${NAME_OF[$side]}"; then nbdcopy_read "$wl" "$side" "${NAME_OF[$side]}" "$c" "$rep"; fi
        done
    done
    section_end "$wl"
done
for qd in 1 16; do
    wl="file 4K randread fio QD$qd"
    section_begin
    for rep in $(seq "$FIO_REPS"); do
        for side in $(sides_for_rep "$rep"); do
            if avail "${NAME_OF[$side]}"; then fio_rand "$wl" "$side" "${NAME_OF[$side]}" "$qd" "$rep"; fi
        done
    done
    section_end "$wl"
done
stop_server nbdkit-file
stop_server ds-file

# --- workload 2: filled memory disk
start_server nbdkit-mem nbdkit nbdkit -f -U "$TMP/nbdkit-mem.sock" memory "$SIZE_ARG" || true
start_ds ds-mem memory "$SIZE_ARG" || true
NAME_OF=([nbdkit]=nbdkit-mem [ds]=ds-mem)
wl="memory fill (nbdcopy FILE URI, write)"
section_begin
for side in nbdkit ds; do
    if avail "${NAME_OF[$side]}"; then nbdcopy_write "$wl" "$side" "${NAME_OF[$side]}" 1; fi
done
section_end "$wl"
# Overwrite: same copy into the now fully allocated disk, so this is the steady-state write path.
wl="memory overwrite (same copy again)"
section_begin
for rep in $(seq "$REPS"); do
    for side in $(sides_for_rep "$rep"); do
        if avail "${NAME_OF[$side]}"; then nbdcopy_write "$wl" "$side" "${NAME_OF[$side]}" "$rep"; fi
    done
done
section_end "$wl"
for side in nbdkit ds; do
    if avail "${NAME_OF[$side]}"; then checksum "${NAME_OF[$side]}"; fi
done
for c in 1 4; do
    wl="memory (filled) seq read, $c conn"; [ $c = 1 ] || wl+="s"
    warmup "$c"
    section_begin
    for rep in $(seq "$REPS"); do
        for side in $(sides_for_rep "$rep"); do
            if avail "${NAME_OF[$side]}"; then nbdcopy_read "$wl" "$side" "${NAME_OF[$side]}" "$c" "$rep"; fi
        done
    done
    section_end "$wl"
done
stop_server nbdkit-mem
stop_server ds-mem

# ---------------------------------------------------------------- report
fmt() { # value unit
    [ -n "$1" ] || { echo "FAIL"; return; }
    if [ "$2" = IOPS ]; then printf '%.0f' "$1"; else printf '%.2f' "$1"; fi
}

ROWS=()
for wl in "${ORDER[@]}"; do
    u=${UNIT[$wl]}
    a=$(median "${SAMPLES["$wl|nbdkit"]:-}")
    b=$(median "${SAMPLES["$wl|ds"]:-}")
    ratio="n/a"
    [ -n "$a" ] && [ -n "$b" ] && ratio=$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", b / a}')
    tgt=${TARGET[$wl]}
    verdict=""
    if [ -n "$tgt" ]; then
        if [ "$ratio" = n/a ]; then verdict="no data"
        elif awk -v r="$ratio" -v t="$tgt" 'BEGIN {exit !(r >= t)}'; then verdict="PASS"
        else verdict="MISS"; fi
        tgt="≥${tgt}×"
    else
        tgt="—"
    fi
    [ "$SELF_TEST" = 1 ] && [ -n "$verdict" ] && verdict="($verdict, self-test)"
    n=$(wc -w <<<"${SAMPLES["$wl|nbdkit"]:-}")/$(wc -w <<<"${SAMPLES["$wl|ds"]:-}")
    bg=${BG[$wl]:-}
    bg="${bg%% *}%"
    ROWS+=("$wl|$u|$(fmt "$a" "$u")|$(fmt "$b" "$u")|$ratio|$tgt|$verdict|$bg|${SAMPLES["$wl|nbdkit"]:-}|${SAMPLES["$wl|ds"]:-}")
done

rss() { [ -n "${PEAK_RSS[$1]:-}" ] && echo "${PEAK_RSS[$1]} MiB" || echo "n/a"; }
RSS_LINE="file export: nbdkit $(rss nbdkit-file), $DS_LABEL $(rss ds-file); memory export: nbdkit $(rss nbdkit-mem), $DS_LABEL $(rss ds-mem)"
MD=$OUT/latest.md
{
    echo "## disksynth vs nbdkit — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    [ "$SELF_TEST" = 1 ] && echo "**SELF-TEST RUN (BENCH_SELF_TEST=1): both columns are nbdkit; ratios only show the noise floor.**" && echo
    echo "Command: \`$CMDLINE\` (nbdcopy reps=$REPS, fio reps=$FIO_REPS, size=${SIZE_MIB} MiB, fio runtime=${FIO_RUNTIME}s)"
    echo
    echo "Machine: $MACHINE"
    echo
    echo "Values are the **median** of the repetitions (nbdcopy: $REPS, fio: $FIO_REPS, first fill: 1), each side preceded by one untimed warm-up read; ratio = $DS_LABEL / nbdkit (higher is better for disksynth)."
    echo
    echo "| workload | unit | nbdkit | $DS_LABEL | ratio | target | result | bg CPU |"
    echo "|---|---|---:|---:|---:|---|---|---:|"
    for r in "${ROWS[@]}"; do
        IFS='|' read -r wl u a b ratio tgt verdict bg sa sb <<<"$r"
        echo "| $wl | $u | $a | $b | **$ratio** | $tgt | $verdict | $bg |"
    done
    echo
    echo "Peak RSS (VmHWM at stop): $RSS_LINE."
    echo
    echo "bg CPU = CPU used by processes other than this benchmark during that workload, in % of one core (> ${BG_LIMIT}% = unreliable). Load average at start: $LOAD_START."
    echo
    echo "Raw samples (nbdkit / $DS_LABEL):"
    echo
    for r in "${ROWS[@]}"; do
        IFS='|' read -r wl u a b ratio tgt verdict bg sa sb <<<"$r"
        echo "- $wl: ${sa:-none}/ ${sb:-none}"
    done
    md_problems
} >"$MD"

echo
echo "Machine: $MACHINE"
[ "$SELF_TEST" = 1 ] && echo "*** SELF-TEST: both sides are nbdkit ***"
printf '%-40s %-6s %10s %14s %6s %7s %-18s %s\n' workload unit nbdkit "${DS_LABEL:0:14}" ratio target result "bg CPU"
for r in "${ROWS[@]}"; do
    IFS='|' read -r wl u a b ratio tgt verdict bg sa sb <<<"$r"
    printf '%-40s %-6s %10s %14s %6s %7s %-18s %s\n' "$wl" "$u" "$a" "$b" "$ratio" "$tgt" "$verdict" "$bg"
done
echo "Peak RSS: $RSS_LINE"
echo "(median of $REPS nbdcopy / $FIO_REPS fio runs; ratio = $DS_LABEL / nbdkit; markdown: $MD; raw: $RAW; logs: $OUT/logs/)"
# Non-zero exit when any cell of the table has no data (server failed to start, hung, or errored).
finish
