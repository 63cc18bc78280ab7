#!/usr/bin/env bash
# A long run of the simulator (the production partition on simulated disks, network and
# metadata log): N seeded cluster fault schedules (default 1,000,000) and N/4 single-node
# ones (a replica set of one), from seed FIRST (default 0), and a report of what they did (faults injected by kind,
# invariant checks, records acknowledged, elections) in perf/results/<date>-sim.md.
#
#   perf/sim.sh [schedules] [first-seed]
#
# A failing schedule stops the run and prints its seed with the command that replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
schedules=${1:-1000000}
first=${2:-0}
out=perf/results/$(date +%F)-sim.md
started=$(date +%s)
QUORRA_SIM_SCHEDULES=$schedules QUORRA_SIM_FIRST_SEED=$first QUORRA_SIM_REPORT=1 \
    cargo test --release --lib sim::tests::random_fault_schedules -- --exact --nocapture --test-threads 1 \
    | sed -n '/# Simulation report/,/end of the simulation report/{s/^.*# Simulation report/# Simulation report/;/end of the simulation report/d;p}' > "$out.tmp"
took=$(( $(date +%s) - started ))
{
    cat "$out.tmp"
    echo
    echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(uname -sr)."
    echo "Command: \`perf/sim.sh $schedules $first\`, $took s (release build included)."
} > "$out"
rm -f "$out.tmp"
cat "$out"
