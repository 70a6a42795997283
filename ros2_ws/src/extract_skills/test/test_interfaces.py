"""Every extract_msgs interface through real rclpy: topics, services, and the action across processes."""
from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")
extract_msgs = pytest.importorskip("extract_msgs", reason="extract_msgs not built: run scripts/setup.sh")

from action_msgs.msg import GoalStatus  # noqa: E402
from extract_msgs.action import ExecuteSkill  # noqa: E402
from extract_msgs.msg import EpisodeEvent, SkillCommand, SkillEmbedding, SubtaskStatus  # noqa: E402
from extract_msgs.srv import ConfirmOutcome, ResetEpisode  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402

from support.ros_graph import (RclpyContext, spin_until, start_python, stop_process,  # noqa: E402
                              wait_for_decoder_process, wait_future)

from support.tiny_models import make_tiny_models  # noqa: E402


def _roundtrip(msg_type, fill):
    with RclpyContext() as ctx:
        node = rclpy.create_node("iface_test", context=ctx)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        got = []
        node.create_subscription(msg_type, "iface_topic", got.append, 10)
        pub = node.create_publisher(msg_type, "iface_topic", 10)
        msg = msg_type()
        fill(msg)
        assert spin_until(ex, lambda: (pub.publish(msg), bool(got))[1], 5.0), "no message received"
        node.destroy_node()
        return msg, got[0]


def test_skill_command_roundtrip():
    def fill(m):
        m.header.frame_id = "policy"
        m.skill_id = 3
        m.argument = [0.5, -1.0, 2.0, 0.0, 0.25]
        m.policy = SkillCommand.POLICY_LEARNED
        m.log_prob = -1.5
        m.episode_id = 7

    sent, got = _roundtrip(SkillCommand, fill)
    assert got.skill_id == 3 and got.policy == SkillCommand.POLICY_LEARNED and got.episode_id == 7
    assert list(got.argument) == pytest.approx(list(sent.argument))
    assert got.log_prob == pytest.approx(-1.5)


def test_skill_embedding_roundtrip():
    def fill(m):
        m.header.stamp.sec = 12
        m.header.stamp.nanosec = 345
        m.encoder_name = "r3m_resnet18"
        m.encoder_hash = "ab" * 32
        m.embedding = [float(i) / 512 for i in range(512)]
        m.image_seq = 99

    _, got = _roundtrip(SkillEmbedding, fill)
    assert (got.header.stamp.sec, got.header.stamp.nanosec) == (12, 345)
    assert len(got.embedding) == 512 and got.embedding[511] == pytest.approx(511 / 512)
    assert got.encoder_name == "r3m_resnet18" and got.image_seq == 99


def test_episode_event_roundtrip():
    def fill(m):
        m.episode_id = 4
        m.event = EpisodeEvent.REWARD
        m.reward = 1.0
        m.episode_return = 2.0
        m.completed_subtasks = ["microwave", "kettle"]

    _, got = _roundtrip(EpisodeEvent, fill)
    assert got.event == EpisodeEvent.REWARD and list(got.completed_subtasks) == ["microwave", "kettle"]
    assert got.episode_return == pytest.approx(2.0)


def test_subtask_status_roundtrip():
    def fill(m):
        m.names = ["microwave", "kettle"]
        m.done = [True, False]

    _, got = _roundtrip(SubtaskStatus, fill)
    assert list(got.names) == ["microwave", "kettle"] and list(got.done) == [True, False]


def test_services_roundtrip():
    with RclpyContext() as ctx:
        node = rclpy.create_node("srv_test", context=ctx)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)

        def reset(req, resp):
            resp.success = req.operator_confirmed
            resp.error = "" if req.operator_confirmed else "operator did not confirm"
            resp.episode_id = 11
            return resp

        def confirm(req, resp):
            resp.success = True
            resp.reward = 1.0 if req.succeeded else 0.0
            return resp

        node.create_service(ResetEpisode, "reset_episode", reset)
        node.create_service(ConfirmOutcome, "confirm_outcome", confirm)
        rc = node.create_client(ResetEpisode, "reset_episode")
        cc = node.create_client(ConfirmOutcome, "confirm_outcome")
        assert spin_until(ex, lambda: rc.service_is_ready() and cc.service_is_ready(), 5.0)
        r = wait_future(ex, rc.call_async(ResetEpisode.Request(operator_confirmed=False, reason="test")))
        assert not r.success and "confirm" in r.error
        r = wait_future(ex, rc.call_async(ResetEpisode.Request(operator_confirmed=True)))
        assert r.success and r.episode_id == 11
        c = wait_future(ex, cc.call_async(ConfirmOutcome.Request(subtask="kettle", succeeded=True)))
        assert c.success and c.reward == pytest.approx(1.0)
        node.destroy_node()


