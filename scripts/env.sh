# Source me: puts the project's venv and colcon workspace on the environment.
_EXTRACT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
export VIRTUAL_ENV="$_EXTRACT_ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VIRTUAL_ENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export MUJOCO_GL="${MUJOCO_GL:-osmesa}"
export PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-osmesa}"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
# ament_python console scripts (run_graph, extract, ...) live in lib/<pkg>, which ros2 run uses; put them on PATH.
export PATH="$_EXTRACT_ROOT/ros2_ws/install/extract_skills/lib/extract_skills:$PATH"
if [ -f "$_EXTRACT_ROOT/ros2_ws/install/setup.sh" ]; then
  _nounset=$([[ $- == *u* ]] && echo 1); set +u
  COLCON_CURRENT_PREFIX="$_EXTRACT_ROOT/ros2_ws/install" . "$_EXTRACT_ROOT/ros2_ws/install/setup.sh"
  if [ -n "$_nounset" ]; then set -u; fi
fi
