"""Simulated Franka Kitchen twin: a thin wrapper around gymnasium-robotics ``FrankaKitchen-v1``.

What this adds on top of the upstream env (which it uses unchanged for physics and control):

* offscreen RGB images through :class:`mujoco.Renderer` at a configurable size;
* ``fast_render`` (default ``True``): shadows, reflections and skybox off and no multisampling.
  On software GL (OSMesa, 2 cores, 128x128) this renders ~45 frames/s against ~1.5 with the
  kitchen's own visual settings (4 shadow-casting lights, 4096 px shadow maps, 8x MSAA); see
  ``benchmarks/RESULTS.md``. Keep the same setting for data
  collection and deployment in sim, since the images feed a frozen encoder;
* completion flags for all seven subtasks measured on the true (noise-free) physics state with the
  env's own goals and tolerance (``OBS_ELEMENT_INDICES``, ``OBS_ELEMENT_GOALS``, ``BONUS_THRESH``);
* a sparse reward: the number of subtasks of the current task sequence completed for the first time
  in this step;
* :class:`KitchenArm`, the sim implementation of the ``Arm`` idea (joint position targets in,
  joint-velocity env actions out).

Control: the env action is a normalised joint velocity in [-1, 1] (x ``ACTION_SCALE`` = 2 rad/s or
m/s); the env turns it into a position target ``q_obs + v * dt`` for MuJoCo position actuators.
One env step is ``frame_skip (40) * timestep (0.002 s) = 0.08 s`` (:attr:`KitchenSim.dt`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from extract_skills.core.control.arm import Arm, ArmState
from extract_skills.core.control.safety import CheckedCommand, robot_model
from extract_skills.core.data.dataset import SUBTASK_NAMES, gripper_opening

LOG = logging.getLogger(__name__)

ENV_ID = "FrankaKitchen-v1"
#: Upstream action denormalisation (``FrankaRobot.act_rng``): action 1.0 = 2 rad/s (arm) or 2 m/s (fingers).
ACTION_SCALE = 2.0
FINGER_MAX = 0.04  # m, travel of each finger joint
#: The kitchen's default free camera (``franka_env.DEFAULT_CAMERA_CONFIG``).
DEFAULT_CAMERA = {"distance": 2.2, "azimuth": 70.0, "elevation": -35.0, "lookat": (-0.2, 0.5, 2.0)}


@dataclass(frozen=True)
class KitchenConfig:
    """Settings of the simulated kitchen."""

    image_size: int = 128
    """Square RGB image side (px)."""
    fast_render: bool = True
    """Shadows/reflections/skybox off and ``offsamples = 0`` (see module docstring)."""
    camera: str | None = None
    """Named model camera (``left_cap``, ``right_cap``) or ``None`` for the kitchen's default free camera."""
    render: bool = True
    """Render images at all (``False``: ``image`` is ``None``; physics-only runs)."""
    image_every_step: bool = True
    """Attach a rendered image to every observation; ``False``: ``image`` is ``None`` and callers ``render()``
    when they need a frame (the RL harness renders only at skill boundaries)."""
    max_episode_steps: int = 1000
    """Upstream TimeLimit (steps of ``dt``); the demo generator enforces its own tighter limits."""
    robot_noise_ratio: float = 0.01
    """Upstream observation noise on robot joints (it also perturbs the env's control target)."""
    object_noise_ratio: float = 0.0005
    """Upstream observation noise on object joints (our flags use the noise-free state)."""

    def __post_init__(self) -> None:
        if not 16 <= self.image_size <= 1024:
            raise ValueError(f"image_size must be in [16, 1024] px, got {self.image_size}")
        if self.camera not in (None, "left_cap", "right_cap"):
            raise ValueError(f"camera must be None, 'left_cap' or 'right_cap', got {self.camera!r}")
        if self.max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {self.max_episode_steps}")
        if self.robot_noise_ratio < 0 or self.object_noise_ratio < 0:
            raise ValueError("noise ratios must be >= 0")


