#!/usr/bin/env bash
# A/B of weft-proxy builds in the proxy harness, alternating builds each
# round, with the sidecars' CPU per phase (proxy_cpu_per_phase.py).
#
#   benches/scripts/ab.sh DIR "buildA buildB" ROUNDS SCENARIOS [SECONDS]
#
# DIR holds weft-proxy.<build> binaries (release builds of each commit);
# each round copies one over target/release/weft-proxy and runs
# `weft-benches proxy --rounds 1 --seconds SECONDS --only SCENARIOS`,
# writing DIR/<build>-<round>/latest.{json,md}, DIR/<build>-<round>.log and
# DIR/<build>-<round>.cpu (per contender phase: the weft-proxy processes'
# user+system seconds and the phase's wall seconds).
# benches/scripts/ab_summary.py DIR buildA buildB prints medians, weft ÷
# direct per round and microseconds of proxy CPU per request.
set -euo pipefail
dir=$1 builds=$2 rounds=$3 only=$4 secs=${5:-6}
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
for r in $(seq 1 "$rounds"); do
  for b in $builds; do
    cp "$dir/weft-proxy.$b" target/release/weft-proxy
    rm -f "$dir/$b-$r.log"
    python3 "$here/proxy_cpu_per_phase.py" "$dir/$b-$r.log" "$dir/$b-$r.cpu" &
    ./target/release/weft-benches proxy --rounds 1 --seconds "$secs" --only "$only" \
      --out "$dir/$b-$r" > "$dir/$b-$r.log" 2>&1
    wait
  done
done
