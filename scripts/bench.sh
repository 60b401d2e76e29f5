#!/usr/bin/env bash
# Runs berth's benchmarks against the real Docker engine, the local registry
# and a private Redis. Usage: bash scripts/bench.sh [bench name ...]
# (BENCH_SAMPLES=N changes the start-overhead samples per side.)
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/test-env.sh --env-only)"
benches=("$@")
[[ ${#benches[@]} -gt 0 ]] || benches=(planner start_overhead host_drift watch_tick api_scale plugin_sweep store_batch fleet_start console_render stream_latency)
for b in "${benches[@]}"; do
  case $b in
    planner) cargo bench -p berth-core --bench planner ;;
    *) cargo bench -p berth --bench "$b" ;;
  esac
done
