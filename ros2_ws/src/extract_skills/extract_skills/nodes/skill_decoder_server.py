"""Skill-decoder action server: ExecuteSkill goals -> variable-length joint commands on an Arm.

Single goal at a time: a new goal preempts (aborts) the running one, which stops the arm before
the new one starts. Every command goes through `core.safety.check_command` inside
`core.skill_executor.SkillExecutor`; cancel is checked every step and CANCELED is reported only once
the arm is stationary. Arms: `sim` (the kitchen sim node over /joint_commands + /joint_states),
`franky` (a real Franka through franky/libfranka), `fake` (scripted fake, no hardware).
"""
from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from extract_msgs.action import ExecuteSkill
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.task import Future
from sensor_msgs.msg import JointState
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger

from extract_skills.core.control.arm import Arm, ArmNetworkError, ArmState, FakeArm
from extract_skills.core.control.fault_latch import FaultLatch
from extract_skills.core.skills.checkpoint import CODE_VERSION
from extract_skills.core.skills.deployment import load_deployment_bundle
from extract_skills.core.skills.encoders import file_sha256
from extract_skills.core.control.safety import CheckedCommand, SafetyLimits, check_command, check_dynamics_factor
from extract_skills.core.control.skill_executor import (ExecutorConfig, GoalRejectedError, LoopTiming, SkillExecutor,
                                                        SkillStatus, validate_goal)
from extract_skills.graph import ACTION_EXECUTE_SKILL, SERVICES, TOPICS
from extract_skills.nodes.common import (declare, destroy_waitables, joint_state_msg, models_dir, parse_joint_state,
                                        run_node, steady_timer, subscribe)
from extract_skills.nodes.skill_policy_node import HEARTBEAT_TOPIC

ARMS = ("sim", "franky", "fake")
GAP_WINDOW_S = 2.0  # a pause longer than this between skills is an episode boundary, not a skill-to-skill gap
HOME_Q = [0.0, -0.785398, 0.0, -2.356194, 0.0, 1.570796, 0.785398]  # rad, Franka's usual ready pose

DEFAULTS = {
    "models_dir": "",
    "checkpoint": "extract_kitchen.pt",
    "arm": "sim",
    "use_fake_hardware": False,  # overrides arm -> fake
    "sim_lockstep": True,  # arm sim: the kitchen sim steps once per command (its lockstep parameter, same launch arg)
    "robot": "fr3",
    "robot_ip": "172.16.0.2",
    "realtime": "enforce",  # enforce on the real robot; ignore only in sim/CI
    "robot_dynamics_factor": 0.1,  # franky relative_dynamics_factor of the robot object
    "joint_margin": 0.05,  # rad inside every joint limit
    "max_step_delta": 0.05,  # rad per control step, any joint
    "workspace_min": [-0.85, -0.85, 0.02],  # m, base frame
    "workspace_max": [0.85, 0.85, 1.2],
    "max_dynamics_factor": 0.3,
    "control_period_s": 0.08,  # s per decoder step
    "heartbeat_timeout_s": 0.5,  # s, age of a policy goal's own sender's heartbeat that refuses/stops it
    "state_max_age_s": 0.5,
    # s: a goal from a sender never heard from (or the sim's first joint state) may wait this long for first
    # contact. Under load DDS discovery matches the two ends of a topic seconds apart: the policy already saw
    # this node's subscription while this node had not yet received one beat (its first goal was refused).
    # Only acceptance waits: nothing moves without a fresh heartbeat and a fresh state.
    "first_contact_wait_s": 3.0,
    "publish_joint_states_hz": 25.0,  # franky/fake arms: this node publishes /joint_states
    "home_q": HOME_Q,
    "latch_faults": True,  # e-stop/reflex/network/realtime faults block all motion until /clear_fault
    "diagnostics_hz": 1.0,  # /diagnostics period (also published at once on a rejection or a fault)
}


