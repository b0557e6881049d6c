#!/usr/bin/env bash
# PowerHouse benchmark: the sticky dispatcher against direct SO_REUSEPORT and
# the peers of ../shared/bench, and the house under a real systemd against
# the same reference under the same systemd; loopback, many client addresses.
# Method, results and how to read them: docs/BENCHMARKS.md. `make bench` runs it.
#   bench/run.sh                        # setup + default rows + extras; updates docs/BENCHMARKS.md
#   bench/run.sh powerhouse-sticky      # a subset of rows (with its reference: 'direct',
#                                       #   or 'systemd-reference' for systemd-* rows)
#   bench/run.sh --list                 # rows (default ones marked *)
#   bench/run.sh --no-setup ...         # skip the peers' apt/npm setup
#   bench/run.sh --no-extras ...        # skip every extra (EXTRAS= picks some)
# systemd-* rows boot a private systemd each (bench/sdrow, internal/sdbox): root
# only; without root they are skipped with a message.
# Tunables (env): DURATION=4 ROUNDS=4 WARMUP=1 CLOSE_CONNS=16 KA_CONNS=64 SOURCES=64
#   REF_EVERY=1 BASE_PORT=18100 READY_TIMEOUT=15 SD_READY_TIMEOUT=90 HOLD_CONNS=10000 HOLD_SECONDS=3
#   EXTRAS="hold syscalls gobench storm idle reload" STORM_RATE=10000 STORM_SECONDS=4 STORM_ROUNDS=2
#   RELOAD_LONG=200 RELOAD_STEADY=3 RELOAD_MODES="handoff kernel"
#   ROUNDS=0 with rows and EXTRAS=reload: the reload extra alone, e.g.
#     ROUNDS=0 EXTRAS=reload UPDATE_DOCS=0 bench/run.sh --no-setup systemd-house
#   STORM_INFLIGHT=4096 GOALS="systemd-house:0.95:0.98:10 ..." UPDATE_DOCS=1 OUT=bench/results/<timestamp> SHARED_BENCH=<repo>/../shared/bench
set -uo pipefail   # no -e: one broken row must not abort the suite
B=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$B/.." && pwd)
W=$B/.work                       # scratch: built binaries, the peers' copy (gitignored)
SHARED_BENCH=${SHARED_BENCH:-$REPO/../shared/bench}

DURATION=${DURATION:-4}; ROUNDS=${ROUNDS:-4}; WARMUP=${WARMUP:-1}
CLOSE_CONNS=${CLOSE_CONNS:-16}; KA_CONNS=${KA_CONNS:-64}; SOURCES=${SOURCES:-64}
REF_EVERY=${REF_EVERY:-1}; BASE_PORT=${BASE_PORT:-18100}; READY_TIMEOUT=${READY_TIMEOUT:-15}
HOLD_CONNS=${HOLD_CONNS:-10000}; HOLD_SECONDS=${HOLD_SECONDS:-3}; UPDATE_DOCS=${UPDATE_DOCS:-1}
SD_READY_TIMEOUT=${SD_READY_TIMEOUT:-90}; EXTRAS=${EXTRAS:-hold syscalls gobench storm idle reload}
RELOAD_LONG=${RELOAD_LONG:-200}; RELOAD_STEADY=${RELOAD_STEADY:-3}; RELOAD_MODES=${RELOAD_MODES:-handoff kernel}
STORM_RATE=${STORM_RATE:-10000}; STORM_SECONDS=${STORM_SECONDS:-4}; STORM_ROUNDS=${STORM_ROUNDS:-2}
STORM_INFLIGHT=${STORM_INFLIGHT:-4096}
TARGET=powerhouse-sticky
SD_TARGET=systemd-house          # the systemd row the storm and idle extras measure
# Goals checked in the summary, ROW:NEW-CONN-RATIO:KEEP-ALIVE-RATIO[:FRONT-CPU-US]
# (issue 13's targets under systemd; rows not in the run are ignored).
GOALS=${GOALS:-systemd-house:0.95:0.98:10 systemd-house-kernel:0.98:0.98:0}
DEFAULT_ROWS=(direct powerhouse-sticky node-sticky-session node-socketio-sticky haproxy-source socket-proxyd systemd-reference systemd-house systemd-house-kernel systemd-house-affinity systemd-node-kernel systemd-node-reference)
PEERS=(node-sticky-session node-socketio-sticky haproxy-source socket-proxyd)
# Every row is measured against a reference row running in the same
# conditions: systemd-* rows against systemd-reference (the same reuseport
# pair as direct, in the same kind of private systemd), the others against
# direct. A new systemd row (bench/rows/systemd-NAME.sh) needs nothing else.
ref_of() { [[ $1 == systemd-* ]] && echo systemd-reference || echo direct; }
is_ref() { [[ $1 == direct || $1 == systemd-reference ]]; }