@pytest.fixture
def action_server_process(tmp_path):
    """The real skill-decoder action server, fake arm, in its own process.

    The tiny model's progress threshold is 1.0: the progress head never ends a skill, so the goal's step
    limit sets its length.
    """
    make_tiny_models(tmp_path)
    proc = start_python("extract_skills.nodes.skill_decoder_server", "--ros-args",
                        "-p", "arm:=fake", "-p", f"models_dir:={tmp_path}", "-p", "control_period_s:=0.02",
                        "-p", "max_step_delta:=0.01")
    yield proc
    out = stop_process(proc)
    print(out)


def _goal(skill_id: int, steps: int) -> ExecuteSkill.Goal:
    return ExecuteSkill.Goal(skill_id=skill_id, argument=[0.1] * 5, step_limit=steps, dynamics_factor=0.1)


def test_execute_skill_across_processes(action_server_process):
    """Goal, feedback, result; cancel mid-skill; preemption of a running goal by a new one."""
    with RclpyContext() as ctx:
        node = rclpy.create_node("skill_client", context=ctx)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        client = ActionClient(node, ExecuteSkill, "execute_skill")
        assert wait_for_decoder_process(ex, node, client), "server process never came up"

        # 1. Goal to completion with feedback every step.
        feedback = []
        sent = node.get_clock().now()
        gh = wait_future(ex, client.send_goal_async(_goal(2, 5), feedback_callback=lambda f: feedback.append(f.feedback)))
        assert gh.accepted
        res = wait_future(ex, gh.get_result_async(), 30.0)
        assert res.status == GoalStatus.STATUS_SUCCEEDED and res.result.success
        assert res.result.steps_executed == 5
        assert [f.step for f in feedback] == [0, 1, 2, 3, 4]
        assert all(len(f.commanded_joint_positions) == 7 for f in feedback)
        assert all(0.0 <= f.commanded_gripper <= 1.0 for f in feedback)
        assert len(res.result.final_joint_positions) == 7
        # the stamp of the arm state it ended in: a frame at least that new shows the arm after the skill
        assert sent <= rclpy.time.Time.from_msg(res.result.final_stamp) <= node.get_clock().now()

        # 2. Cancel mid-skill.
        fb2 = []
        gh = wait_future(ex, client.send_goal_async(_goal(1, 200), feedback_callback=lambda f: fb2.append(f)))
        assert spin_until(ex, lambda: len(fb2) >= 3, 10.0)
        cancel = wait_future(ex, gh.cancel_goal_async())
        assert len(cancel.goals_canceling) == 1
        res = wait_future(ex, gh.get_result_async(), 30.0)
        assert res.status == GoalStatus.STATUS_CANCELED and not res.result.success
        assert 3 <= res.result.steps_executed < 200

        # 3. Preemption: a new goal aborts the running one.
        fb3 = []
        gh_old = wait_future(ex, client.send_goal_async(_goal(1, 200), feedback_callback=lambda f: fb3.append(f)))
        assert spin_until(ex, lambda: len(fb3) >= 2, 10.0)
        gh_new = wait_future(ex, client.send_goal_async(_goal(0, 3)))
        old = wait_future(ex, gh_old.get_result_async(), 10.0)
        new = wait_future(ex, gh_new.get_result_async(), 10.0)
        assert old.status == GoalStatus.STATUS_ABORTED and "preempted" in old.result.error
        assert new.status == GoalStatus.STATUS_SUCCEEDED and new.result.steps_executed == 3

        # 4. Invalid goals are rejected before they run: NaN argument, unknown skill id, wrong length.
        nan_goal = _goal(0, 3)
        nan_goal.argument = [math.nan] * 5
        short_goal = _goal(0, 3)
        short_goal.argument = [0.1, 0.2]
        for bad in (nan_goal, _goal(99, 3), short_goal):
            gh = wait_future(ex, client.send_goal_async(bad))
            assert not gh.accepted, bad
        node.destroy_node()