@dataclass
class KitchenObs:
    """One observation of the kitchen."""

    image: np.ndarray | None  # uint8 (H, W, 3) RGB, or None when rendering is off
    qpos: np.ndarray  # float64 (9,) robot joints, true state
    qvel: np.ndarray  # float64 (9,)
    subtasks_done: np.ndarray  # bool (7,) in SUBTASK_NAMES order
    stamp: float  # s since episode start (sim time)


@dataclass
class StepResult:
    obs: KitchenObs
    reward: float  # number of subtasks of the task sequence newly completed in this step
    action: np.ndarray  # float64 (9,) the env action actually applied (after clipping)
    info: dict[str, Any] = field(default_factory=dict)


def _preload_triton() -> None:
    """Load triton's native library (if installed) before the kitchen loads Mesa's.

    torch imports triton lazily, e.g. on the first ``torch.optim`` optimiser. Loaded *after* mujoco's OSMesa
    (whose llvmpipe brings its own LLVM), triton's native library crashed the process with a segfault
    (reproduced: ``import mujoco; import triton``, or a KitchenSim and then the first optimiser); loaded
    first, both work."""
    import importlib.util

    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


def _import_kitchen() -> tuple[Any, Any]:
    import gymnasium as gym

    try:  # gymnasium-robotics prints a notice about the Adroit hands' rewards at import; the kitchen is unaffected
        import farama_notifications

        farama_notifications.notifications.pop("gymnasium_robotics", None)
    except ImportError:
        pass
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    from gymnasium_robotics.envs.franka_kitchen import kitchen_env

    return gym, kitchen_env


