"""Skill fidelity: executed, does a skill do what the demonstration did? Counted from the physics.

Four ways to drive the kitchen from a demonstration's start state (same seed, same start posture), each
scored by the subtasks of the demo's task sequence that the physics reports complete:

* ``env``: the recorded env actions, open loop (the ceiling: what the data itself can reproduce);
* ``labels``: the skill-action labels (:meth:`EpisodeData.skill_actions`) through the skill executor's
  arm path (safety function -> arm), exactly as the decoder node executes decoded actions;
* ``posterior``: every segment re-encoded with q(z | a, d) and decoded from the posterior mean with the
  decoder's own length (progress head), one executor run per segment;
* ``prior``: closed loop from the priors: render a fresh frame, embed it, pick ``argmax p(d|s)`` and the
  mean of ``p(z|s,d)``, execute, repeat until the demo's step budget is spent.

No ROS: :class:`~extract_skills.core.sim.kitchen.KitchenExecutorArm` steps the physics once per command.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from extract_skills.core.control.safety import SafetyLimits
from extract_skills.core.control.skill_executor import ExecutorConfig, SkillExecutor, SkillResult, SkillStatus
from extract_skills.core.data.dataset import SUBTASK_NAMES, EpisodeData, segment_labels
from extract_skills.core.sim.kitchen import KitchenExecutorArm, KitchenSim, StepResult

#: The sim decoder's safety limits (config/sim.yaml: panda, 0.16 rad per 0.08 s step, default margin and box).
SIM_LIMITS = SafetyLimits(robot="panda", max_step_delta=0.16, dt=0.08)


@dataclass
class ReplayResult:
    """What one way of driving the kitchen achieved."""

    completed: list[str]  # subtasks of the task sequence the physics reported complete, in order
    steps: int  # control steps taken
    skills: int = 0  # executor runs (skills) started
    aborted: list[str] = field(default_factory=list)  # executor errors of skills that did not succeed
    clipped_steps: int = 0  # steps whose command the safety function changed
    qpos: list[np.ndarray] = field(default_factory=list)  # (9,) robot joints after every step


def reset_like(sim: KitchenSim, episode: EpisodeData) -> None:
    """Put the kitchen in the demonstration's start state: its reset seed and start posture."""
    sim.reset(seed=int(episode.meta["seed"]), task_sequence=episode.meta["task_sequence"],
              arm_qpos=episode.qpos[0, :7])


def replay_env_actions(sim: KitchenSim, episode: EpisodeData) -> ReplayResult:
    reset_like(sim, episode)
    qpos = [sim.step(a).obs.qpos for a in episode.env_actions]
    return ReplayResult(list(sim.episode_completions), episode.num_steps, qpos=qpos)


class _Runner:
    """Runs decoded-action iterators through SkillExecutor on the in-process kitchen arm."""

    def __init__(self, sim: KitchenSim, limits: SafetyLimits, max_steps: int, action_frame: str = "measured") -> None:
        self.sim = sim
        self.steps = 0
        self.result = ReplayResult([], 0)
        self.arm = KitchenExecutorArm(sim, on_step=self._count)
        self.arm.connect()
        # period 0: the arm steps the physics on every send; no heartbeat (no remote command source)
        self.executor = SkillExecutor(self.arm, limits, ExecutorConfig(period_s=0.0, max_steps=max_steps,
                                                                       max_duration_s=3600.0,
                                                                       action_frame=action_frame))

    def _count(self, res: StepResult) -> None:
        self.steps += 1
        self.result.qpos.append(res.obs.qpos)

    def run(self, actions: Iterable[tuple[np.ndarray, float]]) -> SkillResult:
        res = self.executor.run(actions)
        self.result.skills += 1
        self.result.clipped_steps += res.clipped_count
        if res.status is not SkillStatus.SUCCEEDED:
            self.result.aborted.append(f"{res.fault.value}: {res.error}")
        return res

    def finish(self) -> ReplayResult:
        self.result.completed = list(self.sim.episode_completions)
        self.result.steps = self.steps
        return self.result


def replay_labels(sim: KitchenSim, episode: EpisodeData, limits: SafetyLimits = SIM_LIMITS) -> ReplayResult:
    reset_like(sim, episode)
    runner = _Runner(sim, limits, max_steps=episode.num_steps)
    runner.run((a, 0.0) for a in episode.skill_actions())
    return runner.finish()


