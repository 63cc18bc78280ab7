#!/usr/bin/env bash
# Durable acknowledgements against the disk and the peers, in one run (issue 14's table):
# fio's 4 KiB O_DSYNC write (the disk's own durable write), the durable peers through
# ../shared/peers/ (Redis AOF always, NATS single and R3 with sync_interval always, RabbitMQ
# quorum queue), a Quorra single node (flush=always, acks=leader) and a three-node
# master-slave cluster (RF3, acks=quorum), 1 KiB messages:
#   - window 1, one producer, one partition: msgs/s = 1 / mean latency;
#   - 4 producers x window 256 and 16 x 64, on 1, 4 and 16 partitions (partition scaling).
# Every Quorra run is read back and checked (lost / duplicated / reordered / corrupt).
# Medians of REPEAT rounds; fio runs once per round, between the Quorra rows.
# Writes perf/results/<date>-<host>-latency.md and the raw files beside it.
#
#   perf/latency.sh                        # REPEAT=3, DURATION=10s, peers included (~35 min)
#   PEERS=0 REPEAT=1 DURATION=3s perf/latency.sh     # a quick pass without the peers
#   WORKLOADS="w1 4x256-p1" SETUPS=single ...        # some rows only
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${DURATION:-10s}
REPEAT=${REPEAT:-3}
PEERS=${PEERS:-1}
read -r -a SETUPS <<< "${SETUPS:-single rf3}"
read -r -a WORKLOADS <<< "${WORKLOADS:-w1 4x256-p1 4x256-p4 4x256-p16 16x64-p1 16x64-p16}"
STAMP=$(date -u +%Y-%m-%d)-$(hostname -s)-latency${TAG:+-$TAG}
WORK_PREFIX=quorra-latency-perf
source "$ROOT/perf/cluster-common.sh"
command -v fio >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq fio >/dev/null; }

head -c 32 /dev/urandom | base64 > "$WORK/cluster.secret"
ports=($(python3 -c 'import socket
ss=[socket.socket() for _ in range(7)]
[s.bind(("127.0.0.1",0)) for s in ss]
print(" ".join(str(s.getsockname()[1]) for s in ss))'))

# The single node: README's defaults (a shard per core), flush=always.
{ echo "listen = \"127.0.0.1:${ports[0]}\""; echo "data_dir = \"$WORK/single\""
  echo "[storage]"; echo "flush = \"always\""; } > "$WORK/single.toml"
for n in 1 2 3; do
  { echo "listen = \"127.0.0.1:${ports[$n]}\""; echo "data_dir = \"$WORK/rf3-data-$n\""
    echo "[storage]"; echo "flush = \"always\""
    echo "[cluster]"; echo "node_id = $n"; echo "cluster_id = \"perf-latency\""; echo "mode = \"master-slave\""
    echo "secret_file = \"$WORK/cluster.secret\""
    for j in 1 2 3; do
      echo "[[cluster.nodes]]"; echo "id = $j"
      echo "client = \"127.0.0.1:${ports[$j]}\""; echo "peer = \"127.0.0.1:${ports[$((j+3))]}\""
    done; } > "$WORK/rf3-node$n.toml"
done
for c in single rf3-node1 rf3-node2 rf3-node3; do start $c; done
sleep 2
declare -A BOOT=([single]=127.0.0.1:${ports[0]} [rf3]=127.0.0.1:${ports[1]},127.0.0.1:${ports[2]},127.0.0.1:${ports[3]})
declare -A ACKS=([single]=leader [rf3]=quorum)
declare -A RF=([single]=1 [rf3]=3)

fio_dsync() { # round
  log "fio: 4 KiB O_DSYNC writes, one at a time"
  fio --name=dsync --filename="$WORK/fio-dsync.dat" --size=256M --bs=4k --rw=write --direct=1 --sync=dsync \
      --ioengine=io_uring --iodepth=1 --runtime="${DURATION%s}" --time_based --output-format=json \
      > "$OUT/fio-dsync-r$1.json"
  rm -f "$WORK/fio-dsync.dat"
}

# run SETUP WORKLOAD ROUND: WORKLOAD is w1 or <producers>x<window>-p<partitions>
run() {
  local setup=$1 workload=$2 round=$3 producers window partitions name
  if [ "$workload" = w1 ]; then producers=1 window=1 partitions=1
  else producers=${workload%%x*}; window=${workload#*x}; window=${window%%-*}; partitions=${workload##*-p}; fi
  name="$setup-$workload-r$round"
  log "run $name"
  "$LOAD" produce --bootstrap "${BOOT[$setup]}" --topic "$name" --create-partitions "$partitions" \
      --replication-factor "${RF[$setup]}" --acks "${ACKS[$setup]}" --size 1024 --producers "$producers" \
      --window "$window" --duration "$DURATION" --json "$OUT/$name.json" --ledger "$WORK/$name.ledger" \
      > "$OUT/$name.txt" 2>"$OUT/$name.err" || log "run $name: errors"
  "$LOAD" consume --bootstrap "${BOOT[$setup]}" --topic "$name" --consumers 2 --verify \
      --ledger "$WORK/$name.ledger" > "$OUT/$name.verify" 2>/dev/null || echo "VERIFY FAILED" >> "$OUT/$name.verify"
  "$QUORRA" topic delete --bootstrap "${BOOT[$setup]}" "$name" >/dev/null || log "delete $name failed"
}
for round in $(seq "$REPEAT"); do
  fio_dsync "$round"
  for setup in "${SETUPS[@]}"; do
    for workload in "${WORKLOADS[@]}"; do run "$setup" "$workload" "$round"; done
  done
done
for c in single rf3-node1 rf3-node2 rf3-node3; do kill "${PID[$c]}" 2>/dev/null || true; done
PID=()

if [ "$PEERS" = 1 ]; then
  [ -x /opt/peerbench/peerbench-target/release/peerbench ] || "$ROOT/../shared/peers/install.sh" install
  log "peers (../shared/peers/run.sh, $REPEAT runs each)"
  ONLY='aof always|single sync|R3 sync|rabbitmq-3.10 quorum' RUNS=$REPEAT OUT="$OUT/peers" \
      LAT_SECS="${DURATION%s}" TPUT_SECS="${DURATION%s}" "$ROOT/../shared/peers/run.sh" > "$OUT/peers.txt" 2>&1 \
      || log "peers: errors (see $OUT/peers.txt)"
fi

python3 "$ROOT/perf/latency_report.py" "$OUT" "$DURATION" "$REPEAT" "${SETUPS[*]}" "${WORKLOADS[*]}" > "$OUT/../$STAMP.md"
cat "$OUT/../$STAMP.md"
