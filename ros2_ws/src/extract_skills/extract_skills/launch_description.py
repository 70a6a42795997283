"""Builds a `launch.LaunchDescription` from the graph description (used by launch/*.launch.py).

Imports `launch`/`launch_ros` lazily: they are not on PyPI, so the rest of the package must not need them.
"""
from __future__ import annotations

from pathlib import Path

from extract_skills.graph import LAUNCH_ARGS, launch_defaults, nodes_for, param_file
from extract_skills.security import enclave


def build_launch_description(mode: str):
    from ament_index_python.packages import get_package_share_directory
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
    from launch.conditions import IfCondition
    from launch.event_handlers import OnProcessExit
    from launch.events import Shutdown
    from launch.substitutions import LaunchConfiguration, PythonExpression
    from launch_ros.actions import Node

    share = Path(get_package_share_directory("extract_skills"))
    params = str(param_file(mode, share))
    defaults = launch_defaults(mode, param_file(mode, share))  # "" defaults read from the YAML
    actions = [DeclareLaunchArgument(a.name, default_value=defaults[a.name], description=a.description)
               for a in LAUNCH_ARGS[mode]]
    for spec in nodes_for(mode):
        overrides = {param: LaunchConfiguration(arg.name)
                     for arg in LAUNCH_ARGS[mode] for node, param in arg.targets if node == spec.name}
        condition = None
        if spec.only_if:  # e.g. the learner node: learn:=true learner:=remote
            terms = []
            for arg, want in spec.only_if:
                terms += [" and " if terms else "", "'", LaunchConfiguration(arg), f"'.lower() == '{want}'"]
            condition = IfCondition(PythonExpression(terms))
        node = Node(
            condition=condition,
            package="extract_skills",
            executable=spec.executable,
            name=spec.name,
            output="screen",
            emulate_tty=True,
            parameters=[params, overrides],
            # SROS2: each node in its own enclave (scripts/sros2_setup.sh); inert unless ROS_SECURITY_ENABLE=true
            ros_arguments=["--enclave", enclave(spec.name)],
            # Camera, policy and learner come back after a crash (the arm is kept safe meanwhile, see
            # NodeSpec.respawn); the motion node, the supervisor and the sim never restart by themselves.
            respawn=spec.respawn,
            respawn_delay=2.0 if spec.respawn else 0.0,
            sigterm_timeout=str(spec.sigterm_timeout_s),
        )
        actions.append(node)
        if not spec.respawn:
            # Without the decoder, the supervisor (its episodes done) or the sim the graph is not useful: end
            # the launch, and let a person decide what happens next.
            actions.append(RegisterEventHandler(OnProcessExit(
                target_action=node, on_exit=[EmitEvent(event=Shutdown(reason=f"{spec.name} exited"))])))
    return LaunchDescription(actions)
