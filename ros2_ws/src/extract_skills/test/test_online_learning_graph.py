"""Online fine-tuning in the ROS graph: local learner in the policy node (sim episodes, checkpoint, resume)
and a learner in its own process fed over ROS topics, whose weights the acting node picks up."""
from __future__ import annotations

import signal

import numpy as np
import pytest
import torch

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("extract_msgs", reason="extract_msgs not built: run scripts/setup.sh")

from extract_msgs.msg import EpisodeEvent, PolicyWeights, SkillCommand, SkillTransition  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from extract_skills.core.rl.trainer import CHECKPOINT  # noqa: E402
from extract_skills.graph import TOPICS  # noqa: E402
from extract_skills.nodes.common import WEIGHTS_QOS, transition_msg  # noqa: E402
from support.ros_graph import Every, RclpyContext, spin_for, spin_until, start_python, stop_process  # noqa: E402
from support.tiny_models import make_tiny_models  # noqa: E402

OBS_DIM, Z = 512 + 8, 5  # tiny models: r3m_resnet18 embedding + proprio; latent dim of SkillModelConfig


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    make_tiny_models(d)
    return d


def test_sim_episodes_fine_tune_in_the_policy_node_and_resume_after_restart(models, tmp_path):
    from extract_skills.nodes.run_graph import build_nodes, node_parameters
    from extract_skills.nodes.skill_policy_node import SkillPolicyNode

    run_dir = tmp_path / "online"
    params = node_parameters("sim", {"models_dir": str(models), "num_episodes": "2", "task": "microwave",
                                     "learn": "true", "run_dir": str(run_dir)})
    params["skill_policy"].update(step_limit=6, batch_size=2, learning_starts=2, checkpoint_every=1)
    params["reward_reset_supervisor"].update(max_skills_per_episode=3)
    assert "skill_learner" not in params  # learner: local
    with RclpyContext() as ctx:
        nodes = build_nodes("sim", params, context=ctx)
        by_name = {n.get_name(): n for n in nodes}
        obs = rclpy.create_node("observer", context=ctx)
        cmds, events = [], []
        obs.create_subscription(SkillCommand, TOPICS["skill_command"], cmds.append, 50)
        obs.create_subscription(EpisodeEvent, TOPICS["episode_event"], events.append, 50)
        ex = MultiThreadedExecutor(num_threads=6, context=ctx)
        for n in [*nodes, obs]:
            ex.add_node(n)
        sup, pol = by_name["reward_reset_supervisor"], by_name["skill_policy"]
        prior_state = {k: v.clone() for k, v in pol.agent.policy_state().items()}
        try:
            assert spin_until(ex, lambda: sup.finished and pol.learner.counters.episodes >= 2, 200.0), \
                f"episodes did not finish; events={[e.event for e in events]}"
        finally:
            for n in nodes:
                n.close() if hasattr(n, "close") else None
        learner = pol.learner
        transitions = pol.counters["transitions"]
        assert cmds and all(c.policy == SkillCommand.POLICY_LEARNED for c in cmds)
        # every skill that started became a transition; each episode's last one closed by its end event
        assert transitions == len(cmds) and learner.counters.episodes == 2
        assert learner.agent.updates > 0 and pol.policy_version == learner.agent.updates
        changed = any(not torch.equal(prior_state[k], v) for k, v in pol.agent.policy_state().items())
        assert changed, "updates ran but the policy did not change"
        assert (run_dir / CHECKPOINT).is_file() and (run_dir / "replay" / "manifest.json").is_file()
        assert any((run_dir / "tb").iterdir())
        # a restarted node resumes: same counters, buffer and weights
        again = SkillPolicyNode(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in
                                                                  params["skill_policy"].items()])
        try:
            assert again.learner.counters.episodes == 2 and len(again.learner.buffer) == transitions
            assert again.agent.updates == learner.agent.updates
            for k, v in pol.agent.policy_state().items():
                torch.testing.assert_close(again.agent.policy_state()[k], v)
        finally:
            again.destroy_node()


