#!/usr/bin/env python3
"""Turns one perf/run.sh result directory into a markdown report with plots, and refreshes
the results section of perf/README.md. Usage: perf/report.py perf/results/<stamp>"""
import glob
import json
import os
import re
import subprocess
import sys

out = sys.argv[1].rstrip("/")
stamp = os.path.basename(out)
perf_dir = os.path.dirname(os.path.dirname(out))


def load(name, default=None):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


machine = dict(l.strip().split("=", 1) for l in open(os.path.join(out, "machine.txt")) if "=" in l)
fio_seq = load("fio-seqwrite.json")["jobs"][0]["write"]
disk_bw = fio_seq["bw_bytes"] / 1e6  # MB/s
sync = load("fio-fdatasync.json")["jobs"][0]["sync"]["lat_ns"]["percentile"]
fio_sync_us = {k: sync[v] / 1000 for k, v in (("p50", "50.000000"), ("p99", "99.000000"), ("p999", "99.900000"))}
dsync_json = load("fio-dsync.json")
dsync = dsync_json["jobs"][0]["write"]["clat_ns"]["percentile"] if dsync_json else {}
fio_dsync_us = {k: dsync.get(v, 0) / 1000 for k, v in (("p50", "50.000000"), ("p99", "99.000000"), ("p999", "99.900000"))}
iperf = load("iperf3.json", {})
net_bw = iperf.get("end", {}).get("sum_received", {}).get("bits_per_second", 0) / 8e6


def runs(prefix):
    rows = []
    for path in sorted(glob.glob(os.path.join(out, prefix + "*.json"))):
        name = os.path.basename(path)[:-5]
        s = json.load(open(path))
        verify = open(os.path.join(out, name + ".verify")).read().strip().splitlines() if os.path.exists(os.path.join(out, name + ".verify")) else []
        check = next((l for l in verify if l.startswith("acked")), "no verify output")
        if any("VERIFY FAILED" in l for l in verify):
            check = "FAILED: " + check
        if not os.path.exists(os.path.join(out, name + ".hgrm")):
            continue
        parts = dict(re.findall(r"(s|p|w|r)(\d+)", name.split("-", 2)[2]))
        rows.append({"name": name, "flush": name.split("-")[1], "size": int(parts.get("s", 0)), "producers": int(parts.get("p", 4)),
                     "window": int(parts.get("w", 0)), "rate": int(parts.get("r", 0)), "s": s, "check": check})
    return sorted(rows, key=lambda r: (r["flush"], r["size"], r["producers"], r["window"], r["rate"]))


closed, opened = runs("closed-"), runs("open-")
failed = [os.path.basename(p)[:-7] + ": " + open(p).read().strip()
          for p in sorted(glob.glob(os.path.join(out, "*.verify"))) if not os.path.exists(p[:-7] + ".json")]


def row(r):
    s, l = r["s"], r["s"]["latency_us"]
    return (f"| {r['flush']} | {r['size']} | {r['producers']} | {r['window'] or ('rate ' + str(r['rate']))} | {s['msgs_per_sec']:,.0f} | {s['mb_per_sec']:,.1f} "
            f"| {100 * s['mb_per_sec'] / disk_bw:.1f}% | {l['p50']} | {l['p99']} | {l['p999']} | {l['p99'] / fio_sync_us['p99']:.1f}x | {s['cpu_seconds']:.1f} | {r['check']} |")


