#!/usr/bin/env bash
# One row per cluster mode, on this machine, in one run. Each mode is started from its
# files in examples/<mode>/ (ports and data directories replaced, every other setting as
# shipped), with 1 KiB messages, acks=quorum, flush=always and the replication the mode
# sets (master-slave 3, hybrid 2, multi-master 3 = every node, forwarding 1, shared-storage
# 1 copy on the shared directory). Per mode:
#   - throughput: 4 producers x window 256; latency: 1 producer, window 1; each run checked
#     by the load generator's checker (every acknowledged message read back);
#   - the failover time (kill -9 of partition 0's leader to the first write acknowledged
#     afterwards) over KILLS kills, or for shared-storage the takeover time (kill -9 of the
#     active node to the first write the standby acknowledged) over TAKEOVERS kills;
#   - shared-storage also: the takeover of a paused (SIGSTOP) active node, by its lease, over
#     PAUSES pauses (the resumed node fences itself and stands by);
#   - forwarding only: latency through a node that forwards to the owner vs straight to it.
# Writes perf/results/<date>-<host>-modes.md and the raw JSON next to it.
#
#   perf/modes.sh                                    # about 6 minutes
#   DURATION=2s KILLS=2 TAKEOVERS=3 perf/modes.sh    # a quick pass
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${DURATION:-5s}
KILLS=${KILLS:-5}
TAKEOVERS=${TAKEOVERS:-20}
PAUSES=${PAUSES:-5}
MODES=${MODES:-master-slave hybrid multi-master forwarding shared-storage}
STAMP=$(date -u +%Y-%m-%d)-$(hostname -s)-modes${TAG:+-$TAG}
WORK_PREFIX=quorra-modes-perf
source "$ROOT/perf/cluster-common.sh"

rf_of() { case $1 in master-slave|multi-master) echo 3;; hybrid) echo 2;; *) echo 1;; esac; }

# configure MODE: examples/MODE/node*.toml -> $WORK/MODE/node*.toml with free ports and
# data under $WORK; prints the client addresses, comma-separated.
configure() {
  python3 - "$ROOT/examples/$1" "$WORK/$1" <<'PY'
import os, re, socket, sys
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
files = sorted(f for f in os.listdir(src) if f.endswith(".toml"))
texts = {f: open(os.path.join(src, f)).read() for f in files}
ports = sorted({int(p) for t in texts.values() for p in re.findall(r'"127\.0\.0\.1:(\d+)"', t)})
socks = [socket.socket() for _ in ports]
for s in socks:
    s.bind(("127.0.0.1", 0))
new = {old: s.getsockname()[1] for old, s in zip(ports, socks)}
for f, t in texts.items():
    t = re.sub(r'"127\.0\.0\.1:(\d+)"', lambda m: f'"127.0.0.1:{new[int(m.group(1))]}"', t)
    t = t.replace('"./quorra-data', f'"{dst}/data')
    open(os.path.join(dst, f), "w").write(t)
listen = [re.search(r'^listen = "(.*)"', texts[f], re.M).group(1) for f in files]
print(",".join(re.sub(r':(\d+)$', lambda m: f":{new[int(m.group(1))]}", a) for a in listen))
PY
}

# start_node MODE ID NEEDLE: starts node ID and waits for one more NEEDLE line in its log.
start_node() {
  local log="$OUT/$1-node$2.log" before
  before=$(grep -c "$3" "$log" 2>/dev/null || true)
  RUST_LOG=info,glommio=off "$QUORRA" serve --config "$WORK/$1/node$2.toml" >>"$log" 2>&1 &
  PID[$2]=$!
  for _ in $(seq 600); do
    [ "$(grep -c "$3" "$log" 2>/dev/null || true)" -gt "${before:-0}" ] && return 0
    sleep 0.05
  done
  echo "$1 node $2 did not log '$3'" >&2; exit 1
}

stop_nodes() { for i in "${!PID[@]}"; do kill -9 "${PID[$i]}" 2>/dev/null || true; wait "${PID[$i]}" 2>/dev/null || true; done; PID=(); }

# run MODE NAME TOPIC BOOTSTRAP [quorra-load produce args...]: a run and its check.
run() {
  local mode=$1 name=$2 topic=$3 b=$4; shift 4
  log "$mode: $name"
  : > "$WORK/$mode-$name.ledger"
  "$LOAD" produce --bootstrap "$b" --topic "$topic" --size 1024 --acks quorum --duration "$DURATION" \
      --json "$OUT/$mode-$name.json" --ledger "$WORK/$mode-$name.ledger" "$@" \
      > "$OUT/$mode-$name.txt" 2>"$OUT/$mode-$name.err" || log "$mode $name: errors (see $mode-$name.err)"
  "$LOAD" consume --bootstrap "$b" --topic "$topic" --consumers 2 --verify --ledger "$WORK/$mode-$name.ledger" \
      > "$OUT/$mode-$name.verify" 2>/dev/null || echo "VERIFY FAILED" >> "$OUT/$mode-$name.verify"
}