def _transition(rng: np.random.Generator, i: int, obs_dim: int = OBS_DIM) -> SkillTransition:
    t = {"episode_id": 1 + i // 4, "obs": rng.standard_normal(obs_dim), "skill": i % 4, "z": rng.uniform(-1, 1, Z),
         "reward": float(i % 4 == 3), "next_obs": rng.standard_normal(obs_dim), "terminated": i % 4 == 3,
         "truncated": False, "steps": 6, "log_prob": -2.0, "policy_version": 0, "intervention": False}
    return transition_msg(t, rclpy.clock.Clock().now().to_msg())


def test_learner_in_its_own_process_trains_from_topics_and_the_actor_swaps_weights_between_skills(models, tmp_path):
    from extract_skills.nodes.skill_policy_node import SkillPolicyNode

    run_dir = tmp_path / "remote"
    proc = start_python("extract_skills.nodes.skill_learner_node", "--ros-args", "-p", f"models_dir:={models}",
                        "-p", f"run_dir:={run_dir}", "-p", "batch_size:=8", "-p", "learning_starts:=8",
                        "-p", "publish_every:=5", "-p", "checkpoint_every:=10")
    out = ""
    try:
        with RclpyContext() as ctx:
            pol = SkillPolicyNode(context=ctx, parameter_overrides=[
                Parameter("models_dir", value=str(models)), Parameter("learn", value=True),
                Parameter("learner", value="remote")])
            test = rclpy.create_node("transition_source", context=ctx)
            pub = test.create_publisher(SkillTransition, TOPICS["transitions"], 100)
            versions: list[int] = []
            test.create_subscription(PolicyWeights, TOPICS["policy_weights"], lambda m: versions.append(m.version),
                                     WEIGHTS_QOS)
            ex = MultiThreadedExecutor(num_threads=4, context=ctx)
            for n in (pol, test):
                ex.add_node(n)
            # the learner publishes its start weights (version 0) once it is up: wait for that, not a sleep
            assert spin_until(ex, lambda: bool(versions), 60.0), "learner never published weights"
            assert spin_until(ex, lambda: pub.get_subscription_count() > 0, 10.0)
            prior_state = {k: v.clone() for k, v in pol.agent.policy_state().items()}
            rng = np.random.default_rng(0)
            pub.publish(_transition(rng, 0, obs_dim=OBS_DIM + 3))  # wrong layout: the learner refuses it
            for i in range(40):
                pub.publish(_transition(rng, i))
                spin_for(ex, 0.01)
            assert spin_until(ex, lambda: max(versions) >= 25, 60.0), f"weights versions seen: {versions}"
            # the actor may still hold an older version than the one we saw: wait for a new enough one
            assert spin_until(ex, lambda: pol._pending_weights is not None and pol._pending_weights[0] >= 25, 30.0)
            # not applied until the next decision (between skills)
            assert pol.policy_version == 0
            d, z, _ = pol.choose(rng.standard_normal(OBS_DIM).astype(np.float32))
            assert pol.policy_version >= 25 and pol.counters["weights_loaded"] == 1
            assert any(not torch.equal(prior_state[k], v) for k, v in pol.agent.policy_state().items())
            pol.destroy_node()
    finally:
        out = stop_process(proc)
    assert "refused transition" in out and "obs must have shape" in out, out[-2000:]
    assert (run_dir / CHECKPOINT).is_file(), out[-2000:]  # checkpointed (every 10 and at shutdown)