all_rows() {   # default rows first, then the optional ones
  local r f seen=" "
  for r in "${DEFAULT_ROWS[@]}"; do echo "$r"; seen+="$r "; done
  for f in "$B"/rows/*.sh; do r=$(basename "$f" .sh); [[ $seen == *" $r "* ]] || echo "$r"; done
}

setup=1 extras=1 req=()
while (($#)); do
  case $1 in
    --no-setup) setup=0 ;;
    --no-extras) extras=0 ;;
    --list) for r in $(all_rows); do [[ " ${DEFAULT_ROWS[*]} " == *" $r "* ]] && echo "$r *" || echo "$r"; done; exit 0 ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) req+=("$1") ;;
  esac; shift
done
((${#req[@]})) || req=("${DEFAULT_ROWS[@]}")
rows=()   # each requested row and its reference
for r in "${req[@]}"; do
  [[ -f $B/rows/$r.sh ]] || { echo "no such row: $r (see bench/run.sh --list)" >&2; exit 2; }
  f=$(ref_of "$r")
  [[ " ${rows[*]} " == *" $f "* ]] || rows+=("$f")
  [[ " ${rows[*]} " == *" $r "* ]] || rows+=("$r")
done

# --- build and setup ---------------------------------------------------------
mkdir -p "$W/bin"
echo "bench: building into $W/bin" >&2
(cd "$REPO" && go build -o "$W/bin/" ./cmd/powerhouse ./examples/hello ./bench/loadgen ./bench/reuseport ./bench/summarize ./bench/sdrow) || exit 1
export BENCH_BIN=$W/bin BENCH_PEERS=$W/peers
if [[ -d $SHARED_BENCH ]]; then
  # A writable copy: the peers' setup installs node_modules and builds into it.
  mkdir -p "$W/peers" && cp -a "$SHARED_BENCH"/. "$W/peers"/ && chmod -R u+w "$W/peers"
  if ((setup)); then
    "$W/peers/setup.sh" || echo "bench: the peers' setup failed; rows that need it will be skipped" >&2
  fi
else
  echo "bench: $SHARED_BENCH not found: peer rows are skipped" >&2
fi
command -v curl >/dev/null || { echo "bench: curl is missing (the peers' setup.sh installs it)" >&2; exit 1; }

# A row whose tools are missing is left out with a message, not failed every
# round; row_unusable says why, or nothing when the row can run.
row_unusable() {
  local setup_hint="its tools are not installed (run without --no-setup)"
  case $1 in
    node-*) command -v node >/dev/null && [[ -d $BENCH_PEERS/node/node_modules ]] || echo "$setup_hint" ;;
    haproxy-source) command -v haproxy >/dev/null && [[ -f $BENCH_PEERS/haproxy/source.cfg ]] || echo "$setup_hint" ;;
    socket-proxyd) [[ -x /usr/bin/systemd-socket-activate && -x /lib/systemd/systemd-socket-proxyd ]] || echo "$setup_hint" ;;
    fdpass-prototype) [[ -x $BENCH_PEERS/bin/fdpass ]] || echo "$setup_hint" ;;
    systemd-*)
      if ((EUID != 0)); then echo "it boots a private systemd, which needs root"
      elif [[ ! -x /lib/systemd/systemd ]] || ! command -v nsenter >/dev/null || ! command -v systemd-run >/dev/null; then
        echo "it needs systemd and util-linux (apt-get install systemd util-linux dbus)"
      elif [[ $1 == systemd-node-* ]] && ! command -v node >/dev/null; then
        echo "its workers are Node's: node is not installed (apt-get install nodejs)"
      fi ;;
  esac
}
kept=()
for r in "${rows[@]}"; do
  why=$(row_unusable "$r")
  if [[ -z $why ]]; then kept+=("$r"); else echo "bench: row $r skipped: $why" >&2; fi
done
rows=("${kept[@]}")
# A systemd row without its reference cannot be compared: leave it out too.
if [[ " ${rows[*]} " != *" systemd-reference "* ]]; then
  kept=(); for r in "${rows[@]}"; do [[ $r == systemd-* ]] || kept+=("$r"); done; rows=("${kept[@]}")
fi

OUT=${OUT:-$B/results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/logs" "$OUT/loadgen" "$OUT/tmp"
export BENCH_TMP=$OUT/tmp
RAW=$OUT/raw.tsv
COLS=(rps p50_ms p99_ms errors requests conns_opened instances sticky_sources pid_cpu_us_per_conn pid_cpu_us_per_req pid_rss_kib err_kinds spread workers_cpu_us_per_conn workers_cpu_us_per_req)
printf 'round\tseq\trow\tworkload\trps\tp50_ms\tp99_ms\terrors\trequests\tconns_opened\tinstances\tsticky_sources\tlead_cpu_us_per_conn\tlead_cpu_us_per_req\tlead_rss_kib\terr_kinds\tspread\tworkers_cpu_us_per_conn\tworkers_cpu_us_per_req\tref\n' > "$RAW"

# --- process groups ----------------------------------------------------------
cur="" ref=""   # lead pid (= pgid) of the running row and of the direct reference
group_alive() { ps -eo pgid=,stat= | awk -v g="$1" '$1==g && $2 !~ /^Z/ {f=1} END {exit !f}'; }
stop_row() {
  local g=$1 i
  kill -TERM -- "-$g" 2>/dev/null
  for i in $(seq 50); do group_alive "$g" || break; sleep 0.1; done
  group_alive "$g" && kill -KILL -- "-$g" 2>/dev/null
  for i in $(seq 20); do group_alive "$g" || break; sleep 0.1; done
}
bgpids=()   # helpers started by the extras (perf, strace, loadgen), ended by pid
cleanup() {
  local p
  for p in "${bgpids[@]}"; do kill -INT "$p" 2>/dev/null; done
  [[ -n $cur ]] && stop_row "$cur"; [[ -n $ref ]] && stop_row "$ref"
  cur="" ref=""; rm -rf "$OUT/tmp"
}
trap cleanup EXIT
trap 'echo interrupted >&2; exit 130' INT TERM

# start_row ROW PORT LOG -> sets $cur to the row's lead pid, which is also its
# process group (setsid), $cur_front to the process whose CPU the "front"
# columns report and $cur_workers to the workers' pids (comma-separated);
# returns 1 if it never answered. A row may name them in $BENCH_PIDS
# ("front=PID", "workers=PID,PID": the systemd rows do, with host PIDs of
# the box's units); otherwise the front is the lead process and the workers
# are all its descendants.
start_row() {
  local row=$1 port=$2 log=$3 t pidf=$OUT/tmp/lead.pid timeout=$READY_TIMEOUT
  [[ $row == systemd-* ]] && timeout=$SD_READY_TIMEOUT
  export BENCH_PIDS=$OUT/tmp/pids-$row-$port
  rm -f "$pidf" "$BENCH_PIDS"
  cur_front="" cur_workers=""
  setsid bash -c 'echo $$ > "$0"; exec "$@"' "$pidf" "$B/rows/$row.sh" "$port" > "$log" 2>&1 < /dev/null &
  for ((t = 0; t < 50; t++)); do [[ -s $pidf ]] && break; sleep 0.02; done
  cur=$(cat "$pidf" 2>/dev/null); [[ -n $cur ]] || cur=$!
  for ((t = 0; t < timeout * 10; t++)); do
    if curl -fs -o /dev/null -m 1 "http://127.0.0.1:$port/"; then
      if [[ $row == systemd-* ]]; then   # it writes $BENCH_PIDS once its units are up
        [[ -s $BENCH_PIDS ]] || { group_alive "$cur" || break; sleep 0.1; continue; }
        cur_front=$(sed -n 's/^front=//p' "$BENCH_PIDS"); cur_workers=$(sed -n 's/^workers=//p' "$BENCH_PIDS")
      else
        cur_front=$cur; cur_workers=$(descendants "$cur")
      fi
      return 0
    fi
    group_alive "$cur" || break
    sleep 0.1
  done
  return 1
}
# descendants PID: every process below PID, comma-separated
descendants() {
  ps -eo pid=,ppid= | awk -v root="$1" '{ kids[$2] = kids[$2] " " $1 }
    END { n = split(kids[root], q, " "); out = ""
      for (i = 1; i <= n; i++) { p = q[i]; out = out (out == "" ? "" : ",") p; m = split(kids[p], more, " "); for (j = 1; j <= m; j++) q[++n] = more[j] }
      print out }'
}
port_free() { ! ss -Htln "sport = :$1" | grep -q .; }

# loadgen_tsv FILE: the loadgen result line -> the COLS values, tab-separated
loadgen_tsv() {
  awk -v cols="${COLS[*]}" 'BEGIN { n = split(cols, c, " ") }
    /^loadgen / { for (i = 2; i <= NF; i++) { k = $i; sub(/=.*/, "", k); v = $i; sub(/^[^=]*=/, "", v); m[k] = v }; found = 1 }
    END { for (i = 1; i <= n; i++) printf "%s%s", (i > 1 ? "\t" : ""), (found && (c[i] in m) ? m[c[i]] : "NA"); print "" }' "$1"
}