STATE_QUEUE_DEPTH = 200  # joint states the TopicArm's subscription holds before the oldest is dropped


class TopicArm(Arm):
    """The kitchen sim node as an Arm: checked targets out on /joint_commands, state in from /joint_states.

    After a command, :meth:`read_state` waits (up to ``fresh_state_timeout_s``) for a joint state received after
    it, so a closed-loop decoder's next step sees the motion its last command caused, as the real arm's state
    does; a sim that stops answering is an :class:`ArmNetworkError`, not a stale state fed to the decoder."""

    def __init__(self, node: Node, limits: SafetyLimits, stationary_tol: float = 0.05,
                 fresh_state_timeout_s: float = 1.0, first_state_wait_s: float = 0.0, lockstep: bool = False) -> None:
        # In lockstep the sim steps one whole control period per command before it publishes the next state: that
        # state is final and a skill can end on it. Free-running, a command that comes mid-tick misses that tick.
        self.state_after_command_is_final = bool(lockstep)
        self._node = node
        self._limits = limits
        self.stationary_tol = stationary_tol
        self.fresh_state_timeout_s = fresh_state_timeout_s
        self.first_state_wait_s = first_state_wait_s
        self._state: ArmState | None = None
        self.state_header_stamp = None  # the sim's stamp of _state (its camera frame of that step carries the same)
        self._sent_at: float | None = None  # monotonic time of the last command
        self._fresh = threading.Condition()
        self._pub = node.create_publisher(JointState, TOPICS["joint_commands"], 10)
        # Deep: a burst of foreign messages on the topic (the soak's junk fault: 50 at once) evicted the sim's real
        # state from a 10-deep queue, and under lockstep the sim sends the next one only at its idle tick (240 ms).
        subscribe(node, JointState, TOPICS["joint_states"], self._on_state, STATE_QUEUE_DEPTH,
                  callback_group=ReentrantCallbackGroup())

    def _on_state(self, msg: JointState) -> None:
        try:
            q, dq, g = parse_joint_state(msg)
        except ValueError as exc:
            self._node.get_logger().error(f"bad joint state: {exc}", throttle_duration_sec=2.0)
            return
        with self._fresh:
            self._state = ArmState(q=q, dq=dq, gripper=g, stamp=time.monotonic())
            self.state_header_stamp = msg.header.stamp
            self._fresh.notify_all()

    def connect(self) -> None:
        pass

    def disconnect(self) -> None:
        pass

    def read_state(self) -> ArmState:
        with self._fresh:
            if self._state is None and not self._fresh.wait_for(lambda: self._state is not None,
                                                                self.first_state_wait_s):
                raise ArmNetworkError(f"no joint state received on {TOPICS['joint_states']} yet")
            sent = self._sent_at
            if sent is not None and not self._fresh.wait_for(lambda: self._state.stamp > sent,
                                                             self.fresh_state_timeout_s):
                raise ArmNetworkError(f"no joint state on {TOPICS['joint_states']} within "
                                      f"{self.fresh_state_timeout_s} s of the last command (is the sim running?)")
            return self._state

    def _send(self, cmd: CheckedCommand) -> None:
        with self._fresh:
            self._sent_at = time.monotonic()
        self._pub.publish(joint_state_msg(cmd.q, cmd.gripper, self._node.get_clock().now().to_msg()))

    def stop(self) -> None:
        s = self.read_state()
        self.send(check_command(s.q, s.q, s.gripper, self._limits))  # hold where it is, through the checks

    def is_stationary(self) -> bool:
        """Judged on a state the sim sent after the last command only: the one before it still shows the motion
        being stopped. A state stream silent for ``fresh_state_timeout_s`` (the sim is gone, e.g. it exited first at
        a shutdown, maybe right after answering the stop command with a still-moving state) cannot confirm a
        standstill: ArmNetworkError, rather than polling a dead sim's last velocity until the stop timeout. A live
        sim sends states between skills too (lockstep idle ticks)."""
        with self._fresh:
            s, sent = self._state, self._sent_at
        if s is None:
            return False
        silent = time.monotonic() - s.stamp
        if silent > self.fresh_state_timeout_s:
            raise ArmNetworkError(f"no joint state on {TOPICS['joint_states']} for {silent:.1f} s (limit "
                                  f"{self.fresh_state_timeout_s} s): cannot confirm a standstill (is the sim running?)")
        if sent is not None and s.stamp <= sent:
            return False
        return float(np.max(np.abs(s.dq))) < self.stationary_tol