def test_operator_rewards_failure_and_rerecord_on_the_real_robot_path(models):
    """The operator console's service calls, against the real supervisor (mode real) and the decoder's gated
    move-home path on the fake arm."""
    from extract_msgs.srv import ConfirmOutcome, ResetEpisode
    from std_msgs.msg import String

    from extract_skills.cli.operator_console import interpret_key
    from extract_skills.graph import RERECORD, SERVICES
    from support.ros_graph import wait_future

    task = ["microwave", "kettle"]
    with RclpyContext() as ctx:
        dec = _fake_arm_decoder(ctx, models, control_period_s=0.01, max_step_delta=0.005)
        sup = _real_supervisor(ctx, task=",".join(task), wait_for_policy=False, wait_for_camera=False)
        op = rclpy.create_node("operator_console_test", context=ctx)
        events: list[EpisodeEvent] = []
        op.create_subscription(EpisodeEvent, TOPICS["episode_event"], events.append, 50)
        confirm = op.create_client(ConfirmOutcome, SERVICES["confirm_outcome"])
        reset = op.create_client(ResetEpisode, SERVICES["reset_episode"])
        ex = MultiThreadedExecutor(num_threads=4, context=ctx)
        for n in (dec, sup, op):
            ex.add_node(n)

        def call(cmd):
            if cmd.service == "confirm":
                return wait_future(ex, confirm.call_async(ConfirmOutcome.Request(subtask=cmd.subtask,
                                                                                 succeeded=cmd.succeeded)))
            return wait_future(ex, reset.call_async(ResetEpisode.Request(operator_confirmed=True, reason=cmd.reason)))

        def kinds():
            return [e.event for e in events]

        try:
            assert spin_until(ex, lambda: confirm.service_is_ready() and reset.service_is_ready(), 15.0)
            # no episode runs until the operator says the workspace is clear
            assert not call(interpret_key("2", task)).success
            assert call(interpret_key("h", task)).success
            assert spin_until(ex, lambda: EpisodeEvent.START in kinds(), 30.0), kinds()
            r = call(interpret_key("2", task))  # "kettle: success"
            assert r.success and r.reward == 1.0
            assert spin_until(ex, lambda: EpisodeEvent.REWARD in kinds(), 5.0)
            reward = next(e for e in events if e.event == EpisodeEvent.REWARD)
            assert reward.detail == "operator: kettle" and reward.completed_subtasks == ["kettle"]
            assert interpret_key("9", task).service == "none"  # no 9th subtask: the console sends nothing
            r = call(interpret_key("f", task))
            assert r.success and r.reward == 0.0
            assert spin_until(ex, lambda: EpisodeEvent.FAILURE in kinds(), 5.0)
            assert next(e for e in events if e.event == EpisodeEvent.FAILURE).detail == "operator: failure"
            # next episode, then rerecord it: ended as truncated with the rerecord reason
            assert call(interpret_key("h", task)).success
            assert spin_until(ex, lambda: kinds().count(EpisodeEvent.START) == 2, 30.0), kinds()
            assert call(interpret_key("r", task)).success
            assert spin_until(ex, lambda: EpisodeEvent.TRUNCATED in kinds(), 5.0)
            assert next(e for e in events if e.event == EpisodeEvent.TRUNCATED).detail == RERECORD
            # an arm fault latched by the decoder ends the running episode, uncounted, and asks for a person;
            # no episode starts again until the fault is cleared
            assert call(interpret_key("h", task)).success
            assert spin_until(ex, lambda: kinds().count(EpisodeEvent.START) == 3, 30.0), kinds()
            dec.pub_fault.publish(String(data="reflex: joint 4 torque"))
            assert spin_until(ex, lambda: EpisodeEvent.NEEDS_HUMAN in kinds(), 5.0), kinds()
            assert sup.summary[-1]["counted"] is False and "arm fault" in events[-2].detail
            assert call(interpret_key("h", task)).success
            spin_for(ex, 1.0)
            assert kinds().count(EpisodeEvent.START) == 3  # still waiting for /clear_fault
            dec.pub_fault.publish(String(data=""))
            assert spin_until(ex, lambda: kinds().count(EpisodeEvent.START) == 4, 30.0), kinds()
        finally:
            dec.close()


