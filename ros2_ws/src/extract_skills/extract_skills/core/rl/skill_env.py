"""The kitchen as a skill-level environment, without ROS: the fast harness for training and benchmarks.

One :meth:`SkillEnv.step` is one skill: the decoder's rollout for (d, z) runs through the same
:class:`SkillExecutor` (safety function -> arm) the decoder node uses, on the in-process kitchen arm, capped by
the episode's remaining low-level step budget. The camera is rendered and embedded only at skill boundaries
(the decision frame, stamped after the previous skill ended), as the camera node's newest frame would be.
Reward: +1 per subtask of the task first seen complete (the sim's physics detectors), summed over the skill.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np

from extract_skills.core.control.safety import SafetyLimits
from extract_skills.core.control.skill_executor import ExecutorConfig, SkillExecutor, SkillStatus
from extract_skills.core.rl.episode import EpisodeTracker
from extract_skills.core.sim.fidelity import SIM_LIMITS
from extract_skills.core.sim.kitchen import SUBTASK_NAMES, KitchenExecutorArm, KitchenSim, StepResult
from extract_skills.core.sim.scripted_demos import REST_Q


@dataclass(frozen=True)
class SkillEnvConfig:
    task: tuple[str, ...]  # subtasks rewarded (any order), e.g. a held-out task
    episode_steps: int = 400  # low-level control steps (0.08 s each) per episode; then truncated
    start_noise: float = 0.0  # rad, uniform per joint around the rest posture at reset

    def __post_init__(self) -> None:
        if not self.task:
            raise ValueError("task must name at least one subtask")
        if self.episode_steps < 1 or self.start_noise < 0:
            raise ValueError("episode_steps must be >= 1 and start_noise >= 0")


@dataclass
class SkillStep:
    obs: np.ndarray  # next decision observation (embedding, proprio)
    reward: float
    terminated: bool  # every subtask of the task done
    truncated: bool  # low-level budget spent
    steps: int  # low-level steps the skill took
    info: dict = field(default_factory=dict)


class SkillEnv:
    """``reset(seed) -> obs``; ``step(d, z) -> SkillStep``. Needs a rendering :class:`KitchenSim`."""

    def __init__(self, sim: KitchenSim, bundle, encoder, config: SkillEnvConfig,
                 limits: SafetyLimits = SIM_LIMITS, fixed_skill_steps: int | None = None) -> None:
        """``fixed_skill_steps``: every skill runs exactly this many steps, ignoring the progress head
        (SPiRL-style fixed-horizon skills); None: the decoder decides the length (EXTRACT)."""
        self.sim, self.bundle, self.encoder, self.config = sim, bundle, encoder, config
        self.fixed_skill_steps = fixed_skill_steps
        self.env_steps = 0  # low-level steps over the env's lifetime (the benchmarks' x axis)
        self._steps = 0
        self.arm = KitchenExecutorArm(sim, on_step=self._on_step)
        self.arm.connect()
        # period 0: the arm steps the physics on every send; no heartbeat (no remote command source)
        self.executor = SkillExecutor(self.arm, limits, ExecutorConfig(
            period_s=0.0, max_steps=bundle.max_skill_steps, max_duration_s=3600.0, action_frame=bundle.action_frame))
        self.tracker = EpisodeTracker(config.task)
        self.frame: np.ndarray | None = None

    def _on_step(self, res: StepResult) -> None:
        self._steps += 1
        self.env_steps += 1

    def observe(self) -> np.ndarray:
        self.frame = self.sim.render()
        emb = self.encoder.embed_frames(self.frame[None], batch_size=1)[0]
        state = self.arm.read_state()
        return self.bundle.make_obs(emb, np.concatenate([state.q, [state.gripper]]))

    def reset(self, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        q0 = REST_Q + rng.uniform(-1.0, 1.0, 7) * self.config.start_noise
        self.sim.reset(seed=seed, task_sequence=self.config.task, arm_qpos=q0)
        self.tracker = EpisodeTracker(self.config.task)
        self._steps = 0
        return self.observe()

    @property
    def steps_left(self) -> int:
        return self.config.episode_steps - self._steps

    def step(self, d: int, z: np.ndarray) -> SkillStep:
        if self.steps_left <= 0:
            raise RuntimeError("episode over: call reset()")
        before = self._steps
        left = self.steps_left
        if self.fixed_skill_steps is None:
            rollout = self.bundle.rollout(d, z, proprio_fn=self.executor.proprio,
                                          lead_fn=self.executor.command_lead)
        else:  # progress never reaches 2: the skill always runs its fixed horizon
            rollout = self.bundle.rollout(d, z, max_steps=self.fixed_skill_steps, progress_threshold=2.0,
                                          proprio_fn=self.executor.proprio, lead_fn=self.executor.command_lead)
        res = self.executor.run(ap for ap, _ in zip(rollout, range(left)))
        taken = self._steps - before
        new = self.tracker.update(dict(zip(SUBTASK_NAMES, self.sim.subtask_flags())))
        terminated = self.tracker.all_done
        truncated = not terminated and self.steps_left <= 0
        if taken == 0 and not terminated:
            truncated = True  # the skill moved nothing (refused): end rather than spin
        info = {"new": new, "status": res.status.value, "clipped": res.clipped_count,
                "error": "" if res.status is SkillStatus.SUCCEEDED else res.error}
        return SkillStep(self.observe(), float(len(new)), terminated, truncated, taken, info)



class StepEnv:
    """The same kitchen, task, reward and safety path one control step at a time, for the flat baselines
    (SAC on low-level actions, behaviour cloning): an action is ``[dq (7) rad relative to the measured joints,
    gripper target in [0, 1]]``, executed through the executor's ``"measured"`` frame. Every step renders and
    embeds a frame (the flat policies decide every step), so it runs at camera + encoder speed."""

    def __init__(self, sim: KitchenSim, bundle, encoder, config: SkillEnvConfig,
                 limits: SafetyLimits = SIM_LIMITS) -> None:
        self.sim, self.bundle, self.encoder, self.config = sim, bundle, encoder, config
        self.env_steps = 0
        self._steps = 0
        self.arm = KitchenExecutorArm(sim, on_step=self._on_step)
        self.arm.connect()
        self.executor = SkillExecutor(self.arm, limits, ExecutorConfig(
            period_s=0.0, max_steps=1, max_duration_s=3600.0, action_frame="measured"))
        self.tracker = EpisodeTracker(config.task)
        self.max_delta = limits.max_step_delta

    def _on_step(self, res: StepResult) -> None:
        self._steps += 1
        self.env_steps += 1

    observe = SkillEnv.observe

    def reset(self, seed: int) -> np.ndarray:
        return SkillEnv.reset(self, seed)  # same start distribution as the skill-level env

    def step(self, action: np.ndarray) -> SkillStep:
        if self._steps >= self.config.episode_steps:
            raise RuntimeError("episode over: call reset()")
        a = np.asarray(action, np.float64).reshape(8)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"non-finite action {a}")
        res = self.executor.run([(a, 0.0)])
        new = self.tracker.update(dict(zip(SUBTASK_NAMES, self.sim.subtask_flags())))
        terminated = self.tracker.all_done
        truncated = not terminated and (self._steps >= self.config.episode_steps or res.steps_executed == 0)
        info = {"new": new, "status": res.status.value,
                "error": "" if res.status is SkillStatus.SUCCEEDED else res.error}
        return SkillStep(self.observe(), float(len(new)), terminated, truncated, 1, info)
