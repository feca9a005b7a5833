#!/usr/bin/env bash
# Run the test suite in the environment made by scripts/setup.sh (run that first; `setup.sh --test` does both).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[ -f env.sh ] || { echo "env.sh missing: run 'bash scripts/setup.sh' first" >&2; exit 1; }
set +u; source env.sh; set -u
# Keep DDS traffic of the tests on this machine and away from other ROS graphs on the network.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( 100 + RANDOM % 100 ))}"
echo "[f3rm_ros tests] ROS_DOMAIN_ID=$ROS_DOMAIN_ID, $(nproc) cores"
# pytest exits 5 when it collects no test: that is a failure here too (set -e).
exec python -m pytest -ra --durations=15 "$@"
