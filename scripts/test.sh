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
# Lint first (ruff, settings in pyproject.toml; about a second). A full run (no arguments, as CI runs it)
# fails on any finding; a run with pytest arguments (`-k name`, a test file) only reports them and goes on.
if ! python -c 'import ruff' 2>/dev/null; then
  echo "[f3rm_ros tests] ruff is not installed in the environment: run 'bash scripts/setup.sh' again" >&2
  [ $# -eq 0 ] && exit 1
elif ! python -m ruff check .; then
  if [ $# -eq 0 ]; then
    echo "[f3rm_ros tests] FAILED: 'ruff check .' found problems (see above); fix them (or 'ruff check --fix .')" \
         "before the tests run" >&2
    exit 1
  fi
  echo "[f3rm_ros tests] WARNING: 'ruff check .' found problems (see above); a full run (no arguments) fails on them" >&2
else
  echo "[f3rm_ros tests] ruff check: clean"
fi
# pytest exits 5 when it collects no test: that is a failure here too (set -e).
exec python -m pytest -ra --durations=15 "$@"
