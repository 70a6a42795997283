"""The arm interface the skill executor drives, its error classes, and a scripted fake.

``Arm.send`` accepts only a :class:`~extract_skills.core.control.safety.CheckedCommand`, the output of the
one safety function; nothing else can reach a motor.  The error classes mirror franky's exception
families, so an action server can classify a failure without importing franky:

=====================  ==============================  =======================================
ArmError subclass      franky / libfranka              what the caller does
=====================  ==============================  =======================================
ArmControlError        ControlException (reflex)       abort the goal, classified recovery
ArmUserStopError       ControlException, user stop     abort, wait for a human (no auto-retry)
ArmCommandError        CommandException                reject / abort the command, no retry
ArmNetworkError        NetworkException                Robot object dead: recreate, back off
ArmRealtimeError       RealtimeException               fail fast: configuration problem
ArmIncompatibleError   IncompatibleVersionException    start-up error: wrong libfranka
=====================  ==============================  =======================================

Pure python + numpy (core layer).
"""
from __future__ import annotations

import abc
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .safety import NUM_JOINTS, CheckedCommand, UnsafeCommandError

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
class ArmError(RuntimeError):
    """Base class of every error an Arm raises."""


class ArmControlError(ArmError):
    """The robot stopped itself (reflex, limit violation, communication constraints violation).

    Recoverable: abort the goal, then a classified ``recover_from_errors`` (never blindly)."""


class ArmUserStopError(ArmControlError):
    """External activation device (e-stop / user stop) pressed: wait for a human, never auto-recover."""


class ArmCommandError(ArmError):
    """The robot refused a command (invalid in the current mode): reject it, do not retry."""


class ArmNetworkError(ArmError):
    """Connection to the robot is lost: the handle is dead, recreate it (with back-off, no tight loop)."""


class ArmRealtimeError(ArmError):
    """Realtime scheduling could not be obtained: fix the configuration (rtprio / kernel)."""


class ArmIncompatibleError(ArmError):
    """Client library and robot firmware speak different protocol versions (start-up error)."""


# --------------------------------------------------------------------------------------------
# Interface
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArmState:
    """One measurement of the arm."""

    q: np.ndarray  # (7,) rad
    dq: np.ndarray  # (7,) rad/s
    gripper: float  # opening in [0, 1], 1 = fully open
    stamp: float  # s, time.monotonic() when measured

    def proprio(self) -> np.ndarray:
        """The 8-D proprioception vector [q(7), gripper]."""
        return np.concatenate([self.q, [self.gripper]])


class Arm(abc.ABC):
    """A 7-joint arm with a gripper, commanded with checked absolute joint targets."""

    stationary_tol: float = 0.01  # rad/s, max |dq| counted as stationary
    dynamics_factor: float | None = None  # the running goal's factor (None: the arm's configured one)
    state_after_command_is_final: bool = False
    """True for a simulated arm that steps one whole control period per command: the first state read after a
    command already shows all of that command's motion, so a skill's end needs no wait for the period to pass.
    False for a real arm: right after a command it has only begun to move."""
    next_command_not_before: float = -math.inf
    """Monotonic time of the next control tick after the last command: the executors that drive this arm (skills,
    move home) keep it, so no command is brought forward by a skill that ended before its last period did."""

    def set_dynamics_factor(self, factor: float | None) -> None:
        """Dynamics factor (velocity/acceleration/jerk scale in (0, 1]) for the motions that follow; None
        restores the arm's configured one. A goal can only slow an arm below its configuration, never speed
        it up. Arms without a dynamics model (the fake, the kitchen's position actuators) only record it."""
        if factor is not None and not (math.isfinite(factor) and 0.0 < factor <= 1.0):
            raise UnsafeCommandError(f"dynamics factor {factor!r} outside (0, 1]")
        self.dynamics_factor = None if factor is None else float(factor)

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the connection; raises an ArmError subclass with a clear message on failure."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Stop and release the connection (idempotent)."""

    @abc.abstractmethod
    def read_state(self) -> ArmState:
        """Return the latest measured state."""

    @abc.abstractmethod
    def _send(self, cmd: CheckedCommand) -> None:
        """Implementation hook of :meth:`send` (cmd already type-checked)."""

    def send(self, cmd: CheckedCommand) -> None:
        """Command the arm toward cmd.q / cmd.gripper (asynchronous: returns at once).

        Only the output of the safety function is accepted (TypeError otherwise)."""
        if not isinstance(cmd, CheckedCommand):
            raise TypeError(f"Arm.send accepts only a CheckedCommand from check_command(), got {type(cmd).__name__}")
        self._send(cmd)

    @abc.abstractmethod
    def stop(self) -> None:
        """Decelerate to a stop; return when stationary (or raise an ArmError)."""

    @abc.abstractmethod
    def is_stationary(self) -> bool:
        """True when no joint moves faster than ``stationary_tol``."""

    def recover_from_errors(self) -> bool:
        """Clear a classified, non-critical error (after ArmControlError only); True on success."""
        return False

    def __enter__(self) -> "Arm":
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()


