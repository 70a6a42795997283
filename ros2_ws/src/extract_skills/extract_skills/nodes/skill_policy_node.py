"""Skill policy node: observation (embedding + joint state) -> (skill id d, argument z) -> ExecuteSkill goal.

Who chooses (d, z):
* no ``policy_checkpoint`` and ``learn`` false: samples of the offline priors p(d|s), p(z|s,d)
  (SkillCommand.POLICY_PRIOR);
* otherwise the online hybrid skill SAC policy (SkillCommand.POLICY_LEARNED), started from the priors or
  from ``policy_checkpoint`` (a training run's ``agent.pt``). With ``learn`` true it fine-tunes: every skill
  becomes a transition (decision observation, d, z, the supervisor's rewards while it ran, the next
  decision's observation, terminated/truncated from the episode events). ``learner: local`` trains in this
  node (checkpoints, replay buffer and TensorBoard under ``run_dir``; resumes after a restart);
  ``learner: remote`` publishes the transitions and loads the weights a ``skill_learner`` node publishes.
  New weights are swapped in between skills, never during one.

A goal is only sent on a fresh, finite, time-aligned observation stamped at or after the arm state the previous
skill ended in (its result's ``final_stamp``), while an episode runs; one goal at a time. A heartbeat lets the
decoder stop the arm if this process dies.
"""
from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch
from extract_msgs.action import ExecuteSkill
from extract_msgs.msg import EpisodeEvent, PolicyWeights, SkillCommand, SkillEmbedding, SkillTransition
from rclpy.action import ActionClient
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.time import Time
from sensor_msgs.msg import JointState
from std_msgs.msg import Header

from extract_skills.core.rl.actor import (PolicyWeightsError, TransitionAssembler, decode_policy_state,
                                          replay_fields)
from extract_skills.core.rl.skill_sac import HybridSkillSAC
from extract_skills.core.rl.trainer import Learner, load_policy
from extract_skills.core.skills.deployment import load_deployment_bundle
from extract_skills.core.skills.encoders import file_sha256
from extract_skills.graph import ACTION_EXECUTE_SKILL, HEARTBEAT, RERECORD, TOPICS
from extract_skills.nodes.common import (SAC_DEFAULTS, WEIGHTS_QOS, Monotonic, check_stamp, declare, destroy_waitables,
                                         models_dir, parse_joint_state, run_node, sac_config, stamp_to_s, steady_timer,
                                         subscribe, transition_msg)

HEARTBEAT_TOPIC = HEARTBEAT

DEFAULTS = {
    "models_dir": "",
    "checkpoint": "extract_kitchen.pt",
    "seed": 0,
    "max_obs_age_s": 0.5,  # s, embedding and joint state must be younger (arrival, monotonic)
    "max_skew_s": 0.25,  # s, |image stamp - joint state stamp| tolerated
    "step_limit": 0,  # per-skill control-step limit sent with each goal; 0 = decoder's max length
    "dynamics_factor": 0.1,  # relative dynamics factor sent with each goal
    "heartbeat_hz": 10.0,  # Hz; the decoder's heartbeat_timeout_s must span a few periods
    "act_hz": 20.0,  # Hz, fallback poll for the next goal (a new frame after a skill's end triggers it at once)
    "act_on_frame": True,  # decide as soon as a frame stamped after the last skill's end is embedded
    "act_without_episode": False,  # True: act without a supervisor's START (manual testing)
    "goal_timeout_s": 60.0,  # s without a result before a goal is given up (decoder restarted or lost)
    "feedback_timeout_s": 10.0,  # s without feedback from a running skill before it is given up (decoder died)
    "policy_checkpoint": "",  # agent.pt of a training run to act with; "" = start from the priors
    "learn": False,  # fine-tune the policy online from the supervisor's rewards
    "learner": "local",  # local: train in this node; remote: send transitions to a skill_learner node
    "run_dir": "runs/online",  # local learner: checkpoints, replay buffer, TensorBoard (resumed if present)
    "checkpoint_every": 5,  # episodes between local checkpoints
    **SAC_DEFAULTS,
}


class SkillPolicyNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("skill_policy", **kwargs)
        self.p = declare(self, DEFAULTS, {
            "max_obs_age_s": lambda v: None if v > 0 else "must be > 0 s",
            "dynamics_factor": lambda v: None if 0 < v <= 1 else "must be in (0, 1]",
            "heartbeat_hz": lambda v: None if v > 0 else "must be > 0 Hz",
            "act_hz": lambda v: None if v > 0 else "must be > 0 Hz",
            "learner": lambda v: None if v in ("local", "remote") else "must be local or remote",
            "checkpoint_every": lambda v: None if v >= 1 else "must be >= 1",
        })
        ckpt = models_dir(self.p["models_dir"]) / self.p["checkpoint"]
        self.bundle = load_deployment_bundle(ckpt)
        self.rng = np.random.default_rng(self.p["seed"])
        self._torch_gen = torch.Generator().manual_seed(int(self.p["seed"]))
        self.skill_sha256 = file_sha256(ckpt)
        self._setup_policy()
        self.embedding = Monotonic()
        self.joints = Monotonic()
        self.episode_id = 0
        self.active = bool(self.p["act_without_episode"])
        self._goal_lock = threading.Lock()
        self._in_flight = False
        self._goal_handle = None
        self.counters = {"goals": 0, "succeeded": 0, "failed": 0, "refused_obs": 0, "transitions": 0,
                         "weights_loaded": 0, "weights_refused": 0, "lost_goals": 0}
        self._sent_at = 0.0
        self._closing = False
        self._last_feedback = 0.0
        self._goal_seq = 0
        self._skill_ended_at: Time | None = None  # the next decision needs a frame stamped after this
        self.assembler = TransitionAssembler()
        self._episode_return = 0.0
        group = ReentrantCallbackGroup()
        self.pub_cmd = self.create_publisher(SkillCommand, TOPICS["skill_command"], 10)
        self.pub_hb = self.create_publisher(Header, HEARTBEAT_TOPIC, 10)
        self.client = ActionClient(self, ExecuteSkill, ACTION_EXECUTE_SKILL, callback_group=group)
        subscribe(self, SkillEmbedding, TOPICS["embedding"], self._on_embedding, 10, callback_group=group)
        subscribe(self, JointState, TOPICS["joint_states"], self._on_joints, 10, callback_group=group)
        subscribe(self, EpisodeEvent, TOPICS["episode_event"], self._on_event, 10, callback_group=group)
        # Names this process, not just the node: a respawned policy's beats must not keep its dead
        # predecessor's skill alive (the decoder watches the heartbeat the goal names).
        self.heartbeat_id = f"{self.get_fully_qualified_name()}#{os.getpid()}"
        steady_timer(self, 1.0 / self.p["heartbeat_hz"], self._heartbeat, callback_group=group)
        # Poll rather than act inside the embedding callback: acting there (graph queries, goal
        # sends) starved the other callbacks of rclpy's executor on 2 cores (seen: 2 s old inputs).
        steady_timer(self, 1.0 / self.p["act_hz"], self._maybe_act, callback_group=group)
        if self.p["learn"] and self.p["learner"] == "remote":
            self.pub_transition = self.create_publisher(SkillTransition, TOPICS["transitions"], 100)
            subscribe(self, PolicyWeights, TOPICS["policy_weights"], self._on_weights, WEIGHTS_QOS,
                                     callback_group=group)

    # -------------------------------------------------------------------------- policy and learner
    def _setup_policy(self) -> None:
        self.agent: HybridSkillSAC | None = None
        self.learner: Learner | None = None
        self.policy_version = 0
        self._pending_weights = None
        self._agent_lock = threading.Lock()  # acting and local updates run on different executor threads
        self._tb = None
        if not (self.p["learn"] or self.p["policy_checkpoint"]):
            return
        self.agent = HybridSkillSAC(self.bundle.model, self.bundle.argument_bound, sac_config(self.p))
        resumed = None
        if self.p["learn"] and self.p["learner"] == "local":
            run_dir = Path(self.p["run_dir"])
            self.learner = Learner(self.agent, run_dir, seed=self.p["seed"], skill_checkpoint_sha256=self.skill_sha256)
            resumed = self.learner.resume()
            if resumed is not None:
                self.policy_version = self.agent.updates
                self.get_logger().info(f"resumed the online learner from {run_dir}: {self.learner.counters.episodes} "
                                       f"episodes, {self.agent.updates} updates, {len(self.learner.buffer)} transitions")
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tb"))
        if resumed is None and self.p["policy_checkpoint"]:
            self.policy_version = load_policy(self.p["policy_checkpoint"], self.agent, self.skill_sha256)
            self.get_logger().info(f"policy from {self.p['policy_checkpoint']} ({self.policy_version} updates)")

    def _on_weights(self, msg: PolicyWeights) -> None:
        """Remote learner's weights: checked here, swapped in before the next decision."""
        try:
            if msg.skill_checkpoint_sha256 != self.skill_sha256:
                raise PolicyWeightsError(f"weights belong to skill checkpoint {msg.skill_checkpoint_sha256[:12]}..., "
                                         f"this node acts through {self.skill_sha256[:12]}...")
            state = decode_policy_state(bytes(msg.data), msg.sha256, self.agent.policy_state())
        except PolicyWeightsError as e:
            self.counters["weights_refused"] += 1
            self.get_logger().error(f"refused policy weights v{msg.version}: {e}")
            return
        with self._agent_lock:
            if msg.version > self.policy_version:
                self._pending_weights = (int(msg.version), state)

    def _emit(self, transition: dict | None) -> None:
        if transition is None:
            return
        self.counters["transitions"] += 1
        if self.learner is not None:
            with self._agent_lock:
                self.learner.observe(**replay_fields(transition))
                self.learner.counters.env_steps += int(transition["steps"])
                self.policy_version = self.agent.updates
        elif self.p["learn"]:
            self.pub_transition.publish(transition_msg(transition, self.get_clock().now().to_msg()))

    def _episode_over(self, msg: EpisodeEvent) -> None:
        if msg.detail == RERECORD:  # the operator voids this episode: its unfinished skill is not learnt from
            self.assembler.discard(msg.episode_id)
        terminated = msg.event in (EpisodeEvent.SUCCESS, EpisodeEvent.FAILURE)
        obs = self.observation(quiet=True) if self.agent is not None else None
        self._emit(self.assembler.end_episode(msg.episode_id, obs, terminated))
        if self.learner is None:
            return
        with self._agent_lock:
            c = self.learner.counters
            c.episodes += 1
            if self._tb is not None:
                self._tb.add_scalar("episode/return", msg.episode_return, c.episodes)
                for k, v in self.learner.last_info.items():
                    self._tb.add_scalar(f"train/{k}", v, c.episodes)
                self._tb.flush()
            if c.episodes % self.p["checkpoint_every"] == 0:
                path = self.learner.try_checkpoint({"skill_checkpoint": self.p["checkpoint"]})
                if path is not None:
                    self.get_logger().info(f"checkpoint {path} after {c.episodes} episodes "
                                           f"({self.agent.updates} updates)")

    def prepare_shutdown(self, reason: str = "shutting down") -> None:
        """Send no new goal; cancel the one in flight."""
        self.active = False
        self._closing = True
        handle = self._goal_handle
        if handle is not None:
            handle.cancel_goal_async()

    def close(self) -> None:
        """Keep what was learnt: a last checkpoint when the graph shuts down."""
        if self.learner is not None:
            with self._agent_lock:
                self.learner.try_checkpoint({"skill_checkpoint": self.p["checkpoint"]})
        if self._tb is not None:
            self._tb.close()

    def destroy_node(self) -> None:
        destroy_waitables(self)  # the action client: not destroyed by Node.destroy_node()
        super().destroy_node()

    # -------------------------------------------------------------------------- inputs
    def _on_embedding(self, msg: SkillEmbedding) -> None:
        check_stamp(msg.header.stamp)  # raises: dropped and counted by the guarded subscription
        self.embedding.set(msg)
        # Event-driven: the first frame embedded after a skill ended is the moment to decide, not the next
        # tick of a poll (the 20 Hz poll alone put 50-500 ms between skills). The timer stays as a fallback.
        if self.active and not self._in_flight and self.p["act_on_frame"]:
            self._maybe_act()

    def _on_joints(self, msg: JointState) -> None:
        check_stamp(msg.header.stamp)
        self.joints.set(msg)

    def _on_event(self, msg: EpisodeEvent) -> None:
        if msg.event == EpisodeEvent.START:
            self.episode_id, self.active = msg.episode_id, True
        elif msg.event == EpisodeEvent.REWARD:
            if not self.assembler.reward(msg.episode_id, msg.reward, intervention=msg.detail.startswith("operator")):
                self.get_logger().warning(f"reward of episode {msg.episode_id} arrived with no skill of it open; dropped")
        elif msg.event in (EpisodeEvent.SUCCESS, EpisodeEvent.FAILURE, EpisodeEvent.TRUNCATED, EpisodeEvent.NEEDS_HUMAN):
            self.active = False
            handle = self._goal_handle
            if handle is not None:
                handle.cancel_goal_async()
            self._episode_over(msg)

    def _heartbeat(self) -> None:
        hb = Header()
        hb.stamp = self.get_clock().now().to_msg()
        hb.frame_id = self.heartbeat_id
        self.pub_hb.publish(hb)

    # -------------------------------------------------------------------------- acting
    def observation(self, quiet: bool = False) -> np.ndarray | None:
        """The policy input, or None (with a reason logged) when it must not be acted on."""
        emb, js = self.embedding.value, self.joints.value
        if emb is None or js is None:
            return None
        ended = self._skill_ended_at
        if ended is not None and Time.from_msg(emb.header.stamp) < ended:
            return None  # the frame shows the arm before the last skill ended: wait for a newer one
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
        if quiet:
            return None
        self.counters["refused_obs"] += 1
        self.get_logger().warning(f"not acting: {reason}", throttle_duration_sec=2.0)
        return None

    def choose(self, obs: np.ndarray) -> tuple[int, np.ndarray, float]:
        """(d, z, log-probability) from the online policy, or sampled from the priors when there is none."""
        if self.agent is not None:
            with self._agent_lock:
                if self._pending_weights is not None:  # between skills: the only place weights change
                    version, state = self._pending_weights
                    self.agent.load_policy_state(state)
                    self.policy_version, self._pending_weights = version, None
                    self.counters["weights_loaded"] += 1
                return self.agent.act(obs, generator=self._torch_gen)
        probs = self.bundle.skill_prior(obs)
        d = int(self.rng.choice(len(probs), p=probs / probs.sum()))
        mean, std = self.bundle.argument_prior(obs, d)
        z = mean + std * self.rng.standard_normal(mean.shape)
        logp = math.log(max(float(probs[d]), 1e-12)) - float(
            np.sum(0.5 * ((z - mean) / std) ** 2 + np.log(std) + 0.5 * math.log(2 * math.pi)))
        return d, z, logp

    def _give_up_lost_goal(self) -> None:
        """A goal whose result never comes (the decoder restarted, its process died) must not wedge the
        policy forever: after ``goal_timeout_s``, or once the action server is gone, forget it."""
        if not self._in_flight:
            return
        now = time.monotonic()
        waited = now - self._sent_at
        silent = now - self._last_feedback if self._goal_handle is not None else 0.0
        # a killed decoder leaves DDS without saying so: its server looks alive until the participant's lease
        # runs out (about 20 s), but its feedback (every control step) stops at once. "Server not ready" alone is
        # not enough: readiness flickers while discovery drops a dead server of the same name, and giving up a
        # goal whose feedback still flows would leave a running skill nobody cancels (seen in CI).
        feedback_stopped = self._goal_handle is None or silent > 1.0
        gone = not self.client.server_is_ready() and feedback_stopped
        if waited > self.p["goal_timeout_s"] or silent > self.p["feedback_timeout_s"] or (gone and waited > 1.0):
            why = ("the decoder's action server went away" if gone else
                   f"no feedback for {silent:.1f} s" if silent > self.p["feedback_timeout_s"] else
                   f"no result after {waited:.0f} s")
            self.get_logger().error(f"giving up on skill goal: {why}")
            self.counters["failed"] += 1
            self.counters["lost_goals"] += 1
            self._goal_handle = None
            self._skill_ended_at = self.get_clock().now()
            self._in_flight = False

    def _maybe_act(self) -> None:
        if self._closing:
            return
        with self._goal_lock:
            self._give_up_lost_goal()
        # The decoder refuses a goal without a fresh heartbeat from us: wait until it listens to them.
        if not self.active or not self.client.server_is_ready() or self.pub_hb.get_subscription_count() == 0:
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
            self._sent_at = time.monotonic()
            self._goal_seq += 1
            seq = self._goal_seq
            closed = self.assembler.decide(self.episode_id, obs, d, z, logp, self.policy_version)
        cmd = SkillCommand()
        cmd.header.stamp = self.embedding.value.header.stamp
        cmd.header.frame_id = self.get_name()
        cmd.skill_id, cmd.argument = d, [float(x) for x in z]
        cmd.policy = SkillCommand.POLICY_PRIOR if self.agent is None else SkillCommand.POLICY_LEARNED
        cmd.log_prob, cmd.episode_id = float(logp), self.episode_id
        self.pub_cmd.publish(cmd)
        goal = ExecuteSkill.Goal(skill_id=d, argument=cmd.argument, step_limit=self.p["step_limit"],
                                 dynamics_factor=self.p["dynamics_factor"], episode_id=self.episode_id,
                                 heartbeat_source=self.heartbeat_id)
        self.counters["goals"] += 1
        self._heartbeat()  # a beat just before the goal: the first goal after start-up is not refused for want of one
        self.client.send_goal_async(goal, feedback_callback=self._on_feedback).add_done_callback(
            lambda f: self._on_goal_response(f, seq))
        # Learn from the previous skill while this one runs: gradient steps here, not before the send, keep
        # them out of the gap between two skills (and out of the goal lock the result callbacks need).
        self._emit(closed)

    def _on_feedback(self, _msg) -> None:
        self._last_feedback = time.monotonic()

    def _current(self, seq: int) -> bool:
        """False for callbacks of a goal given up on (a late answer must not end the goal sent after it)."""
        if seq != self._goal_seq or not self._in_flight:
            self.get_logger().warning(f"late answer for skill goal #{seq} ignored")
            return False
        return True

    def _on_goal_response(self, future, seq: int) -> None:
        with self._goal_lock:
            self._goal_response(future.result(), seq)

    def _goal_response(self, handle, seq: int) -> None:
        if not self._current(seq):
            return
        if not handle.accepted:
            self.get_logger().error("skill goal rejected by the decoder")
            self.counters["failed"] += 1
            self._skill_ended_at = self.get_clock().now()
            self._in_flight = False
            return
        self._goal_handle = handle
        self._last_feedback = time.monotonic()
        handle.get_result_async().add_done_callback(lambda f: self._on_result(f, seq))

    def _on_result(self, future, seq: int) -> None:
        with self._goal_lock:
            self._result(future.result().result, seq)
        if self.p["act_on_frame"]:
            self._maybe_act()  # the frame of the skill's last step may be here already (see _result)

    def _result(self, res, seq: int) -> None:
        if not self._current(seq):
            return
        self.counters["succeeded" if res.success else "failed"] += 1
        if not res.success:
            self.get_logger().warning(f"skill ended without success: {res.error}")
        self.assembler.skill_finished(res.steps_executed)
        self._goal_handle = None
        # The decoder's stamp of the arm's state at the end: a frame at least that new shows the arm after the
        # skill. Zero (an older decoder) or ahead of our clock (a skewed or bad stamp would stall every decision
        # until our clock caught up): then only a frame stamped after this result will do, as before.
        now = self.get_clock().now()
        try:
            check_stamp(res.final_stamp)
            final = Time.from_msg(res.final_stamp)
        except ValueError:
            final = now
        self._skill_ended_at = final if 0 < final.nanoseconds <= now.nanoseconds else now
        self._in_flight = False


def main(args=None) -> None:
    run_node(SkillPolicyNode, args)


if __name__ == "__main__":
    main()
