#!/usr/bin/env bash
# Real-robot stack: camera embedding, skill policy, skill decoder (franky/libfranka), supervisor.
#   ROBOT_IP=172.16.0.2 scripts/run_real.sh [camera_topic:=/camera/color/image_raw ...]
#   scripts/run_real.sh use_fake_hardware:=true      # scripted fake arm, no motion
# Read docs/RUNBOOK.md first (FCI network, realtime kernel, libfranka version, e-stop).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
args=("$@")
fake=false
for a in "$@"; do [[ "$a" == use_fake_hardware:=true ]] && fake=true; done
if [[ "$fake" != true ]]; then
  if [[ -z "${ROBOT_IP:-}" ]]; then
    echo "run_real: set ROBOT_IP to the Franka control unit's address (or pass use_fake_hardware:=true)" >&2
    exit 2
  fi
  args+=("robot_ip:=$ROBOT_IP")
fi
bash "$ROOT/scripts/setup.sh"
. "$ROOT/scripts/env.sh"
# The robot's own ROS domain (never ROS's default 0, which every other PC on the subnet shares) and discovery
# kept on this PC unless the caller opens it (then secure it: scripts/sros2_setup.sh, docs/RUNBOOK.md).
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-37}"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
if command -v ros2 >/dev/null 2>&1 && ros2 pkg prefix launch_ros >/dev/null 2>&1; then
  exec ros2 launch extract_skills real_robot.launch.py "${args[@]}"
fi
exec run_graph real "${args[@]}"
