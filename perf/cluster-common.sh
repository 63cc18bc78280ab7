# Shared by perf/cluster.sh and perf/modes.sh (sourced): output and work directories,
# process clean-up, logging, the build, and the machine description.
# In: ROOT, STAMP, WORK_PREFIX. Out: OUT, WORK, PID, QUORRA, LOAD, log, settled.
OUT=$ROOT/perf/results/$STAMP
rm -rf "$OUT"; mkdir -p "$OUT"
WORK=$(mktemp -d "/tmp/$WORK_PREFIX.XXXXXX")
declare -A PID
cleanup() { for p in "${PID[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

log "building"
cargo build --release --workspace -q
QUORRA=${QUORRA_BIN:-$ROOT/target/release/quorra}  # QUORRA_BIN: another build, for A/B runs
LOAD=${QUORRA_LOAD_BIN:-$ROOT/target/release/quorra-load}  # QUORRA_LOAD_BIN: another build, for A/B runs
{
  echo "host=$(hostname -s)"; echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "cores=$(nproc)"; echo "kernel=$(uname -r)"
  echo "commit=$(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty')"; echo "duration=$DURATION"
  if [ -n "${QUORRA_BIN:-}" ]; then echo "broker=$QUORRA"; fi
} > "$OUT/machine.txt"

# start CONFIG-NAME: starts quorra serve with $WORK/CONFIG-NAME.toml, logging to
# $OUT/CONFIG-NAME.log, and waits until it says it serves.
start() { # config-name
  local log="$OUT/$1.log"
  "$QUORRA" serve --config "$WORK/$1.toml" >>"$log" 2>&1 &
  PID[$1]=$!
  for _ in $(seq 400); do grep -q "serving on" "$log" 2>/dev/null && return 0; sleep 0.05; done
  echo "$1 did not start" >&2; exit 1
}

# settled BOOTSTRAP: every partition led by its preferred (first) replica, every replica in
# sync with lag 0. A kill before that (the restarted node still catching up) would measure
# a double fault instead of a failover.
settled() {
  "$QUORRA" cluster status --bootstrap "$1" 2>/dev/null | awk '
      $1 ~ /\// { n++; nr = split($4, r, ","); if ($2 != r[1] || split($5, a, ",") != nr) bad++
                  for (i = 8; i <= NF; i++) if ($i !~ /:0$/) bad++ }
      END { exit !(n > 0 && bad == 0) }'
}
