"""Kitchen sim node: the MuJoCo Franka Kitchen as a robot on the ROS graph.

Each tick applies a joint target from /joint_commands (holding position when none came), steps the physics
one control step, and publishes the camera image, /joint_states and /subtask_status. /sim/reset
(std_srvs/Trigger) resets the scene for a new episode.

Two clocks:

* ``lockstep`` (default): while commands flow (a skill runs), the physics steps exactly once per command, in
  the order they came, as soon as each arrives; whenever ``idle_ticks`` control periods pass without one it
  ticks once, holding the last target (between skills: the camera keeps publishing and objects settle). This is the twin of the training harness and of the real arm's own control loop, which never
  skips or doubles a command. Free-running on a loaded 2-core machine, the rendering tick fell to 8 Hz and
  only 56% of the decoder's commands got exactly one physics step (29% none, 15% two), so decoded skills ran
  visibly differently in the graph than in the harness.
* free-running (``lockstep: false``): one tick per control period of wall time, applying the latest target
  (like a real robot, the world does not wait; commands that arrive faster than the ticks are overwritten).
"""
from __future__ import annotations

import collections
import threading
import time

import numpy as np
from extract_msgs.msg import SubtaskStatus
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import Trigger

from extract_skills.core.data.dataset import SUBTASK_NAMES
from extract_skills.core.sim.kitchen import FrameRenderer, KitchenArm, KitchenConfig, KitchenSim
from extract_skills.core.sim.scripted_demos import REST_Q
from extract_skills.graph import SERVICES, TOPICS
from extract_skills.nodes.common import (declare, joint_state_msg, parse_joint_state, rgb_to_image, run_node,
                                         stamp_to_s, subscribe)

DEFAULTS = {
    "image_size": 128,  # px, square camera image (the shipped models were trained on 128)
    "fast_render": True,  # shadows/reflections off: same setting as the demo data
    "real_time_factor": 1.0,  # 1.0 = one control step per kitchen dt of wall time; 0 = as fast as possible
    "task": "",  # comma-separated subtasks of the evaluation task
    "seed": 0,
    "camera_frame": "kitchen_camera",
    "lockstep": True,  # one physics step per command while commands flow (see the module docstring)
    "idle_ticks": 3,  # lockstep: control periods without a command before the sim ticks on its own
    # Camera writer QoS. best_effort: after `kill -9` of an image reader, a reliable writer (Fast DDS 3.2.3) stopped
    # delivering to every reader, old and new, for good, in 5 of 100 kills; best effort in 0 of 100
    # (benchmarks/reader_kill.py, RESULTS.md). Every reader in the graph (the camera node) is best effort anyway.
    "image_reliability": "best_effort",
}


def parse_task(task: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in task.split(",") if t.strip())
    unknown = [t for t in names if t not in SUBTASK_NAMES]
    if unknown:
        raise ValueError(f"unknown subtasks {unknown}; valid: {list(SUBTASK_NAMES)}")
    return names


