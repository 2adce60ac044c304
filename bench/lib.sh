# bench/lib.sh: helpers shared by bench/run.sh, bench/floppy.sh and bench/ext4.sh.
# Sourced (not run) right after the script has read its knobs. Functions use these globals of the
# sourcing script: ROOT, DISKSYNTH_BIN, BUILD_TIMEOUT, IDLE_WAIT, BG_LIMIT, STEP_TIMEOUT, REPS,
# OUT_REPS, TMP, RAW, LOGS, PY, DS, A_MIB, B_FILES (each only where a function needs it).
#
# Small differences between the scripts are parameters (set them after sourcing):
#   SIDE_REF         name of the reference side for sides_for_rep                       [ref]
#   IDLE_BLOCKERS    pgrep -f pattern: wait_for_idle also waits while such a process runs [none]
#   IDLE_GIVEUP_FMT  printf format (seconds, foreign CPU) of wait_for_idle's give-up problem
#   REF_SERVER       name of the reference server in size_line                         [nbdkit]
#   READ_CHECK       function measure_reads runs on disksynth's server before the reads   [none]
#   RSS_DECIMALS     decimals of the peak RSS (MiB) stop_server records in PEAK_RSS          [1]
#   LOG_STOPS        1 = stop_server logs "stopped NAME (status RC)"                          [0]
#
# The second half (trees, ready time, full reads, image rows, report) is for floppy.sh and
# ext4.sh; run.sh defines its own start_server, nbdcopy_read, section_end and fmt (other
# signatures and messages) after sourcing this file, which replace the ones here.