class KitchenSim:
    """``FrankaKitchen-v1`` with images, physics-measured subtask flags and a sparse task reward."""

    def __init__(self, config: KitchenConfig | None = None) -> None:
        _preload_triton()  # before mujoco brings in OSMesa
        import mujoco

        self.config = config or KitchenConfig()
        gym, self._kenv = _import_kitchen()
        self.env = gym.make(
            ENV_ID,
            tasks_to_complete=list(SUBTASK_NAMES),
            terminate_on_tasks_completed=False,
            remove_task_when_completed=False,
            max_episode_steps=self.config.max_episode_steps,
            disable_env_checker=True,
            robot_noise_ratio=self.config.robot_noise_ratio,
            object_noise_ratio=self.config.object_noise_ratio,
        )
        self.unwrapped = self.env.unwrapped
        self.model = self.unwrapped.model
        self.data = self.unwrapped.data
        # The twin's joints stay inside the Panda's limits as the safety function reads them. The kitchen model lets
        # joint 6 go down to -1.66 rad (the Panda's stops at -0.0175); decoded skills pushed it to -0.22 rad under
        # the soak, where the safety function then refused every command as needing supervised recovery. Where the
        # model is tighter it stays. Caveat: the kitchen zeroes joint 6 a quarter turn from the Panda's
        # (core/skills/kinematics.py), so this keeps joint 6 within Panda angles [1.55, 3.68], the upper part of the
        # real range; the demos and shipped models were made in these coordinates.
        panda = robot_model("panda")
        self.model.jnt_range[:7, 0] = np.maximum(self.model.jnt_range[:7, 0], panda.q_min)
        self.model.jnt_range[:7, 1] = np.minimum(self.model.jnt_range[:7, 1], panda.q_max)
        robot = self.unwrapped.robot_env
        self.dt: float = float(robot.frame_skip * self.model.opt.timestep)
        self.frame_skip: int = int(robot.frame_skip)
        self.action_low = np.asarray(self.env.action_space.low, dtype=np.float64)
        self.action_high = np.asarray(self.env.action_space.high, dtype=np.float64)
        self._mujoco = mujoco
        self._renderer = None
        self._camera: Any = None
        if self.config.render:
            self._make_renderer()
        self.task_sequence: tuple[str, ...] = ()
        self.episode_completions: list[str] = []
        self._t0 = 0.0
        self._last_obs: KitchenObs | None = None

    # ----------------------------------------------------------------------------- rendering
    def _make_renderer(self) -> None:
        self._prepare_offscreen()
        size = self.config.image_size
        self._renderer = self._mujoco.Renderer(self.model, height=size, width=size)
        self.apply_render_flags(self._renderer.scene)
        self._camera = self.make_camera()

    def _prepare_offscreen(self) -> None:
        if self.config.fast_render:
            # Must be set before a GL context's offscreen buffer is created.
            self.model.vis.quality.offsamples = 0

    def apply_render_flags(self, scene: Any) -> None:
        """The ``fast_render`` settings of an ``MjvScene`` (see the module docstring)."""
        if self.config.fast_render:
            flags = scene.flags
            for flag in ("mjRND_SHADOW", "mjRND_REFLECTION", "mjRND_SKYBOX"):
                flags[getattr(self._mujoco.mjtRndFlag, flag)] = 0

    def make_camera(self) -> Any:
        """The configured camera as an ``MjvCamera``: a named model camera, or the kitchen's default free camera."""
        mujoco = self._mujoco
        cam = mujoco.MjvCamera()
        if self.config.camera is not None:  # what mujoco.Renderer.update_scene makes of a camera name
            cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
            cam.fixedcamid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, self.config.camera)
            if cam.fixedcamid < 0:
                raise ValueError(f"the kitchen model has no camera {self.config.camera!r}")
            return cam
        mujoco.mjv_defaultFreeCamera(self.model, cam)
        cam.distance = DEFAULT_CAMERA["distance"]
        cam.azimuth = DEFAULT_CAMERA["azimuth"]
        cam.elevation = DEFAULT_CAMERA["elevation"]
        cam.lookat[:] = DEFAULT_CAMERA["lookat"]
        return cam

    def render(self) -> np.ndarray:
        """RGB uint8 (H, W, 3) of the current state."""
        if self._renderer is None:
            raise RuntimeError("rendering is off (KitchenConfig.render=False)")
        self._renderer.update_scene(self.data, camera=self._camera)
        return self._renderer.render().copy()

    @property
    def render_settings(self) -> dict[str, Any]:
        return {
            "fast_render": self.config.fast_render,
            "camera": self.config.camera or {k: list(v) if isinstance(v, tuple) else v for k, v in DEFAULT_CAMERA.items()},
            "image_size": self.config.image_size,
        }

    # ----------------------------------------------------------------------------- task state
    def subtask_flags(self) -> np.ndarray:
        """bool (7,) completion of every subtask on the true physics state (upstream goal and tolerance)."""
        qpos = self.data.qpos
        flags = np.zeros(len(SUBTASK_NAMES), dtype=bool)
        for i, name in enumerate(SUBTASK_NAMES):
            idx = self._kenv.OBS_ELEMENT_INDICES[name]
            dist = np.linalg.norm(qpos[idx] - self._kenv.OBS_ELEMENT_GOALS[name])
            flags[i] = dist < self._kenv.BONUS_THRESH
        return flags

    def subtask_distance(self, name: str) -> float:
        """Distance of subtask ``name`` to its goal (complete when < ``BONUS_THRESH``)."""
        idx = self._kenv.OBS_ELEMENT_INDICES[name]
        return float(np.linalg.norm(self.data.qpos[idx] - self._kenv.OBS_ELEMENT_GOALS[name]))

    @property
    def completion_threshold(self) -> float:
        return float(self._kenv.BONUS_THRESH)

    def observe(self) -> KitchenObs:
        obs = KitchenObs(
            image=self.render() if self._renderer is not None and self.config.image_every_step else None,
            qpos=self.data.qpos[:9].copy(),
            qvel=self.data.qvel[:9].copy(),
            subtasks_done=self.subtask_flags(),
            stamp=float(self.data.time - self._t0),
        )
        self._last_obs = obs
        return obs

    # ----------------------------------------------------------------------------- episode API
    def reset(
        self,
        seed: int | None = None,
        task_sequence: Sequence[str] = (),
        arm_qpos: np.ndarray | None = None,
    ) -> KitchenObs:
        """Reset the kitchen; optionally place the arm at ``arm_qpos`` (7,) (at rest)."""
        unknown = [t for t in task_sequence if t not in SUBTASK_NAMES]
        if unknown:
            raise ValueError(f"unknown subtasks {unknown}; valid: {list(SUBTASK_NAMES)}")
        self.env.reset(seed=seed)
        if arm_qpos is not None:
            arm_qpos = np.asarray(arm_qpos, dtype=np.float64)
            if arm_qpos.shape != (7,):
                raise ValueError(f"arm_qpos must have shape (7,), got {arm_qpos.shape}")
            lo, hi = self.model.jnt_range[:7, 0], self.model.jnt_range[:7, 1]
            qpos = self.data.qpos.copy()
            qpos[:7] = np.clip(arm_qpos, lo + 0.05, hi - 0.05)
            qvel = np.zeros_like(self.data.qvel)
            robot = self.unwrapped.robot_env
            robot.set_state(qpos, qvel)
            self.data.ctrl[:9] = qpos[:9]
            # The upstream controller integrates from its last observed qpos; refresh it.
            robot._get_obs()
        self.task_sequence = tuple(task_sequence)
        self.episode_completions = []
        self._t0 = float(self.data.time)
        return self.observe()

    def step(self, action: np.ndarray) -> StepResult:
        """Apply one env action (9,) for ``dt`` seconds."""
        action = np.clip(np.asarray(action, dtype=np.float64), self.action_low, self.action_high)
        if not np.all(np.isfinite(action)):
            raise ValueError(f"non-finite action {action}")
        _, _, _, truncated, _ = self.env.step(action)
        obs = self.observe()
        new = [
            name
            for name, done in zip(SUBTASK_NAMES, obs.subtasks_done)
            if done and name in self.task_sequence and name not in self.episode_completions
        ]
        self.episode_completions.extend(new)
        return StepResult(
            obs=obs,
            reward=float(len(new)),
            action=action,  # float64: replaying rounded actions diverges (see core/data/dataset.py)
            info={"new_completions": new, "truncated": bool(truncated)},
        )

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self.env.close()