def replay_perturbed_labels(sim: KitchenSim, episode: EpisodeData, segments: Iterable[tuple[int, int, int]],
                            offset_std: float, rng: np.random.Generator,
                            limits: SafetyLimits = SIM_LIMITS) -> ReplayResult:
    """The labels per segment in the skill-start frame, each segment's joint targets shifted by one random
    offset (N(0, offset_std) rad per joint): how precise must decoded skills be? (A decoder that is off by a
    few centiradians behaves like this.)"""
    reset_like(sim, episode)
    labels, proprio = episode.skill_actions(), episode.proprio()
    runner = _Runner(sim, limits, max_steps=episode.num_steps, action_frame="skill_start")
    for start, end, _ in segments:
        seg = segment_labels(labels, proprio, start, end, "skill_start")
        seg[:, :7] += rng.normal(0.0, offset_std, 7).astype(np.float32)
        runner.run((a, 0.0) for a in seg)
    return runner.finish()


def replay_posterior(sim: KitchenSim, episode: EpisodeData, segments: Iterable[tuple[int, int, int]], bundle,
                     limits: SafetyLimits = SIM_LIMITS) -> ReplayResult:
    """``segments``: (start, end, skill) of the episode; each is re-encoded and decoded with its own length."""
    reset_like(sim, episode)
    labels, proprio = episode.skill_actions(), episode.proprio()
    runner = _Runner(sim, limits, max_steps=bundle.max_skill_steps, action_frame=bundle.action_frame)
    for start, end, d in segments:
        z, _ = bundle.posterior(segment_labels(labels, proprio, start, end, bundle.action_frame), d, proprio[start:end])
        runner.run(bundle.rollout(d, z, proprio_fn=runner.executor.proprio,
                                  lead_fn=runner.executor.command_lead))
    return runner.finish()


def posterior_per_segment(sim: KitchenSim, episode: EpisodeData, segments: Iterable[tuple[int, int, int]], bundle,
                          limits: SafetyLimits = SIM_LIMITS,
                          by_subtask: dict[str, list[int]] | None = None) -> tuple[int, int]:
    """Decoder precision without drift: for every segment in which the demo completed a subtask, replay the
    labels exactly up to the segment's start, execute the decoded segment (posterior mean, own length, closed
    loop) and check whether that subtask is then complete. Returns (completed, segments that completed one);
    ``by_subtask`` (if given) gets ``[completed, segments]`` added per subtask name."""
    labels, proprio = episode.skill_actions(), episode.proprio()
    done = episode.subtasks_done
    hit = total = 0
    for start, end, d in segments:
        new = np.flatnonzero(done[end] & ~done[start])
        if new.size == 0:
            continue
        total += 1
        reset_like(sim, episode)
        runner = _Runner(sim, limits, max_steps=max(start, 1))
        if start:
            runner.run((a, 0.0) for a in labels[:start])
        runner = _Runner(sim, limits, max_steps=bundle.max_skill_steps, action_frame=bundle.action_frame)
        z, _ = bundle.posterior(segment_labels(labels, proprio, start, end, bundle.action_frame), d, proprio[start:end])
        runner.run(bundle.rollout(d, z, proprio_fn=runner.executor.proprio,
                                  lead_fn=runner.executor.command_lead))
        ok = bool(np.all(sim.subtask_flags()[new]))
        hit += int(ok)
        if by_subtask is not None:
            for i in new:
                tally = by_subtask.setdefault(SUBTASK_NAMES[int(i)], [0, 0])
                tally[0] += int(ok)
                tally[1] += 1
    return hit, total


def run_prior(sim: KitchenSim, episode: EpisodeData, bundle, encoder, step_budget: int | None = None,
              limits: SafetyLimits = SIM_LIMITS, max_skills: int = 200) -> ReplayResult:
    """Closed loop on the priors (argmax skill, mean argument), one decision per skill from a fresh frame.
    ``sim`` must render (the encoder sees what the camera node would)."""
    reset_like(sim, episode)
    budget = episode.num_steps if step_budget is None else step_budget
    runner = _Runner(sim, limits, max_steps=bundle.max_skill_steps, action_frame=bundle.action_frame)
    while runner.steps < budget and runner.result.skills < max_skills:
        state = runner.arm.read_state()
        emb = encoder.embed_frames(sim.render()[None], batch_size=1)[0]
        obs = bundle.make_obs(emb, np.concatenate([state.q, [state.gripper]]))
        d = int(np.argmax(bundle.skill_prior(obs)))
        z, _ = bundle.argument_prior(obs, d)
        left = budget - runner.steps
        ex = runner.executor
        runner.run((a, p) for (a, p), _ in zip(bundle.rollout(d, z, proprio_fn=ex.proprio, lead_fn=ex.command_lead),
                                                range(left)))
        if runner.steps == 0:  # nothing moved (e.g. refused): do not spin forever
            break
    return runner.finish()
