#!/usr/bin/env python3
"""Summarises benches/scripts/ab.sh runs: ab_summary.py DIR BUILD... [--seconds S]

Per build: each contender's median req/s, weft ÷ direct per round, and the
microseconds of weft-proxy CPU per request in each weft phase (the CPU the
phase's .cpu line records ÷ (req/s × S), S the --seconds of the runs)."""
import glob
import json
import statistics
import sys

args = sys.argv[1:]
secs = 6.0
if "--seconds" in args:
    i = args.index("--seconds")
    secs = float(args[i + 1])
    del args[i:i + 2]
d, builds = args[0], args[1:]
for b in builds:
    rows, cpu = {}, {}
    for f in sorted(glob.glob(f"{d}/{b}-*/latest.json")):
        run = f.split("/")[-2]
        res = {}
        for x in json.load(open(f)):
            if x["metric"] != "rps":
                continue
            rows.setdefault((x["scenario"], x["contender"], "req/s"), []).append(x["median"])
            res[(x["scenario"], x["contender"])] = x["median"]
        for sc in {k[0] for k in res}:
            if (sc, "direct") in res and (sc, "weft") in res:
                rows.setdefault((sc, "weft ÷ direct", ""), []).append(res[(sc, "weft")] / res[(sc, "direct")])
        try:
            for line in open(f"{d}/{run}.cpu"):
                phase, seconds, _wall = line.rstrip("\n").split("\t")
                key = tuple(phase.split())
                if len(key) == 2 and key[1].startswith("weft") and res.get(key, 0) > 0:
                    cpu.setdefault(phase, []).append(float(seconds) / (res[key] * secs) * 1e6)
        except FileNotFoundError:
            pass
    for k, v in sorted(rows.items()):
        print(b, *k, f"median {statistics.median(v):.3g}", [round(i, 2) for i in v])
    for k, v in sorted(cpu.items()):
        print(b, k, "µs proxy CPU per request, median", f"{statistics.median(v):.1f}", [round(i, 1) for i in v])