class KitchenSimNode(Node):
    """Owns the kitchen's physics in one thread and its camera in another (:class:`FrameRenderer`; OSMesa GL
    contexts belong to the thread that made them)."""

    def __init__(self, **kwargs) -> None:
        super().__init__("kitchen_sim", **kwargs)
        self.p = declare(self, DEFAULTS, {
            "image_size": lambda v: None if 16 <= v <= 1024 else "must be in [16, 1024] px",
            "real_time_factor": lambda v: None if v >= 0 else "must be >= 0",
            "idle_ticks": lambda v: None if v >= 1 else "must be >= 1",
            "task": lambda v: (parse_task(v), None)[1],
            "image_reliability": lambda v: None if v in ("reliable", "best_effort") else "reliable or best_effort",
        })
        self.task = parse_task(self.p["task"])
        self._lock = threading.Lock()
        self._target: tuple[np.ndarray, float] | None = None
        # lockstep: commands not yet stepped, oldest first (bounded: a decoder waits for each step's state)
        self._commands: collections.deque = collections.deque(maxlen=64)
        self._command_ready = threading.Condition(self._lock)
        self._reset_requests: list[threading.Event] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.dt = 0.08
        self.slow_steps = 0  # commands whose state went out more than a control period after they arrived
        self.pub_image = self.create_publisher(Image, TOPICS["image"], QoSProfile(
            depth=5, reliability=ReliabilityPolicy[self.p["image_reliability"].upper()]))
        self.pub_joints = self.create_publisher(JointState, TOPICS["joint_states"], 10)
        self.pub_status = self.create_publisher(SubtaskStatus, TOPICS["subtask_status"], 10)
        subscribe(self, JointState, TOPICS["joint_commands"], self._on_command, 10)
        self.create_service(Trigger, SERVICES["sim_reset"], self._on_reset)
        self._thread = threading.Thread(target=self._run, name="kitchen_sim", daemon=True)
        self._thread.start()
        self._ready.wait(120.0)
        if self._error is not None or not self._ready.is_set():
            raise RuntimeError(f"kitchen sim failed to start: {self._error!r}")
        self.get_logger().info(f"kitchen ready: dt={self.dt:.3f} s, task={list(self.task)}")

    def _on_command(self, msg: JointState) -> None:
        try:
            q, _, gripper = parse_joint_state(msg)
        except ValueError as exc:  # the decoder only sends checked commands; anything else is dropped
            self.get_logger().error(f"dropping malformed joint command: {exc}")
            return
        # how long after the decoder stamped it the command reached this callback (one wall clock on one machine)
        transit = time.time() - stamp_to_s(msg.header.stamp)
        with self._lock:
            self._target = (q, gripper)
            self._commands.append((q, gripper, time.monotonic(), transit))
            self._command_ready.notify()

    def _on_reset(self, _req, resp):
        done = threading.Event()
        with self._lock:
            self._reset_requests.append(done)
            self._command_ready.notify()
        ok = done.wait(30.0)
        resp.success = ok
        resp.message = f"kitchen reset, task {list(self.task)}" if ok else "kitchen reset timed out"
        return resp

    def _run(self) -> None:
        sim = frames = None
        try:
            sim = KitchenSim(KitchenConfig(image_size=self.p["image_size"], fast_render=self.p["fast_render"],
                                           render=False))
            # Frames render in a thread of their own, so the physics takes the next command while a frame renders
            # and the command rate does not depend on the image size (at 128 px the soak's missed ticks did not
            # change: benchmarks/RESULTS.md, "The dropped ticks found").
            frames = FrameRenderer(sim, self._publish_image)
        except BaseException as exc:  # noqa: BLE001 - reported to the constructor
            self._error = exc
            self._ready.set()
            if sim is not None:
                sim.close()
            return
        arm = KitchenArm(sim)
        arm.connect()
        self.dt = sim.dt
        seed = int(self.p["seed"])
        rtf = self.p["real_time_factor"]
        period = sim.dt / rtf if rtf > 0 else 0.0
        lockstep = bool(self.p["lockstep"])
        idle_s = self.p["idle_ticks"] * (period or sim.dt)

        def reset():
            nonlocal seed
            sim.reset(seed=seed, task_sequence=self.task, arm_qpos=REST_Q)
            seed += 1
            with self._lock:
                self._target = None  # hold the reset pose until the first command
                self._commands.clear()

        try:
            reset()
            self._ready.set()
            next_tick = time.monotonic()
            while not self._stop.is_set():
                with self._lock:
                    requests, self._reset_requests = self._reset_requests, []
                if requests:
                    reset()
                    for ev in requests:
                        ev.set()
                commanded = None
                with self._lock:
                    if lockstep:
                        if not self._commands and not self._reset_requests:
                            self._command_ready.wait(idle_s)
                        if self._commands:
                            *commanded, t_arrived, transit = self._commands.popleft()
                    else:
                        self._commands.clear()
                    target = commanded if commanded is not None else self._target
                    reset_pending = bool(self._reset_requests)
                if lockstep and commanded is None and reset_pending:
                    continue  # a reset woke the wait: reset first, then tick
                if target is None:
                    s = arm.read_state()
                    target = (s.q, s.gripper)
                    with self._lock:
                        self._target = target
                t_step = time.monotonic()
                step = arm.step_to(*target)
                t_stepped = time.monotonic()
                frames.capture(self._publish_state(step.obs, arm.read_state()))
                if commanded is not None:
                    self._check_slow(transit, t_step - t_arrived, t_stepped - t_step, time.monotonic() - t_stepped)
                if lockstep:
                    continue  # the next command (or the idle timeout) paces the next tick
                next_tick += period
                delay = next_tick - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_tick = time.monotonic()  # running slower than real time: do not catch up
        except BaseException as exc:  # noqa: BLE001
            self._error = exc
            self.get_logger().fatal(f"kitchen sim thread died: {exc!r}")
        finally:
            frames.close()
            sim.close()

    def _check_slow(self, transit: float, waited: float, stepped: float, published: float) -> None:
        """A command whose state went out more than a control period after the decoder sent it is logged with where
        the time went (the soak's late intervals are spent before this node's state)."""
        total = transit + waited + stepped + published
        if total > self.dt:
            self.slow_steps += 1
            self.get_logger().warning(
                f"command -> state took {total * 1e3:.0f} ms (to this node's callback {transit * 1e3:.0f}, queued "
                f"{waited * 1e3:.0f}, physics {stepped * 1e3:.0f}, publish {published * 1e3:.0f}); "
                f"{self.slow_steps} so far")

    def _publish_state(self, obs, state):
        """The step's joint state and subtask flags; returns their stamp, which the step's frame carries too."""
        stamp = self.get_clock().now().to_msg()
        self.pub_joints.publish(joint_state_msg(state.q, state.gripper, stamp, dq=state.dq))
        status = SubtaskStatus()
        status.header.stamp = stamp
        status.names = list(SUBTASK_NAMES)
        status.done = [bool(x) for x in obs.subtasks_done]
        self.pub_status.publish(status)
        return stamp

    def _publish_image(self, rgb, stamp) -> None:
        self.pub_image.publish(rgb_to_image(rgb, stamp, self.p["camera_frame"]))

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._command_ready.notify()
        self._thread.join(10.0)


def main(args=None) -> None:
    run_node(KitchenSimNode, args)


if __name__ == "__main__":
    main()
