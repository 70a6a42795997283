#!/usr/bin/env bash
# One set-up path for a fresh Debian 12 machine that reaches only PyPI and Debian.
# Creates .venv, installs the pinned requirements, patches the ROS wheels' CMake
# exports and runs colcon build. Idempotent: a second run only re-checks.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
WS="$ROOT/ros2_ws"
cd "$ROOT"

# System packages: OSMesa for offscreen MuJoCo rendering.
if ! ldconfig -p | grep -q libOSMesa; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libosmesa6 >/dev/null
  else
    echo "setup: libosmesa6 is missing; install it with: sudo apt-get install libosmesa6" >&2; exit 1
  fi
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
stamp="$VENV/.requirements.sha256"
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -r requirements.txt
  echo "$want" > "$stamp"
fi

# The ROS wheels' exported CMake files name the wheel build machine's Python include
# and numpy include dirs (/opt/python/cp311-cp311/...); CMake refuses non-existent
# include paths, so rewrite them to this interpreter's paths.
"$VENV/bin/python" - "$VENV" <<'PY'
import glob, sys, sysconfig, numpy
venv = sys.argv[1]
repl = {
    "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include": numpy.get_include(),
    "/opt/python/cp311-cp311/include/python3.11": sysconfig.get_paths()["include"],
}
for path in glob.glob(f"{venv}/share/*/cmake/*.cmake"):
    text = open(path).read()
    new = text
    for a, b in repl.items():
        new = new.replace(a, b)
    if new != text:
        open(path, "w").write(new)
PY

export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
export PATH="$VENV/bin:$PATH"
cd "$WS"
colcon build --symlink-install --event-handlers console_cohesion- \
  --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$VENV/bin/python" >/dev/null \
  || { echo "setup: colcon build failed; see $WS/log/latest_build" >&2; exit 1; }
echo "setup: ok (venv $VENV, workspace $WS/install)"
