#!/usr/bin/env bash
# SROS2 for the real robot: a keystore with one enclave per node, each allowed only what it uses (the policy is
# generated from the graph description: extract-sros2-policy). Run on the robot PC, which needs a full ROS 2
# install with sros2 (`ros2 security`) and a DDS built with security (the PyPI rmw_fastrtps wheel this repository
# uses for sim and CI is built without it: it logs "security is disabled" and has no PKI-DH plugin).
#   scripts/sros2_setup.sh [keystore_dir]          # default: ./keystore (gitignored; keep its private keys safe)
# Then, in every shell that runs the graph or an operator tool:
#   export ROS_SECURITY_KEYSTORE=<keystore_dir> ROS_SECURITY_ENABLE=true ROS_SECURITY_STRATEGY=Enforce
# The launch files start each node in its enclave (/extract_skills/<node>); operator tools take
#   --ros-args --enclave /extract_skills/operator_console
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KEYSTORE="$(realpath -m "${1:-$ROOT/keystore}")"
. "$ROOT/scripts/env.sh"
command -v ros2 >/dev/null && ros2 security --help >/dev/null 2>&1 || {
  echo "sros2_setup: needs the ros2 CLI with sros2 (ros2 security); install ROS 2 with sros2 on this PC" >&2; exit 2; }
POLICY="$KEYSTORE.policy.xml"
extract-sros2-policy --out "$POLICY"
[ -d "$KEYSTORE" ] || ros2 security create_keystore "$KEYSTORE"
# One enclave per <enclave path=...> in the policy, each with permissions signed from its profile.
ros2 security generate_artifacts -k "$KEYSTORE" -p "$POLICY"
echo "sros2_setup: keystore $KEYSTORE (policy $POLICY). Now:"
echo "  export ROS_SECURITY_KEYSTORE=$KEYSTORE ROS_SECURITY_ENABLE=true ROS_SECURITY_STRATEGY=Enforce"