header = ("| flush | size B | producers | window | msgs/s | MB/s | of disk bw | p50 us | p99 us | p99.9 us | p99 / fio p99 | load-gen CPU s | checker |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def hgrm_series(name):
    pts = []
    for line in open(os.path.join(out, name + ".hgrm")):
        f = line.split()
        if len(f) == 4 and f[3] != "inf":
            try:
                pts.append((float(f[3]), float(f[0])))
            except ValueError:
                pass
    dat = os.path.join(out, name + ".dat")
    with open(dat, "w") as d:
        d.writelines(f"{x} {y}\n" for x, y in pts)
    return dat


def plot():
    lat = [r for r in closed if r["window"] == 1 and r["producers"] == 1] + opened
    series = ", ".join(f"'{hgrm_series(r['name'])}' using 1:2 with lines lw 2 title '{r['name']}'" for r in lat)
    thr = os.path.join(out, "throughput.dat")
    with open(thr, "w") as d:
        for flush in ("always", "interval"):
            for r in closed:
                if r["flush"] == flush and r["producers"] == 4 and r["window"] == 256:
                    d.write(f"{r['size']} {r['s']['mb_per_sec']}\n")
            d.write("\n\n")
    script = f"""
set terminal svg size 1000,520 dynamic font 'sans,11' noenhanced
set output '{out}/latency.svg'
set title 'Produce latency percentiles (acks=leader), {machine.get("host")}, {stamp}'
set logscale x; set logscale y; set grid
set xlabel 'percentile'; set ylabel 'latency (us)'
set xtics ('50%%' 2, '90%%' 10, '99%%' 100, '99.9%%' 1000, '99.99%%' 10000, '99.999%%' 100000)
set key outside right top
set yrange [10:*]
plot {series}, {fio_sync_us['p99']} with lines dt 2 lc 'black' title 'fio 4 KiB fdatasync p99'
set output '{out}/throughput.svg'
set title 'Produce throughput by message size (4 producers, window 256, acks=leader)'
unset xtics; set xtics (100, 1024, 16384)
set xlabel 'message size (bytes)'; set ylabel 'MB/s'
set xrange [70:25000]; set yrange [10:*]
set key bottom right
plot '{thr}' index 0 using 1:2 with linespoints lw 2 title 'flush=always', '{thr}' index 1 using 1:2 with linespoints lw 2 title 'flush=interval:5', {disk_bw} with lines dt 2 lc 'black' title 'fio sequential O_DIRECT write'
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=False)


plot()


def text(name):
    p = os.path.join(out, name)
    return open(p).read().strip() if os.path.exists(p) else "(not measured)"


rel = f"results/{stamp}"
body = f"""## Results {stamp}

Machine: {machine.get('cpu')}, {machine.get('cores')} cores, {machine.get('memory')}, Linux {machine.get('kernel')}, {machine.get('filesystem')};
commit {machine.get('commit')}; each run {machine.get('duration')}; whole matrix {machine.get('elapsed_seconds', '?')} s.
Broker and load generator share the machine. Command: `perf/run.sh`.

**The machine's limits, measured in the same run**

| measure | value |
|---|---|
| fio sequential write, O_DIRECT, 1 MiB blocks, QD32 | {disk_bw:,.0f} MB/s |
| fio 4 KiB write + fdatasync, QD1 (fresh file): the fdatasync | p50 {fio_sync_us['p50']:.0f} us, p99 {fio_sync_us['p99']:.0f} us, p99.9 {fio_sync_us['p999']:.0f} us |
| fio 4 KiB O_DSYNC write, QD1 (fresh file): write and flush as one operation | p50 {fio_dsync_us['p50']:.0f} us, p99 {fio_dsync_us['p99']:.0f} us, p99.9 {fio_dsync_us['p999']:.0f} us |
| iperf3 loopback, one stream | {net_bw:,.0f} MB/s |

**Closed loop** (window = messages in flight per producer; acks=leader; 4 partitions; every run verified by `quorra-load consume --verify`)

{header}
{chr(10).join(row(r) for r in closed)}

**Open loop at 10% and 50% of the closed-loop peak** (4 producers, window cap 4096 each; latency from the intended send time: coordinated omission corrected)

{header}
{chr(10).join(row(r) for r in opened)}

{("**Failed runs**" + chr(10) + chr(10) + chr(10).join("- " + f for f in failed) + chr(10)) if failed else ""}
![latency]({rel}/latency.svg)
![throughput]({rel}/throughput.svg)

<details><summary>Broker CPU profile under the 1 KiB, 4 producers, window 256 run (perf record -e cpu-clock)</summary>

```
{text('perf-profile.txt')}
```

```
{text('perf-stat.txt')}
```
</details>
"""
with open(os.path.join(perf_dir, "results", stamp + ".md"), "w") as f:
    f.write(body)
readme = os.path.join(perf_dir, "README.md")
if os.path.exists(readme):
    s = open(readme).read()
    s = re.sub(r"<!-- results:start -->.*<!-- results:end -->", lambda m: "<!-- results:start -->\n" + body + "\n<!-- results:end -->", s, flags=re.S)
    open(readme, "w").write(s)
print(f"wrote {perf_dir}/results/{stamp}.md")