def _fake_arm_decoder(ctx, models, **params):
    from extract_skills.nodes.skill_decoder_server import SkillDecoderServer

    return SkillDecoderServer(context=ctx, parameter_overrides=[
        Parameter(k, value=v) for k, v in {"models_dir": str(models), "arm": "fake", **params}.items()])


def _real_supervisor(ctx, **params):
    """The supervisor on the real-robot path (operator resets), counting episodes forever, no settle time."""
    from extract_skills.nodes.reward_reset_supervisor import RewardResetSupervisor

    return RewardResetSupervisor(context=ctx, parameter_overrides=[
        Parameter(k, value=v) for k, v in {"mode": "real", "num_episodes": 0, "settle_s": 0.0, **params}.items()])


def _operator_graph(ctx, name: str, *nodes):
    """An operator-side node (episode events, the reset service) and an executor over it and ``nodes``."""
    from extract_msgs.srv import ResetEpisode

    from extract_skills.graph import SERVICES

    op = rclpy.create_node(name, context=ctx)
    events: list[EpisodeEvent] = []
    op.create_subscription(EpisodeEvent, TOPICS["episode_event"], events.append, 50)
    reset = op.create_client(ResetEpisode, SERVICES["reset_episode"])
    ex = MultiThreadedExecutor(num_threads=4, context=ctx)
    for n in (*nodes, op):
        ex.add_node(n)
    return op, events, reset, ex


def test_supervisor_truncates_the_episode_of_a_dead_policy_and_goes_on_with_its_respawn(models):
    """Issue 15: kill -9 of the policy process mid-episode does not end the graph. The supervisor ends the
    episode as truncated (not counted) and the next one starts once a new policy process (what launch's
    respawn starts) listens again."""
    from extract_msgs.srv import ResetEpisode

    from support.ros_graph import start_python, stop_process, wait_future

    policy_args = ("extract_skills.nodes.skill_policy_node", "--ros-args", "-p", f"models_dir:={models}")
    with RclpyContext() as ctx:
        dec = _fake_arm_decoder(ctx, models, control_period_s=0.01, max_step_delta=0.005)
        sup = _real_supervisor(ctx, task="microwave", wait_for_policy=True, wait_for_camera=False)
        op, events, reset, ex = _operator_graph(ctx, "respawn_test", dec, sup)

        def starts():
            return [e.event for e in events].count(EpisodeEvent.START)

        policy = start_python(*policy_args)
        try:
            assert spin_until(ex, reset.service_is_ready, 15.0)
            assert wait_future(ex, reset.call_async(ResetEpisode.Request(operator_confirmed=True))).success
            assert spin_until(ex, lambda: starts() == 1, 60.0), "no episode started with the policy up"
            policy.send_signal(signal.SIGKILL)
            policy.wait(5)
            # from its silent heartbeat in seconds; the DDS graph would list the dead process for ~20 s (lease)
            assert spin_until(ex, lambda: EpisodeEvent.TRUNCATED in [e.event for e in events], 15.0)
            ended = next(e for e in events if e.event == EpisodeEvent.TRUNCATED)
            assert "skill_policy node went away" in ended.detail and sup.summary[-1]["counted"] is False
            assert wait_future(ex, reset.call_async(ResetEpisode.Request(operator_confirmed=True))).success
            spin_for(ex, 1.0)
            assert starts() == 1  # no policy, no episode
            policy = start_python(*policy_args)  # what `respawn=True` does under ros2 launch
            assert spin_until(ex, lambda: starts() == 2, 60.0), [e.event for e in events]
        finally:
            stop_process(policy)
            dec.close()


