"""Skill policy node: observation (embedding + joint state) -> (skill id d, argument z) -> ExecuteSkill goal.

Until the online-RL learner lands, (d, z) are sampled from the offline priors p(d|s), p(z|s,d) of
the skill checkpoint (SkillCommand.POLICY_PRIOR). A goal is only sent on a fresh, finite, time-
aligned observation while an episode runs; one goal at a time. A heartbeat lets the decoder stop
the arm if this process dies.
"""
from __future__ import annotations

import math
import threading

import numpy as np
from extract_msgs.action import ExecuteSkill
from extract_msgs.msg import EpisodeEvent, SkillCommand, SkillEmbedding
from rclpy.action import ActionClient
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Header

from extract_skills.core.skills.deployment import load_deployment_bundle
from extract_skills.graph import ACTION_EXECUTE_SKILL, TOPICS
from extract_skills.nodes.common import Monotonic, declare, models_dir, parse_joint_state, run_node, stamp_to_s

HEARTBEAT_TOPIC = "/skill_policy/heartbeat"

DEFAULTS = {
    "models_dir": "",
    "checkpoint": "extract_kitchen.pt",
    "seed": 0,
    "max_obs_age_s": 0.5,  # s, embedding and joint state must be younger (arrival, monotonic)
    "max_skew_s": 0.25,  # s, |image stamp - joint state stamp| tolerated
    "step_limit": 0,  # per-skill control-step limit sent with each goal; 0 = decoder's max length
    "dynamics_factor": 0.1,  # relative dynamics factor sent with each goal
    "heartbeat_hz": 10.0,  # Hz; the decoder's heartbeat_timeout_s must span a few periods
    "act_hz": 20.0,  # Hz, how often the policy checks whether it can send the next goal
    "act_without_episode": False,  # True: act without a supervisor's START (manual testing)
}


class SkillPolicyNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("skill_policy", **kwargs)
        self.p = declare(self, DEFAULTS, {
            "max_obs_age_s": lambda v: None if v > 0 else "must be > 0 s",
            "dynamics_factor": lambda v: None if 0 < v <= 1 else "must be in (0, 1]",
            "heartbeat_hz": lambda v: None if v > 0 else "must be > 0 Hz",
            "act_hz": lambda v: None if v > 0 else "must be > 0 Hz",
        })
        self.bundle = load_deployment_bundle(models_dir(self.p["models_dir"]) / self.p["checkpoint"])
        self.rng = np.random.default_rng(self.p["seed"])
        self.embedding = Monotonic()
        self.joints = Monotonic()
        self.episode_id = 0
        self.active = bool(self.p["act_without_episode"])
        self._goal_lock = threading.Lock()
        self._in_flight = False
        self._goal_handle = None
        self.counters = {"goals": 0, "succeeded": 0, "failed": 0, "refused_obs": 0}
        group = ReentrantCallbackGroup()
        self.pub_cmd = self.create_publisher(SkillCommand, TOPICS["skill_command"], 10)
        self.pub_hb = self.create_publisher(Header, HEARTBEAT_TOPIC, 10)
        self.client = ActionClient(self, ExecuteSkill, ACTION_EXECUTE_SKILL, callback_group=group)
        self.create_subscription(SkillEmbedding, TOPICS["embedding"], self._on_embedding, 10, callback_group=group)
        self.create_subscription(JointState, TOPICS["joint_states"], self._on_joints, 10, callback_group=group)
        self.create_subscription(EpisodeEvent, TOPICS["episode_event"], self._on_event, 10, callback_group=group)
        self.create_timer(1.0 / self.p["heartbeat_hz"], self._heartbeat, callback_group=group)
        # Poll rather than act inside the embedding callback: acting there (graph queries, goal
        # sends) starved the other callbacks of rclpy's executor on 2 cores (seen: 2 s old inputs).
        self.create_timer(1.0 / self.p["act_hz"], self._maybe_act, callback_group=group)

    # -------------------------------------------------------------------------- inputs
    def _on_embedding(self, msg: SkillEmbedding) -> None:
        self.embedding.set(msg)

    def _on_joints(self, msg: JointState) -> None:
        self.joints.set(msg)

    def _on_event(self, msg: EpisodeEvent) -> None:
        if msg.event == EpisodeEvent.START:
            self.episode_id, self.active = msg.episode_id, True
        elif msg.event in (EpisodeEvent.SUCCESS, EpisodeEvent.FAILURE, EpisodeEvent.TRUNCATED, EpisodeEvent.NEEDS_HUMAN):
            self.active = False
            handle = self._goal_handle
            if handle is not None:
                handle.cancel_goal_async()

    def _heartbeat(self) -> None:
        hb = Header()
        hb.stamp = self.get_clock().now().to_msg()
        hb.frame_id = self.get_name()
        self.pub_hb.publish(hb)

    # -------------------------------------------------------------------------- acting
    def observation(self) -> np.ndarray | None:
        """The policy input, or None (with a reason logged) when it must not be acted on."""
        emb, js = self.embedding.value, self.joints.value
        if emb is None or js is None:
            return None
        reason = None
        if self.embedding.age() > self.p["max_obs_age_s"] or self.joints.age() > self.p["max_obs_age_s"]:
            reason = f"stale observation (embedding {self.embedding.age():.2f} s, joints {self.joints.age():.2f} s)"
        elif abs(stamp_to_s(emb.header.stamp) - stamp_to_s(js.header.stamp)) > self.p["max_skew_s"]:
            reason = "image and joint state stamps differ by more than max_skew_s"
        else:
            try:
                _, _, gripper = q_dq_g = parse_joint_state(js)
                e = np.asarray(emb.embedding, dtype=np.float64)
                if not np.all(np.isfinite(e)):
                    raise ValueError("embedding contains NaN/Inf")
                return self.bundle.make_obs(e, np.concatenate([q_dq_g[0], [gripper]]))
            except ValueError as exc:
                reason = str(exc)
        self.counters["refused_obs"] += 1
        self.get_logger().warning(f"not acting: {reason}", throttle_duration_sec=2.0)
        return None

    def choose(self, obs: np.ndarray) -> tuple[int, np.ndarray, float]:
        """Sample d ~ p(d|s), z ~ p(z|s,d); returns (d, z, log p(d, z))."""
        probs = self.bundle.skill_prior(obs)
        d = int(self.rng.choice(len(probs), p=probs / probs.sum()))
        mean, std = self.bundle.argument_prior(obs, d)
        z = mean + std * self.rng.standard_normal(mean.shape)
        logp = math.log(max(float(probs[d]), 1e-12)) - float(
            np.sum(0.5 * ((z - mean) / std) ** 2 + np.log(std) + 0.5 * math.log(2 * math.pi)))
        return d, z, logp

    def _maybe_act(self) -> None:
        if not self.active or not self.client.server_is_ready():
            return
        with self._goal_lock:
            if self._in_flight:
                return
            obs = self.observation()
            if obs is None:
                return
            d, z, logp = self.choose(obs)
            if not (np.all(np.isfinite(z)) and math.isfinite(logp)):
                self.get_logger().error("policy produced a non-finite argument; not sending")
                return
            self._in_flight = True
        cmd = SkillCommand()
        cmd.header.stamp = self.embedding.value.header.stamp
        cmd.header.frame_id = self.get_name()
        cmd.skill_id, cmd.argument = d, [float(x) for x in z]
        cmd.policy, cmd.log_prob, cmd.episode_id = SkillCommand.POLICY_PRIOR, float(logp), self.episode_id
        self.pub_cmd.publish(cmd)
        goal = ExecuteSkill.Goal(skill_id=d, argument=cmd.argument, step_limit=self.p["step_limit"],
                                 dynamics_factor=self.p["dynamics_factor"], episode_id=self.episode_id)
        self.counters["goals"] += 1
        self.client.send_goal_async(goal).add_done_callback(self._on_goal_response)

    def _on_goal_response(self, future) -> None:
        handle = future.result()
        if not handle.accepted:
            self.get_logger().error("skill goal rejected by the decoder")
            self.counters["failed"] += 1
            self._in_flight = False
            return
        self._goal_handle = handle
        handle.get_result_async().add_done_callback(self._on_result)

    def _on_result(self, future) -> None:
        res = future.result().result
        self.counters["succeeded" if res.success else "failed"] += 1
        if not res.success:
            self.get_logger().warning(f"skill ended without success: {res.error}")
        self._goal_handle = None
        self._in_flight = False


def main(args=None) -> None:
    run_node(SkillPolicyNode, args)


if __name__ == "__main__":
    main()
