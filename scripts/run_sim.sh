#!/usr/bin/env bash
# Main job: set up (idempotent), then run the sim stack end to end with the shipped models on the first
# held-out task: the online policy the sample-efficiency benchmark trained (models/policies/), fine-tuning
# further (learn:=true; runs/online_sim_<skill checkpoint sha> keeps its checkpoints, so a second run continues
# from the first).
# It ends by itself after num_episodes (default 3), with each episode's return and a summary table (also in
# runs/last_sim_summary.json), under `ros2 launch` or not.
#   scripts/run_sim.sh                  # 3 episodes
#   scripts/run_sim.sh num_episodes:=1  # launch arguments, as for `ros2 launch extract_skills sim.launch.py`
#   scripts/run_sim.sh learn:=false policy_checkpoint:=""   # the offline priors only
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
. "$ROOT/scripts/env.sh"
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-42}"
# Defaults first: the caller's name:=value arguments come later and win.
# The fine-tuning run belongs to the skill checkpoint it acts through: a new models/ starts a new run directory
# (the old one is kept; an agent trained on other skills is refused).
SKILLS_SHA="$(sha256sum "$ROOT/models/extract_kitchen.pt" | cut -c1-12)"
DEFAULTS=("policy_checkpoint:=$ROOT/models/policies/extract_heldout0.pt" "learn:=true"
          "run_dir:=$ROOT/runs/online_sim_$SKILLS_SHA" "summary_json:=$ROOT/runs/last_sim_summary.json")
if command -v ros2 >/dev/null 2>&1 && ros2 pkg prefix launch_ros >/dev/null 2>&1; then
  exec ros2 launch extract_skills sim.launch.py "${DEFAULTS[@]}" "$@"
fi
# No `ros2 launch` here (launch/launch_ros are not on PyPI): same graph, one process.
exec run_graph sim "${DEFAULTS[@]}" "$@"
