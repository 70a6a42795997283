"""Reward/reset supervisor: episode lifecycle, sparse reward, resets, EpisodeEvent.

Sim: success detectors are the kitchen's physics-measured subtask flags (/subtask_status); resets
call /sim/reset. Real robot: rewards come from the operator (/confirm_outcome) or any detector that
publishes SubtaskStatus; resets are operator-gated (/reset_episode with operator_confirmed) and move
the arm home through the decoder's checked path (/move_home). Failed resets are retried a bounded
number of times, then the supervisor publishes NEEDS_HUMAN and waits.
"""
from __future__ import annotations

import json
import threading
import time

from extract_msgs.msg import EpisodeEvent, SkillCommand, SkillEmbedding, SubtaskStatus
from extract_msgs.srv import ConfirmOutcome, ResetEpisode
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger

from extract_skills.core.data.atomic_io import atomic_write
from extract_skills.core.rl.episode import EpisodeTracker, Outcome, format_summary
from extract_skills.graph import HEARTBEAT, SERVICES, TOPICS
from extract_skills.nodes.common import declare, run_node, steady_timer, subscribe
from extract_skills.nodes.kitchen_sim_node import parse_task

DEFAULTS = {
    "mode": "sim",  # sim | real
    "task": "",  # comma-separated subtasks; empty = the sim's default held-out task
    "num_episodes": 3,  # 0 = run until interrupted
    "max_skills_per_episode": 12,
    "max_episode_s": 120.0,  # s (monotonic) before the episode is truncated
    "reset_retries": 3,
    "reset_timeout_s": 30.0,
    "settle_s": 0.5,  # s between the end of an episode and the reset (lets the policy cancel)
    "wait_for_policy": True,  # no episode starts before the skill_policy node listens to episode events
    "max_camera_gap_s": 3.0,  # s without an embedded frame that ends a running episode (camera drop-out); 0: off
    "wait_for_camera": True,  # no episode starts without an embedded frame in the last max_camera_gap_s
    "max_policy_silence_s": 2.0,  # s without the policy's heartbeat that ends a running episode; 0: off
    "summary_json": "",  # rewritten (atomically) after every episode, so an interrupted run keeps what ran; "" = none
}


