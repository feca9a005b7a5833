#!/usr/bin/env bash
# The demo, in the environment made by scripts/setup.sh (`setup.sh --demo` runs both).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[ -f env.sh ] || { echo "env.sh missing: run 'bash scripts/setup.sh' first" >&2; exit 1; }
set +u; source env.sh; set -u
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
exec python -m f3rm_ros.ros.demo "$@"   # the end-to-end demo (runs/demo-<time>/); `f3rm-ros selftest` checks the interfaces only
