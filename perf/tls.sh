#!/usr/bin/env bash
# What TLS costs: throughput (window 256) and latency at window 1, 1 KiB and 16 KiB
# messages, acks=quorum, flush=always, on a single node and on a three-node hybrid cluster
# (replication factor 3), each with and without [tls], all in one run: a plain and a TLS
# broker (and cluster) stand side by side and the runs alternate, so that both see the same
# machine. Certificates from examples/secure/make-certs.sh. Every run's records are read
# back and checked (lost / duplicated / reordered / corrupt).
# Writes perf/results/<date>-<host>-tls.md and the raw JSON.
#
#   perf/tls.sh                  # about 6 minutes
#   DURATION=3s perf/tls.sh      # a quick pass
#   REPEAT=3 SETUPS=rf3 SIZES=1024 perf/tls.sh   # medians of 3 rounds of some rows
#   FLUSH=interval:100 ...       # no fsync per write: what TLS costs the CPU
#   PROFILE=1 ...                # also a CPU profile (perf, cpu-clock) of node 1 of each
#                                # cluster during its first 1 KiB window-256 run
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${DURATION:-10s}
REPEAT=${REPEAT:-1}
FLUSH=${FLUSH:-always}
read -r -a SETUPS <<< "${SETUPS:-single rf3}"
read -r -a SIZES <<< "${SIZES:-1024 16384}"
STAMP=$(date -u +%Y-%m-%d)-$(hostname -s)-tls${TAG:+-$TAG}
WORK_PREFIX=quorra-tls-perf
source "$ROOT/perf/cluster-common.sh"