class RewardResetSupervisor(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("reward_reset_supervisor", **kwargs)
        self.p = declare(self, DEFAULTS, {
            "mode": lambda v: None if v in ("sim", "real") else "must be sim or real",
            "num_episodes": lambda v: None if v >= 0 else "must be >= 0",
            "max_skills_per_episode": lambda v: None if v >= 1 else "must be >= 1",
            "task": lambda v: (parse_task(v), None)[1],
        })
        self.task = parse_task(self.p["task"])
        self.tracker: EpisodeTracker | None = None
        self.episode_id = 0
        self.finished = False
        self.summary: list[dict] = []
        self._t_start = 0.0
        self._state = "reset"  # reset -> running -> ending -> reset ...
        self._ended_at = 0.0
        self._reset_future = None
        self._reset_attempts = 0
        self._operator_ok = self.p["mode"] == "sim"
        self._said_waiting = False
        # One lock around the episode state machine: callbacks run on several executor threads.
        self._lock = threading.RLock()
        group = ReentrantCallbackGroup()
        self.pub = self.create_publisher(EpisodeEvent, TOPICS["episode_event"], 10)
        subscribe(self, SubtaskStatus, TOPICS["subtask_status"], self._on_status, 10, callback_group=group)
        subscribe(self, SkillCommand, TOPICS["skill_command"], self._on_skill, 10, callback_group=group)
        self.create_service(ResetEpisode, SERVICES["reset_episode"], self._on_reset_request, callback_group=group)
        self.create_service(ConfirmOutcome, SERVICES["confirm_outcome"], self._on_confirm, callback_group=group)
        reset_srv = SERVICES["sim_reset"] if self.p["mode"] == "sim" else SERVICES["move_home"]
        self.reset_client = self.create_client(Trigger, reset_srv, callback_group=group)
        self._arm_fault = ""  # latched by the decoder; no episode starts until an operator clears it
        subscribe(self, String, TOPICS["arm_fault"], self._on_arm_fault, QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL),
            callback_group=group)
        # Camera drop-out: the policy stops deciding, but the running skill would go on blind; ending the
        # episode makes the policy cancel it, and the decoder stops the arm.
        self._last_frame: float | None = None  # monotonic arrival of the last embedded frame; None: none yet
        self._camera_wait: tuple[float, float] | None = None  # (waiting since, last said), monotonic
        subscribe(self, SkillEmbedding, TOPICS["embedding"], self._on_frame, 10, callback_group=group)
        # The policy's heartbeat names its process: silence, or another process (a respawn) mid-episode, means the
        # policy that was acting is gone. The DDS graph cannot tell: a killed process's endpoints stay listed
        # for ~20 s (lease), longer than a respawn takes.
        self._policy_beat: tuple[str, float] | None = None  # (heartbeat id, monotonic arrival)
        self._episode_policy = ""
        subscribe(self, Header, HEARTBEAT, self._on_policy_beat, 10, callback_group=group)
        steady_timer(self, 0.05, self._tick, callback_group=group)

    # -------------------------------------------------------------------------- events
    def _publish(self, event: int, reward: float = 0.0, detail: str = "") -> None:
        msg = EpisodeEvent()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.episode_id, msg.event, msg.reward, msg.detail = self.episode_id, event, float(reward), detail
        if self.tracker is not None:
            msg.episode_return = float(self.tracker.episode_return)
            msg.skills_executed = self.tracker.skills
            msg.completed_subtasks = list(self.tracker.completed)
        self.pub.publish(msg)

    def _on_status(self, msg: SubtaskStatus) -> None:
        with self._lock:
            if self._state != "running" or self.tracker is None:
                return
            for name in self.tracker.update(dict(zip(msg.names, msg.done))):
                self.get_logger().info(f"episode {self.episode_id}: completed {name}")
                self._publish(EpisodeEvent.REWARD, 1.0, name)

    def _on_policy_beat(self, msg: Header) -> None:
        if msg.frame_id.startswith("/skill_policy#"):
            self._policy_beat = (msg.frame_id, time.monotonic())

    def _policy_lost(self, now: float) -> str:
        """Why the policy acting in this episode is gone ('' if it is not)."""
        limit = self.p["max_policy_silence_s"]
        if not limit or self._policy_beat is None:
            return ""
        beat_id, t = self._policy_beat
        if self._episode_policy and beat_id != self._episode_policy:
            return f"the skill_policy process changed mid-episode ({self._episode_policy} -> {beat_id})"
        silence = now - max(t, self._t_start)
        return f"no heartbeat from the skill_policy for {silence:.1f} s" if silence > limit else ""

    def _on_frame(self, _msg) -> None:
        self._last_frame = time.monotonic()

    def _on_arm_fault(self, msg: String) -> None:
        with self._lock:
            if msg.data == self._arm_fault:
                return
            self._arm_fault = msg.data
            if not msg.data:
                self.get_logger().info("arm fault cleared by an operator")
                return
            self.get_logger().error(f"arm fault: {msg.data}")
            if self._state == "running":
                self._end(Outcome.TRUNCATED, f"arm fault: {msg.data}", counted=False)
            self._publish(EpisodeEvent.NEEDS_HUMAN, 0.0, f"arm fault: {msg.data} (clear it with /clear_fault)")

    def _on_skill(self, msg: SkillCommand) -> None:
        with self._lock:
            if self._state == "running" and self.tracker is not None and msg.episode_id == self.episode_id:
                self.tracker.skills += 1

    def _on_confirm(self, req, resp):
        with self._lock:
            if self._state != "running" or self.tracker is None:
                resp.success, resp.error = False, "no episode is running"
                return resp
            if req.subtask and req.subtask not in self.tracker.task:
                resp.success, resp.error = False, f"{req.subtask!r} is not a subtask of {list(self.tracker.task)}"
                return resp
            names = [req.subtask] if req.subtask else list(self.tracker.remaining)
            new = self.tracker.update({n: True for n in names}) if req.succeeded else []
            for name in new:
                self._publish(EpisodeEvent.REWARD, 1.0, f"operator: {name}")
            if not req.succeeded and not req.subtask:  # the operator judges the whole episode failed
                self._end(Outcome.FAILURE, "operator: failure")
            resp.success, resp.reward = True, float(len(new))
            return resp

    def _on_reset_request(self, req, resp):
        with self._lock:
            if self.p["mode"] == "real" and not req.operator_confirmed:
                resp.success, resp.error = False, "reset on the real robot needs operator_confirmed=true (workspace clear)"
                return resp
            self._operator_ok = True
            if self._state == "running":
                self._end(Outcome.TRUNCATED, req.reason or "reset requested")
            resp.success, resp.episode_id = True, self.episode_id + 1
            return resp

    # -------------------------------------------------------------------------- lifecycle
    def _end(self, outcome: Outcome, detail: str, counted: bool = True) -> None:
        event = {Outcome.SUCCESS: EpisodeEvent.SUCCESS, Outcome.FAILURE: EpisodeEvent.FAILURE,
                 Outcome.TRUNCATED: EpisodeEvent.TRUNCATED}[outcome]
        self._publish(event, 0.0, detail)
        t = self.tracker
        self.summary.append({"episode": self.episode_id, "outcome": outcome.value, "counted": counted,
                             "return": t.episode_return,
                             "skills": t.skills, "completed": list(t.completed),
                             "seconds": round(time.monotonic() - self._t_start, 1)})
        self.get_logger().info(f"episode {self.episode_id} {outcome.value}: return {t.episode_return}, "
                               f"{t.skills} skills, completed {list(t.completed)}")
        self._write_summary()
        self._state, self._ended_at = "ending", time.monotonic()
        if self.p["mode"] == "real":
            self._operator_ok = False  # the next reset waits for the operator

    def _write_summary(self) -> None:
        path = self.p["summary_json"]
        if not path:
            return
        data = json.dumps(self.summary, indent=2).encode()
        try:
            atomic_write(path, lambda f: f.write(data))
        except OSError as e:  # a full disk must not end the episode loop; the log has every episode
            self.get_logger().error(f"could not write the episode summary to {path}: {e}")

    def _tick(self) -> None:
        with self._lock:
            now = time.monotonic()
            if self._state == "running":
                t = self.tracker
                gap = now - max(self._last_frame or 0.0, self._t_start)
                if self.p["max_camera_gap_s"] and gap > self.p["max_camera_gap_s"]:
                    self._end(Outcome.TRUNCATED, f"camera dropped out: no embedded frame for {gap:.1f} s",
                              counted=False)
                elif self.p["wait_for_policy"] and (self._policy_lost(now) or not self._policy_listening()):
                    # a dead policy is respawned by the launch; its episode's data is incomplete
                    why = self._policy_lost(now) or "its subscription is gone"
                    self._end(Outcome.TRUNCATED, f"the skill_policy node went away mid-episode: {why}", counted=False)
                elif t.all_done:
                    self._end(Outcome.SUCCESS, "all subtasks completed")
                elif t.skills >= self.p["max_skills_per_episode"]:
                    self._end(Outcome.TRUNCATED, f"skill budget ({self.p['max_skills_per_episode']}) used")
                elif now - self._t_start > self.p["max_episode_s"]:
                    self._end(Outcome.TRUNCATED, f"time limit ({self.p['max_episode_s']} s)")
            elif self._state == "ending" and now - self._ended_at >= self.p["settle_s"]:
                if self.p["num_episodes"] and sum(e["counted"] for e in self.summary) >= self.p["num_episodes"]:
                    self._state, self.finished = "done", True
                    # The same table however the graph was started (ros2 launch or run_graph).
                    self.get_logger().info("run finished:\n" + format_summary(self.summary))
                    return
                self._state = "reset"
            elif self._state == "reset":
                self._try_reset(now)

    def _policy_listening(self) -> bool:
        """Under `ros2 launch` the policy process comes up seconds after this one: a START sent before it
        subscribes is lost and the first episode would never act."""
        return any(info.node_name == "skill_policy"
                   for info in self.get_subscriptions_info_by_topic(TOPICS["episode_event"]))

    def _policy_ready(self, now: float) -> bool:
        """The policy listens to episode events and, when its heartbeat is watched, beats now (a killed policy's
        subscription stays in the DDS graph for ~20 s: the graph alone would start an episode nobody acts in)."""
        limit = self.p["max_policy_silence_s"]
        beating = not limit or (self._policy_beat is not None and now - self._policy_beat[1] <= limit)
        return beating and self._policy_listening()

    def _camera_ready(self, now: float) -> bool:
        limit = self.p["max_camera_gap_s"] or DEFAULTS["max_camera_gap_s"]  # the gap check may be off (0)
        return self._last_frame is not None and now - self._last_frame <= limit

    def _try_reset(self, now: float) -> None:
        if not self._operator_ok or self._arm_fault:
            return
        if self.p["wait_for_policy"] and not self._policy_ready(now):
            if not self._said_waiting:
                self.get_logger().info("waiting for the skill_policy node before the first episode")
                self._said_waiting = True
            return
        if self.p["wait_for_camera"] and not self._camera_ready(now):
            # a camera that is down (or respawning) would end the episode as a drop-out seconds after its start
            if self._camera_wait is None:
                self.get_logger().info("waiting for embedded camera frames before the next episode")
                self._camera_wait = (now, now)
            elif now - self._camera_wait[1] >= 30.0:
                # a camera writer can stop delivering for good (seen: a reliable one after a reader's kill -9);
                # say so, rather than wait in silence
                self.get_logger().warning(
                    f"still no embedded camera frame after {now - self._camera_wait[0]:.0f} s: is the camera node up, "
                    "and does its image topic deliver (ros2 topic hz on it)? Restarting the camera driver (or the sim) "
                    "ends a stalled image writer")
                self._camera_wait = (self._camera_wait[0], now)
            return
        self._camera_wait = None
        if self._reset_future is None:
            if not self.reset_client.service_is_ready():
                return
            self._reset_future = self.reset_client.call_async(Trigger.Request())
            self._reset_sent = now
            return
        fut = self._reset_future
        if not fut.done():
            if now - self._reset_sent > self.p["reset_timeout_s"]:
                fut.cancel()
                self._reset_failed("reset timed out")
            return
        self._reset_future = None
        res = fut.result()
        if res is None or not res.success:
            self._reset_failed(res.message if res is not None else "no response")
            return
        self._reset_attempts = 0
        self.episode_id += 1
        self.tracker = EpisodeTracker(self.task)
        self._t_start = time.monotonic()
        self._episode_policy = self._policy_beat[0] if self._policy_beat is not None else ""
        self._state = "running"
        self._publish(EpisodeEvent.RESET, 0.0, res.message)
        self._publish(EpisodeEvent.START, 0.0, ",".join(self.task))

    def _reset_failed(self, why: str) -> None:
        self._reset_attempts += 1
        self.get_logger().error(f"reset attempt {self._reset_attempts} failed: {why}")
        if self._reset_attempts >= self.p["reset_retries"]:
            self._operator_ok = False
            self._reset_attempts = 0
            self._publish(EpisodeEvent.NEEDS_HUMAN, 0.0, f"reset failed {self.p['reset_retries']} times: {why}")


def main(args=None) -> None:
    run_node(RewardResetSupervisor, args)


if __name__ == "__main__":
    main()
