"""Scripted demonstrations in the simulated kitchen.

Each subtask is a short list of end-effector waypoints placed relative to the object's handle or knob
site (read from the MuJoCo model at the start of the subtask), reached by damped-least-squares
differential IK on the ``end_effector`` site (position + orientation, with a null-space pull toward
the rest posture). The IK output is a joint position target fed to :meth:`KitchenArm.step_to`, so a
demonstration is made of exactly the actions a learned skill would emit.

Variation between episodes: joint-space noise on the start posture, random subtask orders of 2-4
subtasks, jitter on the waypoints. Held-out evaluation tasks (:func:`heldout_task_sequences`) never
appear in generated demonstrations.

Between subtasks the arm backs off and returns to a jittered rest posture in joint space, so every
subtask starts from a similar configuration. A subtask that the physics reports as not done is
retried once from there (``DemoConfig.attempts``); burner knobs are re-gripped where they stopped if
the weak kitchen gripper (about 7 N) slipped. A subtask counts as successful only when the physics
says so (``KitchenSim.subtask_flags``, the upstream goal and 0.3 tolerance), at any step of the episode
(the upstream env's own definition); ``meta["final_flags"]`` records what is still done at the end.

Approaches (positions relative to model sites, read when the subtask starts):

* light switch / slide cabinet: closed gripper pointing forward pushes the lever / handle sideways;
* bottom / top burner: the open fingers straddle the knob's grip bar, close, roll the wrist 1.2 rad;
* microwave / hinge cabinet: grasp the handle and pull it along the door's arc (hinge from the model),
  rotating the wrist with the door; the microwave handle is low, so the gripper is pitched down;
* kettle: top-down grasp of the handle bar (pitched 0.5 rad about the bar's own axis for reach),
  carried to just short of the top-left burner's centre and released.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from extract_skills.core.data.dataset import SUBTASK_NAMES, EpisodeData
from extract_skills.core.sim.kitchen import KitchenArm, KitchenObs, KitchenSim, StepResult
from extract_skills.core.control.safety import SafetyLimits

LOG = logging.getLogger(__name__)

EE_SITE = "end_effector"
#: Rest posture, rad: the kitchen's own initial posture with joint 2 moved inside the real Panda's
#: limit (the kitchen model allows -1.768; a Panda stops at -1.7628).
REST_Q = np.array([0.148, -1.69, 1.844, -2.477, 0.260, 0.713, 1.595])
#: Demonstrations stay this far inside the real Panda's joint limits, a little more than the
#: deployment safety margin (config/sim.yaml joint_margin), so skills learnt from them never need clamping.
DEMO_JOINT_MARGIN = 0.06  # rad
PANDA = SafetyLimits(robot="panda", joint_margin=DEMO_JOINT_MARGIN, max_step_delta=0.16)
#: Subtasks the scripted controllers know how to do (others are never put into sequences).
SCRIPTED_SUBTASKS: tuple[str, ...] = SUBTASK_NAMES


@dataclass(frozen=True)
class DemoConfig:
    """How scripted episodes vary and how hard the controller pushes."""

    start_noise: float = 0.08
    """Uniform joint noise on the start posture, +- rad per joint."""
    waypoint_jitter: float = 0.005
    """Uniform jitter on waypoint positions, +- m per axis."""
    min_subtasks: int = 1
    max_subtasks: int = 4
    max_step_m: float = 0.04
    """Largest Cartesian step asked of the IK per control step (m per 0.08 s)."""
    max_step_rad: float = 0.12
    """Largest orientation step per control step (rad)."""
    damping: float = 0.05
    """Damped least squares lambda."""
    subtask_step_budget: int = 140
    """Control steps allowed per subtask before it is abandoned."""
    heldout_count: int = 3
    """Number of held-out 4-subtask evaluation sequences."""
    home_steps: int = 30
    """Control steps allowed for the joint-space return to rest between subtasks."""
    attempts: int = 2
    """Tries per subtask (a retry starts from the rest posture, like a human demonstrator would)."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_subtasks <= self.max_subtasks <= len(SCRIPTED_SUBTASKS):
            raise ValueError(f"need 1 <= min_subtasks <= max_subtasks <= {len(SCRIPTED_SUBTASKS)}")
        for name in ("start_noise", "waypoint_jitter", "max_step_m", "max_step_rad", "damping"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.subtask_step_budget < 10:
            raise ValueError("subtask_step_budget must be >= 10")
        if self.attempts < 1:
            raise ValueError("attempts must be >= 1")


# ----------------------------------------------------------------------------- geometry helpers
def rot_about(axis: Sequence[float], angle: float) -> np.ndarray:
    """Rotation matrix of ``angle`` rad about the world ``axis``."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def rotation_error(r_target: np.ndarray, r_current: np.ndarray) -> np.ndarray:
    """Axis-angle vector (world frame) rotating ``r_current`` onto ``r_target``."""
    r = r_target @ r_current.T
    cos = np.clip((np.trace(r) - 1) / 2, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-6:
        return np.zeros(3)
    v = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    s = np.sin(angle)
    if s < 1e-6:  # angle ~ pi: pick any consistent axis
        w, u = np.linalg.eigh((r + r.T) / 2)
        return u[:, -1] * angle
    return v / (2 * s) * angle


@dataclass
class Waypoint:
    """An end-effector goal: position (m, world), orientation, gripper opening, tolerance."""

    pos: np.ndarray
    rot: np.ndarray
    gripper: float
    tol: float = 0.015  # m
    max_steps: int = 40
    hold: int = 0  # extra steps to hold once reached (e.g. let the gripper close)
    speed: float = 1.0  # fraction of DemoConfig.max_step_m
    rot_tol: float = 0.08  # rad


class IKController:
    """Damped-least-squares differential IK on the ``end_effector`` site of the kitchen's Franka."""

    MAX_LEAD = 0.2  # rad, largest lead of the integrated command over the measured joints

    def __init__(self, sim: KitchenSim, arm: KitchenArm, config: DemoConfig) -> None:
        import mujoco

        self._mj = mujoco
        self.sim = sim
        self.arm = arm
        self.config = config
        self.model = sim.model
        self._kd = mujoco.MjData(sim.model)  # scratch data: IK never touches the env's state
        self.site = mujoco.mj_name2id(sim.model, mujoco.mjtObj.mjOBJ_SITE, EE_SITE)
        self._jacp = np.zeros((3, sim.model.nv))
        self._jacr = np.zeros((3, sim.model.nv))
        self.q_cmd: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the integrated command (call at episode start)."""
        self.q_cmd = None

    def ee_pose(self, q: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(position (3,), rotation (3, 3)) of the end-effector site for arm joints ``q`` (default: now)."""
        kd = self._kd
        kd.qpos[:] = self.sim.data.qpos
        if q is not None:
            kd.qpos[:7] = q
        self._mj.mj_kinematics(self.model, kd)
        self._mj.mj_comPos(self.model, kd)
        return kd.site_xpos[self.site].copy(), kd.site_xmat[self.site].reshape(3, 3).copy()

    def joint_anchor(self, name: str) -> np.ndarray:
        """World position (3,) of a joint's anchor (a door's hinge axis passes through it)."""
        jid = self._mj.mj_name2id(self.model, self._mj.mjtObj.mjOBJ_JOINT, name)
        return self.sim.data.xanchor[jid].copy()

    def site_pos(self, name: str) -> np.ndarray:
        sid = self._mj.mj_name2id(self.model, self._mj.mjtObj.mjOBJ_SITE, name)
        return self.sim.data.site_xpos[sid].copy()

    def joint_target(self, pos: np.ndarray, rot: np.ndarray, speed: float = 1.0) -> tuple[np.ndarray, float, float]:
        """One IK step toward (pos, rot): returns (q_target (7,), position error (m), orientation error (rad))."""
        cfg = self.config
        q = self.sim.data.qpos[:7].copy()
        p, r = self.ee_pose(q)
        self._mj.mj_jacSite(self.model, self._kd, self._jacp, self._jacr, self.site)
        jac = np.vstack([self._jacp[:, :7], self._jacr[:, :7]])
        dp = pos - p
        dist = float(np.linalg.norm(dp))
        lim = cfg.max_step_m * speed
        if dist > lim:
            dp = dp * (lim / dist)
        dr = rotation_error(rot, r)
        ang = float(np.linalg.norm(dr))
        if ang > cfg.max_step_rad:
            dr = dr * (cfg.max_step_rad / ang)
        err = np.concatenate([dp, dr])
        jjt = jac @ jac.T + (cfg.damping**2) * np.eye(6)
        j_pinv = jac.T @ np.linalg.solve(jjt, np.eye(6))
        dq = j_pinv @ err
        null = (np.eye(7) - j_pinv @ jac) @ (0.05 * (REST_Q - q))
        dq = np.clip(dq + null, -0.15, 0.15)
        # Integrate the command instead of adding dq to the measured q: the position actuators sag
        # under gravity, and an integrating command removes that steady-state error. The command is
        # kept within MAX_LEAD rad of the measured posture so pushing on a blocked object stays gentle.
        base = q if self.q_cmd is None else self.q_cmd
        q_cmd = np.clip(base + dq, q - self.MAX_LEAD, q + self.MAX_LEAD)
        lo = np.maximum(self.model.jnt_range[:7, 0] + 0.02, PANDA.q_low)
        hi = np.minimum(self.model.jnt_range[:7, 1] - 0.02, PANDA.q_high)
        self.q_cmd = np.clip(q_cmd, lo, hi)
        return self.q_cmd.copy(), dist, ang


@dataclass
class EpisodeRecorder:
    """Collects observations and actions of one episode in the dataset layout."""

    images: list = field(default_factory=list)
    qpos: list = field(default_factory=list)
    qvel: list = field(default_factory=list)
    flags: list = field(default_factory=list)
    actions: list = field(default_factory=list)
    commands: list = field(default_factory=list)
    stamps: list = field(default_factory=list)

    def add_obs(self, obs: KitchenObs) -> None:
        self.images.append(obs.image)
        self.qpos.append(obs.qpos)
        self.qvel.append(obs.qvel)
        self.flags.append(obs.subtasks_done)
        self.stamps.append(obs.stamp)

    def add_step(self, res: StepResult, q_target: np.ndarray, gripper_target: float) -> None:
        """Record one control step: the command it was given, the env action applied, what followed."""
        self.actions.append(res.action)
        self.commands.append(np.concatenate([np.asarray(q_target, np.float64), [gripper_target]]))
        self.add_obs(res.obs)

    def __len__(self) -> int:
        return len(self.actions)

    def to_episode(self, meta: dict, image_size: int) -> EpisodeData:
        images = (
            np.stack(self.images)
            if self.images and self.images[0] is not None
            else np.zeros((len(self.qpos), image_size, image_size, 3), np.uint8)
        )
        return EpisodeData(
            images=images,
            qpos=np.stack(self.qpos),
            qvel=np.stack(self.qvel),
            subtasks_done=np.stack(self.flags),
            env_actions=np.stack(self.actions) if self.actions else np.zeros((0, 9), np.float32),
            stamps=np.asarray(self.stamps),
            meta=meta,
            commands=np.stack(self.commands) if self.commands else np.zeros((0, 8), np.float32),
        )


# ----------------------------------------------------------------------------- subtask scripts
class ScriptedDemo:
    """Runs scripted subtasks in the kitchen, recording every control step."""

    def __init__(self, sim: KitchenSim, config: DemoConfig | None = None) -> None:
        self.sim = sim
        self.config = config or DemoConfig()
        self.arm = KitchenArm(sim)
        self.arm.connect()
        self.ik = IKController(sim, self.arm, self.config)
        _, self.rot0 = self.ik.ee_pose(REST_Q)  # gripper pointing forward (+y), fingers along x
        self.rec = EpisodeRecorder()

    # -- low level -------------------------------------------------------------------------
    def _step(self, q_target: np.ndarray, gripper: float) -> StepResult:
        res = self.arm.step_to(q_target, gripper)
        # The label is the command (KitchenArm clips the gripper target to [0, 1]), not the motion it caused.
        self.rec.add_step(res, q_target, float(np.clip(gripper, 0.0, 1.0)))
        return res

    def goto(self, wp: Waypoint, budget: list[int]) -> bool:
        """Drive to ``wp``; ``budget`` is a one-element list of remaining steps (shared per subtask)."""
        reached = False
        for _ in range(wp.max_steps):
            if budget[0] <= 0:
                return False
            q_t, dist, ang = self.ik.joint_target(wp.pos, wp.rot, wp.speed)
            if dist < wp.tol and ang < wp.rot_tol:
                reached = True
                break
            self._step(q_t, wp.gripper)
            budget[0] -= 1
        for _ in range(wp.hold):
            if budget[0] <= 0:
                break
            q_t, _, _ = self.ik.joint_target(wp.pos, wp.rot, wp.speed)
            self._step(q_t, wp.gripper)
            budget[0] -= 1
        return reached

    def _jit(self, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(-1, 1, 3) * self.config.waypoint_jitter

    # -- subtask plans ---------------------------------------------------------------------
    def plan_light_switch(self, rng: np.random.Generator) -> list[Waypoint]:
        s = self.ik.site_pos("light_site") + self._jit(rng)
        r = self.rot0
        return [
            Waypoint(s + [0.07, -0.12, -0.0], r, 0.0, tol=0.03),
            Waypoint(s + [0.06, 0.0, 0.0], r, 0.0),
            Waypoint(s + [-0.09, 0.0, 0.0], r, 0.0, speed=0.6, tol=0.02, max_steps=25),
            Waypoint(s + [-0.08, -0.12, 0.0], r, 0.0, tol=0.03),
        ]

    def plan_slide_cabinet(self, rng: np.random.Generator) -> list[Waypoint]:
        s = self.ik.site_pos("slide_site") + self._jit(rng)
        r = self.rot0
        return [
            Waypoint(s + [-0.08, -0.12, 0.0], r, 0.0, tol=0.03),
            Waypoint(s + [-0.06, 0.0, 0.0], r, 0.0),
            Waypoint(s + [0.22, 0.0, 0.0], r, 0.0, speed=0.6, tol=0.02, max_steps=40),
            Waypoint(s + [0.2, -0.12, 0.0], r, 0.0, tol=0.03),
        ]

    def _knob_cycle(self, site: str, start_angle: float, rng: np.random.Generator) -> list[Waypoint]:
        """Grip the knob's bar with the gripper rolled by ``start_angle`` and roll it to ``KNOB_TURN``."""
        s = self.ik.site_pos(site) + self._jit(rng) * 0.5
        r = rot_about([0, 1, 0], start_angle) @ self.rot0
        turned = rot_about([0, 1, 0], self.KNOB_TURN) @ self.rot0
        # The fingertips reach FINGERTIP_OFFSET beyond the end-effector site: this puts the finger
        # pads around the knob's grip bar without pressing into the knob's base plate.
        grip = s + [0.0, 0.01 - self.FINGERTIP_OFFSET, 0.0]
        return [
            Waypoint(s + [0.0, -0.15, 0.0], r, 1.0, tol=0.02),
            Waypoint(s + [0.0, -0.08, 0.0], r, 1.0, tol=0.006, rot_tol=0.03, max_steps=20),
            Waypoint(grip, r, 1.0, tol=0.008, speed=0.4, max_steps=20),
            Waypoint(grip, r, 0.0, tol=0.015, hold=5, max_steps=10),
            Waypoint(grip, turned, 0.0, tol=0.02, hold=3, max_steps=20),
            Waypoint(grip, turned, 1.0, tol=0.02, rot_tol=0.2, hold=3, max_steps=8),
            Waypoint(s + [0.0, -0.15, 0.0], turned, 1.0, tol=0.03, rot_tol=0.2),
        ]

    def run_knob(self, name: str, site: str, rng: np.random.Generator, budget: list[int]) -> None:
        """Turn a burner knob; if the grip slipped (knob short of the goal), re-grip where it is now.

        The kitchen's finger actuators squeeze with only ~7 N, so the bar sometimes slips out of the
        fingers part-way; a demonstrator with access to the knob angle simply tries again.
        """
        joint = int(self.sim._kenv.OBS_ELEMENT_INDICES[name][0])
        start = 0.0
        for _ in range(self.KNOB_ATTEMPTS):
            for wp in self._knob_cycle(site, start, rng):
                self.goto(wp, budget)
                if budget[0] <= 0:
                    return
            if self.sim.subtask_flags()[SUBTASK_NAMES.index(name)]:
                return
            start = -float(self.sim.data.qpos[joint])  # knob angle is about -y: gripper roll about +y

    def plan_bottom_burner(self, rng: np.random.Generator) -> list[Waypoint]:
        return self._knob_cycle("knob2_site", 0.0, rng)

    def plan_top_burner(self, rng: np.random.Generator) -> list[Waypoint]:
        return self._knob_cycle("knob4_site", 0.0, rng)

    def _swing_door(self, handle: np.ndarray, joint: str, r: np.ndarray, angles: Sequence[float],
                    retreat: Sequence[float]) -> list[Waypoint]:
        """Grasp a door handle, swing it about the door's vertical hinge through ``angles`` (rad), let go, back off."""
        hinge = self.ik.joint_anchor(joint)[:2]
        v = handle[:2] - hinge
        rad, th0 = np.linalg.norm(v), np.arctan2(v[1], v[0])
        wps = [
            Waypoint(handle + [0.0, -0.12, 0.0], r, 1.0, tol=0.02),
            Waypoint(handle + [0.0, -0.005, 0.0], r, 1.0, tol=0.01),
            Waypoint(handle + [0.0, -0.005, 0.0], r, 0.0, tol=0.01, hold=6),
        ]
        for phi in angles:
            p = np.array([hinge[0] + rad * np.cos(th0 + phi), hinge[1] + rad * np.sin(th0 + phi), handle[2]])
            wps.append(Waypoint(p, rot_about([0, 0, 1], phi) @ r, 0.0, tol=0.02, speed=0.6, max_steps=20))
        last = wps[-1]
        wps.append(Waypoint(last.pos, last.rot, 1.0, tol=0.02, hold=4))
        wps.append(Waypoint(last.pos + np.asarray(retreat), last.rot, 1.0, tol=0.03))
        return wps

    def plan_microwave(self, rng: np.random.Generator) -> list[Waypoint]:
        m = self.ik.site_pos("microhandle_site") + self._jit(rng)
        # The handle is low: tilt the gripper down (about world x) so the arm can reach it.
        r = rot_about([1, 0, 0], self.MICROWAVE_TILT) @ self.rot0
        return self._swing_door(m, "microwave", r, (-0.2, -0.4, -0.6, -0.8), (0.05, -0.1, 0.0))

    #: Top-down grasp: approach axis -z, fingers closing along y (across the kettle's x-aligned handle).
    ROT_DOWN = np.column_stack([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])
    #: Kettle goal (upstream ``OBS_ELEMENT_GOALS['kettle'][:3]``, kettle body origin on the top-left burner).
    KETTLE_GOAL = np.array([-0.23, 0.75, 1.62])
    KETTLE_HANDLE_HEIGHT = 0.259  # m, handle above the kettle body origin (kettle_site)
    KETTLE_PITCH = 0.5  # rad

    def plan_kettle(self, rng: np.random.Generator) -> list[Waypoint]:
        k = self.ik.site_pos("kettle_site") + self._jit(rng) * 0.4
        # Pitched forward about the handle's own axis (x): the grasp is unchanged, the reach is easier.
        r = rot_about([1, 0, 0], self.KETTLE_PITCH) @ self.ROT_DOWN
        # Set it down a little short of the burner centre: top-down grasps get awkward beyond
        # y = 0.7 m, and the upstream tolerance (0.3 on the 7-D pose) leaves plenty of margin.
        goal = self.KETTLE_GOAL + [0.0, -0.08, self.KETTLE_HANDLE_HEIGHT] + self._jit(rng) * 2
        return [
            Waypoint(k + [0.0, -0.1, 0.25], r, 1.0, tol=0.03, max_steps=40),
            Waypoint(k + [0.0, 0.0, 0.12], r, 1.0, tol=0.01, rot_tol=0.03, max_steps=25),
            Waypoint(k + [0.0, 0.0, 0.01], r, 1.0, tol=0.01, speed=0.5),
            Waypoint(k + [0.0, 0.0, 0.01], r, 0.0, tol=0.01, hold=8),
            Waypoint(k + [0.0, 0.0, 0.12], r, 0.0, tol=0.02, speed=0.5),
            Waypoint(goal + [0.0, 0.0, 0.1], r, 0.0, tol=0.02, speed=0.6, max_steps=40),
            Waypoint(goal + [0.0, 0.0, 0.03], r, 0.0, tol=0.015, speed=0.5, max_steps=20),
            Waypoint(goal + [0.0, 0.0, 0.03], r, 1.0, tol=0.03, rot_tol=0.3, hold=5, max_steps=10),
            Waypoint(goal + [0.0, 0.0, 0.13], r, 1.0, tol=0.03, rot_tol=0.3, speed=0.5, max_steps=25),
        ]

    def plan_hinge_cabinet(self, rng: np.random.Generator) -> list[Waypoint]:
        h = self.ik.site_pos("hinge_site2") + self._jit(rng)
        return self._swing_door(h, "right_hinge_cabinet", self.rot0, (0.25, 0.5, 0.75, 1.0, 1.25, 1.5),
                                (0.0, -0.1, 0.0))

    MICROWAVE_TILT = -0.6  # rad
    KNOB_ATTEMPTS = 2
    KNOB_SITES = {"bottom burner": "knob2_site", "top burner": "knob4_site"}
    KNOB_TURN = 1.2  # rad, gripper roll that turns a knob to ~0.9-1.1 rad (goal 0.88 +- 0.3)
    FINGERTIP_OFFSET = 0.045  # m, fingertips beyond the end_effector site along the approach axis
    KETTLE_TILT = -0.8  # rad

    PLANS: dict[str, str] = {
        "microwave": "plan_microwave",
        "kettle": "plan_kettle",
        "light switch": "plan_light_switch",
        "slide cabinet": "plan_slide_cabinet",
        "hinge cabinet": "plan_hinge_cabinet",
        "bottom burner": "plan_bottom_burner",
        "top burner": "plan_top_burner",
    }

    def retreat(self, rng: np.random.Generator, budget: list[int]) -> None:
        """Back away from the furniture, then return to a (jittered) rest posture in joint space.

        Returning in joint space makes every subtask start from a similar arm configuration, so a
        subtask works as reliably late in a sequence as first (differential IK alone drifts into
        other elbow/wrist configurations).
        """
        p, _ = self.ik.ee_pose()
        g = float(self.arm.read_state().gripper > 0.5)
        self.goto(Waypoint(p + [0.0, -0.1, 0.03], self.ik.ee_pose()[1], g, tol=0.03, max_steps=10), budget)
        home = np.clip(REST_Q + rng.uniform(-1, 1, 7) * self.config.start_noise * 0.5, PANDA.q_low, PANDA.q_high)
        for _ in range(self.config.home_steps):
            q = self.sim.data.qpos[:7]
            if np.max(np.abs(home - q)) < 0.05:
                break
            self._step(q + np.clip(home - q, -0.1, 0.1), 1.0)
        self.ik.reset()

    def run_subtask(self, name: str, rng: np.random.Generator) -> bool:
        """Run one subtask (up to ``DemoConfig.attempts`` tries); success is read from the physics."""
        idx = SUBTASK_NAMES.index(name)
        for attempt in range(self.config.attempts):
            budget = [self.config.subtask_step_budget]
            if name in self.KNOB_SITES:
                self.run_knob(name, self.KNOB_SITES[name], rng, budget)
            else:
                for wp in getattr(self, self.PLANS[name])(rng):
                    self.goto(wp, budget)
                    if budget[0] <= 0:
                        break
            self.retreat(rng, [max(budget[0], 10)])
            if self.sim.subtask_flags()[idx] or name in self.sim.episode_completions:
                LOG.debug("subtask %s done (attempt %d)", name, attempt + 1)
                return True
        LOG.debug("subtask %s failed after %d attempts", name, self.config.attempts)
        return False

    def run_episode(self, task_sequence: Sequence[str], seed: int) -> tuple[EpisodeData, dict[str, bool]]:
        """Reset with a perturbed start posture and run the subtasks in order."""
        rng = np.random.default_rng(seed)
        q0 = np.clip(REST_Q + rng.uniform(-1, 1, 7) * self.config.start_noise, PANDA.q_low, PANDA.q_high)
        obs = self.sim.reset(seed=seed, task_sequence=task_sequence, arm_qpos=q0)
        self.ik.reset()
        self.rec = EpisodeRecorder()
        self.rec.add_obs(obs)
        results: dict[str, bool] = {}
        for name in task_sequence:
            results[name] = self.run_subtask(name, rng)
        # Success per subtask is read from the physics at the end and from the first-completion log.
        final = self.sim.subtask_flags()
        results = {n: bool(results[n] or n in self.sim.episode_completions) for n in task_sequence}
        meta = {
            "task_sequence": list(task_sequence),
            "seed": int(seed),
            "success": all(results.values()),
            "subtask_success": results,
            "final_flags": {n: bool(f) for n, f in zip(SUBTASK_NAMES, final)},
            "source": "scripted_sim",
            "dt": self.sim.dt,
        }
        return self.rec.to_episode(meta, self.sim.config.image_size), results


# ----------------------------------------------------------------------------- task sequences
def heldout_task_sequences(count: int = 3, seed: int = 12345) -> list[tuple[str, ...]]:
    """Held-out evaluation tasks: ordered 4-subtask sequences never used for demonstrations.

    Deterministic for a given (count, seed). They include the classic EXTRACT/SPiRL evaluation
    task ``microwave, kettle, light switch, slide cabinet`` when ``count`` >= 1.
    """
    seqs: list[tuple[str, ...]] = [("microwave", "kettle", "light switch", "slide cabinet")]
    rng = np.random.default_rng(seed)
    while len(seqs) < count:
        cand = tuple(str(x) for x in rng.permutation(SCRIPTED_SUBTASKS)[:4])
        if cand not in seqs:
            seqs.append(cand)
    return seqs[:count]


def is_heldout(seq: Sequence[str], heldout: Iterable[Sequence[str]]) -> bool:
    """True when ``seq`` equals a held-out sequence or contains one as a contiguous run."""
    seq = tuple(seq)
    for h in heldout:
        h = tuple(h)
        for i in range(len(seq) - len(h) + 1):
            if seq[i : i + len(h)] == h:
                return True
    return False


def sample_task_sequence(
    rng: np.random.Generator,
    config: DemoConfig,
    heldout: Sequence[Sequence[str]],
    subtasks: Sequence[str] = SCRIPTED_SUBTASKS,
) -> tuple[str, ...]:
    """A random order of ``min..max`` distinct subtasks that is not a held-out task."""
    for _ in range(1000):
        n = int(rng.integers(config.min_subtasks, min(config.max_subtasks, len(subtasks)) + 1))
        seq = tuple(str(x) for x in rng.permutation(list(subtasks))[:n])
        if not is_heldout(seq, heldout):
            return seq
    raise RuntimeError("could not sample a task sequence outside the held-out set")
