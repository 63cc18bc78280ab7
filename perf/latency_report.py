#!/usr/bin/env python3
"""The table of perf/latency.sh: fio, the peers and Quorra, medians of the rounds, with the
targets of issue 14 as ratios to figures of the same run.

usage: latency_report.py OUT DURATION REPEAT "SETUPS" "WORKLOADS"
"""
import json
import pathlib
import statistics
import sys

out, duration, repeat = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
setups, workloads = sys.argv[4].split(), sys.argv[5].split()
machine = dict(l.split("=", 1) for l in (out / "machine.txt").read_text().splitlines() if "=" in l)


def load(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fio_round(r):
    j = load(out / f"fio-dsync-r{r}.json")
    if not j:
        return None
    w = j["jobs"][0]["write"]
    p = w["clat_ns"]["percentile"]
    # With O_DSYNC the write and its flush are one operation: its completion latency.
    return dict(iops=w["iops"], mean=w["clat_ns"]["mean"] / 1000, p50=p["50.000000"] / 1000, p99=p["99.000000"] / 1000)


fio_runs = [f for f in (fio_round(r) for r in range(1, repeat + 1)) if f]
fio = {k: median([f[k] for f in fio_runs]) for k in ("iops", "mean", "p50", "p99")} if fio_runs else None


def quorra(setup, workload):
    runs = [load(out / f"{setup}-{workload}-r{r}.json") for r in range(1, repeat + 1)]
    runs = [j for j in runs if j]
    if not runs:
        return None
    return dict(
        msgs=median([j["msgs_per_sec"] for j in runs]),
        mean=median([j["latency_us"]["mean"] for j in runs]),
        p50=median([j["latency_us"]["p50"] for j in runs]),
        p99=median([j["latency_us"]["p99"] for j in runs]),
        # mean latency x msgs/s: about 1 at window 1 (a closed loop with one in flight).
        loop=median([j["latency_us"]["mean"] * j["msgs_per_sec"] / 1e6 for j in runs]),
        runs=[round(j["msgs_per_sec"]) for j in runs],
    )


def verdicts(setup, workload):
    bad = []
    for r in range(1, repeat + 1):
        v = out / f"{setup}-{workload}-r{r}.verify"
        text = v.read_text() if v.exists() else "missing"
        if "FAILED" in text or "lost 0, duplicated 0, corrupt 0, reordered 0" not in text:
            bad.append(f"r{r}: " + " ".join(l.strip() for l in text.splitlines() if "lost" in l or "FAILED" in l)[:120])
    return "clean" if not bad else "; ".join(bad)


peers = {}
for line in (out / "peers" / "runs.jsonl").read_text().splitlines() if (out / "peers" / "runs.jsonl").exists() else []:
    r = json.loads(line)
    workload = "w1" if (r["producers"], r["window"]) == (1, 1) else f"{r['producers']}x{r['window']}"
    peers.setdefault((r["label"], workload), []).append(r)


def peer(label_part, workload):
    for (label, w), rs in peers.items():
        if label_part in label and w == workload:
            mean = median([r.get("lat_mean_us") for r in rs])
            return dict(label=label, msgs=median([r["produce_msgs_s"] for r in rs]), mean=mean,
                        p50=median([r["lat_p50_us"] for r in rs]), p99=median([r["lat_p99_us"] for r in rs]))
    return None


def n(x, nd=0):
    return "-" if x is None else f"{x:,.{nd}f}"


print(f"# Durable acknowledgements: Quorra, the disk and the peers ({machine.get('host')}, {machine.get('cores')} cores, "
      f"kernel {machine.get('kernel')}, commit {machine.get('commit')})\n")
print(f"Command: `DURATION={duration} REPEAT={repeat} perf/latency.sh`. 1 KiB messages; medians of {repeat} rounds of "
      f"{duration}; every Quorra run read back and checked.\n")
print("| system, what an ack means | window-1 msgs/s | mean us | p50 us | p99 us | 4 x 256 msgs/s | 16 x 64 msgs/s |")
print("|---|---:|---:|---:|---:|---:|---:|")
if fio:
    print(f"| fio: one 4 KiB O_DSYNC write at a time (the disk's own durable write) | {n(fio['iops'])} | {n(fio['mean'])} "
          f"| {n(fio['p50'])} | {n(fio['p99'])} | | |")
rows = [("aof always", "Redis 7, AOF `appendfsync always`"), ("single sync", "NATS single node, `sync_interval: always`"),
        ("rabbitmq", "RabbitMQ quorum queue"), ("R3 sync", "NATS 3 nodes, R3, `sync_interval: always`")]
for key, title in rows:
    lat, tput = peer(key, "w1"), peer(key, "4x256")
    if lat or tput:
        lat = lat or {}
        print(f"| {title} ({(lat or tput).get('label')}) | {n(lat.get('msgs'))} | {n(lat.get('mean'))} | {n(lat.get('p50'))} "
              f"| {n(lat.get('p99'))} | {n(tput and tput['msgs'])} | |")
titles = {"single": "Quorra single node, flush=always, acks=leader", "rf3": "Quorra master-slave RF3, acks=quorum"}
checks = []
for setup in setups:
    for parts in ("1", "4", "16"):
        w1 = quorra(setup, "w1") if parts == "1" else None
        t4 = quorra(setup, f"4x256-p{parts}")
        t16 = quorra(setup, f"16x64-p{parts}")
        if not (w1 or t4 or t16):
            continue
        w1 = w1 or {}
        print(f"| **{titles[setup]}, {parts} partition{'s' if parts != '1' else ''}** | {n(w1.get('msgs'))} "
              f"| {n(w1.get('mean'))} | {n(w1.get('p50'))} | {n(w1.get('p99'))} | {n(t4 and t4['msgs'])} "
              f"| {n(t16 and t16['msgs'])} |")
    for workload in workloads:
        checks.append(f"- {setup} {workload}: {verdicts(setup, workload)}; msgs/s per round "
                      f"{(quorra(setup, workload) or {}).get('runs')}")

print("\n## Targets (ratios to figures of this run)\n")
single, rf3 = quorra("single", "w1"), quorra("rf3", "w1")
redis = peer("aof always", "w1")
redis_t, nats_r3_t = peer("aof always", "4x256"), peer("R3 sync", "4x256")


def target(what, value, limit, better="<="):
    if value is None or limit is None:
        return f"| {what} | - | {n(limit, 2)} | not measured |"
    ok = value <= limit if better == "<=" else value >= limit
    return f"| {what} | {value:,.2f} | {better} {limit:,.2f} | {'met' if ok else 'missed'} |"


print("| target | this run | limit | verdict |")
print("|---|---:|---:|---|")
if single and fio:
    print(target("single node w1 mean / fio O_DSYNC mean", single["mean"] / fio["mean"], 1.2))
    print(target("single node w1 p50 / fio O_DSYNC p50", single["p50"] / fio["p50"], 1.2))
    print(target("single node w1 p99 / fio O_DSYNC p99", single["p99"] / fio["p99"], 1.5))
if single and redis and redis.get("mean"):
    print(target("single node w1 mean / Redis AOF-always mean", single["mean"] / redis["mean"], 1.0))
if single and rf3:
    print(target("RF3 w1 mean / single node w1 mean", rf3["mean"] / single["mean"], 1.6))
for setup in setups:
    one = quorra(setup, "4x256-p1")
    for w in ("4x256-p4", "4x256-p16"):
        more = quorra(setup, w)
        if one and more:
            print(target(f"{setup} {w} / 4x256-p1 msgs/s", more["msgs"] / one["msgs"], 1.0, ">="))
    one = quorra(setup, "16x64-p1")
    more = quorra(setup, "16x64-p16")
    if one and more:
        print(target(f"{setup} 16x64-p16 / 16x64-p1 msgs/s", more["msgs"] / one["msgs"], 1.0, ">="))
s4 = quorra("single", "4x256-p1")
if s4 and redis_t:
    print(target("single node 4x256 / Redis AOF-always 4x256", s4["msgs"] / redis_t["msgs"], 10.0, ">="))
r4 = quorra("rf3", "4x256-p1")
if r4 and nats_r3_t:
    print(target("RF3 4x256 / NATS R3 sync 4x256", r4["msgs"] / nats_r3_t["msgs"], 10.0, ">="))

print("\n## Sanity\n")
if fio:
    print(f"- No durable acknowledgement can beat the disk: fio's O_DSYNC p50 was {n(fio['p50'])} us.")
for setup in setups:
    q = quorra(setup, "w1")
    if q:
        print(f"- {setup} w1: mean x msgs/s = {q['loop']:.2f} (about 1 for a closed loop with one in flight); "
              f"p50 {n(q['p50'])} us.")
print("\n## Read-back checks\n")
print("\n".join(checks))
