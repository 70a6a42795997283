"""A Franka arm through franky-control (libfranka), behind the project's :class:`Arm` interface.

franky is imported lazily, so this module imports without it.  Every franky exception is mapped
onto the ArmError classes of ``core/control/arm.py``; franky stores errors of asynchronous motions and
raises them at the next ``move()`` / ``join_motion()``, so they surface from ``send()``/``stop()``.

Version note: franky-control 2.0.0 bundles libfranka 0.21.2 (robot server version 10), which talks
to an FR3 on a recent system image only.  A Panda (FER) needs a franky build against an older
libfranka; that mismatch is refused at start-up with a message naming both.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Iterator

import numpy as np

from ..core.control.arm import (
    Arm,
    ArmCommandError,
    ArmControlError,
    ArmError,
    ArmIncompatibleError,
    ArmNetworkError,
    ArmRealtimeError,
    ArmState,
    ArmUserStopError,
)
from ..core.control.safety import NUM_JOINTS, CheckedCommand, SafetyLimits, check_dynamics_factor

logger = logging.getLogger(__name__)

# libfranka bundled in each franky-control wheel we know of, and the robots it can talk to.
BUNDLED_LIBFRANKA = {"2.0.0": "0.21.2"}
FR3_ONLY_SINCE = (0, 10)  # libfranka >= 0.10 dropped the Panda (FER) protocol
HAND_MAX_WIDTH = 0.08  # m, Franka Hand fully open


@dataclass(frozen=True)
class FrankyArmConfig:
    """Connection and motion parameters of a franky arm."""

    robot_ip: str
    """Hostname / IP of the robot's FCI interface (franky-sim: 127.0.0.1)."""
    robot: str = "fr3"
    """'fr3' or 'panda'; must match the SafetyLimits' robot."""
    realtime: str = "enforce"
    """'enforce' on the real robot (needs rtprio / RT kernel); 'ignore' only in simulation and CI."""
    relative_dynamics_factor: float = 0.1
    """Global velocity/acceleration/jerk scale of every motion, in (0, SafetyLimits.max_dynamics_factor]."""
    use_gripper: bool = True
    """Connect the Franka Hand; a failed gripper connection is logged and the arm runs without it."""
    gripper_speed: float = 0.05
    """m/s, gripper finger speed."""
    gripper_deadband: float = 0.05
    """Opening change below which the gripper is not re-commanded (gripper moves are slow)."""
    stationary_tol: float = 0.01
    """rad/s, max mean joint speed counted as stationary."""
    stationary_window_s: float = 0.02
    """s, window over which the mean joint speed is measured for is_stationary()."""
    stop_timeout_s: float = 5.0
    """s, bound on a graceful stop before it is escalated."""
    call_timeout_s: float = 2.0
    """s, bound on one state read or command on the robot thread; past it the connection counts as lost."""

    def __post_init__(self) -> None:
        if not self.robot_ip:
            raise ValueError("FrankyArmConfig.robot_ip must not be empty")
        if self.robot not in ("fr3", "panda"):
            raise ValueError(f"FrankyArmConfig.robot must be 'fr3' or 'panda', got {self.robot!r}")
        if self.realtime not in ("enforce", "ignore"):
            raise ValueError(f"FrankyArmConfig.realtime must be 'enforce' or 'ignore', got {self.realtime!r}")
        r = float(self.relative_dynamics_factor)
        if not (math.isfinite(r) and 0.0 < r <= 1.0):
            raise ValueError(f"FrankyArmConfig.relative_dynamics_factor must be in (0, 1], got {r}")
        for name in ("gripper_speed", "gripper_deadband", "stationary_tol", "stationary_window_s", "stop_timeout_s",
                     "call_timeout_s"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"FrankyArmConfig.{name} must be > 0, got {v}")


def _import_franky() -> Any:
    try:
        import franky  # noqa: PLC0415  (optional heavy dependency, imported lazily)
    except ImportError as exc:
        raise ImportError(
            "FrankyArm needs franky-control: `pip install franky-control==2.0.0` "
            "(the PyPI package named 'franky' is an unrelated project)"
        ) from exc
    return franky