START_TS=$(date +%s)
log() { printf '[%4ds] %s\n' "$(($(date +%s) - START_TS))" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

# ---------------------------------------------------------------- disksynth binary + machine line
# ensure_disksynth_bin [SKIP-REGEX]: build the binary if missing; warn when a *.rs / Cargo.toml
# (other than paths matching SKIP-REGEX) is newer than it.
ensure_disksynth_bin() {
    local newest_src
    if [ ! -x "$DISKSYNTH_BIN" ]; then
        log "$DISKSYNTH_BIN missing; building: cargo build --release -p disksynth"
        (cd "$ROOT" && timeout "$BUILD_TIMEOUT" cargo build --release -p disksynth) >&2 ||
            die "cargo build --release -p disksynth failed"
        [ -x "$DISKSYNTH_BIN" ] || die "build succeeded but $DISKSYNTH_BIN does not exist"
    fi
    newest_src=$(find "$ROOT"/*/src "$ROOT"/*/Cargo.toml -newer "$DISKSYNTH_BIN" -name '*.rs' -o -newer "$DISKSYNTH_BIN" -name Cargo.toml 2>/dev/null | grep -v -e "${1:-^$}" | head -n1 || true)
    [ -z "$newest_src" ] || log "WARNING: $DISKSYNTH_BIN is older than $newest_src (stale build? rebuild with cargo build --release -p disksynth)"
}
host_line() { # -> "N CPUs (model), N GiB RAM, kernel X"
    local cpu_model
    cpu_model=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
    echo "$(nproc) CPUs (${cpu_model:-unknown CPU}), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r)"
}
nbd_versions() { # nbd_versions [NBDKIT-SUFFIX] -> "nbdkit V[SUFFIX], libnbd V"
    echo "nbdkit $(nbdkit --version | awk '{print $2}')${1:-}, libnbd $(nbdcopy --version | awk '/^libnbd/ {print $2}')"
}
ds_version() { # -> "git REV, binary built DATE, sha256 HASH" of $DISKSYNTH_BIN
    local git_rev
    git_rev=$(git -C "$ROOT" describe --always --dirty --abbrev=10 2>/dev/null || echo unknown)
    echo "git $git_rev, binary built $(date -u -r "$DISKSYNTH_BIN" '+%Y-%m-%d %H:%M:%S UTC'), sha256 $(sha256sum "$DISKSYNTH_BIN" | cut -c1-12)"
}

# ---------------------------------------------------------------- servers, problems, cleanup
declare -A SPID=() # server name -> pid
PROBLEMS=()
problem() { PROBLEMS+=("$*"); log "PROBLEM: $*"; }

cleanup() {
    local rc=$? name pid
    for name in "${!SPID[@]}"; do
        kill "${SPID[$name]}" 2>/dev/null || true
    done
    for name in "${!SPID[@]}"; do
        pid=${SPID[$name]}
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
    exit "$rc"
}
# Once $TMP exists: kill the servers and remove $TMP on any exit.
install_cleanup() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# pin_binary NAME: the temp dir $TMP (removed on exit, with the servers killed) and a copy of
# the binary in it, $DS: a `cargo build` elsewhere during the run must not swap it.
pin_binary() {
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/disksynth-$1-bench.XXXXXX")
    install_cleanup
    cp "$DISKSYNTH_BIN" "$TMP/disksynth"
    DS=$TMP/disksynth
}

declare -A PEAK_RSS=() # server name -> VmHWM in MiB, read just before stopping it
RSS_DECIMALS=1
LOG_STOPS=0 # 1 = log "stopped NAME (status RC)"
stop_server() { # stop_server NAME: SIGTERM (SIGKILL after 10 s), wait, check the status
    local name=$1 pid rc
    pid=${SPID[$name]:-}
    [ -n "$pid" ] || return 0
    PEAK_RSS[$name]=$(awk -v d="$RSS_DECIMALS" '/^VmHWM:/ {printf "%." d "f", $2 / 1024}' "/proc/$pid/status" 2>/dev/null || true)
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        problem "$name (pid $pid) still running 10 s after SIGTERM; sent SIGKILL"
        kill -9 "$pid" 2>/dev/null || true
    fi
    wait "$pid" && rc=0 || rc=$?
    unset "SPID[$name]"
    # nbdkit exits 0 on SIGTERM as well.
    [ "$rc" = 0 ] || problem "$name exited with status $rc after SIGTERM (expected 0)"
    [ "$LOG_STOPS" = 0 ] || log "stopped $name (status $rc)"
}

uri_of() { printf 'nbd+unix:///?socket=%s' "$TMP/$1.sock"; }
now_ns() { date +%s%N; }

# ---------------------------------------------------------------- background-load accounting
# Other processes on a small machine (builds, test suites) skew the numbers. We compare the
# machine-wide busy CPU time (/proc/stat: user+nice+system) with the CPU time of this script and
# everything it started and reaped (/proc/$$/stat: utime+stime+cutime+cstime) plus its live
# servers; the difference is "foreign" CPU, reported per row as % of one core. Steal time
# (hypervisor) is reported too.
TICK=$(getconf CLK_TCK)
cpu_snapshot() { # -> "busy_ticks steal_ticks own_ticks ns"
    local busy steal own pid t
    read -r busy steal < <(awk '/^cpu / {print $2 + $3 + $4, $9}' /proc/stat)
    own=$(sed 's/^.*) //' /proc/$$/stat | awk '{print $12 + $13 + $14 + $15}')
    for pid in "${SPID[@]}"; do # servers still running are not in cutime yet
        t=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}') || t=0
        own=$((own + ${t:-0}))
    done
    echo "$busy $steal $own $(now_ns)"
}
cpu_delta() { # cpu_delta "SNAPSHOT" -> "foreign% steal%" (of one core) since SNAPSHOT
    local b0 s0 o0 t0 b1 s1 o1 t1
    read -r b0 s0 o0 t0 <<<"$1"
    read -r b1 s1 o1 t1 < <(cpu_snapshot)
    awk -v db=$((b1 - b0)) -v ds=$((s1 - s0)) -v do_=$((o1 - o0)) -v dt=$((t1 - t0)) -v hz="$TICK" 'BEGIN {
        secs = dt / 1e9; if (secs <= 0) secs = 1e-9
        f = (db - do_) / hz / secs * 100; if (f < 0) f = 0
        printf "%.0f %.0f\n", f, ds / hz / secs * 100 }'
}
declare -A BG=() # row -> "foreign% steal%"
SECTION_SNAP=""
section_begin() { SECTION_SNAP=$(cpu_snapshot); }
section_end() { # section_end ROW...
    local d f st row
    d=$(cpu_delta "$SECTION_SNAP")
    f=${d%% *}
    st=${d##* }
    for row in "$@"; do BG[$row]=$d; done
    [ "$f" -le "$BG_LIMIT" ] || problem "$1: other processes used ~${f}% of a core meanwhile (limit ${BG_LIMIT}%); unreliable"
    [ "$st" -le "$BG_LIMIT" ] || problem "$1: hypervisor steal ~${st}% of a core meanwhile"
}
# wait_for_idle: before starting, wait (at most IDLE_WAIT s) until other processes use at most
# BG_LIMIT% of a core and no IDLE_BLOCKERS process runs.
IDLE_BLOCKERS=""
IDLE_GIVEUP_FMT='machine still busy after %ss (other processes ~%s%% of a core); measuring anyway'
wait_for_idle() {
    local deadline=$(($(date +%s) + IDLE_WAIT)) snap f
    while :; do
        if [ -n "$IDLE_BLOCKERS" ] && pgrep -f "$IDLE_BLOCKERS" >/dev/null; then
            f=busy
        else
            snap=$(cpu_snapshot)
            sleep 3
            f=$(cpu_delta "$snap")
            f=${f%% *}
            [ "$f" -gt "$BG_LIMIT" ] || { log "machine idle enough (other processes ~${f}% of a core)"; return 0; }
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            # shellcheck disable=SC2059
            problem "$(printf "$IDLE_GIVEUP_FMT" "$IDLE_WAIT" "$f")"
            return 0
        fi
        log "machine busy (other processes ~${f}% of a core: $(ps -eo pcpu=,comm= --sort=-pcpu | head -n2 | tr -s ' ' | tr '\n' ';')); waiting"
        sleep 7
    done
}

# ---------------------------------------------------------------- samples and rows
declare -A SAMPLES=() UNIT=() TARGET=() BETTER=() REFNAME=() # SAMPLES: "row|side" -> values
ORDER=()                                                   # rows in display order
# add_row ROW UNIT BETTER(lower|higher) TARGET(ratio bound or "") REFERENCE-NAME
add_row() { ORDER+=("$1"); UNIT[$1]=$2; BETTER[$1]=$3; TARGET[$1]=$4; REFNAME[$1]=$5; }
record() { # row side rep value
    SAMPLES["$1|$2"]+="$4 "
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${UNIT[$1]}" >>"$RAW"
}
median() { printf '%s\n' $1 | sort -g | awk '{a[NR]=$1} END {if (NR==0) exit; if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }
# Alternate which side goes first on each repetition so neither is always "warm".
SIDE_REF=ref
sides_for_rep() { if [ $(($1 % 2)) = 1 ]; then echo "$SIDE_REF ds"; else echo "ds $SIDE_REF"; fi; }

# ================================================================ floppy.sh / ext4.sh
# The scripts define server_cmd SIDE(ref|ds) TREE SOCK (the command line, one word per line) and
# make_image SIDE T IMG (one timed image build, its status).

# check_tree_bench NBDKIT-PLUGIN: python3-libnbd, the plugin, BENCH_REPS >= 3.
check_tree_bench() {
    [ -x "$PY" ] && "$PY" -c 'import nbd' 2>/dev/null || die "need $PY with the nbd module (python3-libnbd)"
    nbdkit "$1" --version >/dev/null 2>&1 || die "nbdkit has no $1 plugin"
    [ "$REPS" -ge 3 ] || die "BENCH_REPS must be at least 3 (medians)"
}
# open_outputs NAME: BENCH_DROP_CACHES check, an empty $LOGS, RAW=$OUT/NAME.raw.tsv with its header.
open_outputs() {
    if [ "$DROP_CACHES" = 1 ] && [ ! -w /proc/sys/vm/drop_caches ]; then
        die "BENCH_DROP_CACHES=1 needs root (/proc/sys/vm/drop_caches is not writable)"
    fi
    mkdir -p "$LOGS"
    rm -f "$LOGS"/*
    RAW=$OUT/$1.raw.tsv
    printf 'workload\tside\trep\tvalue\tunit\n' >"$RAW"
}

# ---------------------------------------------------------------- the trees
gen_tree() { # gen_tree a|b DIR
    "$PY" - "$1" "$2" "$A_MIB" "$B_FILES" <<'EOF'
import math, os, random, sys
kind, root, a_mib, b_files = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
os.makedirs(root)
def put(rel, size):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        while size > 0:
            n = min(size, 1 << 20)
            f.write(os.urandom(n))
            size -= n
if kind == "a":
    # 2000 files, log-uniform sizes (1 KiB .. 8 MiB) scaled to A MiB, in a few subdirectories.
    rnd = random.Random(42)
    raw = [math.exp(rnd.uniform(math.log(1024), math.log(8 << 20))) for _ in range(2000)]
    scale = a_mib * (1 << 20) / sum(raw)
    dirs = ["", "docs", "media", "media/photos", "media/video", "src", "src/lib", "data"]
    for i, r in enumerate(raw):
        put(os.path.join(dirs[i % len(dirs)], "file-%04d.bin" % i), max(1, int(r * scale)))
else:
    # B small files (64 B .. 4 KiB) in 100 directories.
    rnd = random.Random(43)
    for i in range(b_files):
        put("dir-%03d/small-%06d.txt" % (i % 100, i), rnd.randint(64, 4096))
EOF
}

declare -A TREE=() TREE_BYTES=() TREE_DESC=()
# describe_tree T MIB-DECIMALS [PREFIX]: TREE_BYTES[T] and TREE_DESC[T] of the tree in TREE[T],
# then read it once (warm runs: its data and metadata are in the page cache unless
# BENCH_DROP_CACHES=1).
describe_tree() {
    local t=$1 dir=${TREE[$1]} nfiles ndirs
    TREE_BYTES[$t]=$(find "$dir" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
    nfiles=$(find "$dir" -type f | wc -l)
    ndirs=$(find "$dir" -mindepth 1 -type d | wc -l)
    TREE_DESC[$t]="${3:-}$nfiles files in $ndirs dirs, $(awk -v b="${TREE_BYTES[$t]}" -v d="$2" 'BEGIN {printf "%." d "f MiB", b / 1048576}')"
    log "tree ($t): ${TREE_DESC[$t]}"
    tar -C "$dir" -cf - . | cat >/dev/null
}

# ---------------------------------------------------------------- ready time
# ready.py URI TIMEOUT LOG CMD...: spawns CMD, then does what nbdinfo does (libnbd connect +
# size) every 1 ms in-process, so nbdinfo's own start-up (~10 ms) is not counted; prints
# "ms size" at the first success, then stops the server by pid (SIGTERM, SIGKILL after 10 s).
write_ready_py() {
    cat >"$TMP/ready.py" <<'EOF'
import nbd, subprocess, sys, time
uri, timeout, logpath, cmd = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4:]
with open(logpath, "ab") as logf:
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
    ready = size = None
    try:
        while ready is None:
            h = nbd.NBD()
            try:
                h.connect_uri(uri)
                size = h.get_size()
                ready = time.perf_counter() - t0
                h.shutdown()
            except nbd.Error:
                pass
            del h
            if ready is None:
                if p.poll() is not None:
                    sys.exit("server exited with status %s before answering" % p.returncode)
                if time.perf_counter() - t0 > timeout:
                    sys.exit("server did not answer within %s s" % timeout)
                time.sleep(0.001)
    finally:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
print("%.2f %d" % (ready * 1000, size))
EOF
}

declare -A EXPORT_SIZE=() # "tree|side" -> bytes
# measure_ready TARGET REFERENCE-NAME TREE...: one "ready" row per tree (needs write_ready_py).
measure_ready() {
    local target=$1 refname=$2 t row rep side name sock res sz
    local -a cmd
    shift 2
    for t in "$@"; do
        row="($t) ready: spawn -> NBD answers"
        add_row "$row" ms lower "$target" "$refname"
        section_begin
        for rep in $(seq "$REPS"); do
            for side in $(sides_for_rep "$rep"); do
                name=ready-$t-$side
                sock=$TMP/$name.sock
                rm -f "$sock"
                mapfile -t cmd < <(server_cmd "$side" "${TREE[$t]}" "$sock")
                [ "$DROP_CACHES" != 1 ] || { sync; echo 3 >/proc/sys/vm/drop_caches; }
                if res=$(timeout $((STEP_TIMEOUT + 30)) "$PY" "$TMP/ready.py" "$(uri_of "$name")" "$STEP_TIMEOUT" "$LOGS/$name.log" "${cmd[@]}" 2>>"$LOGS/$name.client.stderr"); then
                    record "$row" "$side" "$rep" "${res%% *}"
                    EXPORT_SIZE[$t|$side]=${res##* }
                    log "  $row [$side] rep $rep: ${res%% *} ms"
                else
                    problem "$row [$side] rep $rep failed: ${cmd[*]} -- $(tail -c 300 "$LOGS/$name.client.stderr" "$LOGS/$name.log" 2>/dev/null | tr '\n' ' ')"
                fi
            done
        done
        section_end "$row"
        for side in ref ds; do
            sz=${EXPORT_SIZE[$t|$side]:-}
            [ -z "$sz" ] || [ "$sz" -ge "${TREE_BYTES[$t]}" ] ||
                problem "($t) [$side]: export of $sz bytes cannot hold the tree's ${TREE_BYTES[$t]} bytes"
        done
    done
}

# ---------------------------------------------------------------- full reads and memory
start_server() { # start_server NAME SIDE TREE
    local name=$1 side=$2 sock=$TMP/$1.sock pid deadline
    local -a cmd
    rm -f "$sock"
    mapfile -t cmd < <(server_cmd "$side" "$3" "$sock")
    log "start $name: ${cmd[*]}"
    "${cmd[@]}" >"$LOGS/$name.stdout" 2>"$LOGS/$name.stderr" </dev/null &
    pid=$!
    SPID[$name]=$pid
    deadline=$(($(date +%s) + STEP_TIMEOUT))
    while ! timeout 10 nbdinfo --size "$(uri_of "$name")" >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" || true
            unset "SPID[$name]"
            problem "$name exited before answering: ${cmd[*]} -- $(tail -c 300 "$LOGS/$name.stderr" | tr '\n' ' ')"
            return 1
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            problem "$name did not answer within ${STEP_TIMEOUT}s"
            kill -9 "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            unset "SPID[$name]"
            return 1
        fi
        sleep 0.01
    done
}

nbdcopy_read() { # ROW SIDE NAME REP EXTRA-ARGS...
    local row=$1 side=$2 name=$3 rep=$4 t0 t1 v
    shift 4
    t0=$(now_ns)
    if timeout "$STEP_TIMEOUT" nbdcopy "$@" "$(uri_of "$name")" null: 2>>"$LOGS/$name.client.stderr"; then
        t1=$(now_ns)
        v=$(awk -v ns="$((t1 - t0))" 'BEGIN {printf "%.3f", ns / 1e9}')
        record "$row" "$side" "$rep" "$v"
        log "  $row [$side] rep $rep: $v s"
    else
        problem "$row [$side] rep $rep: nbdcopy $* failed (status $?)"
    fi
}

# measure_reads REFERENCE-NAME TREE...: per tree, both servers up, READ_CHECK (if set) on
# disksynth's, then timed `nbdcopy [--no-extents] URI null:` rows and a peak RSS row.
READ_CHECK=""
measure_reads() {
    local refname=$1 t ok_ref ok_ds flags row rep side
    shift
    for t in "$@"; do
        ok_ref=0 ok_ds=0
        start_server "read-$t-ref" ref "${TREE[$t]}" && ok_ref=1
        start_server "read-$t-ds" ds "${TREE[$t]}" && ok_ds=1
        [ "$ok_ds" = 0 ] || [ -z "$READ_CHECK" ] || "$READ_CHECK" "read-$t-ds"
        for flags in "" "--no-extents"; do
            row="($t) full read: nbdcopy ${flags:+$flags }URI null:"
            add_row "$row" s lower "" "$refname"
            # One untimed read per side first (server-side caches, fd pools).
            [ "$ok_ref" = 0 ] || timeout "$STEP_TIMEOUT" nbdcopy $flags "$(uri_of "read-$t-ref")" null: 2>/dev/null || true
            [ "$ok_ds" = 0 ] || timeout "$STEP_TIMEOUT" nbdcopy $flags "$(uri_of "read-$t-ds")" null: 2>/dev/null || true
            section_begin
            for rep in $(seq "$REPS"); do
                for side in $(sides_for_rep "$rep"); do
                    [ "$side" = ref ] && [ "$ok_ref" = 0 ] && continue
                    [ "$side" = ds ] && [ "$ok_ds" = 0 ] && continue
                    # shellcheck disable=SC2086
                    nbdcopy_read "$row" "$side" "read-$t-$side" "$rep" $flags
                done
            done
            section_end "$row"
        done
        stop_server "read-$t-ref"
        stop_server "read-$t-ds"
        row="($t) peak RSS after the reads (VmHWM)"
        add_row "$row" MiB lower "" "$refname"
        [ -z "${PEAK_RSS[read-$t-ref]:-}" ] || record "$row" ref 1 "${PEAK_RSS[read-$t-ref]}"
        [ -z "${PEAK_RSS[read-$t-ds]:-}" ] || record "$row" ds 1 "${PEAK_RSS[read-$t-ds]}"
    done
}

# ---------------------------------------------------------------- image rows
# measure_image ROW T: OUT_REPS timed `make_image SIDE T IMG` per side (defined by the script).
measure_image() {
    local row=$1 t=$2 rep side img t0 t1 rc v
    section_begin
    for rep in $(seq "$OUT_REPS"); do
        for side in $(sides_for_rep "$rep"); do
            img=$TMP/out-$t-$side.img
            rm -f "$img"
            sync
            t0=$(now_ns)
            make_image "$side" "$t" "$img" && rc=0 || rc=$?
            t1=$(now_ns)
            if [ "$rc" = 0 ]; then
                v=$(awk -v ns="$((t1 - t0))" 'BEGIN {printf "%.3f", ns / 1e9}')
                record "$row" "$side" "$rep" "$v"
                log "  $row [$side] rep $rep: $v s"
            else
                problem "$row [$side] rep $rep failed (status $rc); see $LOGS/out-$t.stderr"
            fi
            rm -f "$img"
        done
    done
    section_end "$row"
}

# ---------------------------------------------------------------- report
fmt() { [ -n "$1" ] && printf '%.2f' "$1" || echo FAIL; }
# build_rows RATIO-DECIMALS COLUMN(better|speed-up) -> ROWS, one
# "row|unit|reference|ref|ds|ratio|COLUMN|target|result|bg|ref samples|ds samples" per row;
# ratio = ds / ref, speed-up = ref / ds, targets are upper bounds of the ratio.
build_rows() {
    local row a b ratio col tgt verdict bg
    ROWS=()
    for row in "${ORDER[@]}"; do
        a=$(median "${SAMPLES["$row|ref"]:-}")
        b=$(median "${SAMPLES["$row|ds"]:-}")
        ratio="n/a"
        if [ "$2" = speed-up ]; then col="n/a"; else col=${BETTER[$row]}; fi
        if [ -n "$a" ] && [ -n "$b" ]; then
            ratio=$(awk -v a="$a" -v b="$b" -v d="$1" 'BEGIN {if (a > 0) printf "%." d "f", b / a; else print "n/a"}')
            [ "$2" != speed-up ] || col=$(awk -v a="$a" -v b="$b" 'BEGIN {if (b > 0) printf "%.1f×", a / b; else print "n/a"}')
        fi
        tgt=${TARGET[$row]}
        verdict=""
        if [ -n "$tgt" ]; then
            if [ "$ratio" = n/a ]; then verdict="no data"
            elif awk -v r="$ratio" -v t="$tgt" 'BEGIN {exit !(r <= t)}'; then verdict=PASS
            else verdict=MISS; fi
            tgt="≤${tgt}×"
        else
            tgt="—"
        fi
        bg=${BG[$row]:-}
        [ -z "$bg" ] || bg="${bg%% *}%"
        ROWS+=("$row|${UNIT[$row]}|${REFNAME[$row]}|$(fmt "$a")|$(fmt "$b")|$ratio|$col|$tgt|$verdict|$bg|${SAMPLES["$row|ref"]:-}|${SAMPLES["$row|ds"]:-}")
    done
}

size_line() { # size_line TREE
    local r=${EXPORT_SIZE[$1|ref]:-} d=${EXPORT_SIZE[$1|ds]:-}
    echo "($1) export size: ${REF_SERVER:-nbdkit} ${r:-n/a} B, disksynth ${d:-n/a} B"
}

md_cache_note() { # which runs were warm (floppy.sh, ext4.sh)
    if [ "$DROP_CACHES" = 1 ]; then
        echo "Ready times are **cold**: the page cache was dropped before every start. Reads and -o are warm."
    else
        echo "All runs are **warm**: the trees were read once before measuring, so they are in the page cache (BENCH_DROP_CACHES=1 for cold starts)."
    fi
}

md_table() { # md_table COLUMN-HEADER COLUMN-ALIGNMENT: the ROWS table in markdown
    local r row u ref a b ratio col tgt verdict bg sa sb
    echo "| workload | unit | reference | ref value | disksynth | ratio | $1 | target | result | bg CPU |"
    echo "|---|---|---|---:|---:|---:|$2|---|---|---:|"
    for r in "${ROWS[@]}"; do
        IFS='|' read -r row u ref a b ratio col tgt verdict bg sa sb <<<"$r"
        echo "| $row | $u | $ref | $a | $b | **$ratio** | $col | $tgt | $verdict | $bg |"
    done
}

md_raw_samples() {
    local r row u ref a b ratio col tgt verdict bg sa sb
    echo "Raw samples (reference / disksynth):"
    echo
    for r in "${ROWS[@]}"; do
        IFS='|' read -r row u ref a b ratio col tgt verdict bg sa sb <<<"$r"
        echo "- $row: ${sa:-none}/ ${sb:-none}"
    done
}

# print_rows FORMAT WITH-COLUMN(0|1) HEADER...: the machine and trees lines, then the ROWS table
# on stdout, printf FORMAT per line; WITH-COLUMN=1 prints ROWS' 7th column (better/speed-up) too.
print_rows() {
    local format=$1 with=$2 r row u ref a b ratio col tgt verdict bg sa sb
    shift 2
    echo
    echo "Machine: $MACHINE"
    echo "Trees: (a) ${TREE_DESC[a]}; (b) ${TREE_DESC[b]}; $([ "$DROP_CACHES" = 1 ] && echo "cold starts" || echo "warm page cache")"
    # shellcheck disable=SC2059
    printf "$format" "$@"
    for r in "${ROWS[@]}"; do
        IFS='|' read -r row u ref a b ratio col tgt verdict bg sa sb <<<"$r"
        # shellcheck disable=SC2059
        if [ "$with" = 1 ]; then
            printf "$format" "$row" "$u" "$ref" "$a" "$b" "$ratio" "$col" "$tgt" "$verdict"
        else
            printf "$format" "$row" "$u" "$ref" "$a" "$b" "$ratio" "$tgt" "$verdict"
        fi
    done
}

# ================================================================ all three scripts
md_problems() {
    local p
    if [ "${#PROBLEMS[@]}" -gt 0 ]; then
        echo
        echo "Problems:"
        echo
        for p in "${PROBLEMS[@]}"; do echo "- $p"; done
    fi
}

# finish: problems on stdout, then exit 1 when any cell of ROWS has no data (a server or client
# failed, hung or errored).
finish() {
    local p r
    if [ "${#PROBLEMS[@]}" -gt 0 ]; then
        echo
        echo "PROBLEMS (${#PROBLEMS[@]}):"
        for p in "${PROBLEMS[@]}"; do echo "  - $p"; done
    fi
    log "done in $(($(date +%s) - START_TS)) s"
    for r in "${ROWS[@]}"; do
        case $r in *"|FAIL|"*) exit 1 ;; esac
    done
}
