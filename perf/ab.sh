#!/usr/bin/env bash
# A/B of two broker builds on a single node: both brokers run side by side (each with its
# own data directory on the real disk, flush=always, one shard per core) and the runs
# alternate A, B, A, B, ... so that both see the same machine. Workloads, 1 KiB messages,
# acks=leader: window 1 with one producer (latency: msgs/s = 1 / mean), and 4 producers x
# window 256 on 1 and on 4 partitions (throughput). Every run's records are read back and
# checked (lost / duplicated / reordered / corrupt). Writes perf/results/<date>-<host>-ab-<TAG>.md
# with the median of the rounds and every run.
#
#   perf/ab.sh OLD_QUORRA_BINARY [NEW_QUORRA_BINARY]   # B defaults to this tree's release build
#   ROUNDS=3 DURATION=10s TAG=name perf/ab.sh ...       # the defaults
#   FLUSH=interval:100 WORKLOADS="4x256-p1" perf/ab.sh ... # CPU-bound: no fsync per write
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
A_BIN=$(realpath "${1:?usage: perf/ab.sh A_BINARY [B_BINARY]}")
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
TAG=${TAG:-ab}
FLUSH=${FLUSH:-always}
read -r -a WORKLOADS <<< "${WORKLOADS:-w1 4x256-p1 4x256-p4}"
STAMP=$(date -u +%Y-%m-%d)-$(hostname -s)-ab-$TAG
WORK_PREFIX=quorra-ab
source "$ROOT/perf/cluster-common.sh"
B_BIN=$(realpath "${2:-$QUORRA}")
echo "a=$A_BIN" >> "$OUT/machine.txt"; echo "b=$B_BIN" >> "$OUT/machine.txt"

ports=($(python3 -c 'import socket
ss=[socket.socket() for _ in range(2)]
[s.bind(("127.0.0.1",0)) for s in ss]
print(" ".join(str(s.getsockname()[1]) for s in ss))'))
declare -A BOOT=([a]=127.0.0.1:${ports[0]} [b]=127.0.0.1:${ports[1]})
declare -A BIN=([a]=$A_BIN [b]=$B_BIN)
for v in a b; do
  log="$OUT/broker-$v.log"
  "${BIN[$v]}" serve --listen "${BOOT[$v]}" --data-dir "$WORK/data-$v" --flush "$FLUSH" >>"$log" 2>&1 &
  PID[$v]=$!
  for _ in $(seq 400); do grep -q "serving on" "$log" 2>/dev/null && break; sleep 0.05; done
  grep -q "serving on" "$log" || { echo "broker $v did not start" >&2; exit 1; }
done

# run VARIANT WORKLOAD ROUND
run() {
  local v=$1 w=$2 r=$3 name="$2-$1-$3" args
  case $w in
    w1) args=(--producers 1 --window 1 --create-partitions 1) ;;
    4x256-p1) args=(--producers 4 --window 256 --create-partitions 1) ;;
    4x256-p4) args=(--producers 4 --window 256 --create-partitions 4) ;;
  esac
  log "run $name"
  "$LOAD" produce --bootstrap "${BOOT[$v]}" --topic "$name" "${args[@]}" --acks leader --size 1024 \
      --duration "$DURATION" --json "$OUT/$name.json" --ledger "$WORK/$name.ledger" > "$OUT/$name.txt" 2>"$OUT/$name.err" \
      || log "run $name: errors"
  "$LOAD" consume --bootstrap "${BOOT[$v]}" --topic "$name" --consumers 2 --verify --ledger "$WORK/$name.ledger" \
      > "$OUT/$name.verify" 2>/dev/null || echo "VERIFY FAILED" >> "$OUT/$name.verify"
  "$QUORRA" topic delete --bootstrap "${BOOT[$v]}" "$name" >/dev/null || log "delete $name failed"
}
for r in $(seq "$ROUNDS"); do
  for w in "${WORKLOADS[@]}"; do
    # Alternate which build goes first, so that neither always runs on a warmer machine.
    if [ $((r % 2)) = 1 ]; then order=(a b); else order=(b a); fi
    for v in "${order[@]}"; do run "$v" "$w" "$r"; done
  done
done

echo "flush=$FLUSH" >> "$OUT/machine.txt"
python3 - "$OUT" "$ROUNDS" "${WORKLOADS[*]}" > "$OUT/../$STAMP.md" <<'EOF'
import json, pathlib, statistics, sys
out, rounds, workloads = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split()
m = dict(l.split("=", 1) for l in (out / "machine.txt").read_text().split("\n") if "=" in l)
def load(n):
    try: return json.loads((out / f"{n}.json").read_text())
    except Exception: return None
def verdict(n):
    t = (out / f"{n}.verify").read_text() if (out / f"{n}.verify").exists() else "missing"
    if "FAILED" in t: return "FAILED"
    line = next((l for l in t.splitlines() if "lost" in l), "")
    bad = [f for f in ("lost", "duplicated", "corrupt", "reordered") if f" {f} 0" not in f" {line.replace(',', '')}"]
    return "clean" if line and not bad else f"NOT CLEAN: {line.strip()}"
print(f"# A/B, single node ({m.get('host')}, {m.get('cores')} cores, kernel {m.get('kernel')}, tree {m.get('commit')})\n")
print(f"A: `{m.get('a')}`  \nB: `{m.get('b')}`\n")
print(f"Command: `ROUNDS={rounds} DURATION={m.get('duration')} FLUSH={m.get('flush')} perf/ab.sh A B`; 1 KiB, acks=leader;")
print("both brokers side by side, runs alternating. Medians of the rounds; every run below.\n")
print("| workload | A msgs/s | B msgs/s | B/A | A mean / p50 / p99 us | B mean / p50 / p99 us | checks |")
print("|---|---:|---:|---:|---|---|---|")
runs = []
for w in workloads:
    row = {}
    for v in "ab":
        js = [load(f"{w}-{v}-{r}") for r in range(1, rounds + 1)]
        js = [j for j in js if j]
        for r, j in enumerate(js, 1):
            l = j["latency_us"]
            runs.append(f"| {w} | {v.upper()} | {r} | {j['msgs_per_sec']:.0f} | {l.get('mean', 0):.0f} | {l['p50']} | {l['p99']} |")
        if not js:
            row[v] = None; continue
        med = lambda f: statistics.median(f(j) for j in js)
        row[v] = (med(lambda j: j["msgs_per_sec"]), med(lambda j: j["latency_us"].get("mean", 0)),
                  med(lambda j: j["latency_us"]["p50"]), med(lambda j: j["latency_us"]["p99"]))
    checks = sorted({verdict(f"{w}-{v}-{r}") for v in "ab" for r in range(1, rounds + 1)})
    if not row["a"] or not row["b"]:
        print(f"| {w} | (a run failed) |||||| "); continue
    a, b = row["a"], row["b"]
    print(f"| {w} | {a[0]:,.0f} | {b[0]:,.0f} | {b[0] / a[0]:.2f} | {a[1]:.0f} / {a[2]:.0f} / {a[3]:.0f} | "
          f"{b[1]:.0f} / {b[2]:.0f} / {b[3]:.0f} | {'; '.join(checks)} |")
print("\n| workload | build | round | msgs/s | mean us | p50 us | p99 us |\n|---|---|---:|---:|---:|---:|---:|")
print("\n".join(runs))
EOF
log "wrote perf/results/$STAMP.md"
cat "$OUT/../$STAMP.md"