def franky_versions() -> tuple[str, str]:
    """(franky-control version, bundled libfranka version or 'unknown')."""
    try:
        fv = metadata.version("franky-control")
    except metadata.PackageNotFoundError:
        fv = "unknown"
    return fv, BUNDLED_LIBFRANKA.get(fv, "unknown")


def _version_tuple(v: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(p) for p in v.split(".")[:2])
    except ValueError:
        return None


def _name_os_thread(name: bytes = b"franky_robot") -> None:
    """Name the calling thread for the kernel, so `top -H` / `ps -L` show which thread runs realtime."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(15, name, 0, 0, 0)  # PR_SET_NAME


class FrankyArm(Arm):
    """Franka arm (FR3 / Panda) driven with asynchronous franky joint motions.

    One dedicated thread owns the franky ``Robot``: it is created there and every call on it (state reads,
    motions, stop, recovery) runs there. Creating the robot raises the creating thread to SCHED_FIFO 99, and
    the threads franky starts for asynchronous motions (libfranka's 1 kHz control loop) inherit the priority
    of the thread that starts them: so the robot thread and the control loop run realtime, and the callers
    (the ROS executor's threads) keep their normal priority.
    """

    def __init__(self, config: FrankyArmConfig, limits: SafetyLimits) -> None:
        if limits.robot != config.robot:
            raise ValueError(f"SafetyLimits are for {limits.robot!r} but the arm is configured as {config.robot!r}")
        check_dynamics_factor(config.relative_dynamics_factor, limits)
        self.config = config
        self.limits = limits
        self.stationary_tol = config.stationary_tol
        self._franky: Any = None
        self._robot: Any = None
        self._gripper: Any = None
        self._gripper_future: Any = None
        self._gripper_cmd = 1.0  # last commanded opening (reported when no gripper is connected)
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        self._worker_ident: int | None = None
        self._worker_lock = threading.Lock()
        self._robot_clock: tuple[float, float] | None = None  # (robot time, monotonic time it last advanced)

    # ------------------------------------------------------------------------------------ robot thread
    def _on_robot_thread(self, fn: Any, *args: Any, timeout: float | None = None) -> Any:
        """Run ``fn(*args)`` on the robot thread and return its result (its exceptions propagate)."""
        if threading.get_ident() == self._worker_ident:  # already there (stop() polls is_stationary())
            return fn(*args)
        with self._worker_lock:  # callers are several executor threads: exactly one robot thread
            if self._worker is None:
                self._worker = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="franky_robot", initializer=_name_os_thread)
                self._worker_ident = self._worker.submit(threading.get_ident).result()
            worker = self._worker
        try:
            fut = worker.submit(fn, *args)
        except RuntimeError:  # shut down by disconnect() or a timed-out call in another thread meanwhile
            raise ArmNetworkError(f"not connected to {self.config.robot_ip} (the arm was disconnected)") from None
        timeout = self.config.call_timeout_s if timeout is None else timeout
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            # franky blocks in the network layer when the robot stops answering (seen: franky-sim killed
            # mid-motion): the handle is treated as dead, as after a NetworkException, and the wedged thread
            # is abandoned so that connect() starts afresh.
            fut.cancel()
            self._robot = None
            self._drop_worker(worker)
            raise ArmNetworkError(f"{getattr(fn, '__name__', fn).lstrip('_')}: the robot at {self.config.robot_ip} "
                                  f"did not answer within {timeout:.1f} s") from None

    def _drop_worker(self, worker: concurrent.futures.ThreadPoolExecutor | None) -> None:
        """Forget ``worker`` as the robot thread (if it still is) and let it end once idle; the next call starts
        a fresh one."""
        with self._worker_lock:
            if self._worker is worker:
                self._worker, self._worker_ident = None, None
        if worker is not None:
            worker.shutdown(wait=False)

    @property
    def robot_thread_native_id(self) -> int | None:
        """Kernel thread id of the robot thread (to inspect its scheduling), None before connect()."""
        if self._worker is None:
            return None
        return self._worker.submit(threading.get_native_id).result(self.config.call_timeout_s)

    # ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Translate franky exceptions into ArmError subclasses."""
        f = self._franky
        try:
            yield
        except ArmError:
            raise
        except f.IncompatibleVersionException as exc:
            raise ArmIncompatibleError(self._incompatible_message(exc)) from exc
        except f.ControlException as exc:
            if self._user_stopped():
                raise ArmUserStopError(f"{what}: user stop active: {exc}") from exc
            raise ArmControlError(f"{what}: {exc}") from exc
        except (f.CommandException, f.InvalidMotionTypeException, f.InvalidOperationException) as exc:
            raise ArmCommandError(f"{what}: {exc}") from exc
        except f.NetworkException as exc:
            self._robot = None  # the Robot object is dead: recreate it with connect()
            raise ArmNetworkError(f"{what}: connection to {self.config.robot_ip} lost: {exc}") from exc
        except f.RealtimeException as exc:
            raise ArmRealtimeError(f"{what}: {exc}") from exc
        except f.Exception as exc:
            raise ArmError(f"{what}: {type(exc).__name__}: {exc}") from exc
        except RuntimeError as exc:
            # Some of franky's state accessors surface libfranka's network errors as a bare
            # RuntimeError("Net Exception") (seen against franky-sim killed mid-motion).
            if "net" in str(exc).lower():
                self._robot = None
                raise ArmNetworkError(f"{what}: connection to {self.config.robot_ip} lost: {exc}") from exc
            raise ArmError(f"{what}: {type(exc).__name__}: {exc}") from exc

    def _user_stopped(self) -> bool:
        try:
            return bool(self._robot is not None and self._robot.state.robot_mode == self._franky.RobotMode.UserStopped)
        except Exception:  # noqa: BLE001 - best-effort diagnosis while handling another error
            return False

    def _incompatible_message(self, exc: object) -> str:
        fv, lv = franky_versions()
        return (
            f"robot at {self.config.robot_ip} (configured as {self.config.robot}) refuses franky-control {fv} with "
            f"libfranka {lv}: {exc}. libfranka >= 0.10 talks to FR3 only (0.21.x needs a recent FR3 system image); "
            "a Panda or an older FR3 system needs a franky build against the matching libfranka"
        )

    def _robot_or_raise(self) -> Any:
        if self._robot is None:
            raise ArmNetworkError(f"not connected to {self.config.robot_ip} (call connect(); after a network error the arm must be recreated)")
        return self._robot

    # ------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Connect, recover once from stored errors, and (optionally) connect the gripper."""
        # network timeouts inside franky bound this; the gripper's connection comes on top
        self._on_robot_thread(self._connect, timeout=60.0)

    def _connect(self) -> None:
        f = self._franky = _import_franky()
        cfg = self.config
        fv, lv = franky_versions()
        lvt = _version_tuple(lv)
        if cfg.robot == "panda" and lvt is not None and lvt >= FR3_ONLY_SINCE:
            raise ArmIncompatibleError(
                f"configured robot 'panda' but franky-control {fv} bundles libfranka {lv}, which talks to FR3 only; "
                "install a franky build against the libfranka your Panda's system image supports (< 0.10)"
            )
        rt = f.RealtimeConfig.Enforce if cfg.realtime == "enforce" else f.RealtimeConfig.Ignore
        # This runs on the robot thread: creating the robot raises it (only it) to SCHED_FIFO 99, which the
        # control loops it starts inherit. A refused connection leaves no raised thread behind.
        policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
        robot = None
        try:
            robot = f.Robot(cfg.robot_ip, relative_dynamics_factor=cfg.relative_dynamics_factor, realtime_config=rt)
        except f.IncompatibleVersionException as exc:
            raise ArmIncompatibleError(self._incompatible_message(exc)) from exc
        except f.NetworkException as exc:
            raise ArmNetworkError(
                f"cannot connect to the {cfg.robot} at {cfg.robot_ip} with franky-control {fv} / libfranka {lv}: {exc}. "
                "Check the network, that FCI is enabled in Desk, and that the robot's system image speaks this "
                "libfranka version (libfranka >= 0.10: FR3 only)"
            ) from exc
        except f.RealtimeException as exc:
            raise ArmRealtimeError(
                f"no realtime scheduling for the control loop: {exc}. On the real robot grant rtprio/memlock "
                "(RT kernel); realtime='ignore' is for simulation and CI only"
            ) from exc
        finally:
            if robot is None and (os.sched_getscheduler(0), os.sched_getparam(0)) != (policy, param):
                os.sched_setscheduler(0, policy, param)
        self._robot = robot
        self._robot_clock = None
        with self._errors("recover_from_errors on connect"):
            robot.recover_from_errors()
            if robot.has_errors:
                raise ArmControlError(f"robot at {cfg.robot_ip} still has errors after recovery: {robot.state.current_errors}")
        logger.info("connected to %s (%s, franky-control %s, libfranka %s, realtime %s, dynamics %.2f)",
                    cfg.robot_ip, cfg.robot, fv, lv, cfg.realtime, cfg.relative_dynamics_factor)
        self._gripper = None
        if cfg.use_gripper:
            try:
                self._gripper = f.Gripper(cfg.robot_ip)
                self._gripper_cmd = self._read_gripper()
            except Exception as exc:  # noqa: BLE001 - the gripper is optional
                logger.warning("gripper at %s not available, running the arm without it: %s", cfg.robot_ip, exc)
                self._gripper = None

    def disconnect(self) -> None:
        if self._robot is not None:
            try:
                if self._on_robot_thread(lambda: self._robot is not None and self._robot.is_in_control):
                    self.stop()
            except ArmError as exc:
                logger.warning("stop on disconnect failed: %s", exc)
        self._robot = None
        self._gripper = None
        self._gripper_future = None
        self._drop_worker(self._worker)

    # ------------------------------------------------------------------------------------
    def _read_gripper(self) -> float:
        if self._gripper is None:
            return self._gripper_cmd
        g = self._gripper
        max_w = float(g.max_width) or HAND_MAX_WIDTH
        return float(min(1.0, max(0.0, float(g.width) / max_w)))

    def read_state(self) -> ArmState:
        return self._on_robot_thread(self._read_state)

    def _read_state(self) -> ArmState:
        robot = self._robot_or_raise()
        with self._errors("read_state"):
            # The whole RobotState (one read of q and dq together). A loaded test run once read joints for 10 s
            # after franky-sim was killed without any error (current_joint_state); on an idle machine both this
            # and current_joint_state raise libfranka's "Net Exception" after its 1 s UDP timeout.
            rs = robot.state
            q = np.array(rs.q, dtype=np.float64)
            dq = np.array(rs.dq, dtype=np.float64)
            robot_t = rs.time.to_sec()
        stamp = time.monotonic()
        # A live robot's clock advances between reads (idle too: ~1 ms per ms). A state whose robot time stood
        # still for call_timeout_s is a stream that stopped, whatever franky still answers: the connection is lost.
        if self._robot_clock is None or robot_t != self._robot_clock[0]:
            self._robot_clock = (robot_t, stamp)
        elif stamp - self._robot_clock[1] > self.config.call_timeout_s:
            self._robot = None
            raise ArmNetworkError(f"read_state: the robot at {self.config.robot_ip} sent no new state for "
                                  f"{stamp - self._robot_clock[1]:.1f} s (robot time stuck at {robot_t:.3f} s)")
        try:
            grip = self._read_gripper()
        except Exception as exc:  # noqa: BLE001 - the gripper is optional
            logger.warning("gripper read failed, disabling gripper: %s", exc)
            self._gripper = None
            grip = self._gripper_cmd
        return ArmState(q=q, dq=dq, gripper=grip, stamp=stamp)

    def _send(self, cmd: CheckedCommand) -> None:
        self._on_robot_thread(self._move, cmd)

    def _move(self, cmd: CheckedCommand) -> None:
        f = self._franky
        robot = self._robot_or_raise()
        target = np.ascontiguousarray(cmd.q, dtype=np.float64)  # franky needs float64
        if target.shape != (NUM_JOINTS,) or not np.all(np.isfinite(target)):
            raise ArmCommandError("refusing a non-finite or mis-shaped joint target")  # defence in depth
        with self._errors("send"):
            # a new asynchronous move preempts and replans the previous one from the current state
            robot.move(f.JointMotion(f.JointState(target), relative_dynamics_factor=self._motion_factor()),
                       asynchronous=True)
        self._command_gripper(cmd.gripper)

    def _motion_factor(self) -> float:
        """franky multiplies a motion's factor with the robot's: the goal's factor is honoured up to the
        configured one (``relative_dynamics_factor``), which it can lower but never exceed."""
        configured = self.config.relative_dynamics_factor
        if self.dynamics_factor is None:
            return 1.0
        return min(self.dynamics_factor, configured) / configured

    def _command_gripper(self, opening: float) -> None:
        if self._gripper is None:
            self._gripper_cmd = float(opening)
            return
        if abs(opening - self._gripper_cmd) < self.config.gripper_deadband:
            return
        fut = self._gripper_future
        if fut is not None and not fut.wait(0.0):
            return  # previous gripper move still running: the next step re-sends the target
        try:
            width = float(opening) * (float(self._gripper.max_width) or HAND_MAX_WIDTH)
            self._gripper_future = self._gripper.move_async(width, self.config.gripper_speed)
            self._gripper_cmd = float(opening)
        except Exception as exc:  # noqa: BLE001 - the gripper is optional
            logger.warning("gripper command failed, disabling gripper: %s", exc)
            self._gripper = None

    def stop(self) -> None:
        """Graceful stop (JointStopMotion, joined), then wait (bounded) until stationary."""
        # join (stop_timeout_s) + standstill wait (stop_timeout_s) + one is_stationary window bound
        self._on_robot_thread(self._stop, timeout=2.0 * self.config.stop_timeout_s + 10.0)

    def _stop(self) -> None:
        f = self._franky
        robot = self._robot_or_raise()
        timeout = self.config.stop_timeout_s
        with self._errors("stop"):
            robot.move(f.JointStopMotion(), asynchronous=True)
            finished = robot.join_motion(timeout)
            if not finished:
                robot.stop()  # escalate: aborts the running motion (it raises on the next join)
                raise ArmControlError(f"stop motion did not finish within {timeout} s; motion aborted")
        deadline = time.monotonic() + timeout
        while not self.is_stationary():
            if time.monotonic() > deadline:
                logger.error("arm not stationary %.1f s after the stop motion finished", timeout)
                return
            time.sleep(0.01)

    def is_stationary(self) -> bool:
        """No motion running and the mean joint speed over ``stationary_window_s`` below tolerance.

        The mean over a window (position difference), not the instantaneous dq: joint velocities
        carry high-frequency chatter (franky-sim's joint 7 reports about 0.08 rad/s at a standstill),
        which would keep a standing arm 'moving' forever. The window is measured on the robot's own
        clock (``RobotState.time``), not the wall clock: on a loaded host the state stream can stall, and
        two equal stale samples over a wall-clock window reported a moving arm as stationary (a cancel
        came back CANCELED while the arm still moved). No fresh state within a bound: not stationary."""
        return self._on_robot_thread(self._is_stationary, timeout=10.0 * self.config.stationary_window_s + 2.0)

    def _is_stationary(self) -> bool:
        robot = self._robot_or_raise()
        window = self.config.stationary_window_s
        deadline = time.monotonic() + 10.0 * window + 0.5
        with self._errors("is_stationary"):
            if robot.is_in_control:
                return False
            s1 = robot.state
            while True:
                time.sleep(window / 4)
                s2 = robot.state
                dt = s2.time.to_sec() - s1.time.to_sec()
                if dt >= window:
                    break
                if time.monotonic() > deadline:
                    logger.warning("robot state did not advance for %.2f s: cannot confirm a standstill",
                                   time.monotonic() - deadline + 10.0 * window + 0.5)
                    return False
            if robot.is_in_control:
                return False
        q1, q2 = np.asarray(s1.q, dtype=np.float64), np.asarray(s2.q, dtype=np.float64)
        return bool(np.max(np.abs(q2 - q1)) / dt <= self.stationary_tol)

    def recover_from_errors(self) -> bool:
        """Call after a classified ArmControlError only (never blindly before every command)."""
        return self._on_robot_thread(self._recover_from_errors, timeout=10.0)

    def _recover_from_errors(self) -> bool:
        robot = self._robot_or_raise()
        with self._errors("recover_from_errors"):
            ok = bool(robot.recover_from_errors())
            return ok and not robot.has_errors