QUORRA_CLUSTER_ID=perf-tls examples/secure/make-certs.sh "$WORK/certs" >/dev/null
head -c 32 /dev/urandom | base64 > "$WORK/cluster.secret"
ports=($(python3 -c 'import socket
ss=[socket.socket() for _ in range(14)]
[s.bind(("127.0.0.1",0)) for s in ss]
print(" ".join(str(s.getsockname()[1]) for s in ss))'))

tls_section() { # node
  echo "[tls]"
  echo "cert_file = \"$WORK/certs/node$1.pem\""; echo "key_file = \"$WORK/certs/node$1.key\""
  echo "ca_file = \"$WORK/certs/ca.pem\""; echo "client_auth = \"optional\""
}
# single VARIANT PORT
single() {
  { echo "listen = \"127.0.0.1:$2\""; echo "data_dir = \"$WORK/single-$1\""; echo "shards = 1"
    echo "[runtime]"; echo "pin_cores = false"; echo "[storage]"; echo "flush = \"$FLUSH\""
    [ "$1" = tls ] && tls_section 1; true; } > "$WORK/single-$1.toml"
}
# cluster VARIANT FIRST-PORT-INDEX: three nodes, client ports ports[i..i+2], peer ports[i+3..i+5]
cluster() {
  local i0=$2
  for n in 1 2 3; do
    { echo "listen = \"127.0.0.1:${ports[$((i0+n-1))]}\""; echo "data_dir = \"$WORK/$1-data-$n\""; echo "shards = 1"
      echo "[runtime]"; echo "pin_cores = false"; echo "[storage]"; echo "flush = \"$FLUSH\""
      [ "$1" = tls ] && tls_section $n
      echo "[cluster]"; echo "node_id = $n"; echo "cluster_id = \"perf-tls\""; echo "mode = \"hybrid\""
      echo "secret_file = \"$WORK/cluster.secret\""
      for j in 1 2 3; do
        echo "[[cluster.nodes]]"; echo "id = $j"
        echo "client = \"127.0.0.1:${ports[$((i0+j-1))]}\""; echo "peer = \"127.0.0.1:${ports[$((i0+j+2))]}\""
      done; } > "$WORK/$1-node$n.toml"
  done
}
single plain "${ports[0]}"; single tls "${ports[1]}"
cluster plain 2; cluster tls 8
for c in single-plain single-tls plain-node1 plain-node2 plain-node3 tls-node1 tls-node2 tls-node3; do start $c; done
sleep 2
declare -A BOOT=(
  [single-plain]=127.0.0.1:${ports[0]} [single-tls]=127.0.0.1:${ports[1]}
  [rf3-plain]=127.0.0.1:${ports[2]},127.0.0.1:${ports[3]},127.0.0.1:${ports[4]}
  [rf3-tls]=127.0.0.1:${ports[8]},127.0.0.1:${ports[9]},127.0.0.1:${ports[10]}
)
TLS_ARGS=(--tls-ca "$WORK/certs/ca.pem")

# run SETUP VARIANT SIZE WINDOW ROUND
run() {
  local setup=$1 variant=$2 size=$3 window=$4 rf=1 name="$1-$2-$3-w$4-r$5"
  [ "$setup" = rf3 ] && rf=3
  local extra=(); [ "$variant" = tls ] && extra=("${TLS_ARGS[@]}")
  log "run $name"
  local profiling=
  if [ -n "${PROFILE:-}" ] && [ "$setup-$size-w$window-r$5" = "rf3-1024-w256-r1" ]; then
    perf record -e cpu-clock -F 999 -p "${PID[$variant-node1]}" -o "$OUT/$variant-node1.perf.data" -- sleep 5 \
        >/dev/null 2>&1 &
    profiling=$!
  fi
  "$LOAD" produce --bootstrap "${BOOT[$setup-$variant]}" --topic "$name" --create-partitions 4 --replication-factor $rf \
      --acks quorum --size "$size" --window "$window" --duration "$DURATION" --json "$OUT/$name.json" \
      --ledger "$WORK/$name.ledger" "${extra[@]}" > "$OUT/$name.txt" 2>"$OUT/$name.err" || log "run $name: errors"
  if [ -n "$profiling" ]; then
    wait "$profiling" || true
    perf report -i "$OUT/$variant-node1.perf.data" --stdio --no-children --sort dso,symbol --percent-limit 0.3 2>/dev/null \
        | grep -v '^$' | sed 's/  */ /g' | head -80 > "$OUT/$variant-node1.profile.txt" || true
    rm -f "$OUT/$variant-node1.perf.data"
  fi
  "$LOAD" consume --bootstrap "${BOOT[$setup-$variant]}" --topic "$name" --consumers 2 --verify \
      --ledger "$WORK/$name.ledger" "${extra[@]}" > "$OUT/$name.verify" 2>/dev/null || echo "VERIFY FAILED" >> "$OUT/$name.verify"
  # Checked: its data goes (an RF3 16 KiB run at window 256 writes several GB per node).
  "$QUORRA" topic delete --bootstrap "${BOOT[$setup-$variant]}" "${extra[@]}" "$name" >/dev/null || log "delete $name failed"
}
for round in $(seq "$REPEAT"); do
  for setup in "${SETUPS[@]}"; do
    for size in "${SIZES[@]}"; do
      for window in 256 1; do
        # Alternate which variant goes first from round to round.
        if [ $((round % 2)) = 1 ]; then variants=(plain tls); else variants=(tls plain); fi
        for variant in "${variants[@]}"; do run $setup $variant $size $window $round; done
      done
    done
  done
done

echo "flush=$FLUSH" >> "$OUT/machine.txt"
python3 - "$OUT" "$DURATION" "$REPEAT" "${SETUPS[*]}" "${SIZES[*]}" > "$OUT/../$STAMP.md" <<'EOF'
import json, pathlib, statistics, sys
out, duration, repeat = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
setups, sizes = sys.argv[4].split(), [int(x) for x in sys.argv[5].split()]
m = dict(l.split("=", 1) for l in (out / "machine.txt").read_text().split("\n") if "=" in l)
def load1(n):
    try: return json.loads((out / f"{n}.json").read_text())
    except Exception: return None
def load(n):
    # The median run of the rounds by throughput (window 256) or by p50 (window 1).
    runs = [j for j in (load1(f"{n}-r{r}") for r in range(1, repeat + 1)) if j]
    if not runs: return None
    key = (lambda j: j["msgs_per_sec"]) if n.endswith("w256") else (lambda j: j["latency_us"]["p50"])
    return sorted(runs, key=key)[len(runs) // 2]
def verdict(n):
    t = (out / f"{n}.verify").read_text() if (out / f"{n}.verify").exists() else "missing"
    return "FAILED" if "FAILED" in t else " ".join(l.strip() for l in t.splitlines() if "lost" in l)[:80]
print(f"# TLS cost ({m.get('host')}, {m.get('cores')} cores, kernel {m.get('kernel')}, commit {m.get('commit')})\n")
flush = m.get("flush", "always")
print(f"Command: `DURATION={duration} REPEAT={repeat} FLUSH={flush} perf/tls.sh`; acks=quorum, flush={flush}, 4 partitions; plain and TLS")
print("brokers side by side, runs alternating. Throughput at window 256, latency at window 1;")
print(f"the median of {repeat} round(s) (each round's runs are listed after the table).\n")
print("| setup | size | plain msgs/s | TLS msgs/s | TLS/plain | plain p50 / p99 (us, w1) | TLS p50 / p99 (us, w1) | TLS p50 cost | checks |")
print("|---|---|---|---|---|---|---|---|---|")
for setup in setups:
    for size in sizes:
        tp, tt = load(f"{setup}-plain-{size}-w256"), load(f"{setup}-tls-{size}-w256")
        lp, lt = load(f"{setup}-plain-{size}-w1"), load(f"{setup}-tls-{size}-w1")
        if not all([tp, tt, lp, lt]):
            print(f"| {setup} | {size} | (a run failed) |||||||"); continue
        ratio = tt["msgs_per_sec"] / tp["msgs_per_sec"]
        cost = lt["latency_us"]["p50"] - lp["latency_us"]["p50"]
        checks = "; ".join(sorted({verdict(f"{setup}-{v}-{size}-w{w}-r{r}") for v in ["plain", "tls"] for w in [256, 1]
                                   for r in range(1, repeat + 1)}))
        print(f"| {setup} | {size} | {tp['msgs_per_sec']:.0f} | {tt['msgs_per_sec']:.0f} | {ratio:.2f} | "
              f"{lp['latency_us']['p50']} / {lp['latency_us']['p99']} | {lt['latency_us']['p50']} / {lt['latency_us']['p99']} | "
              f"{cost:+d} us | {checks} |")
if repeat > 1:
    print("\n| setup | size | round | plain msgs/s | TLS msgs/s | TLS/plain | plain p50 us | TLS p50 us |\n|---|---|---:|---:|---:|---:|---:|---:|")
    for setup in setups:
        for size in sizes:
            for r in range(1, repeat + 1):
                tp, tt = load1(f"{setup}-plain-{size}-w256-r{r}"), load1(f"{setup}-tls-{size}-w256-r{r}")
                lp, lt = load1(f"{setup}-plain-{size}-w1-r{r}"), load1(f"{setup}-tls-{size}-w1-r{r}")
                if not all([tp, tt, lp, lt]): continue
                print(f"| {setup} | {size} | {r} | {tp['msgs_per_sec']:.0f} | {tt['msgs_per_sec']:.0f} | "
                      f"{tt['msgs_per_sec'] / tp['msgs_per_sec']:.2f} | {lp['latency_us']['p50']} | {lt['latency_us']['p50']} |")
EOF
log "wrote perf/results/$STAMP.md"
cat "$OUT/../$STAMP.md"