failovers() { # MODE BOOTSTRAP NODES COUNT
  local mode=$1 b=$2 nodes=$3 count=$4 rf
  # A partition with two copies cannot elect without both: hybrid fails over with three.
  rf=$(rf_of "$mode"); [ "$mode" = hybrid ] && rf=3
  "$QUORRA" topic create failover --partitions 1 --replication-factor "$rf" --bootstrap "$b" >/dev/null
  sleep 1
  : > "$OUT/$mode-failover.jsonl"
  for k in $(seq "$count"); do
    local pids="" i line node
    for i in $(seq "$nodes"); do pids="$pids${pids:+,}$i=${PID[$i]}"; done
    if ! line=$("$LOAD" failover --bootstrap "$b" --topic failover --pids "$pids" 2>>"$OUT/$mode-failover.err"); then
      log "$mode kill $k: probe failed"; line='{"failed":true}'
    fi
    echo "$line" >> "$OUT/$mode-failover.jsonl"
    log "$mode kill $k: $line"
    node=$(python3 -c "import json,sys;print(json.loads(sys.argv[1]).get('killed_node',0))" "$line")
    [ "$node" = 0 ] && continue
    wait "${PID[$node]}" 2>/dev/null || true
    while kill -0 "${PID[$node]}" 2>/dev/null; do sleep 0.05; done
    if [ "$mode" = shared-storage ]; then
      start_node "$mode" "$node" "standby"
    else
      start_node "$mode" "$node" "serving on"
      for _ in $(seq 300); do settled "$b" && break; sleep 0.2; done
    fi
    sleep 0.5
  done
}

pauses() { # MODE BOOTSTRAP NODES COUNT (shared-storage)
  local mode=$1 b=$2 nodes=$3 count=$4
  : > "$OUT/$mode-pause.jsonl"
  for k in $(seq "$count"); do
    local pids="" i line node
    local -A stood=()
    for i in $(seq "$nodes"); do
      pids="$pids${pids:+,}$i=${PID[$i]}"
      stood[$i]=$(grep -c "standby" "$OUT/$mode-node$i.log" || true)
    done
    if ! line=$("$LOAD" failover --signal stop --bootstrap "$b" --topic failover --pids "$pids" 2>>"$OUT/$mode-pause.err"); then
      log "$mode pause $k: probe failed"; line='{"failed":true}'
    fi
    echo "$line" >> "$OUT/$mode-pause.jsonl"
    log "$mode pause $k: $line"
    node=$(python3 -c "import json,sys;print(json.loads(sys.argv[1]).get('killed_node',0))" "$line")
    [ "$node" = 0 ] && continue
    # Resumed, it fences itself and re-executes as a standby (same process id).
    for _ in $(seq 600); do
      [ "$(grep -c "standby" "$OUT/$mode-node$node.log" || true)" -gt "${stood[$node]}" ] && break
      sleep 0.05
    done
    sleep 0.5
  done
}

for mode in $MODES; do
  B=$(configure "$mode")
  nodes=$(ls "$WORK/$mode"/node*.toml | wc -l)
  rf=$(rf_of "$mode")
  log "$mode: $nodes nodes, replication $rf, bootstrap $B"
  if [ "$mode" = shared-storage ]; then
    start_node "$mode" 1 "serving on"; start_node "$mode" 2 "standby"
  else
    for i in $(seq "$nodes"); do start_node "$mode" "$i" "serving on"; done
  fi
  sleep 1
  run "$mode" throughput throughput "$B" --create-partitions 4 --replication-factor "$rf" --producers 4 --window 256
  run "$mode" latency latency "$B" --create-partitions 4 --replication-factor "$rf" --producers 1 --window 1
  if [ "$mode" = forwarding ]; then
    # A one-partition topic per run (each run's checker needs its own topic): straight to
    # the partition's owner, then through another node, interleaved.
    for r in 1 2; do
      for path in direct forwarded; do
        "$QUORRA" topic create "fwd-$path-$r" --partitions 1 --replication-factor 1 --bootstrap "$B" >/dev/null
      done
    done
    sleep 1
    for r in 1 2; do
      for path in direct forwarded; do
        owner=$("$QUORRA" cluster status --bootstrap "$B" | awk -v t="fwd-$path-$r/0" '$1==t {print $2}')
        if [ "$path" = direct ]; then via=$owner; else via=$(( owner % nodes + 1 )); fi
        run "$mode" "fwd-$path-$r" "fwd-$path-$r" "$(echo "$B" | cut -d, -f"$via")" \
            --producers 1 --window 1 --no-follow-leaders
      done
    done
  fi
  case $mode in
    shared-storage) failovers "$mode" "$B" "$nodes" "$TAKEOVERS"; pauses "$mode" "$B" "$nodes" "$PAUSES" ;;
    forwarding) ;;  # one copy: no failover (a dead owner's partitions are unavailable)
    *) failovers "$mode" "$B" "$nodes" "$KILLS" ;;
  esac
  stop_nodes
