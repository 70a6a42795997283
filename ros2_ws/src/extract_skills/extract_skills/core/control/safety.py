"""The one safety function between a learned skill decoder and a Franka arm.

Every joint command that reaches an :class:`~extract_skills.core.control.arm.Arm` is the output of
:func:`check_command`.  It never trusts its inputs: non-finite values or wrong shapes are refused
(:class:`UnsafeCommandError`), joint targets are clamped to the robot's limits minus a margin, the
per-step change is clipped, and a target whose end effector would leave the workspace box is scaled
back toward the measured pose.  What comes out is exactly what will be sent, with the reasons
anything was changed.

Limits are Franka's published numbers (docs/RELIABILITY.md, libfranka 0.15); kinematics are
Franka's official Craig-convention (modified) DH parameters, identical for Panda and FR3.
Pure numpy: no rclpy, no franky.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

NUM_JOINTS = 7

# Reason codes in CheckedCommand.reasons (a reason may carry ':<detail>' after the code).
REASON_JOINT_LIMIT = "joint_limit"
REASON_STEP_DELTA = "step_delta"
REASON_WORKSPACE = "workspace"
REASON_GRIPPER_RANGE = "gripper_range"


class UnsafeCommandError(ValueError):
    """A command that cannot be made safe by clipping; it must not reach the arm."""


# --------------------------------------------------------------------------------------------
# Robot models
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RobotModel:
    """Joint limits of one Franka arm model (Franka documentation, libfranka 0.15).

    dq_max is the datasheet maximum; dq_safe the speed the safety limits are validated against
    (FR3's dq_max is position dependent, so the conservative fixed limits are used there).
    """

    name: str
    q_min: tuple[float, ...]  # rad
    q_max: tuple[float, ...]  # rad
    dq_max: tuple[float, ...]  # rad/s
    dq_safe: tuple[float, ...]  # rad/s

    def __post_init__(self) -> None:
        for f in ("q_min", "q_max", "dq_max", "dq_safe"):
            if len(getattr(self, f)) != NUM_JOINTS:
                raise ValueError(f"RobotModel {self.name}: {f} needs {NUM_JOINTS} values")
        if any(lo >= hi for lo, hi in zip(self.q_min, self.q_max)):
            raise ValueError(f"RobotModel {self.name}: q_min must be below q_max")


ROBOT_MODELS: dict[str, RobotModel] = {
    "panda": RobotModel(
        name="panda",
        q_min=(-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973),
        q_max=(2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973),
        dq_max=(2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61),
        dq_safe=(2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61),
    ),
    "fr3": RobotModel(
        name="fr3",
        q_min=(-2.7437, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159),
        q_max=(2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159),
        dq_max=(2.62, 2.62, 2.62, 2.62, 5.26, 4.18, 5.26),
        dq_safe=(2.0, 1.0, 1.5, 1.25, 3.0, 1.5, 3.0),
    ),
}


def robot_model(name: str) -> RobotModel:
    """Look up a robot model by name; the error lists the valid names."""
    try:
        return ROBOT_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown robot model {name!r}; valid: {sorted(ROBOT_MODELS)}") from None


# --------------------------------------------------------------------------------------------
# Forward kinematics (Craig / modified DH, Franka documentation; same for Panda and FR3)
# --------------------------------------------------------------------------------------------
# rows: (a [m], d [m], alpha [rad]) for joints 1..7, then the flange (theta = 0).
FRANKA_DH: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.333, 0.0),
    (0.0, 0.0, -math.pi / 2),
    (0.0, 0.316, math.pi / 2),
    (0.0825, 0.0, math.pi / 2),
    (-0.0825, 0.384, -math.pi / 2),
    (0.0, 0.0, math.pi / 2),
    (0.088, 0.0, math.pi / 2),
)
FRANKA_FLANGE_D = 0.107  # m, joint 7 frame -> flange along z
FRANKA_HAND_TCP_D = 0.1034  # m, flange -> Franka Hand TCP along z (rotated -pi/4 about z)


def _mdh(a: float, d: float, alpha: float, theta: float) -> np.ndarray:
    """Craig convention: Rot_x(alpha) Trans_x(a) Rot_z(theta) Trans_z(d)."""
    ca, sa = math.cos(alpha), math.sin(alpha)
    ct, st = math.cos(theta), math.sin(theta)
    return np.array(
        [
            [ct, -st, 0.0, a],
            [st * ca, ct * ca, -sa, -d * sa],
            [st * sa, ct * sa, ca, d * ca],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )


def flange_pose(q: np.ndarray) -> np.ndarray:
    """Homogeneous transform base -> flange (4, 4) for joint angles q (7,) rad."""
    q = np.asarray(q, dtype=np.float64)
    t = np.eye(4)
    for (a, d, alpha), theta in zip(FRANKA_DH, q):
        t = t @ _mdh(a, d, alpha, float(theta))
    return t @ _mdh(0.0, FRANKA_FLANGE_D, 0.0, 0.0)


def end_effector_pose(q: np.ndarray, tcp_offset: float = FRANKA_HAND_TCP_D) -> np.ndarray:
    """Base -> TCP transform (4, 4): flange, then tcp_offset m along z and -pi/4 about z (Franka Hand)."""
    return flange_pose(q) @ _mdh(0.0, tcp_offset, 0.0, -math.pi / 4)


def checked_points(q: np.ndarray, tcp_offset: float) -> np.ndarray:
    """Points (2, 3) that must stay in the workspace box: flange origin and TCP, base frame, m."""
    f = flange_pose(q)
    tcp = f[:3, 3] + f[:3, 2] * tcp_offset
    return np.stack([f[:3, 3], tcp])


# --------------------------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------------------------
def _vec3(x: Any, name: str) -> tuple[float, float, float]:
    v = tuple(float(e) for e in x)
    if len(v) != 3 or not all(math.isfinite(e) for e in v):
        raise ValueError(f"SafetyLimits.{name} must be 3 finite numbers (x, y, z) in m, got {x!r}")
    return v  # type: ignore[return-value]


@dataclass(frozen=True)
class SafetyLimits:
    """What a command may do.  Validated on construction with a clear ValueError."""

    robot: str = "fr3"
    """Robot model, 'fr3' or 'panda': selects the joint limits."""
    joint_margin: float = 0.05
    """rad kept free inside each joint limit (targets are clamped to [q_min + m, q_max - m])."""
    max_step_delta: float = 0.05
    """rad, largest change of any joint target per control step (relative to the measured q)."""
    workspace_min: tuple[float, float, float] = (-0.85, -0.85, 0.02)
    """m, lower corner of the box (robot base frame) the flange and TCP must stay in.
    The default is the arm's reach envelope above its mounting plane: set the cell's real box."""
    workspace_max: tuple[float, float, float] = (0.85, 0.85, 1.20)
    """m, upper corner of the workspace box (robot base frame)."""
    max_dynamics_factor: float = 0.3
    """Largest relative dynamics factor (velocity/acceleration/jerk scale) allowed, in (0, 1]."""
    dt: float = 0.08
    """s, control period of one skill step."""
    tcp_offset: float = FRANKA_HAND_TCP_D
    """m, flange -> TCP distance along the flange z axis (0.1034 for the Franka Hand)."""

    def __post_init__(self) -> None:
        model = robot_model(self.robot)
        object.__setattr__(self, "workspace_min", _vec3(self.workspace_min, "workspace_min"))
        object.__setattr__(self, "workspace_max", _vec3(self.workspace_max, "workspace_max"))
        for name in ("joint_margin", "max_step_delta", "max_dynamics_factor", "dt", "tcp_offset"):
            if not math.isfinite(float(getattr(self, name))):
                raise ValueError(f"SafetyLimits.{name} must be finite")
        half_range = min(hi - lo for lo, hi in zip(model.q_min, model.q_max)) / 2
        if not 0.0 <= self.joint_margin < half_range:
            raise ValueError(f"SafetyLimits.joint_margin must be in [0, {half_range:.3f}) rad, got {self.joint_margin}")
        if self.dt <= 0:
            raise ValueError(f"SafetyLimits.dt must be > 0 s, got {self.dt}")
        if self.max_step_delta <= 0:
            raise ValueError(f"SafetyLimits.max_step_delta must be > 0 rad, got {self.max_step_delta}")
        speed = self.max_step_delta / self.dt
        if speed > min(model.dq_safe):
            raise ValueError(
                f"SafetyLimits.max_step_delta / dt = {speed:.3f} rad/s exceeds the slowest joint's safe "
                f"speed {min(model.dq_safe)} rad/s for {self.robot}"
            )
        if not 0.0 < self.max_dynamics_factor <= 1.0:
            raise ValueError(f"SafetyLimits.max_dynamics_factor must be in (0, 1], got {self.max_dynamics_factor}")
        if not all(lo < hi for lo, hi in zip(self.workspace_min, self.workspace_max)):
            raise ValueError("SafetyLimits.workspace_min must be below workspace_max on every axis")
        if not 0.0 <= self.tcp_offset < 0.5:
            raise ValueError(f"SafetyLimits.tcp_offset must be in [0, 0.5) m, got {self.tcp_offset}")

    @property
    def model(self) -> RobotModel:
        return ROBOT_MODELS[self.robot]

    @property
    def q_low(self) -> np.ndarray:
        """Lowest allowed joint target (7,) rad: q_min + margin."""
        return np.asarray(self.model.q_min) + self.joint_margin

    @property
    def q_high(self) -> np.ndarray:
        """Highest allowed joint target (7,) rad: q_max - margin."""
        return np.asarray(self.model.q_max) - self.joint_margin

    def in_workspace(self, q: np.ndarray) -> bool:
        """True when flange and TCP of joint configuration q are inside the box."""
        pts = checked_points(q, self.tcp_offset)
        return bool(np.all(pts >= np.asarray(self.workspace_min)) and np.all(pts <= np.asarray(self.workspace_max)))


# --------------------------------------------------------------------------------------------
# The safety function
# --------------------------------------------------------------------------------------------
def _box_violation(q: np.ndarray, limits: SafetyLimits) -> float:
    """m, summed distance of flange and TCP outside the workspace box (0 inside)."""
    pts = checked_points(q, limits.tcp_offset)
    below = np.asarray(limits.workspace_min) - pts
    above = pts - np.asarray(limits.workspace_max)
    return float(np.sum(np.maximum(below, 0.0)) + np.sum(np.maximum(above, 0.0)))


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64, copy=True)
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class CheckedCommand:
    """The output of :func:`check_command`: exactly what an Arm will be sent.

    Only this type is accepted by ``Arm.send``; build it only through check_command.
    """

    q: np.ndarray  # (7,) rad, absolute joint target, read-only
    gripper: float  # opening in [0, 1]
    reasons: tuple[str, ...] = ()  # why anything was changed (REASON_* codes, ':detail' optional)
    q_requested: np.ndarray = field(default_factory=lambda: _frozen(np.full(NUM_JOINTS, np.nan)))
    """(7,) rad, the target before clipping (for logs)."""

    @property
    def clipped(self) -> bool:
        return bool(self.reasons)


def _as_vector(x: Any, n: int, name: str) -> np.ndarray:
    try:
        v = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise UnsafeCommandError(f"{name} is not numeric: {exc}") from None
    if v.shape != (n,):
        raise UnsafeCommandError(f"{name} must have shape ({n},), got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise UnsafeCommandError(f"{name} contains NaN/Inf: {v.tolist()}")
    return v


def check_command(state_q: Any, q_target: Any, gripper_target: Any, limits: SafetyLimits) -> CheckedCommand:
    """Turn a requested joint target into a safe one, or refuse.

    Args:
        state_q: measured joint positions (7,) rad, or an object with a ``q`` attribute (ArmState).
        q_target: requested absolute joint target (7,) rad.
        gripper_target: requested gripper opening, clipped to [0, 1].
        limits: the SafetyLimits in force.

    Steps, in order: (1) refuse non-finite values and wrong shapes; (2) clamp the target to the
    joint limits minus margin; (3) clip every joint's change relative to the measured state to
    ``max_step_delta``; (4) if the flange or TCP of the target would leave the workspace box, move
    the target back along the straight joint-space segment toward the measured pose (projected
    into the joint band), to the furthest point (bisection) whose flange and TCP are inside.

    Raises UnsafeCommandError when the command cannot be made safe:
      * non-finite input or wrong shape;
      * the measured state is more than one step outside the joint limits minus margin (the clamped
        target could then not be reached within max_step_delta: the robot needs supervised
        recovery, not a learned skill);
      * the measured pose is itself outside the workspace box.  The scale-back needs a safe anchor:
        every point between the measured pose and the target is then unverified, and deciding which
        way is "back inside" is a recovery motion for a supervised reset, not for a skill decoder.
    """
    q_state = _as_vector(getattr(state_q, "q", state_q), NUM_JOINTS, "measured state q")
    q_req = _as_vector(q_target, NUM_JOINTS, "q_target")
    try:
        g = float(gripper_target)
    except (TypeError, ValueError):
        raise UnsafeCommandError(f"gripper target is not a number: {gripper_target!r}") from None
    if not math.isfinite(g):
        raise UnsafeCommandError(f"gripper target is not finite: {g}")

    reasons: list[str] = []
    lo, hi = limits.q_low, limits.q_high

    # (2) joint limits minus margin
    q = np.clip(q_req, lo, hi)
    over = np.flatnonzero(q != q_req)
    if over.size:
        reasons.append(f"{REASON_JOINT_LIMIT}:" + ",".join(f"j{j + 1}" for j in over))

    # (3) per-step delta relative to the measured state
    delta = q - q_state
    clipped_delta = np.clip(delta, -limits.max_step_delta, limits.max_step_delta)
    if np.any(clipped_delta != delta):
        reasons.append(f"{REASON_STEP_DELTA}:{float(np.max(np.abs(delta))):.4f}")
        q = q_state + clipped_delta
    tol = 1e-9
    if np.any(q < lo - tol) or np.any(q > hi + tol):
        bad = np.flatnonzero((q < lo - tol) | (q > hi + tol))
        raise UnsafeCommandError(
            f"measured joint(s) {[int(j) + 1 for j in bad]} at {q_state[bad].round(4).tolist()} rad are more than "
            f"one step ({limits.max_step_delta} rad) outside the {limits.robot} limits minus margin: supervised recovery needed"
        )
    q = np.clip(q, lo, hi)  # remove float dust within tol

    # (4) workspace box: scale the step back toward the measured pose.  The anchor is the measured
    # pose projected into the joint band (it differs only if the arm overshot into the margin); it is
    # within one step of the state, so every point between it and q respects (2) and (3) as well.
    if not limits.in_workspace(q):
        anchor = np.clip(q_state, lo, hi)
        if not limits.in_workspace(anchor):
            # Already outside (tracking overshoot, a push): never refuse to hold still, and let a step
            # through only if it brings the flange/TCP back toward the box; anything else holds.
            if _box_violation(q, limits) < _box_violation(anchor, limits):
                reasons.append(f"{REASON_WORKSPACE}:recovering")
            else:
                pts = checked_points(anchor, limits.tcp_offset)
                logger.debug("pose outside the workspace box (flange %s, TCP %s m): holding",
                               pts[0].round(3).tolist(), pts[1].round(3).tolist())
                q = anchor
                reasons.append(f"{REASON_WORKSPACE}:hold")
        else:
            a_in, a_out = 0.0, 1.0
            step = q - anchor
            for _ in range(30):  # 2^-30 of the step: far below encoder resolution
                mid = 0.5 * (a_in + a_out)
                if limits.in_workspace(anchor + mid * step):
                    a_in = mid
                else:
                    a_out = mid
            q = anchor + a_in * step
            reasons.append(f"{REASON_WORKSPACE}:{a_in:.3f}")

    # gripper
    g_out = min(1.0, max(0.0, g))
    if g_out != g:
        reasons.append(f"{REASON_GRIPPER_RANGE}:{g:.4f}")

    if reasons:
        logger.debug("command clipped: %s", reasons)
    return CheckedCommand(q=_frozen(q), gripper=g_out, reasons=tuple(reasons), q_requested=_frozen(q_req))


def check_dynamics_factor(x: Any, limits: SafetyLimits) -> float:
    """Return x as a float if it is a valid relative dynamics factor in (0, limits.max_dynamics_factor].

    Raises UnsafeCommandError (a ValueError) otherwise; a factor above 1 is always refused.
    """
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise UnsafeCommandError(f"relative dynamics factor is not a number: {x!r}") from None
    if not math.isfinite(v) or not 0.0 < v <= limits.max_dynamics_factor:
        raise UnsafeCommandError(
            f"relative dynamics factor {v} outside (0, {limits.max_dynamics_factor}] (configured max; never above 1)"
        )
    return v