class FrameRenderer:
    """Renders the kitchen's camera in a thread of its own, off the physics thread.

    ``capture(tag)``, on the physics thread, records the scene of the current state (``mjv_updateScene``: pure
    CPU, about 10 us); the GL render and read-back (25-35 ms at 128 px on software GL) run in the renderer's
    thread, which then calls ``on_frame(rgb, tag)``. So the physics can take its next command while a frame
    renders; the image is the same as :meth:`KitchenSim.render` of that state (a test compares them). Latest
    wins: a capture that finds the previous one not yet rendered replaces it, as a camera that cannot keep up
    drops frames rather than queueing stale ones; the newest state is always rendered.

    The GL context is made in, and used only by, the renderer's thread (OSMesa contexts are per thread). An error
    there (GL, or ``on_frame``) ends the thread and is raised by the next ``capture``.
    """

    def __init__(self, sim: KitchenSim, on_frame: Callable[[np.ndarray, Any], None], max_geom: int = 10000,
                 start_timeout_s: float = 60.0) -> None:
        import threading

        mujoco = sim._mujoco
        self._mujoco = mujoco
        self._sim = sim
        self._on_frame = on_frame
        self._camera = sim.make_camera()
        self._option = mujoco.MjvOption()
        sim._prepare_offscreen()  # before the context below creates its offscreen buffer
        size = sim.config.image_size
        if size > sim.model.vis.global_.offwidth or size > sim.model.vis.global_.offheight:
            raise ValueError(f"image_size {size} exceeds the model's offscreen buffer "
                             f"{sim.model.vis.global_.offwidth}x{sim.model.vis.global_.offheight}")
        self._size = size
        # one being rendered, one waiting, one being captured: a capture never waits for the render
        self._free = []
        for _ in range(3):
            scene = mujoco.MjvScene(sim.model, maxgeom=max_geom)
            sim.apply_render_flags(scene)
            self._free.append(scene)
        self._pending: tuple[Any, Any] | None = None
        self._cond = threading.Condition()
        self._stop = False
        self._error: BaseException | None = None
        self.rendered = 0
        self.replaced = 0  # captures dropped because a newer one came before they were rendered
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), name="kitchen_render", daemon=True)
        self._thread.start()
        if not started.wait(start_timeout_s):
            raise RuntimeError(f"the kitchen's render thread did not start in {start_timeout_s:.0f} s")
        if self._error is not None:
            raise RuntimeError(f"the kitchen's render thread failed to start: {self._error!r}") from self._error

    def capture(self, tag: Any) -> None:
        """Record the current state's scene for rendering; ``tag`` comes back with its frame."""
        mujoco = self._mujoco
        with self._cond:
            if self._error is not None:
                raise RuntimeError(f"the kitchen's render thread died: {self._error!r}") from self._error
            if self._stop:
                raise RuntimeError("the frame renderer is closed")
            scene = self._free.pop()
        mujoco.mjv_updateScene(self._sim.model, self._sim.data, self._option, None, self._camera,
                               mujoco.mjtCatBit.mjCAT_ALL, scene)
        with self._cond:
            if self._pending is not None:
                self._free.append(self._pending[0])
                self.replaced += 1
            self._pending = (scene, tag)
            self._cond.notify()

    def _run(self, started) -> None:
        mujoco = self._mujoco
        gl = ctx = None
        try:
            try:
                gl = mujoco.GLContext(self._size, self._size)
                gl.make_current()
                ctx = mujoco.MjrContext(self._sim.model, mujoco.mjtFontScale.mjFONTSCALE_150)
                mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, ctx)
                rect = mujoco.MjrRect(0, 0, self._size, self._size)
            finally:
                started.set()
            while True:
                with self._cond:
                    while self._pending is None and not self._stop:
                        self._cond.wait()
                    if self._stop:
                        return
                    (scene, tag), self._pending = self._pending, None
                try:
                    rgb = np.empty((self._size, self._size, 3), dtype=np.uint8)
                    mujoco.mjr_render(rect, scene, ctx)
                    mujoco.mjr_readPixels(rgb, None, rect, ctx)
                finally:
                    with self._cond:
                        self._free.append(scene)
                self.rendered += 1
                self._on_frame(np.flipud(rgb).copy(), tag)  # GL's rows run bottom-up
        except BaseException as exc:  # noqa: BLE001 - raised by the next capture()
            with self._cond:
                self._error = exc
            LOG.error("kitchen render thread died: %r", exc)
        finally:
            if ctx is not None:
                ctx.free()
            if gl is not None:
                gl.free()

    def close(self, timeout_s: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout_s)