def test_reset_that_keeps_failing_asks_for_a_person_and_starts_no_episode(models):
    """RELIABILITY row 21: /move_home cannot reach home (the arm ends off pose); the supervisor retries
    reset_retries times, publishes NEEDS_HUMAN and starts no episode until the operator confirms again."""
    from extract_msgs.srv import ResetEpisode

    from extract_skills.core.control.arm import FakeArmScript
    from support.ros_graph import wait_future

    with RclpyContext() as ctx:
        dec = _fake_arm_decoder(ctx, models, control_period_s=0.0, max_step_delta=0.05)
        # the arm starts away from home and settles 0.1 rad away from every target: home is never reached
        dec.arm.q = dec.arm.q + 0.2
        dec.arm.script = FakeArmScript(off_pose_offset=np.full(7, 0.1))
        sup = _real_supervisor(ctx, task="microwave", wait_for_policy=False, wait_for_camera=False, reset_retries=2)
        op, events, reset, ex = _operator_graph(ctx, "reset_fail_test", dec, sup)
        kinds = lambda: [e.event for e in events]  # noqa: E731
        try:
            assert spin_until(ex, reset.service_is_ready, 15.0)
            assert wait_future(ex, reset.call_async(ResetEpisode.Request(operator_confirmed=True))).success
            assert spin_until(ex, lambda: EpisodeEvent.NEEDS_HUMAN in kinds(), 60.0), kinds()
            need = next(e for e in events if e.event == EpisodeEvent.NEEDS_HUMAN)
            assert "reset failed 2 times" in need.detail and "move home failed" in need.detail, need.detail
            assert EpisodeEvent.START not in kinds() and sup.episode_id == 0
            spin_for(ex, 1.0)
            assert EpisodeEvent.START not in kinds()  # waits for a person; no retry loop on its own
        finally:
            dec.close()


def test_no_episode_starts_while_the_camera_is_down(models):
    """A camera that is down (or being respawned by the launch) would end a new episode as a drop-out seconds
    after its start: the supervisor starts one only while embedded frames arrive, and starts it once they do."""
    from extract_msgs.msg import SkillEmbedding
    from extract_msgs.srv import ResetEpisode

    from support.ros_graph import wait_future

    with RclpyContext() as ctx:
        dec = _fake_arm_decoder(ctx, models, control_period_s=0.0, max_step_delta=0.05)
        sup = _real_supervisor(ctx, task="microwave", wait_for_policy=False, max_camera_gap_s=1.0)
        op, events, reset, ex = _operator_graph(ctx, "camera_wait_test", dec, sup)
        pub = op.create_publisher(SkillEmbedding, TOPICS["embedding"], 10)
        streaming = {"on": False}
        due = Every(0.1)  # a 10 Hz camera

        def spin(predicate, timeout_s):
            def step():
                if streaming["on"] and due():
                    pub.publish(SkillEmbedding(embedding=[0.1] * 4))
                return predicate()
            return spin_until(ex, step, timeout_s)

        def kinds():
            return [e.event for e in events]

        try:
            assert spin_until(ex, reset.service_is_ready, 15.0)
            assert wait_future(ex, reset.call_async(ResetEpisode.Request(operator_confirmed=True))).success
            assert not spin(lambda: EpisodeEvent.START in kinds(), 2.0), "an episode started with no camera"
            streaming["on"] = True  # the camera comes up
            assert spin(lambda: EpisodeEvent.START in kinds(), 15.0), kinds()
            streaming["on"] = False  # and goes down: the episode ends as a drop-out
            assert spin(lambda: EpisodeEvent.TRUNCATED in kinds(), 15.0), kinds()
            assert wait_future(ex, reset.call_async(ResetEpisode.Request(operator_confirmed=True))).success
            assert not spin(lambda: kinds().count(EpisodeEvent.START) > 1, 2.0), "an episode started with no camera"
            streaming["on"] = True  # respawned
            assert spin(lambda: kinds().count(EpisodeEvent.START) == 2, 15.0), kinds()
        finally:
            dec.close()


