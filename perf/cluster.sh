#!/usr/bin/env bash
# Replication benchmarks on one machine: a three-node cluster (one shard per node), 1 KiB
# messages, acks=quorum, flush=always. Replication factor 3 is measured beside replication
# factor 1 on the same cluster in the same run, then the failover time over KILLS kills of
# a partition leader (kill -9 to the first write acknowledged by the new leader).
# Writes perf/results/<date>-<host>-cluster.md and the raw JSON.
#
#   perf/cluster.sh                    # about 4 minutes
#   DURATION=2s KILLS=3 perf/cluster.sh  # a quick pass
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${DURATION:-5s}
KILLS=${KILLS:-20}
STAMP=$(date -u +%Y-%m-%d)-$(hostname -s)-cluster${TAG:+-$TAG}
WORK_PREFIX=quorra-cluster-perf
source "$ROOT/perf/cluster-common.sh"

ports=($(python3 -c 'import socket
ss=[socket.socket() for _ in range(6)]
[s.bind(("127.0.0.1",0)) for s in ss]
print(" ".join(str(s.getsockname()[1]) for s in ss))'))
B=127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}
head -c 32 /dev/urandom | base64 > "$WORK/cluster.secret"
for i in 1 2 3; do
  {
    echo "listen = \"127.0.0.1:${ports[$((i-1))]}\""; echo "data_dir = \"$WORK/data-$i\""; echo "shards = 1"
    echo "[runtime]"; echo "pin_cores = false"
    echo "[cluster]"; echo "node_id = $i"; echo "cluster_id = \"perf\""; echo "mode = \"hybrid\""; echo "secret_file = \"$WORK/cluster.secret\""
    for j in 1 2 3; do
      echo "[[cluster.nodes]]"; echo "id = $j"
      echo "client = \"127.0.0.1:${ports[$((j-1))]}\""; echo "peer = \"127.0.0.1:${ports[$((j+2))]}\""
    done
  } > "$WORK/node$i.toml"
done
start_node() { # id
  local log="$OUT/node$1.log" before
  before=$(grep -c "serving on" "$log" 2>/dev/null || true)
  "$QUORRA" serve --config "$WORK/node$1.toml" >>"$log" 2>&1 &
  PID[$1]=$!
  for _ in $(seq 400); do
    [ "$(grep -c "serving on" "$log" 2>/dev/null || true)" -gt "${before:-0}" ] && return 0
    sleep 0.05
  done
  echo "node $1 did not start" >&2; exit 1
}
for i in 1 2 3; do start_node $i; done
sleep 1

# run NAME RF [quorra-load produce args...]
run() {
  local name=$1 rf=$2; shift 2
  log "run $name"
  "$LOAD" produce --bootstrap "$B" --topic "$name" --create-partitions 4 --replication-factor "$rf" --acks quorum \
      --size 1024 --duration "$DURATION" --json "$OUT/$name.json" --hgrm "$OUT/$name.hgrm" \
      --ledger "$WORK/$name.ledger" "$@" > "$OUT/$name.txt" 2>"$OUT/$name.err" || log "run $name: errors (see $name.err)"
  "$LOAD" consume --bootstrap "$B" --topic "$name" --consumers 2 --verify --ledger "$WORK/$name.ledger" \
      > "$OUT/$name.verify" 2>/dev/null || echo "VERIFY FAILED" >> "$OUT/$name.verify"
}
# Interleaved, so that both factors see the same machine conditions.
for round in 1 2; do
  for rf in 1 3; do
    run "rf$rf-throughput-$round" $rf --producers 4 --window 256
    run "rf$rf-latency-$round" $rf --producers 1 --window 1
  done
done

log "failover: $KILLS kills"
"$QUORRA" topic create failover --partitions 1 --replication-factor 3 --bootstrap "$B" >/dev/null
sleep 1
: > "$OUT/failover.jsonl"
for k in $(seq "$KILLS"); do
  pids="1=${PID[1]},2=${PID[2]},3=${PID[3]}"
  if ! line=$("$LOAD" failover --bootstrap "$B" --topic failover --pids "$pids" 2>>"$OUT/failover.err"); then
    log "kill $k: probe failed"; line='{"failed":true}'
  fi
  echo "$line" >> "$OUT/failover.jsonl"
  node=$(python3 -c "import json,sys;print(json.loads(sys.argv[1]).get('killed_node',0))" "$line")
  log "kill $k: $line"
  if [ "$node" != 0 ]; then wait "${PID[$node]}" 2>/dev/null || true; start_node "$node"; fi
  # The next kill hits a settled cluster (see settled in perf/cluster-common.sh).
  t0=$(date +%s%N); ok=no
  for _ in $(seq 300); do settled "$B" && { ok=yes; break; }; sleep 0.2; done
  secs=$(( ($(date +%s%N) - t0) / 1000000 ))
  log "kill $k: settled=$ok after $secs ms"
  echo "$secs $ok" >> "$OUT/settle.txt"
  sleep 0.5
done

python3 - "$OUT" <<'PY'
import json, os, sys, statistics
out = sys.argv[1]
def load(name):
    with open(os.path.join(out, name + ".json")) as f:
        return json.load(f)
def verdict(name):
    text = open(os.path.join(out, name + ".verify")).read()
    return next((l for l in text.splitlines() if l.startswith("acked")), "VERIFY FAILED")
rows = []
for kind in ("throughput", "latency"):
    for rnd in (1, 2):
        for rf in (1, 3):
            n = f"rf{rf}-{kind}-{rnd}"
            try:
                j = load(n)
            except FileNotFoundError:
                continue
            rows.append((n, j, verdict(n)))
lines = ["# Replication benchmark", "", "```", open(os.path.join(out, "machine.txt")).read().strip(), "```", "",
         "Three nodes (one shard each) on this machine, 1 KiB messages, acks=quorum, flush=always, 4 partitions.", "",
         "| run | msgs/s | MB/s | p50 us | p99 us | p99.9 us | checker |", "|---|---:|---:|---:|---:|---:|---|"]
for n, j, v in rows:
    l = j['latency_us']
    lines.append(f"| {n} | {j['msgs_per_sec']:.0f} | {j['mb_per_sec']:.1f} | {l['p50']} | {l['p99']} | {l['p999']} | {v} |")
def mean(rf, kind, key):
    vals = [(j['latency_us'][key] if key in j['latency_us'] else j[key]) for n, j, _ in rows if n.startswith(f"rf{rf}-{kind}")]
    return sum(vals) / len(vals) if vals else float("nan")
t1, t3 = mean(1, "throughput", "msgs_per_sec"), mean(3, "throughput", "msgs_per_sec")
l1, l3 = mean(1, "latency", "p99"), mean(3, "latency", "p99")
lines += ["", f"Throughput RF3 / RF1: {t3:.0f} / {t1:.0f} msgs/s = **{100*t3/t1:.0f}%** (target >= 40%).",
          f"p99 at window 1, RF3 / RF1: {l3:.0f} / {l1:.0f} us = **{l3/l1:.2f}x** (target <= 2x).", ""]
fo = [json.loads(l) for l in open(os.path.join(out, "failover.jsonl")) if l.strip()]
ms = sorted(x["failover_ms"] for x in fo if "failover_ms" in x)
failed = sum(1 for x in fo if "failover_ms" not in x)
if ms:
    q = lambda p: ms[min(len(ms) - 1, int(p * len(ms)))]
    lines += [f"Failover over {len(ms)} kills ({failed} failed probes): median **{statistics.median(ms):.0f} ms**, "
              f"min {ms[0]:.0f}, p90 {q(0.9):.0f}, max {ms[-1]:.0f} ms (target: median < 1500 ms).",
              "", "All: " + ", ".join(f"{x:.0f}" for x in ms)]
settle = [l.split() for l in open(os.path.join(out, "settle.txt")) if l.strip()] if os.path.exists(os.path.join(out, "settle.txt")) else []
if settle:
    st = sorted(int(s[0]) for s in settle)
    lines += ["", f"Back to settled after each kill and restart (every partition led by its first replica, all in sync, lag 0): "
              f"median {statistics.median(st):.0f} ms, max {st[-1]} ms, {sum(1 for s in settle if s[1] != 'yes')} of {len(st)} not settled within 60 s."]
open(out + ".md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
log "done: perf/results/$STAMP.md"