class KitchenArm:
    """The kitchen's Franka as an arm: joint position targets in, env velocity actions out.

    ``step_to`` is a proportional controller in joint space: the env action that moves the arm by
    ``gain * (q_target - q)`` in one control step, clipped to the action space (0.16 rad per step at
    most). Each call advances the physics by one control step (``sim.dt``) and returns the step
    result, so data collection sees every frame.
    """

    STATIONARY_DQ = 0.05  # rad/s, max joint speed that counts as stationary

    def __init__(self, sim: KitchenSim, gain: float = 1.0) -> None:
        if not 0.0 < gain <= 1.0:
            raise ValueError(f"gain must be in (0, 1], got {gain}")
        self.sim = sim
        self.gain = gain
        self.connected = False
        self.last_step: StepResult | None = None

    def connect(self) -> None:
        self.connected = True

    def disconnect(self) -> None:
        self.connected = False

    def read_state(self) -> ArmState:
        """``core.arm.ArmState``: q (7,) rad, dq (7,) rad/s, gripper opening [0, 1], ``time.monotonic()`` stamp."""
        d = self.sim.data
        return ArmState(
            q=d.qpos[:7].copy(),
            dq=d.qvel[:7].copy(),
            gripper=float(gripper_opening(d.qpos[:9])),
            stamp=time.monotonic(),
        )

    def action_for(self, q_target: np.ndarray, gripper_target: float) -> np.ndarray:
        """The env action (9,) that drives toward ``q_target`` (7,) and ``gripper_target`` in [0, 1]."""
        q_target = np.asarray(q_target, dtype=np.float64)
        if q_target.shape != (7,) or not np.all(np.isfinite(q_target)):
            raise ValueError(f"q_target must be 7 finite joint angles, got {q_target}")
        if not np.isfinite(gripper_target):
            raise ValueError(f"gripper_target must be finite, got {gripper_target}")
        g = float(np.clip(gripper_target, 0.0, 1.0))
        scale = ACTION_SCALE * self.sim.dt  # position change per step for action 1.0
        cur = self.sim.data.qpos[:9]
        target = np.concatenate([q_target, [g * FINGER_MAX, g * FINGER_MAX]])
        action = np.clip(self.gain * (target - cur) / scale, self.sim.action_low, self.sim.action_high)
        # A target the safety function clipped to max_step_delta (= this action limit) comes back as
        # q + 0.16 and divides to 1 - 1e-16, where the same command unclipped gives exactly 1. The kitchen's
        # contact dynamics amplify that round-off into different outcomes (a replayed demo failed 2 of 3
        # subtasks it otherwise completes), so a command at the limit up to round-off is at the limit.
        at_limit = np.abs(np.abs(action) - 1.0) < 1e-9
        return np.where(at_limit, np.sign(action), action)

    def step_to(self, q_target: np.ndarray, gripper_target: float) -> StepResult:
        """Move toward the joint target for one control step (``sim.dt``)."""
        self.last_step = self.sim.step(self.action_for(q_target, gripper_target))
        return self.last_step

    def is_stationary(self) -> bool:
        return bool(np.max(np.abs(self.sim.data.qvel[:7])) < self.STATIONARY_DQ)

    def stop(self, max_steps: int = 25) -> list[StepResult]:
        """Hold the current position until stationary (or ``max_steps``); returns the steps taken."""
        steps: list[StepResult] = []
        hold_q = self.sim.data.qpos[:7].copy()
        hold_g = float(gripper_opening(self.sim.data.qpos[:9]))
        for _ in range(max_steps):
            if self.is_stationary():
                break
            steps.append(self.step_to(hold_q, hold_g))
        return steps