def test_decoder_latches_a_reflex_refuses_goals_and_home_until_cleared(tmp_path):
    """Reflex mid-skill on the fault-injecting arm: the goal aborts, the fault is latched on /arm_fault,
    new goals and /move_home are refused until /clear_fault, then a goal runs again."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from extract_skills.core.control.arm import ArmControlError, FakeArmScript
    from extract_skills.graph import ACTION_EXECUTE_SKILL, SERVICES, TOPICS
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    from extract_skills.nodes.skill_decoder_server import SkillDecoderServer

    make_tiny_models(tmp_path)
    with RclpyContext() as ctx:
        dec = SkillDecoderServer(context=ctx, parameter_overrides=[
            Parameter("models_dir", value=str(tmp_path)), Parameter("arm", value="fake"),
            Parameter("control_period_s", value=0.01), Parameter("max_step_delta", value=0.005)])
        dec.arm.script = FakeArmScript(raise_at_step={3: ArmControlError})
        node = rclpy.create_node("latch_test", context=ctx)
        faults: list[str] = []
        node.create_subscription(String, TOPICS["arm_fault"], lambda m: faults.append(m.data), QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        diags: list = []
        node.create_subscription(DiagnosticArray, TOPICS["diagnostics"], lambda m: diags.extend(m.status), 10)
        client = ActionClient(node, ExecuteSkill, ACTION_EXECUTE_SKILL)
        home = node.create_client(Trigger, SERVICES["move_home"])
        clear = node.create_client(Trigger, SERVICES["clear_fault"])
        ex = MultiThreadedExecutor(num_threads=4, context=ctx)
        ex.add_node(dec)
        ex.add_node(node)
        goal = ExecuteSkill.Goal(skill_id=0, argument=[0.0] * 5, step_limit=20, dynamics_factor=0.1)
        try:
            assert spin_until(ex, lambda: client.server_is_ready() and home.service_is_ready()
                              and clear.service_is_ready(), 15.0)
            assert spin_until(ex, lambda: faults == [""], 5.0), faults  # latched topic: no fault yet
            h = wait_future(ex, client.send_goal_async(goal))
            r = wait_future(ex, h.get_result_async()).result
            assert not r.success and "reflex" in dec.last_result.fault.value
            sent_by_goals = r.steps_executed
            assert spin_until(ex, lambda: faults[-1].startswith("reflex"), 5.0), faults
            h = wait_future(ex, client.send_goal_async(goal))
            assert not h.accepted  # refused while latched
            # /diagnostics says why: ERROR with the latched fault, and the rejection's reason in its values
            assert spin_until(ex, lambda: any(
                st.level == DiagnosticStatus.ERROR and "reflex" in st.message
                and any(kv.key == "last_rejection" and "latched" in kv.value for kv in st.values) for st in diags), 10.0)
            sent = len(dec.arm.commands)
            resp = wait_future(ex, home.call_async(Trigger.Request()))
            assert not resp.success and "latched" in resp.message and len(dec.arm.commands) == sent
            resp = wait_future(ex, clear.call_async(Trigger.Request()))
            assert resp.success and "cleared reflex" in resp.message and dec.arm.recover_calls == 1
            assert spin_until(ex, lambda: faults[-1] == "", 5.0)
            h = wait_future(ex, client.send_goal_async(goal))
            assert h.accepted
            r = wait_future(ex, h.get_result_async()).result
            assert r.success, r.error
            # the result carries the sender's missed-tick count; /diagnostics totals commands and misses
            assert r.ticks_dropped == dec.last_result.ticks_dropped
            sent_by_goals += r.steps_executed
            total = str(sent_by_goals)
            assert spin_until(ex, lambda: any(
                any(kv.key == "commands_sent" and kv.value == total for kv in st.values)
                and any(kv.key == "ticks_dropped" for kv in st.values)
                and any(kv.key == "late_state_s" for kv in st.values) for st in diags), 10.0), total
        finally:
            dec.close()