def test_camera_drop_out_ends_the_episode_and_the_running_skill_stops(models):
    """RELIABILITY row 1: the camera stops mid-skill. The supervisor ends the episode (truncated, not counted)
    after max_camera_gap_s, the policy cancels its goal, and the decoder stops the arm (CANCELED) well before
    the skill's own end."""
    from extract_msgs.msg import SkillEmbedding
    from extract_msgs.srv import ResetEpisode

    from extract_skills.graph import SERVICES
    from extract_skills.nodes.skill_policy_node import SkillPolicyNode
    from support.ros_graph import wait_future

    with RclpyContext() as ctx:
        dec = _fake_arm_decoder(ctx, models, control_period_s=0.05, max_step_delta=0.002)
        pol = SkillPolicyNode(context=ctx, parameter_overrides=[
            Parameter("models_dir", value=str(models)), Parameter("step_limit", value=400),
            Parameter("max_obs_age_s", value=1.0), Parameter("max_skew_s", value=1.0)])
        sup = _real_supervisor(ctx, task="microwave", max_camera_gap_s=1.5)
        cam = rclpy.create_node("fake_camera", context=ctx)
        pub = cam.create_publisher(SkillEmbedding, TOPICS["embedding"], 10)
        events: list[EpisodeEvent] = []
        cam.create_subscription(EpisodeEvent, TOPICS["episode_event"], events.append, 50)
        reset = cam.create_client(ResetEpisode, SERVICES["reset_episode"])
        ex = MultiThreadedExecutor(num_threads=6, context=ctx)
        for n in (dec, pol, sup, cam):
            ex.add_node(n)
        streaming = {"on": True}
        due = Every(0.1)  # a 10 Hz camera (a frame per spin would starve the skill thread of the GIL)

        def frame():
            if streaming["on"] and due():
                m = SkillEmbedding(encoder_name=pol.bundle.meta.encoder_name, embedding=[0.1] * pol.bundle.meta.embed_dim)
                m.header.stamp = cam.get_clock().now().to_msg()
                pub.publish(m)
            return False

        try:
            assert spin_until(ex, lambda: (frame(), reset.service_is_ready() and pol.client.server_is_ready())[1], 30.0)
            assert wait_future(ex, reset.call_async(ResetEpisode.Request(operator_confirmed=True))).success
            assert spin_until(ex, lambda: (frame(), len(dec.arm.commands) > 3)[1], 60.0), [e.event for e in events]
            streaming["on"] = False  # the camera drops out mid-skill
            assert spin_until(ex, lambda: dec.last_result is not None, 30.0), [e.detail for e in events]
            ended = next(e for e in events if e.event == EpisodeEvent.TRUNCATED)
            assert "camera dropped out" in ended.detail and sup.summary[-1]["counted"] is False
            assert dec.last_result.status.value == "canceled", dec.last_result
            assert dec.last_result.steps_executed < 400 and dec.arm.is_stationary()
        finally:
            dec.close()


def test_destroying_the_decoder_and_policy_nodes_destroys_their_action_server_and_client(models):
    """rclpy's Node.destroy_node() leaves action servers and clients to the garbage collector (finalised at a
    random later moment, possibly inside another executor's wait); our nodes destroy theirs with the node."""
    from rclpy._rclpy_pybind11 import InvalidHandle

    from extract_skills.nodes.skill_policy_node import SkillPolicyNode

    with RclpyContext() as ctx:
        dec = _fake_arm_decoder(ctx, models)
        pol = SkillPolicyNode(context=ctx, parameter_overrides=[Parameter("models_dir", value=str(models))])
        handles = (dec.server._handle, pol.client._client_handle)
        for handle in handles:
            with handle:  # alive while the node is
                pass
        dec.close()
        for node in (dec, pol):
            node.destroy_node()
        for handle in handles:
            with pytest.raises(InvalidHandle):
                with handle:
                    pass