# loadgen_flags ROW: the load generator flags the row asks for, from a
# "# bench-loadgen: FLAGS" line of its script (e.g. systemd-house-affinity's
# -query-key, the key it routes by); empty for most rows.
loadgen_flags() { sed -n 's/^# bench-loadgen: //p' "$B/rows/$1.sh" | head -1; }

# measure ROUND SEQ ROW PORT REF FRONT WORKERS: both workloads, one raw.tsv line each
measure() {
  local round=$1 seq=$2 row=$3 port=$4 refrow=$5 front=$6 workers=$7 w f conns ka vals extra
  read -ra extra <<< "$(loadgen_flags "$row")"
  for w in close ka; do
    f=$OUT/loadgen/r$round-$(printf %02d "$seq")-$row-$w.txt
    if [[ $w == close ]]; then conns=$CLOSE_CONNS ka=false; else conns=$KA_CONNS ka=true; fi
    "$BENCH_BIN/loadgen" -addr "127.0.0.1:$port" -duration "${DURATION}s" -warmup "${WARMUP}s" \
      -conns "$conns" -sources "$SOURCES" -keepalive=$ka -watch-pid "$front" ${workers:+-watch-workers "$workers"} "${extra[@]}" -label "$row" > "$f" 2>&1
    vals=$(loadgen_tsv "$f")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$seq" "$row" "$w" "$vals" "$refrow" >> "$RAW"
    awk -F'\t' -v r="$round" -v s="$seq" -v row="$row" -v w="$w" \
      '{ printf "round %d #%-2d %-22s %-5s %9s req/s  p50 %7s ms  p99 %8s ms  err %s  instances %s  sticky %s  front-cpu %s  workers-cpu %s us/conn\n", r, s, row, w, $1, $2, $3, $4, $7, $8, $9, $14 }' <<< "$vals" >&2
  done
}