class KitchenExecutorArm(Arm):
    """The kitchen's arm behind the :class:`~extract_skills.core.control.arm.Arm` interface, in-process.

    Each ``send`` advances the physics by one control step (``sim.dt``) toward the checked command, so
    :class:`~extract_skills.core.control.skill_executor.SkillExecutor` with ``period_s=0`` runs a skill
    through exactly the path the decoder node uses (safety function included), without ROS. Every
    :class:`StepResult` is passed to ``on_step`` (rewards, completions, recording).
    """

    stationary_tol = KitchenArm.STATIONARY_DQ

    def __init__(self, sim: KitchenSim, on_step: Callable[[StepResult], None] | None = None) -> None:
        self.kitchen = KitchenArm(sim)
        self.on_step = on_step

    def connect(self) -> None:
        self.kitchen.connect()

    def disconnect(self) -> None:
        self.kitchen.disconnect()

    def read_state(self) -> ArmState:
        return self.kitchen.read_state()

    def _send(self, cmd: CheckedCommand) -> None:
        res = self.kitchen.step_to(cmd.q, cmd.gripper)
        if self.on_step is not None:
            self.on_step(res)

    def stop(self) -> None:
        for res in self.kitchen.stop():
            if self.on_step is not None:
                self.on_step(res)

    def is_stationary(self) -> bool:
        return self.kitchen.is_stationary()
