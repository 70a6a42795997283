"""Thin shared plumbing of the rclpy adapters: parameters, message <-> numpy, node entry points."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

import numpy as np
import rclpy
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rcl_interfaces.msg import SetParametersResult
from sensor_msgs.msg import Image, JointState

from extract_skills.graph import default_models_dir

ARM_JOINT_NAMES = tuple(f"fr3_joint{i}" for i in range(1, 8))
FINGER_JOINT_NAMES = ("fr3_finger_joint1", "fr3_finger_joint2")
FINGER_MAX = 0.04  # m, one finger's travel; opening 1.0 = both fingers at FINGER_MAX


def declare(node: Node, defaults: dict[str, Any], validators: dict[str, Callable[[Any], str | None]] | None = None):
    """Declare parameters (defaults in code, values from config/*.yaml) and validate them now and on set."""
    validators = validators or {}
    for name, value in defaults.items():
        node.declare_parameter(name, value)

    def check(params) -> SetParametersResult:
        for p in params:
            fn = validators.get(p.name)
            err = fn(p.value) if fn else None
            if err:
                return SetParametersResult(successful=False, reason=f"{p.name}: {err}")
        return SetParametersResult(successful=True)

    values = {name: node.get_parameter(name).value for name in defaults}
    for name, fn in validators.items():
        err = fn(values[name])
        if err:
            raise ValueError(f"parameter {node.get_name()}.{name} = {values[name]!r}: {err}")
    node.add_on_set_parameters_callback(check)
    return values


def models_dir(value: str):
    from pathlib import Path

    return Path(value) if value else default_models_dir()


# ------------------------------------------------------------------------------ images
_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


def image_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) -> uint8 (H, W, 3) RGB."""
    import cv2

    ch = _CHANNELS.get(msg.encoding)
    if ch is None:
        raise ValueError(f"unsupported image encoding {msg.encoding!r}; supported: {sorted(_CHANNELS)}")
    if msg.step < msg.width * ch or len(msg.data) < msg.step * msg.height:
        raise ValueError(f"image buffer too small: {len(msg.data)} bytes for {msg.width}x{msg.height} {msg.encoding}")
    buf = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(msg.height, msg.step)[:, : msg.width * ch]
    img = buf.reshape(msg.height, msg.width, ch)
    conv = {"bgr8": cv2.COLOR_BGR2RGB, "rgba8": cv2.COLOR_RGBA2RGB, "bgra8": cv2.COLOR_BGRA2RGB,
            "mono8": cv2.COLOR_GRAY2RGB}.get(msg.encoding)
    return np.ascontiguousarray(cv2.cvtColor(img, conv) if conv is not None else img)


def rgb_to_image(rgb: np.ndarray, stamp, frame_id: str) -> Image:
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = "rgb8"
    msg.step = msg.width * 3
    msg.data = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    return msg


# ------------------------------------------------------------------------------ joints
def joint_state_msg(q: np.ndarray, gripper: float, stamp, dq: np.ndarray | None = None) -> JointState:
    """7 arm joints (rad) + the two finger joints (m) from a gripper opening in [0, 1]."""
    msg = JointState()
    msg.header.stamp = stamp
    msg.name = list(ARM_JOINT_NAMES + FINGER_JOINT_NAMES)
    finger = float(gripper) * FINGER_MAX
    msg.position = [float(x) for x in q] + [finger, finger]
    if dq is not None:
        msg.velocity = [float(x) for x in dq] + [0.0, 0.0]
    return msg


def parse_joint_state(msg: JointState) -> tuple[np.ndarray, np.ndarray, float]:
    """-> q (7,), dq (7,) (zeros if absent), gripper opening in [0, 1].

    Raises ValueError (never anything else: callers drop the message and go on) on a malformed message:
    missing or repeated joint names, position/velocity arrays that do not match the names, NaN/Inf."""
    names = list(msg.name)
    index = {n: i for i, n in enumerate(names)}
    if len(index) != len(names):
        raise ValueError("joint state repeats a joint name")
    missing = [n for n in ARM_JOINT_NAMES if n not in index]
    if missing:
        raise ValueError(f"joint state lacks joints {missing}")
    pos = np.asarray(msg.position, dtype=np.float64)
    if pos.shape != (len(names),):
        raise ValueError(f"joint state has {len(names)} names but {pos.size} positions")
    vel = np.asarray(msg.velocity, dtype=np.float64)
    if vel.size not in (0, len(names)):
        raise ValueError(f"joint state has {len(names)} names but {vel.size} velocities")
    q = pos[[index[n] for n in ARM_JOINT_NAMES]]
    dq = vel[[index[n] for n in ARM_JOINT_NAMES]] if vel.size else np.zeros(7)
    fingers = np.array([pos[index[n]] for n in FINGER_JOINT_NAMES if n in index])
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(dq)) and np.all(np.isfinite(fingers))):
        raise ValueError("joint state contains NaN/Inf")
    gripper = float(np.clip(fingers.sum() / (2 * FINGER_MAX), 0.0, 1.0)) if fingers.size else 0.0
    return q, dq, gripper


def guarded(node: Node, topic: str, callback: Callable[[Any], None]) -> Callable[[Any], None]:
    """A subscription callback that no message can kill: an exception is logged with its reason and counted
    in ``node.bad_messages[topic]`` and the node goes on (one malformed message from any host on the
    network used to end a node, and in the in-process runner the whole graph)."""
    counts = node.__dict__.setdefault("bad_messages", {})

    def wrapped(msg: Any) -> None:
        try:
            callback(msg)
        except Exception as exc:  # noqa: BLE001 - the node must outlive any one message
            counts[topic] = counts.get(topic, 0) + 1
            node.get_logger().error(f"dropped a message on {topic} ({counts[topic]} so far): "
                                    f"{type(exc).__name__}: {exc}", throttle_duration_sec=2.0)

    return wrapped


def subscribe(node: Node, msg_type, topic: str, callback: Callable[[Any], None], qos, **kwargs):
    """``node.create_subscription`` with the callback :func:`guarded`."""
    return node.create_subscription(msg_type, topic, guarded(node, topic, callback), qos, **kwargs)


def steady_timer(node: Node, period_s: float, callback: Callable[[], None], **kwargs):
    """A timer on the steady clock. Node timers follow ROS time, which under ``use_sim_time`` stops when /clock
    stops and jumps when it jumps: a heartbeat, a watchdog tick or diagnostics must keep their period whatever
    /clock does (RELIABILITY row 22)."""
    return node.create_timer(period_s, callback, clock=Clock(clock_type=ClockType.STEADY_TIME), **kwargs)


def destroy_waitables(node: Node) -> None:
    """Destroy the node's action servers and clients now. ``Node.destroy_node()`` leaves waitables to the
    garbage collector, whose finalisers then run at an arbitrary later moment, possibly in the middle of another
    executor's wait (a test process once died of a segfault while collecting inside ``spin_once``)."""
    for waitable in list(node.waitables):
        destroy = getattr(waitable, "destroy", None)
        if destroy is not None:
            destroy()


def stamp_to_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def check_stamp(stamp) -> None:
    """ValueError for a stamp no clock produces (negative seconds, nanoseconds past a second): rclpy's Time
    raises on those later, inside whatever timer compares them."""
    if stamp.sec < 0 or stamp.nanosec >= 1_000_000_000:
        raise ValueError(f"invalid stamp sec={stamp.sec} nanosec={stamp.nanosec}")


def init_rclpy(args=None) -> None:
    """rclpy.init without rclpy's signal handlers. Theirs shut the context down at the first Ctrl-C, so the
    decoder could no longer stop the arm through its executor nor send the running goal its result (the
    client hung). Here SIGINT and SIGTERM (docker stop, ros2 launch's escalation) raise KeyboardInterrupt in
    the main thread, and the runner drains (:func:`drain`) before it shuts down."""
    import signal

    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def drain(executor, nodes, timeout_s: float = 10.0) -> None:
    """Before the executor stops: no new goals, the running skill ended through the decoder's stop path (the
    arm stops, the goal gets its result), so no callback is cut off mid-flight and no node is destroyed
    under a running callback ("cannot use Destroyable" at exit)."""
    import rclpy

    for n in nodes:
        prepare = getattr(n, "prepare_shutdown", None)
        if prepare is not None:
            prepare("the graph is shutting down")
    decoders = [n for n in nodes if hasattr(n, "is_idle")]
    deadline = time.monotonic() + timeout_s
    try:
        while rclpy.ok() and time.monotonic() < deadline and not all(d.is_idle() for d in decoders):
            executor.spin_once(timeout_sec=0.05)
        for _ in range(20):  # let the results and cancel responses that are already queued go out
            executor.spin_once(timeout_sec=0.01)
        # Then take the nodes out and run what is still queued: a callback the executor had already taken
        # but not run would otherwise start after shutdown and hit the executor's destroyed guard condition
        # (rclpy prints "The following exception was never retrieved: cannot use Destroyable ...").
        for n in nodes:
            executor.remove_node(n)
        for _ in range(20):
            executor.spin_once(timeout_sec=0.01)
    except Exception:  # noqa: BLE001 - the context may already be shut down (Ctrl-C): nothing left to drain
        pass


class ExecutorThreads:
    """Each node in its own executor (:func:`node_executor`), each executor spinning in a thread of its own: the
    in-process runner's graph. With one executor for all nodes, a node's callbacks waited behind every other
    node's, and in rclpy's multi-threaded dispatch (see :func:`node_executor`).

    It answers the part of an executor's interface that :func:`drain` uses, so one drain serves both runners:
    while the threads run, ``spin_once`` only waits (the threads do the spinning); ``remove_node`` first stops
    every thread (each after its current callback), after which ``spin_once`` runs what is still queued, once
    per executor."""

    def __init__(self, nodes, context=None) -> None:
        import threading

        self._pairs = []
        for n in nodes:
            ex = node_executor(context=context)
            ex.add_node(n)
            self._pairs.append((n, ex))
        self._running = threading.Event()
        self._threads = [threading.Thread(target=self._spin, args=(ex,), name=f"executor:{n.get_name()}",
                                          daemon=True) for n, ex in self._pairs]
        self.errors: list[BaseException] = []

    def _spin(self, ex) -> None:
        try:
            while self._running.is_set() and rclpy.ok(context=ex.context):
                ex.spin_once(timeout_sec=0.1)
        except ExternalShutdownException:
            pass
        except BaseException as exc:  # noqa: BLE001 - a node's callback raised: the runner reports it and stops
            self.errors.append(exc)
            raise

    def start(self) -> None:
        self._running.set()
        for t in self._threads:
            t.start()

    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads)

    def stop(self, timeout_s: float = 10.0) -> None:
        self._running.clear()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout_s)

    def spin_once(self, timeout_sec: float = 0.0) -> None:
        if self._running.is_set():
            time.sleep(timeout_sec)
            return
        for _, ex in self._pairs:
            ex.spin_once(timeout_sec=0.0)

    def remove_node(self, node) -> None:
        self.stop()
        for n, ex in self._pairs:
            if n is node:
                ex.remove_node(n)

    def shutdown(self, timeout_sec: float | None = None) -> None:
        self.stop()
        for _, ex in self._pairs:
            ex.shutdown(timeout_sec=timeout_sec)


class RosLogHandler(logging.Handler):
    """Routes the core's Python logging (``extract_skills.*``: executor, franky arm, checkpoints) into ROS
    logging under the record's logger name, so those lines reach the console, /rosout and the log files like
    the nodes' own (the arm's "connected to ... franky-control X, libfranka Y" line never showed up)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log = rclpy.logging.get_logger(record.name)
            msg = record.getMessage()
            if record.levelno >= logging.ERROR:
                log.error(msg)
            elif record.levelno >= logging.WARNING:
                log.warning(msg)
            else:
                log.info(msg)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def route_core_logging() -> None:
    """Send the package's Python logging (INFO and up) to ROS logging, once per process."""
    pkg = logging.getLogger("extract_skills")
    if not any(isinstance(h, RosLogHandler) for h in pkg.handlers):
        pkg.addHandler(RosLogHandler(level=logging.INFO))
    pkg.setLevel(logging.INFO)
    pkg.propagate = False  # printed once, by ROS


def node_executor(context=None) -> SingleThreadedExecutor:
    """The executor a node runs in: single-threaded. A callback that must block (the decoder's skill, move home
    and first-contact wait) runs its body in a thread of its own and awaits it (the decoder's ``_off_executor``).

    Why not rclpy's MultiThreadedExecutor: in rclpy 9.1.2 (the Kilted wheels) it re-yields a callback that it has
    handed to its pool but that no worker has started yet, in a loop that holds the GIL, so the workers start late
    (ros2/rclpy#1452, fixed upstream after this release). Measured on the kitchen sim node
    (benchmarks/executor_latency.py), command -> state p99 1,066 ms against 7.4 ms single-threaded; in the soak,
    82-101 dropped control ticks per 4 minutes against 0 (benchmarks/RESULTS.md, "The dropped ticks found")."""
    return SingleThreadedExecutor(context=context)


def run_node(node_cls, args=None) -> None:
    """`main()` of every node: one node, its executor (:func:`node_executor`), and on Ctrl-C/SIGTERM (or when
    the node asks) a drained exit: the decoder's running skill ends through its stop path with a result, then
    the node is closed and destroyed."""
    init_rclpy(args)
    route_core_logging()  # before the node is built: its constructor connects the arm and logs the versions
    try:
        node = node_cls()
    except KeyboardInterrupt:  # stopped while still starting: nothing runs yet, nothing to drain
        rclpy.shutdown()
        return
    executor = node_executor()
    executor.add_node(node)
    try:
        while rclpy.ok() and not getattr(node, "finished", False):
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        drain(executor, [node])
        executor.shutdown(timeout_sec=5.0)
        close = getattr(node, "close", None)
        if close:
            close()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


class Monotonic:
    """A value with the monotonic time it arrived (timeouts use monotonic time, never ROS time)."""

    __slots__ = ("value", "t")

    def __init__(self) -> None:
        self.value: Any = None
        self.t = -float("inf")

    def set(self, value: Any) -> None:
        self.value, self.t = value, time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self.t


# ------------------------------------------------------------------------------ online RL plumbing
#: Hyperparameters of the hybrid skill SAC a node exposes (the rest keep SkillSACConfig's defaults).
SAC_DEFAULTS = {
    "batch_size": 256,  # transitions per gradient step
    "learning_starts": 256,  # transitions before the first gradient step
    "utd": 1.0,  # gradient steps per transition
    "gamma": 0.99,  # discount per skill
    "alpha_z": 0.1,  # weight of KL(pi(z|s,d) || p(z|s,d)) (official 0.01: see SkillSACConfig)
    "alpha_d": 0.1,  # weight of KL(pi(d|s) || p(d|s))
    "auto_alpha": False,  # tune both alphas towards target divergences
}

# The newest weights wait for a late-joining (or restarted) actor; reliable so no update is half-lost.
WEIGHTS_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                         history=HistoryPolicy.KEEP_LAST)


def sac_config(params: dict[str, Any]):
    from extract_skills.core.rl.skill_sac import SkillSACConfig

    return SkillSACConfig(**{k: params[k] for k in SAC_DEFAULTS})


def transition_msg(t: dict[str, Any], stamp) -> "SkillTransition":
    from extract_msgs.msg import SkillTransition

    msg = SkillTransition()
    msg.header.stamp = stamp
    msg.episode_id, msg.skill_id, msg.steps = int(t["episode_id"]), int(t["skill"]), int(t["steps"])
    msg.obs, msg.next_obs = [float(x) for x in t["obs"]], [float(x) for x in t["next_obs"]]
    msg.argument = [float(x) for x in t["z"]]
    msg.reward, msg.log_prob = float(t["reward"]), float(t["log_prob"])
    msg.terminated, msg.truncated, msg.intervention = bool(t["terminated"]), bool(t["truncated"]), bool(t["intervention"])
    msg.policy_version = int(t["policy_version"])
    return msg


def transition_from_msg(msg) -> dict[str, Any]:
    """The replay-buffer fields of a SkillTransition (the buffer checks shapes and finiteness)."""
    return {"obs": np.asarray(msg.obs, np.float32), "skill": int(msg.skill_id), "z": np.asarray(msg.argument, np.float32),
            "reward": float(msg.reward), "next_obs": np.asarray(msg.next_obs, np.float32),
            "terminated": bool(msg.terminated), "truncated": bool(msg.truncated), "steps": int(msg.steps),
            "log_prob": float(msg.log_prob), "intervention": bool(msg.intervention)}