# --------------------------------------------------------------------------------------------
# Fake
# --------------------------------------------------------------------------------------------
@dataclass
class FakeArmScript:
    """Faults a FakeArm injects.  Steps count calls to send(), starting at 0."""

    raise_at_step: dict[int, type[ArmError]] = field(default_factory=dict)
    """send() number N raises this ArmError class (the command is not applied)."""
    estop_at_step: int | None = None
    """send() number N raises ArmUserStopError and the arm stays e-stopped until release_estop()."""
    off_pose_offset: np.ndarray | None = None
    """(7,) rad added to every tracked target: the arm settles away from where it was sent."""
    stop_extra_polls: int = 0
    """stop() returns at once while still moving; is_stationary() stays False for this many polls."""
    stop_never: bool = False
    """The arm never becomes stationary after stop() (a stuck/runaway adapter)."""
    recover_succeeds: bool = True
    """Return value of recover_from_errors()."""


class FakeArm(Arm):
    """A scripted, fault-injecting arm for tests.

    Simulation: each send() is one control period; the joints move a fraction ``tracking_gain`` of
    the way to the (clipped) target (first-order tracking) and dq is the resulting speed.  Every
    CheckedCommand received is recorded in ``commands``.  Time is only read for stamps.
    """

    def __init__(
        self,
        q0: np.ndarray | None = None,
        gripper0: float = 1.0,
        *,
        tracking_gain: float = 0.6,
        dt: float = 0.08,
        script: FakeArmScript | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0.0 < tracking_gain <= 1.0:
            raise ValueError(f"tracking_gain must be in (0, 1], got {tracking_gain}")
        if dt <= 0:
            raise ValueError(f"dt must be > 0 s, got {dt}")
        home = np.array([0.0, -np.pi / 4, 0.0, -3 * np.pi / 4, 0.0, np.pi / 2, np.pi / 4])
        self.q = np.array(home if q0 is None else q0, dtype=np.float64)
        if self.q.shape != (NUM_JOINTS,):
            raise ValueError(f"q0 must have shape ({NUM_JOINTS},)")
        self.dq = np.zeros(NUM_JOINTS)
        self.gripper = float(gripper0)
        self.tracking_gain = tracking_gain
        self.dt = dt
        self.script = script or FakeArmScript()
        self.clock = clock
        self.commands: list[CheckedCommand] = []
        self.connected = False
        self.estopped = False
        self.stop_calls = 0
        self.recover_calls = 0
        self._send_count = 0
        self._polls_left = 0
        self._target = self.q.copy()

    # -- lifecycle
    def connect(self) -> None:
        self.connected = True

    def disconnect(self) -> None:
        self.connected = False

    def _require_connected(self) -> None:
        if not self.connected:
            raise ArmNetworkError("FakeArm is not connected")

    # -- state
    def read_state(self) -> ArmState:
        self._require_connected()
        return ArmState(q=self.q.copy(), dq=self.dq.copy(), gripper=self.gripper, stamp=self.clock())

    def _advance(self) -> None:
        target = self._target + (0.0 if self.script.off_pose_offset is None else self.script.off_pose_offset)
        q_new = self.q + self.tracking_gain * (target - self.q)
        self.dq = (q_new - self.q) / self.dt
        self.q = q_new

    # -- commands
    def _send(self, cmd: CheckedCommand) -> None:
        self._require_connected()
        n = self._send_count
        self._send_count += 1
        if self.estopped:
            raise ArmUserStopError("user stop active (fake)")
        if self.script.estop_at_step == n:
            self.estopped = True
            self.dq = np.zeros(NUM_JOINTS)
            raise ArmUserStopError(f"user stop pressed at step {n} (fake)")
        err = self.script.raise_at_step.get(n)
        if err is not None:
            if issubclass(err, ArmControlError):
                self.dq = np.zeros(NUM_JOINTS)  # a reflex stops the robot
            raise err(f"injected {err.__name__} at step {n} (fake)")
        self.commands.append(cmd)
        self._target = np.array(cmd.q, dtype=np.float64)
        self.gripper = float(cmd.gripper)
        self._advance()

    def stop(self) -> None:
        self._require_connected()
        self.stop_calls += 1
        self._target = self.q.copy()
        if self.script.stop_never or self.script.stop_extra_polls > 0:
            self._polls_left = self.script.stop_extra_polls
            self.dq = np.full(NUM_JOINTS, 10 * self.stationary_tol)
            return  # a misbehaving adapter: returns while still moving
        self.dq = np.zeros(NUM_JOINTS)

    def is_stationary(self) -> bool:
        if self.script.stop_never and self.stop_calls:
            return False
        if self._polls_left > 0:
            self._polls_left -= 1
            if self._polls_left == 0:
                self.dq = np.zeros(NUM_JOINTS)
            return False
        return bool(np.max(np.abs(self.dq)) <= self.stationary_tol)

    def recover_from_errors(self) -> bool:
        self.recover_calls += 1
        if self.estopped:
            return False  # a human has to release the e-stop first
        return self.script.recover_succeeds

    def release_estop(self) -> None:
        """A human released the external activation device."""
        self.estopped = False
