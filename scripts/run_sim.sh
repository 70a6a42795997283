#!/usr/bin/env bash
# Main job: set up (idempotent), then run the sim stack end to end with the shipped models.
# It ends by itself after num_episodes (default 3) and prints an episode summary.
#   scripts/run_sim.sh                  # 3 episodes
#   scripts/run_sim.sh num_episodes:=1  # launch arguments, as for `ros2 launch extract_skills sim.launch.py`
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
. "$ROOT/scripts/env.sh"
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-42}"
if command -v ros2 >/dev/null 2>&1 && ros2 pkg prefix launch_ros >/dev/null 2>&1; then
  exec ros2 launch extract_skills sim.launch.py "$@"
fi
# No `ros2 launch` here (launch/launch_ros are not on PyPI): same graph, one process.
exec run_graph sim "$@" --summary-json "$ROOT/runs/last_sim_summary.json"
