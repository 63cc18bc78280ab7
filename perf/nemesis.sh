#!/usr/bin/env bash
# The nemesis against real clusters (tests/nemesis/): a seeded random schedule of kills,
# pauses, rolling restarts, network partitions (nftables rules between the nodes' own
# loopback addresses), failing disks and metadata logs, bit flips, SECS seconds in each of master-slave,
# hybrid and multi-master, under idempotent acks=quorum producers and leader and follower
# readers; the history check (lost / duplicated / reordered / corrupt / stale / phantom
# reads / offset gaps) and each fault's unavailability go to
# perf/results/<date>-nemesis-<secs>s-<modes>.md.
#
#   perf/nemesis.sh [secs-per-mode] [seed] [mode ...]
#       (default 1800 s, seed from the clock, modes master-slave hybrid multi-master)
#
# Needs root and nftables (apt-get install nftables); fails rather than leaving out the
# network faults.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-1800}
seed=${2:-$(date +%s)}
shift $(( $# > 2 ? 2 : $# ))
modes=("${@:-master-slave hybrid multi-master}")
filters=()
for m in ${modes[*]}; do filters+=("nemesis_${m//-/_}"); done
out=perf/results/$(date +%F)-nemesis-${secs}s-$(echo ${modes[*]} | tr ' ' '+').md
command -v nft >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nftables; }
started=$(date +%s)
rm -f "$out.tmp"
status=0
QUORRA_NEMESIS_SECS=$secs QUORRA_NEMESIS_SEED=$seed QUORRA_NEMESIS_REPORT=$PWD/$out.tmp \
    QUORRA_NEMESIS_REQUIRE_FIREWALL=1 \
    cargo test --release --test nemesis -- --exact "${filters[@]}" --test-threads 1 || status=$?
took=$(( $(date +%s) - started ))
{
    echo "# Nemesis report ($(date +%F))"
    echo
    echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(uname -sr)."
    echo "Command: \`perf/nemesis.sh $secs $seed ${modes[*]}\`, $took s in all (release build included); test exit status $status."
    echo
    cat "$out.tmp" 2>/dev/null || echo "(no report: the run failed before its end; see the test output)"
} > "$out"
rm -f "$out.tmp"
cat "$out"
exit $status
