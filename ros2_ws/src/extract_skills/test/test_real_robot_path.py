"""The real-robot path through ROS: the skill_decoder node with arm=franky drives franky-sim.

Kept apart from test_franky_arm.py and named to run after test_interfaces.py: an in-process action
server left earlier in the same pytest process made the cross-process action test's goals hang.
"""
from __future__ import annotations

import numpy as np
import pytest

from test_franky_arm import JOINT_ATOL, _wait_settled, franky_sim  # noqa: F401


@pytest.fixture(scope="module")
def sim():
    with franky_sim() as (host, _proc):
        yield host


def test_decoder_action_server_drives_franky_sim(sim, tmp_path):
    """The real-robot path end to end: ExecuteSkill goal -> skill_decoder node (arm=franky) -> franky ->
    libfranka protocol -> franky-sim; the joint state the node publishes follows the commands."""
    rclpy = pytest.importorskip("rclpy")
    pytest.importorskip("extract_msgs", reason="extract_msgs not built: run scripts/setup.sh")
    from action_msgs.msg import GoalStatus
    from extract_msgs.action import ExecuteSkill
    from rclpy.action import ActionClient
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import JointState

    from extract_skills.nodes.common import parse_joint_state
    from extract_skills.nodes.skill_decoder_server import SkillDecoderServer
    from support.ros_graph import RclpyContext, spin_until, wait_future
    from support.tiny_models import make_tiny_models

    make_tiny_models(tmp_path)
    with RclpyContext() as ctx:
        params = {"models_dir": str(tmp_path), "arm": "franky", "robot_ip": sim, "realtime": "ignore",
                  "robot_dynamics_factor": 0.3, "max_step_delta": 0.02,
                  # the whole suite loads 2 cores; a slow gripper read under load aged states past 0.5 s
                  "state_max_age_s": 2.0}
        dec = SkillDecoderServer(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        client_node = rclpy.create_node("franky_client", context=ctx)
        states = []
        client_node.create_subscription(JointState, "/joint_states", states.append, 100)
        client = ActionClient(client_node, ExecuteSkill, "/execute_skill")
        ex = MultiThreadedExecutor(num_threads=4, context=ctx)
        ex.add_node(dec)
        ex.add_node(client_node)
        try:
            assert spin_until(ex, client.server_is_ready, 15.0)
            q_before = parse_joint_state(states[-1])[0] if spin_until(ex, lambda: bool(states), 5.0) else None
            fb = []
            goal = ExecuteSkill.Goal(skill_id=1, argument=[0.5, -0.5, 0.2, 0.0, 0.1], step_limit=10, dynamics_factor=0.2)
            gh = wait_future(ex, client.send_goal_async(goal, feedback_callback=lambda f: fb.append(f.feedback)))
            assert gh.accepted
            res = wait_future(ex, gh.get_result_async(), 20.0)
            assert res.status == GoalStatus.STATUS_SUCCEEDED, res.result.error
            assert res.result.steps_executed == 10 and len(fb) == 10
            _wait_settled(dec.arm)
            n = len(states)
            assert spin_until(ex, lambda: len(states) > n + 3, 5.0)
            q_now = parse_joint_state(states[-1])[0]
            assert np.max(np.abs(q_now - np.array(fb[-1].commanded_joint_positions))) < JOINT_ATOL
            assert q_before is not None and np.max(np.abs(q_now - q_before)) > 0.01, "the arm never moved"
        finally:
            dec.close()