machine="nproc=$(nproc), kernel=$(uname -r), $(. /etc/os-release; echo "$PRETTY_NAME"), cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(go env GOVERSION), node $(node -v 2>/dev/null || echo none), haproxy $(haproxy -v 2>/dev/null | awk 'NR==1 {print $3}'), $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "$machine" > "$OUT/machine.txt"
echo "bench: machine: $machine" >&2
cpustat() { awk '/^cpu / {print $2+$3+$4+$5+$6+$7+$8+$9, $9}' /proc/stat; }   # total, steal (ticks)
read -r tot0 steal0 < <(cpustat)
load0=$(cut -d' ' -f1-3 /proc/loadavg)
awk -v l="${load0%% *}" 'BEGIN {exit !(l > 1)}' &&
  echo "bench: WARNING: load average $load0 before starting: something else is running, the numbers will be noisy" >&2
t_start=$(date +%s)
echo "bench: rows: ${rows[*]}; rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s close-conns=$CLOSE_CONNS ka-conns=$KA_CONNS sources=$SOURCES ref-every=$REF_EVERY; out=$OUT" >&2

# --- rounds ------------------------------------------------------------------
# The rows fall into groups by reference (direct; systemd-reference). In each
# round, each group in turn (their order alternates every round): its
# reference starts and stays up (idle between its measurements) and is
# measured first, after every REF_EVERY rows and after the last one; the
# other rows run one at a time, in an order rotated every round. Every
# (round, row) gets ports of its own (10 from BASE_PORT + 10 × its slot).
slot=0
next_port() { port=$((BASE_PORT + 10 * slot++)); port_free "$port" || { echo "port $port busy; set BASE_PORT" >&2; exit 1; }; }
fail_line() {   # ROUND SEQ ROW REF: a row that did not start, NA in every column
  local w c
  for w in close ka; do
    printf '%s\t%s\t%s\t%s' "$1" "$2" "$3" "$w" >> "$RAW"
    for c in "${COLS[@]}"; do printf '\tNA' >> "$RAW"; done
    printf '\t%s\n' "$4" >> "$RAW"
  done
}
# run_group ROUND REFROW ROW...
run_group() {
  local round=$1 refrow=$2; shift 2
  local others=("$@") n=$# k idx row log ref_port ref_front ref_workers seq=$seqbase
  next_port; ref_port=$port
  if ! start_row "$refrow" "$ref_port" "$OUT/logs/$refrow-r$round.log"; then
    echo "round $round: reference row '$refrow' FAILED to start (see $OUT/logs/$refrow-r$round.log)" >&2
    stop_row "$cur"; cur=""
    fail_line "$round" $((seq++)) "$refrow" "$refrow"
    for row in "${others[@]}"; do fail_line "$round" $((seq++)) "$row" "$refrow"; done
    seqbase=$seq; return
  fi
  ref=$cur ref_front=$cur_front ref_workers=$cur_workers; cur=""
  measure "$round" $((seq++)) "$refrow" "$ref_port" "$refrow" "$ref_front" "$ref_workers"
  for ((k = 0; k < n; k++)); do
    idx=$(((k + round - 1) % n))
    row=${others[$idx]}
    next_port
    log=$OUT/logs/$row-r$round.log
    if start_row "$row" "$port" "$log"; then
      measure "$round" $((seq++)) "$row" "$port" "$refrow" "$cur_front" "$cur_workers"
    else
      echo "round $round: $row FAILED to start (see $log)" >&2
      fail_line "$round" $((seq++)) "$row" "$refrow"
    fi
    stop_row "$cur"; cur=""
    if (((k + 1) % REF_EVERY == 0 || k == n - 1)); then
      measure "$round" $((seq++)) "$refrow" "$ref_port" "$refrow" "$ref_front" "$ref_workers"
    fi
  done
  stop_row "$ref"; ref=""
  seqbase=$seq
}
groups=()
for r in "${rows[@]}"; do is_ref "$r" && groups+=("$r"); done
for ((round = 1; round <= ROUNDS; round++)); do
  seqbase=0
  for ((gi = 0; gi < ${#groups[@]}; gi++)); do
    g=${groups[$(((gi + round - 1) % ${#groups[@]}))]}
    members=()
    for r in "${rows[@]}"; do ! is_ref "$r" && [[ $(ref_of "$r") == "$g" ]] && members+=("$r"); done
    run_group "$round" "$g" "${members[@]}"
  done
done
read -r tot1 steal1 < <(cpustat)
steal=$(awk -v a=$((steal1 - steal0)) -v b=$((tot1 - tot0)) 'BEGIN {printf "%.1f%%", b ? 100 * a / b : 0}')
t_rounds=$(($(date +%s) - t_start))
load1=$(cut -d' ' -f1-3 /proc/loadavg)

peers=()
for p in "${PEERS[@]}"; do [[ " ${rows[*]} " == *" $p "* ]] && peers+=("$p"); done
{
  echo "Machine: $machine."
  echo
  echo "Run: $ROUNDS rounds × (${WARMUP} s warm-up + ${DURATION} s) per workload; new connection per request: $CLOSE_CONNS connections; keep-alive: $KA_CONNS connections; client source addresses 127.0.0.2–127.0.0.$((SOURCES + 1)) ($SOURCES). Rounds took ${t_rounds} s; CPU steal (hypervisor) during them: $steal; load average (1, 5, 15 min) before: $load0; after: $load1, which includes the benchmark's own load."
  echo
  "$BENCH_BIN/summarize" -target "$TARGET" -peers "$(IFS=,; echo "${peers[*]}")" $(for g in $GOALS; do printf -- '-goal %s ' "$g"; done) "$RAW"
} > "$OUT/summary.md"

# --- extras: 10k connections, CPU and syscalls per connection, profile -------
# They measure the dispatcher of `powerhouse run` (the row's lead process).
want_extra() { ((extras)) && [[ " $EXTRAS " == *" $1 "* ]]; }
next_port; xport=$port
ex=$OUT/extras; mkdir -p "$ex"
if [[ " ${rows[*]} " == *" $TARGET "* ]] && { want_extra hold || want_extra syscalls || want_extra gobench; }; then
  {
    echo
    echo "### The dispatcher alone"
    echo
  } >> "$OUT/summary.md"

  # 1. Resident memory with HOLD_CONNS connections open.
  if ! want_extra hold; then :
  elif start_row powerhouse-sticky "$xport" "$OUT/logs/hold.log"; then
    idle_rss=$(awk '/^VmRSS/ {print $2}' "/proc/$cur/status")
    "$BENCH_BIN/loadgen" -addr "127.0.0.1:$xport" -conns "$HOLD_CONNS" -sources "$SOURCES" \
      -hold "${HOLD_SECONDS}s" -watch-pid "$cur" -label hold > "$ex/hold.txt" 2>&1
    stop_row "$cur"; cur=""
    tail -1 "$OUT/logs/hold.log" > "$ex/hold-dispatcher-stats.txt"
    awk -v idle="$idle_rss" -v stats="$(cat "$ex/hold-dispatcher-stats.txt")" '/^loadgen mode=hold/ {
        for (i = 2; i <= NF; i++) { k = $i; sub(/=.*/, "", k); v = $i; sub(/^[^=]*=/, "", v); m[k] = v }
        printf "- **Resident memory with %s connections open** (%s of %s opened, %s still serving after %s s; spread %s): dispatcher VmRSS **%.1f MiB** (VmHWM %.1f MiB; %.1f MiB idle before), target < 20 MiB: %s. Dispatcher on exit: \"%s\".\n",
          m["held"], m["held"], m["wanted"], m["still_serving"], "'"$HOLD_SECONDS"'", m["spread"], m["pid_rss_kib"] / 1024, m["pid_hwm_kib"] / 1024, idle / 1024,
          (m["pid_rss_kib"] / 1024 < 20 && m["held"] == m["wanted"] ? "met" : "**missed**"), stats }' "$ex/hold.txt" >> "$OUT/summary.md"
  else
    echo "- 10k connections: powerhouse-sticky FAILED to start (see $OUT/logs/hold.log)" >> "$OUT/summary.md"
  fi

  # 2. CPU per handed-off connection: from the rounds (median), see the table.
  cpu_list=$(awk -F'\t' -v t="$TARGET" '$3 == t && $4 == "close" && $13 != "NA" {print $13}' "$RAW" | paste -sd, | sed 's/,/, /g')
  cpu_med=$(awk -F'\t' -v t="$TARGET" '$3 == t && $4 == "close" && $13 != "NA" {print $13}' "$RAW" | sort -n |
    awk '{a[NR] = $1} END { if (NR) print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }')
  [[ -n $cpu_med ]] && echo "- **CPU time per handed-off connection** (dispatcher utime+stime over the measured window ÷ connections opened in it, new-connection workload, one value per round: $cpu_list µs): median **$cpu_med µs**." >> "$OUT/summary.md"

  # 3. Syscalls per connection: perf's syscall tracepoints (exact counts,
  # little overhead), strace -c (the classic summary, but it slows the
  # dispatcher, which then finds more connections queued per wake-up), and
  # a CPU profile (perf record -g), each under the new-connection workload.
  if ! want_extra syscalls; then :
  elif start_row powerhouse-sticky "$xport" "$OUT/logs/syscalls.log"; then
    lead=$cur
    load() {
      "$BENCH_BIN/loadgen" -addr "127.0.0.1:$xport" -duration "$((DURATION + 2))s" -warmup 0 \
        -conns "$CLOSE_CONNS" -sources "$SOURCES" -keepalive=false -watch-pid "$lead" -label "$1" > "$ex/$1-load.txt" 2>&1 &
      bgpids+=($!); lpid=$!
      sleep 1
    }
    if command -v perf >/dev/null; then
      evs=raw_syscalls:sys_enter
      for s in accept4 getsockopt sendmsg close epoll_pwait futex nanosleep sched_yield getpid tgkill rt_sigreturn read write madvise mmap; do evs+=",syscalls:sys_enter_$s"; done
      load perf-stat
      perf stat -e "$evs,sched:sched_switch" -e syscalls:sys_exit_accept4 --filter 'ret >= 0' -e syscalls:sys_exit_sendmsg --filter 'ret < 0' \
        -p "$lead" -o "$ex/perf-stat.txt" -- sleep "$DURATION" 2> "$ex/perf-stat.err"
      wait "$lpid"
      load perf-record
      perf record -F 1999 -g -p "$lead" -o "$ex/perf.data" -- sleep "$DURATION" > /dev/null 2> "$ex/perf-record.err"
      wait "$lpid"
      perf report -i "$ex/perf.data" --children --stdio --percent-limit 1 -g none 2>/dev/null | grep -v '^#' | grep -v '^$' > "$ex/profile.txt"
      perf report -i "$ex/perf.data" --no-children --stdio --percent-limit 1 -g none 2>/dev/null | grep -v '^#' | grep -v '^$' > "$ex/profile-self.txt"
      rm -f "$ex/perf.data"
    fi
    if command -v strace >/dev/null; then
      load strace
      strace -c -f -p "$lead" -o "$ex/strace-c.txt" > /dev/null 2>&1 &
      spid=$!; bgpids+=("$spid")
      sleep "$DURATION"; kill -INT "$spid"; wait "$spid" 2>/dev/null
      wait "$lpid"
    fi
    stop_row "$cur"; cur=""
    if [[ -s $ex/perf-stat.txt ]]; then
      awk '$2 ~ /^((raw_)?syscalls|sched):/ { gsub(",", "", $1); c[$2] = $1 }
        END {
          acc = c["syscalls:sys_exit_accept4"]; if (!acc) exit
          printf "- **Syscalls per handed-off connection** (perf syscall tracepoints on the dispatcher, %d connections accepted in %s s, new-connection workload): **%.2f** in all:", acc, "'"$DURATION"'", c["raw_syscalls:sys_enter"] / acc
          n = split("accept4 getsockopt sendmsg close epoll_pwait futex nanosleep sched_yield getpid tgkill rt_sigreturn read write madvise mmap", s, " ")
          for (i = 1; i <= n; i++) { v = c["syscalls:sys_enter_" s[i]]; if (v > 0) printf " %s %.2f,", s[i], v / acc }
          printf " of which sendmsg failing (queue full) %.3f; context switches (sched_switch) %.2f.\n", c["syscalls:sys_exit_sendmsg"] / acc, c["sched:sched_switch"] / acc
        }' "$ex/perf-stat.txt" >> "$OUT/summary.md"
    fi
    if [[ -s $ex/strace-c.txt ]]; then
      acc=$(awk '$NF == "accept4" { print (NF == 6 ? $4 - $5 : $4) }' "$ex/strace-c.txt")
      {
        echo "- strace -c -f on the dispatcher (slows it: more connections queue per wake-up, so fewer EAGAIN and epoll waits than above)${acc:+, $acc connections accepted}:"
        echo
        echo '```'
        sed -n '1,30p' "$ex/strace-c.txt"
        echo '```'
      } >> "$OUT/summary.md"
    fi
    if [[ -s $ex/profile.txt ]]; then
      {
        echo "- CPU profile of the dispatcher (perf record -g, new-connection workload; % of its samples, including callees; full: extras/profile*.txt):"
        echo
        echo '```'
        grep -E 'sticky\.|handoff\.|Accept4|sys_accept4|sys_sendmsg|unix_dgram_sendmsg|sys_close|__x64_sys_close|epoll_pwait|runtime\.(schedule|findRunnable|netpoll|sysmon|mcall|gcBgMarkWorker)|finish_task_switch|futex|nanosleep' "$ex/profile.txt" | head -30
        echo '```'
      } >> "$OUT/summary.md"
    fi
  else
    echo "- syscalls: powerhouse-sticky FAILED to start (see $OUT/logs/syscalls.log)" >> "$OUT/summary.md"
  fi

  # 4. The worker's cost of receiving one connection (activation) and the
  # hand-off round trip (handoff), as Go benchmarks.
  if want_extra gobench; then
    (cd "$REPO" && go test -run '^$' -bench . -benchmem ./activation ./handoff &&
      go test -run '^$' -bench Dispatch -benchmem ./sticky) > "$ex/go-bench.txt" 2>&1
    {
      echo "- Go benchmarks (\`go test -run '^\$' -bench . -benchmem ./activation ./handoff\` and \`-bench Dispatch ./sticky\`):"
      echo
      echo '```'
      grep -E '^(Benchmark|goos|goarch|cpu|pkg)' "$ex/go-bench.txt"
      echo '```'
    } >> "$OUT/summary.md"
  fi
fi

# --- extras under systemd: connection storm, 10k idle connections ----------
kv() { awk -v k="$1" '/^loadgen / { for (i = 2; i <= NF; i++) if (index($i, k "=") == 1) { print substr($i, length(k) + 2); exit } }' "$2"; }
if want_extra storm && [[ " ${rows[*]} " == *" $SD_TARGET "* ]]; then
  # Open loop: new connections offered at STORM_RATE/s whatever the server
  # does, at most STORM_INFLIGHT in flight, each one request; the house and
  # its reference alternately, STORM_ROUNDS times each.
  storm=()
  for ((sr = 1; sr <= STORM_ROUNDS; sr++)); do
    order=(systemd-reference "$SD_TARGET"); ((sr % 2 == 0)) && order=("$SD_TARGET" systemd-reference)
    for row in "${order[@]}"; do
      next_port; f=$ex/storm-$sr-$row.txt
      if start_row "$row" "$port" "$OUT/logs/storm-$row-$sr.log"; then
        "$BENCH_BIN/loadgen" -addr "127.0.0.1:$port" -rate "$STORM_RATE" -conns "$STORM_INFLIGHT" -duration "${STORM_SECONDS}s" \
          -warmup "${WARMUP}s" -sources "$SOURCES" -watch-pid "$cur_front" ${cur_workers:+-watch-workers "$cur_workers"} -label "$row" > "$f" 2>&1
        tail -1 "$f" >&2
      else
        storm+=("| $sr | $row | FAILED to start (see logs/storm-$row-$sr.log) | | | | | | | | | |")
        stop_row "$cur"; cur=""; continue
      fi
      stop_row "$cur"; cur=""
      # The supervisor's dispatch counters over the row's life (sdrow logs
      # dispatch.json at power-off): what it did with what it could not hand off.
      counters=$(sed -n 's/^sdrow: .*dispatch.json //p' "$OUT/logs/storm-$row-$sr.log" | tail -1 |
        awk '{ out = ""; n = split("handed_off dropped sticky_misses queue_full accept_pauses", k, " ")
          for (i = 1; i <= n; i++) if (match($0, "\"" k[i] "\":[0-9]+")) { v = substr($0, RSTART, RLENGTH); sub(/.*:/, "", v); out = out (out == "" ? "" : ", ") k[i] " " v }
          print (out == "" ? "—" : out) }')
      storm+=("| $sr | $row | $(kv offered_rps "$f") | $(kv rps "$f") | $(kv missed "$f") | $(kv errors "$f") ($(kv err_kinds "$f")) | $(kv sticky_sources "$f") | $(kv p50_ms "$f") | $(kv p99_ms "$f") | $(kv pid_cpu_us_per_conn "$f") | $(kv workers_cpu_us_per_conn "$f") | ${counters:-—} |")
    done
  done
  {
    echo
    echo "### Connection storm under systemd"
    echo
    echo "New connections offered at $STORM_RATE/s (open loop: on schedule whatever the server does; at most $STORM_INFLIGHT in flight, an offer finding them all busy is \"missed\"), one request each, from $SOURCES addresses, ${WARMUP} s warm-up + ${STORM_SECONDS} s measured; latency from each offer's scheduled time. Front CPU: the supervisor (systemd-house) or the idle launcher (systemd-reference)."
    echo
    echo "| round | row | offered/s | answered/s | missed offers | errors | sticky sources | p50 ms | p99 ms | front CPU µs/conn | workers CPU µs/conn | supervisor's counters (row's life) |"
    echo "|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|"
    printf '%s\n' "${storm[@]}"
  } >> "$OUT/summary.md"
fi
if want_extra idle && [[ " ${rows[*]} " == *" $SD_TARGET "* ]]; then
  next_port
  if start_row "$SD_TARGET" "$port" "$OUT/logs/idle.log"; then
    idle_rss=$(awk '/^VmRSS/ {print $2}' "/proc/$cur_front/status")
    "$BENCH_BIN/loadgen" -addr "127.0.0.1:$port" -conns "$HOLD_CONNS" -sources "$SOURCES" \
      -hold "${HOLD_SECONDS}s" -watch-pid "$cur_front" -label idle > "$ex/idle.txt" 2>&1
    stop_row "$cur"; cur=""
    f=$ex/idle.txt
    rss=$(kv pid_rss_kib "$f"); held=$(kv held "$f"); wanted=$(kv wanted "$f"); still=$(kv still_serving "$f")
    verdict=$(awk -v r="${rss:-NA}" -v h="${held:-0}" -v w="${wanted:-1}" -v s="${still:-0}" 'BEGIN { print (r != "NA" && r / 1024 < 20 && h == w && s == h ? "met" : "**missed**") }')
    {
      echo
      echo "### $HOLD_CONNS idle connections under systemd"
      echo
      echo "- **$SD_TARGET, supervisor VmRSS with $held of $wanted connections open and idle** (keep-alive, one request each, from $SOURCES addresses, held ${HOLD_SECONDS} s; $still still answering a second request afterwards; spread $(kv spread "$f"); opened in $(kv open_s "$f") s): **$(awk -v r="${rss:-0}" 'BEGIN {printf "%.1f", r / 1024}') MiB** (VmHWM $(awk -v r="$(kv pid_hwm_kib "$f")" 'BEGIN {printf "%.1f", r / 1024}') MiB; $(awk -v r="${idle_rss:-0}" 'BEGIN {printf "%.1f", r / 1024}') MiB idle before), target < 20 MiB with every connection still answering: $verdict. Supervisor's counters at the end: \`$(sed -n 's/^sdrow: .*dispatch.json //p' "$OUT/logs/idle.log" | tail -1)\`."
    } >> "$OUT/summary.md"
  else
    echo "- $HOLD_CONNS idle connections: $SD_TARGET FAILED to start (see $OUT/logs/idle.log)" >> "$OUT/summary.md"
  fi
fi

# --- extra under systemd: reload under load ----------------------------------
# bench/sdrow's reload mode: `systemctl reload` of a 3-instance sticky group
# (bench/rows/systemd-reload.toml) under a stream of new connections from
# SOURCES addresses (a request every 100 ms each, open loop per source) and
# RELOAD_LONG long-lived connections (hello's line-echo, a line every 100 ms
# each, closed by their clients 1 s after the reload returned), in each
# dispatch mode of RELOAD_MODES.
rkv() { awk -v k="$1" '/^reload / { for (i = 2; i <= NF; i++) if (index($i, k "=") == 1) { print substr($i, length(k) + 2); exit } }' "$2"; }
if want_extra reload; then
  why=$(row_unusable systemd-house)
  if [[ -n $why ]]; then
    echo "bench: extra reload skipped: $why" >&2
  else
    reload_rows=()
    for mode in $RELOAD_MODES; do
      next_port; f=$ex/reload-$mode.txt
      wx=""; [[ $mode == kernel ]] && wx='dispatch = "kernel"'
      "$BENCH_BIN/sdrow" -port "$port" -config "$B/rows/systemd-reload.toml" -worker-extra "$wx" -name bench-reload \
        -long "$RELOAD_LONG" -sources "$SOURCES" -steady "${RELOAD_STEADY}s" -ready-timeout "${SD_READY_TIMEOUT}s" reload > "$f" 2>&1 &
      rpid=$!; bgpids+=("$rpid"); wait "$rpid"
      grep '^reload ' "$f" >&2
      if grep -q '^reload ' "$f"; then
        reload_rows+=("| $mode | $(rkv slots "$f") | $(rkv long "$f") | **$(rkv cut "$f")** | $(rkv event_cut "$f") | $(rkv drained "$f") | $(rkv requests "$f") | **$(rkv failed "$f")** | $(rkv p99_steady_ms "$f") | $(rkv p99_reload_ms "$f") | $(rkv reload_s "$f") | $(rkv drains_s "$f") | $(rkv ready_ms "$f") |")
      else
        reload_rows+=("| $mode | FAILED (see extras/reload-$mode.txt) | | | | | | | | | | | |")
      fi
    done
    {
      echo
      echo "### Reload under load under systemd"
      echo
      echo "\`systemctl reload powerhouse@web\` of 3 sticky hello instances (bench/rows/systemd-reload.toml, timeout_stop 10 s) while $SOURCES addresses each open a new connection every 100 ms (open loop per address) and $RELOAD_LONG long-lived connections (hello's line-echo: hijacked, as a WebSocket) each send a line every 100 ms, closed by their clients 1 s after the reload returned. Steady state: the ${RELOAD_STEADY} s before the reload; during: from the reload's start until every old process drained and exited. Cut: long-lived connections closed by the house before their client closed them (client's count, and the workers' drain reports in worker.reload). Ready: each slot's time from the start of its new process to READY=1 (worker.reload ready_ms)."
      echo
      echo "| dispatch | instances | long-lived | cut | cut (worker.reload) | drained (worker.reload) | new connections | failed | p99 steady ms | p99 during reload ms | reload s | until drained s | ready ms per instance |"
      echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
      printf '%s\n' "${reload_rows[@]}"
    } >> "$OUT/summary.md"
  fi
fi

cat "$OUT/summary.md"
echo >&2
echo "bench: results in $OUT (summary.md, raw.tsv, loadgen/, logs/, extras/)" >&2
if [[ $UPDATE_DOCS == 1 && -f $REPO/docs/BENCHMARKS.md ]] && grep -q '<!-- bench:results:begin -->' "$REPO/docs/BENCHMARKS.md"; then
  awk -v f="$OUT/summary.md" '
    /<!-- bench:results:begin -->/ { print; while ((getline l < f) > 0) print l; skip = 1; next }
    /<!-- bench:results:end -->/ { skip = 0 }
    !skip' "$REPO/docs/BENCHMARKS.md" > "$OUT/BENCHMARKS.md.new" && mv "$OUT/BENCHMARKS.md.new" "$REPO/docs/BENCHMARKS.md"
  echo "bench: docs/BENCHMARKS.md results section updated (UPDATE_DOCS=0 to leave it)" >&2
fi