class SkillDecoderServer(Node):
    """Callbacks that block (a whole skill, a move home, a goal's first-contact wait for its sender's heartbeat)
    run in a thread of their own and their callback awaits them (:meth:`_off_executor`), so the node needs only
    a single-threaded executor (see ``node_executor``), which keeps serving arm states, heartbeats and cancels
    while a skill runs."""

    def __init__(self, **kwargs) -> None:
        super().__init__("skill_decoder", **kwargs)
        self.p = declare(self, DEFAULTS, {
            "arm": lambda v: None if v in ARMS else f"must be one of {ARMS}",
            "realtime": lambda v: None if v in ("enforce", "ignore") else "must be enforce or ignore",
            "control_period_s": lambda v: None if v >= 0 else "must be >= 0 s",
            "first_contact_wait_s": lambda v: None if v >= 0 else "must be >= 0 s",
            "max_dynamics_factor": lambda v: None if 0 < v <= 1 else "must be in (0, 1] (refused at load)",
        })
        p = self.p
        self.limits = SafetyLimits(robot=p["robot"], joint_margin=p["joint_margin"], max_step_delta=p["max_step_delta"],
                                   workspace_min=tuple(p["workspace_min"]), workspace_max=tuple(p["workspace_max"]),
                                   max_dynamics_factor=p["max_dynamics_factor"],
                                   dt=p["control_period_s"] or 0.08)
        self.bundle = load_deployment_bundle(models_dir(p["models_dir"]) / p["checkpoint"])
        kind = "fake" if p["use_fake_hardware"] else p["arm"]
        self.arm = self._make_arm(kind)
        self._arm_kind = kind
        self._hardware_id = p["robot_ip"] if kind == "franky" else kind
        # what this node loaded, fixed for its lifetime: hashed once here, not on every /diagnostics tick
        self._versions = {"code_version": CODE_VERSION,
                          "checkpoint_sha256": file_sha256(models_dir(p["models_dir"]) / p["checkpoint"])}
        if kind == "franky":
            from extract_skills.arms.franky_arm import franky_versions
            self._versions["franky_control"], self._versions["libfranka"] = franky_versions()
        self.arm.connect()
        # Stop threshold, step cap and argument bound are properties of the trained decoder: read from the
        # checkpoint, never duplicated here (a parameter could disagree with what the model learnt).
        self.executor_core = SkillExecutor(self.arm, self.limits, ExecutorConfig(
            period_s=p["control_period_s"], max_steps=self.bundle.max_skill_steps,
            action_frame=self.bundle.action_frame, stop_progress=self.bundle.progress_threshold,
            heartbeat_timeout_s=p["heartbeat_timeout_s"], state_max_age_s=p["state_max_age_s"]))
        self.home_executor = SkillExecutor(self.arm, self.limits, ExecutorConfig(
            period_s=p["control_period_s"], max_steps=400, max_duration_s=120.0, state_max_age_s=p["state_max_age_s"]))
        self._exec_lock = threading.Lock()  # one skill drives the arm at a time
        self._goal_lock = threading.Lock()
        self._active = None
        self._preempted: dict[int, str] = {}
        self._heartbeats: dict[str, float] = {}  # heartbeat source (sender's node name) -> arrival, monotonic
        self.last_result = None  # SkillResult of the last skill (observability, tests)
        self.latch = FaultLatch()
        self._shutting_down = ""
        group = ReentrantCallbackGroup()
        # the fault state, latched for late joiners (the supervisor, an operator's `ros2 topic echo`)
        self.pub_fault = self.create_publisher(String, TOPICS["arm_fault"], QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.pub_fault.publish(String(data=""))
        self.create_service(Trigger, SERVICES["clear_fault"], self._on_clear_fault, callback_group=group)
        # Health for operators and tools (`ros2 topic echo /diagnostics`, rqt_robot_monitor): a client of the
        # action only learns "rejected"; the reason, the fault state and the arm's connection are here.
        self.health = {"goals_accepted": 0, "goals_rejected": 0, "last_rejection": "", "last_result": ""}
        # skill commands sent and control ticks missed since start, and where late intervals' time went
        self.timing = {"commands_sent": 0, "ticks_dropped": 0, **{f"late_{k}_s": 0.0 for k in LoopTiming.PHASES}}
        self.skill_gaps: deque[float] = deque(maxlen=2000)  # s between consecutive skills' commands
        self._last_command_t: float | None = None
        self.pub_diag = self.create_publisher(DiagnosticArray, TOPICS["diagnostics"], 10)
        steady_timer(self, 1.0 / max(p["diagnostics_hz"], 1e-3), self.publish_diagnostics, callback_group=group)
        self.pub_cmd = self.create_publisher(JointState, TOPICS["joint_commands"], 10) if kind != "sim" else None
        subscribe(self, Header, HEARTBEAT_TOPIC, self._on_heartbeat, 10, callback_group=group)
        self.server = ActionServer(self, ExecuteSkill, ACTION_EXECUTE_SKILL, self._execute_async,
                                   goal_callback=self._on_goal_async, handle_accepted_callback=self._on_accepted,
                                   cancel_callback=lambda _: CancelResponse.ACCEPT, callback_group=group)
        self.create_service(Trigger, SERVICES["move_home"], self._on_move_home_async, callback_group=group)
        if kind != "sim":
            self.pub_js = self.create_publisher(JointState, TOPICS["joint_states"], 10)
            steady_timer(self, 1.0 / p["publish_joint_states_hz"], self._publish_state, callback_group=group)
        self.get_logger().info(f"skill decoder ready: arm={kind}, {self.bundle.num_skills} skills, "
                               f"robot={p['robot']}, max step {p['max_step_delta']} rad")

    def _make_arm(self, kind: str) -> Arm:
        if kind == "sim":
            return TopicArm(self, self.limits, fresh_state_timeout_s=self.p["state_max_age_s"],
                            first_state_wait_s=self.p["first_contact_wait_s"], lockstep=self.p["sim_lockstep"])
        if kind == "fake":
            return FakeArm(dt=self.p["control_period_s"] or 0.08)
        from extract_skills.arms.franky_arm import FrankyArm, FrankyArmConfig

        return FrankyArm(FrankyArmConfig(robot_ip=self.p["robot_ip"], robot=self.p["robot"],
                                         realtime=self.p["realtime"],
                                         relative_dynamics_factor=self.p["robot_dynamics_factor"]), self.limits)

    # -------------------------------------------------------------------------- callbacks
    async def _off_executor(self, name: str, fn, *args):
        """Run ``fn(*args)`` in a thread of its own and await its result without holding the executor: it goes on
        serving the node's other callbacks meanwhile. The future's done callback wakes the executor when the
        thread is done (a future completed without one would wait for the next unrelated event)."""
        done = Future(executor=self.executor)
        done.add_done_callback(lambda _f: None)

        def run() -> None:
            try:
                done.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the callback, where rclpy reports it
                done.set_exception(exc)

        threading.Thread(target=run, name=f"skill_decoder:{name}", daemon=True).start()
        return await done

    # rclpy awaits a callback only if it is a coroutine function (not a lambda returning a coroutine)
    async def _execute_async(self, handle) -> ExecuteSkill.Result:
        return await self._off_executor("skill", self._execute, handle)

    async def _on_goal_async(self, goal: ExecuteSkill.Goal) -> GoalResponse:
        return await self._off_executor("goal check", self._on_goal, goal)

    async def _on_move_home_async(self, req, resp):
        return await self._off_executor("move home", self._on_move_home, req, resp)

    def _on_heartbeat(self, msg: Header) -> None:
        if msg.frame_id:  # the sender names itself; a goal names the sender whose heartbeat watches it
            self._heartbeats[msg.frame_id] = time.monotonic()

    def _heartbeat_age(self, source: str) -> float:
        t = self._heartbeats.get(source)
        return float("inf") if t is None else time.monotonic() - t

    def _publish_state(self) -> None:
        try:
            s = self.arm.read_state()
        except Exception as exc:  # noqa: BLE001 - a state read failure must not kill the node
            self.get_logger().error(f"reading arm state failed: {exc}", throttle_duration_sec=2.0)
            return
        self.pub_js.publish(joint_state_msg(s.q, s.gripper, self.get_clock().now().to_msg(), dq=s.dq))

    def prepare_shutdown(self, reason: str = "shutting down") -> None:
        """Stop taking goals and end the running skill through the executor's stop path (the arm stops, the
        client gets ABORTED with the reason) while the executor still runs, so nothing is left in flight."""
        self._shutting_down = reason
        with self._goal_lock:
            if self._active is not None and self._active.is_active:
                self._preempted[id(self._active)] = reason

    def is_idle(self) -> bool:
        """No skill or move home is driving the arm."""
        if self._exec_lock.acquire(blocking=False):
            self._exec_lock.release()
            return True
        return False

    def _on_goal(self, goal: ExecuteSkill.Goal) -> GoalResponse:
        if self._shutting_down:
            self.get_logger().error(f"rejecting skill goal: {self._shutting_down}")
            self.health["goals_rejected"] += 1
            self.health["last_rejection"] = self._shutting_down
            return GoalResponse.REJECT
        try:
            self.latch.check()
            validate_goal(int(goal.skill_id), list(goal.argument), self.bundle.num_skills, self.bundle.meta.latent_dim,
                          self.bundle.argument_bound)
            check_dynamics_factor(goal.dynamics_factor, self.limits)
            # A policy goal runs only while its sender is seen alive: it must have a fresh heartbeat now,
            # not just "some heartbeat at some time" (a goal sent before any heartbeat ran unwatched).
            src = goal.heartbeat_source
            deadline = time.monotonic() + self.p["first_contact_wait_s"]
            while src and src not in self._heartbeats and time.monotonic() < deadline:
                time.sleep(0.01)  # first contact: its beats may not reach this process yet (see the parameter)
            if src and not self._heartbeat_age(src) <= self.p["heartbeat_timeout_s"]:
                raise GoalRejectedError(f"no fresh heartbeat from {src!r} (last {self._heartbeat_age(src):.2f} s ago, "
                                        f"limit {self.p['heartbeat_timeout_s']} s)")
        except (GoalRejectedError, ValueError) as exc:
            self.get_logger().error(f"rejecting skill goal: {exc}")
            self.health["goals_rejected"] += 1
            self.health["last_rejection"] = str(exc)
            self.publish_diagnostics()
            return GoalResponse.REJECT
        self.health["goals_accepted"] += 1
        return GoalResponse.ACCEPT

    def _on_accepted(self, handle) -> None:
        with self._goal_lock:
            if self._active is not None and self._active.is_active:
                self._preempted[id(self._active)] = "a newer goal was accepted"
            self._active = handle
        handle.execute()

    def _execute(self, handle) -> ExecuteSkill.Result:
        goal = handle.request
        v = validate_goal(int(goal.skill_id), list(goal.argument), self.bundle.num_skills, self.bundle.meta.latent_dim,
                          self.bundle.argument_bound)
        max_steps = min(goal.step_limit or self.bundle.max_skill_steps, self.bundle.max_skill_steps)

        gripper = {"cmd": float("nan")}

        def decoded():  # remembers the gripper target the safety function is about to see
            # a closed-loop decoder sees the arm state the executor measured for this step
            for action, progress in self.bundle.rollout(v.skill_id, v.argument, max_steps,
                                                        proprio_fn=self.executor_core.proprio,
                                                        lead_fn=self.executor_core.command_lead):
                gripper["cmd"] = float(np.clip(action[-1], 0.0, 1.0)) if np.isfinite(action[-1]) else float("nan")
                yield action, progress

        def feedback(step: int, progress: float, q_sent: np.ndarray) -> None:
            now = time.monotonic()
            if step == 1 and self._last_command_t is not None and now - self._last_command_t < GAP_WINDOW_S:
                self.skill_gaps.append(now - self._last_command_t)  # previous skill's last -> this one's first
            self._last_command_t = now
            fb = ExecuteSkill.Feedback(step=step - 1, progress=float(progress),
                                       commanded_joint_positions=[float(x) for x in q_sent],
                                       commanded_gripper=gripper["cmd"])
            handle.publish_feedback(fb)
            if self.pub_cmd is not None:
                self.pub_cmd.publish(joint_state_msg(q_sent, gripper["cmd"], self.get_clock().now().to_msg()))

        out = ExecuteSkill.Result()
        src = goal.heartbeat_source
        # A policy goal is watched by its own sender's heartbeat, nobody else's; an operator goal (no source,
        # e.g. `ros2 action send_goal`) has no heartbeat to watch: the operator holds the user stop.
        heartbeat = (lambda: self._heartbeats.get(src, 0.0)) if src else time.monotonic
        with self._exec_lock:
            if id(handle) in self._preempted:  # superseded while waiting for the arm
                result = None
            else:
                try:
                    result = self.executor_core.run(
                        decoded(),
                        is_cancel_requested=lambda: handle.is_cancel_requested,
                        is_preempted=lambda: self._preempted.get(id(handle)),
                        heartbeat=heartbeat, feedback=feedback, dynamics_factor=float(goal.dynamics_factor))
                except Exception as exc:  # noqa: BLE001 - a bug must end the goal, not leave it dangling
                    self.get_logger().fatal(f"skill execution failed: {exc!r}")
                    self._preempted.pop(id(handle), None)
                    handle.abort()
                    out.error = f"internal error: {exc!r}"
                    return out
        if result is None:
            handle.abort()
            out.error = f"preempted: {self._preempted.pop(id(handle))}"
            return out
        self._preempted.pop(id(handle), None)
        self.last_result = result
        self.health["last_result"] = f"{result.status.value}: {result.error}" if result.error else result.status.value
        self._record_fault(result)
        out.success, out.error = result.success, result.error
        out.steps_executed, out.clipped_steps = result.steps_executed, result.clipped_count
        out.ticks_dropped = result.ticks_dropped
        self.timing["commands_sent"] += result.steps_executed
        self.timing["ticks_dropped"] += result.ticks_dropped
        for k, v in result.late_phase_s.items():
            self.timing[f"late_{k}_s"] += v
        if result.ticks_dropped:
            late = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in result.late_phase_s.items() if v >= 5e-4)
            # throttled: on a loaded machine most skills miss a tick; the totals are on /diagnostics
            self.get_logger().warning(
                f"{self.timing['ticks_dropped']} control tick(s) missed in {self.timing['commands_sent']} commands "
                f"so far; the last skill {result.ticks_dropped} of {result.steps_executed}, its late intervals "
                f"spent: {late}", throttle_duration_sec=30.0)
        out.final_joint_positions = [float(x) for x in result.final_q]
        try:
            out.final_gripper = float(self.arm.read_state().gripper)
        except Exception:  # noqa: BLE001
            out.final_gripper = float("nan")
        # The sim stamps its camera frame and joint state of a step alike: the policy may decide on the frame of
        # the skill's last step instead of waiting for one stamped after this result arrives (under lockstep the
        # sim's next frame comes only after idle_ticks control periods). Other arms: this node's clock, now.
        stamp = getattr(self.arm, "state_header_stamp", None)
        out.final_stamp = stamp if stamp is not None else self.get_clock().now().to_msg()
        if result.status is SkillStatus.SUCCEEDED:
            handle.succeed()
        elif result.status is SkillStatus.CANCELED and handle.is_cancel_requested:
            handle.canceled()
        else:
            handle.abort()
        return out

    def _record_fault(self, result) -> None:
        if self.p["latch_faults"] and self.latch.record(result):
            f = self.latch.latched
            self.get_logger().error(f"arm fault latched ({f.fault.value}: {f.error}): no motion until /clear_fault")
            self.pub_fault.publish(String(data=f"{f.fault.value}: {f.error}"))
            self.publish_diagnostics()

    def _on_clear_fault(self, _req, resp):
        ok, message = self.latch.clear(self.arm)
        resp.success, resp.message = ok, message
        (self.get_logger().info if ok else self.get_logger().error)(f"clear fault: {message}")
        if ok:
            self.pub_fault.publish(String(data=""))
            self.publish_diagnostics()
        return resp

    def publish_diagnostics(self) -> None:
        """One DiagnosticStatus: ERROR while a fault is latched, WARN after a rejected goal, else OK."""
        latched = self.latch.latched
        st = DiagnosticStatus(name=f"extract_skills: {self.get_name()}", hardware_id=self._hardware_id)
        if latched is not None:
            st.level, st.message = DiagnosticStatus.ERROR, f"fault latched ({latched.fault.value}): /clear_fault"
        elif self.health["last_rejection"]:
            st.level, st.message = DiagnosticStatus.WARN, f"last goal rejected: {self.health['last_rejection']}"
        else:
            st.level, st.message = DiagnosticStatus.OK, "ready"
        values = {"arm": self._arm_kind, "fault": "" if latched is None else f"{latched.fault.value}: {latched.error}",
                  "realtime": self.p["realtime"], "checkpoint": self.p["checkpoint"],
                  **self._versions,
                  **{k: str(v) for k, v in self.health.items()},
                  **{k: f"{v:.3f}" if isinstance(v, float) else str(v) for k, v in self.timing.items()}}
        if self.skill_gaps:
            gaps = np.asarray(self.skill_gaps) * 1e3
            values["skill_gap_ms_p50"], values["skill_gap_ms_p99"] = (f"{np.percentile(gaps, q):.1f}" for q in (50, 99))
        st.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(arr)

    def _on_move_home(self, _req, resp):
        """Scripted move home through the same checked path (small steps toward home_q)."""
        try:
            self.latch.check()
        except GoalRejectedError as exc:
            resp.success, resp.message = False, str(exc)
            return resp
        home = np.asarray(self.p["home_q"], dtype=np.float64)
        step = self.limits.max_step_delta

        def actions():
            for i in range(400):
                q = self.arm.read_state()
                err = home - q.q
                if float(np.max(np.abs(err))) < 0.01:
                    return
                yield np.concatenate([np.clip(err, -step, step), [q.gripper]]), i / 400

        with self._exec_lock:
            r = self.home_executor.run(actions())
        self._record_fault(r)
        q = self.arm.read_state().q
        ok = r.success and float(np.max(np.abs(home - q))) < 0.02
        resp.success = ok
        resp.message = "at home" if ok else f"move home failed: {r.error or 'did not reach home_q'}"
        return resp

    def close(self) -> None:
        try:
            self.arm.disconnect()
        except Exception as exc:  # noqa: BLE001
            self.get_logger().error(f"disconnect failed: {exc}")

    def destroy_node(self) -> None:
        destroy_waitables(self)  # the action server: not destroyed by Node.destroy_node()
        super().destroy_node()


def main(args=None) -> None:
    run_node(SkillDecoderServer, args)


if __name__ == "__main__":
    main()
