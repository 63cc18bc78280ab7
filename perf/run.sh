#!/usr/bin/env bash
# The standard benchmark matrix against a freshly started broker, with the machine's own
# limits (fio, iperf3) measured in the same run. Writes perf/results/<date>-<host>.md, the
# JSON summaries, .hgrm latency distributions, SVG plots, a CPU profile of the broker, and
# refreshes the results section of perf/README.md.
#
#   perf/run.sh                 # the matrix (about 8 minutes on 2 cores), then the table of
#                               # durable acknowledgements against fio and the peers
#                               # (perf/latency.sh, about 35 minutes)
#   perf/run.sh table           # only the table (perf/latency.sh; its variables apply)
#   TABLE=0 perf/run.sh         # only the matrix
#   DURATION=1s TABLE=0 perf/run.sh   # a quick pass to check the script
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = table ]; then exec perf/latency.sh; fi
ROOT=$(pwd)
DURATION=${DURATION:-5s}
STAMP=$(date -u +%Y-%m-%d)-$(hostname -s)
OUT=$ROOT/perf/results/$STAMP
rm -rf "$OUT"
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/quorra-perf.XXXXXX)   # on the real disk: O_DIRECT must be exercised
BROKER_PID=
cleanup() {
  if [ -n "$BROKER_PID" ]; then kill -9 "$BROKER_PID" 2>/dev/null || true; fi
  pkill -f "iperf3 -s -p 15201" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

need=()
for tool in fio:fio iperf3:iperf3 gnuplot:gnuplot-nox perf:linux-perf python3:python3; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

log "building"
cargo build --release --workspace -q
QUORRA=$ROOT/target/release/quorra
LOAD=$ROOT/target/release/quorra-load
START=$(date +%s)

log "machine"
{
  echo "host=$(hostname -s)"
  echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "cores=$(nproc)"
  echo "memory=$(free -g | awk '/Mem:/{print $2}') GiB"
  echo "kernel=$(uname -r)"
  echo "filesystem=$(df -T "$WORK" | awk 'NR==2{print $2" on "$1}')"
  echo "commit=$(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty')"
  echo "duration=$DURATION"
} > "$OUT/machine.txt"

log "fio: sequential O_DIRECT write bandwidth"
fio --name=seqwrite --filename="$WORK/fio.dat" --size=2G --bs=1M --rw=write --direct=1 --ioengine=io_uring \
    --iodepth=32 --runtime=10 --time_based --output-format=json > "$OUT/fio-seqwrite.json"
rm -f "$WORK/fio.dat"
log "fio: 4 KiB write + fdatasync latency"
fio --name=fdatasync --filename="$WORK/fio-sync.dat" --size=256M --bs=4k --rw=write --direct=1 --fdatasync=1 \
    --ioengine=sync --iodepth=1 --runtime=10 --time_based --output-format=json > "$OUT/fio-fdatasync.json"
rm -f "$WORK/fio-sync.dat"
log "fio: 4 KiB O_DSYNC write latency (the write and its flush as one operation)"
fio --name=dsync --filename="$WORK/fio-dsync.dat" --size=256M --bs=4k --rw=write --direct=1 --sync=dsync \
    --ioengine=io_uring --iodepth=1 --runtime=10 --time_based --output-format=json > "$OUT/fio-dsync.json"
rm -f "$WORK/fio-dsync.dat"
log "iperf3: loopback"
iperf3 -s -p 15201 -D -1 >/dev/null 2>&1; sleep 0.5
iperf3 -c 127.0.0.1 -p 15201 -t 5 -J > "$OUT/iperf3.json" || echo '{}' > "$OUT/iperf3.json"

PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
B="--bootstrap 127.0.0.1:$PORT"
start_broker() { # flush policy
  CURRENT_FLUSH=$1
  local log="$OUT/broker-${1%%:*}.log" before
  before=$(grep -c "serving on" "$log" 2>/dev/null || true)
  "$QUORRA" serve --listen 127.0.0.1:$PORT --data-dir "$WORK/data-${1%%:*}" --flush "$1" >>"$log" 2>&1 &
  BROKER_PID=$!
  # Ready when it says so: every shard has bound the port and opened its partitions.
  for _ in $(seq 400); do
    [ "$(grep -c "serving on" "$log" 2>/dev/null || true)" -gt "${before:-0}" ] && return 0
    sleep 0.05
  done
  echo "broker did not start" >&2; exit 1
}
stop_broker() { kill "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null || true; BROKER_PID=; }

# run NAME TOPIC [quorra-load produce args...]: produce, then verify and delete the topic.
# A failed run is recorded (FAILED in the table) and the matrix goes on with a restarted broker.
run() {
  local name=$1 topic=$2; shift 2
  log "run $name"
  if ! "$LOAD" produce $B --topic "$topic" --create-partitions 4 --acks leader --duration "$DURATION" \
      --json "$OUT/$name.json" --hgrm "$OUT/$name.hgrm" --ledger "$WORK/$topic.ledger" "$@" > "$OUT/$name.txt" 2>"$OUT/$name.err"; then
    log "run $name FAILED: $(tail -1 "$OUT/$name.err")"
    echo "VERIFY FAILED: produce failed: $(tail -1 "$OUT/$name.err")" > "$OUT/$name.verify"
    restart_broker
    return 0
  fi
  "$LOAD" consume $B --topic "$topic" --consumers 2 --verify --ledger "$WORK/$topic.ledger" > "$OUT/$name.verify" 2>/dev/null \
      || echo "VERIFY FAILED" >> "$OUT/$name.verify"
  "$QUORRA" topic delete "$topic" $B >/dev/null || restart_broker
}
restart_broker() { kill -9 "$BROKER_PID" 2>/dev/null || true; wait "$BROKER_PID" 2>/dev/null || true; start_broker "$CURRENT_FLUSH"; }

for flush in always interval:5; do
  start_broker "$flush"
  tag=${flush%%:*}
  for size in 100 1024 16384; do
    for producers in 1 4; do
      for window in 1 256; do
        name="closed-$tag-s$size-p$producers-w$window"
        profilers=()
        if [ "$flush" = always ] && [ $size = 1024 ] && [ $producers = 4 ] && [ $window = 256 ]; then
          # Profile the broker under the throughput run.
          ( sleep 1; perf stat -e task-clock,context-switches,cpu-migrations,page-faults -p "$BROKER_PID" -- sleep 3 \
              > /dev/null 2> "$OUT/perf-stat.txt" ) &
          profilers+=($!)
          ( sleep 1; perf record -e cpu-clock -F 999 -g -p "$BROKER_PID" -o "$WORK/perf.data" -- sleep 3 >/dev/null 2>&1 ) &
          profilers+=($!)
        fi
        run "$name" "m-$tag-$size-$producers-$window" --size $size --producers $producers --window $window
        [ ${#profilers[@]} -gt 0 ] && wait "${profilers[@]}"
        true
      done
    done
  done
  stop_broker
done
if [ -f "$WORK/perf.data" ]; then
  perf report -i "$WORK/perf.data" --stdio --no-children --sort dso,symbol -g none --percent-limit 0.7 2>/dev/null \
      | grep -v '^#' | grep '%' | head -40 > "$OUT/perf-profile.txt" || true
  perf report -i "$WORK/perf.data" --stdio --no-children --sort symbol --percent-limit 3 2>/dev/null \
      | grep -v '^#' | grep -v '^$' | head -80 > "$OUT/perf-callgraph.txt" || true
fi

log "open loop at 10% and 50% of the peak"
start_broker always
for size in 100 1024 16384; do
  peak=$(python3 -c "import json;print(int(json.load(open('$OUT/closed-always-s$size-p4-w256.json'))['msgs_per_sec']))")
  for pct in 10 50; do
    rate=$(( peak * pct / 100 ))
    run "open-always-s$size-r$rate" "o-$size-$pct" --size $size --producers 4 --window 4096 --rate $rate
  done
done
stop_broker

END=$(date +%s)
echo "elapsed_seconds=$((END - START))" >> "$OUT/machine.txt"
python3 "$ROOT/perf/report.py" "$OUT"
log "done in $((END - START)) s: perf/results/$STAMP.md"
if [ "${TABLE:-1}" = 1 ]; then
  log "the table of durable acknowledgements (perf/latency.sh)"
  cleanup; trap - EXIT
  DURATION=10s perf/latency.sh
fi
