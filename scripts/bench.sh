#!/usr/bin/env bash
# Runs berth's benchmarks against the real Docker engine and local registry.
# Usage: bash scripts/bench.sh            (BENCH_SAMPLES=N to change samples)
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/test-env.sh --env-only)"
cargo bench -p berth --bench start_overhead