done

python3 - "$OUT" "$MODES" <<'PY'
import json, os, statistics, sys
out, modes = sys.argv[1], sys.argv[2].split()
rf = {"master-slave": 3, "hybrid": 2, "multi-master": 3, "forwarding": 1, "shared-storage": 1}
def load(name):
    try:
        return json.load(open(os.path.join(out, name + ".json")))
    except FileNotFoundError:
        return None
def verdict(name):
    try:
        text = open(os.path.join(out, name + ".verify")).read()
    except FileNotFoundError:
        return "-"
    return next((l for l in text.splitlines() if l.startswith("acked")), "VERIFY FAILED")
def failover(mode, kind="failover", what="kills"):
    try:
        fo = [json.loads(l) for l in open(os.path.join(out, f"{mode}-{kind}.jsonl")) if l.strip()]
    except FileNotFoundError:
        return None
    ms = sorted(x["failover_ms"] for x in fo if "failover_ms" in x)
    failed = len(fo) - len(ms)
    if not ms:
        return f"all {failed} probes failed"
    q = lambda p: ms[min(len(ms) - 1, int(p * len(ms)))]
    return (f"median {statistics.median(ms):.0f} ms (min {ms[0]:.0f}, p90 {q(0.9):.0f}, max {ms[-1]:.0f}; "
            f"{len(ms)} {what}{f', {failed} failed' if failed else ''})")
lines = ["# Cluster modes benchmark", "", "```", open(os.path.join(out, "machine.txt")).read().strip(), "```", "",
         "Each mode from `examples/<mode>/` on this machine (all nodes on the same cores), 1 KiB messages,",
         "acks=quorum, flush=always, 4 partitions. Throughput: 4 producers x window 256. Latency: 1 producer,",
         "window 1. Failover: kill -9 of partition 0's leader (shared-storage: of the active node) to the",
         "first write acknowledged afterwards (hybrid: on a topic with three copies; with two, a dead",
         "replica leaves no majority to elect from).", "",
         "| mode | copies | msgs/s | MB/s | p50 us (w1) | p99 us (w1) | p99.9 us (w1) | failover / takeover | checker (throughput; latency) |",
         "|---|---:|---:|---:|---:|---:|---:|---|---|"]
for m in modes:
    t, l = load(f"{m}-throughput"), load(f"{m}-latency")
    if not t or not l:
        lines.append(f"| {m} | {rf[m]} | - | - | - | - | - | - | run failed |")
        continue
    lat = l["latency_us"]
    lines.append(f"| {m} | {rf[m]} | {t['msgs_per_sec']:.0f} | {t['mb_per_sec']:.1f} | {lat['p50']} | {lat['p99']} | "
                 f"{lat['p999']} | {failover(m) or 'none (one copy)'} | {verdict(m + '-throughput')}; {verdict(m + '-latency')} |")
paused = failover("shared-storage", "pause", "pauses")
if paused:
    lines += ["", f"shared-storage, active node paused (SIGSTOP) instead of killed, taken over by its lease: {paused}."]
direct = [load(f"forwarding-fwd-direct-{r}") for r in (1, 2)]
fwd = [load(f"forwarding-fwd-forwarded-{r}") for r in (1, 2)]
if all(direct) and all(fwd):
    avg = lambda runs, k: sum(r["latency_us"][k] for r in runs) / len(runs)
    lines += ["", "Forwarded path (forwarding mode, one partition, window 1, two interleaved runs each):", "",
              "| path | p50 us | p99 us | p99.9 us |", "|---|---:|---:|---:|"]
    for name, runs in (("straight to the owner", direct), ("through another node (one hop)", fwd)):
        lines.append(f"| {name} | {avg(runs, 'p50'):.0f} | {avg(runs, 'p99'):.0f} | {avg(runs, 'p999'):.0f} |")
    lines += ["", f"Extra latency of the hop: p50 +{avg(fwd, 'p50') - avg(direct, 'p50'):.0f} us, "
              f"p99 +{avg(fwd, 'p99') - avg(direct, 'p99'):.0f} us."]
    for r in (1, 2):
        lines.append(f"Checker, direct {r}: {verdict(f'forwarding-fwd-direct-{r}')}; forwarded {r}: {verdict(f'forwarding-fwd-forwarded-{r}')}")
open(out + ".md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
log "done: perf/results/$STAMP.md"
