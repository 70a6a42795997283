"""On-policy data for the closed-loop skill decoder (DAgger with the demonstration's commands as the expert).

A decoded skill is right two times in three when it starts from the demo's own state, but chained from the
episode start each skill begins where the previous decoded one left the arm, and the decoder has never seen
those states (its training states are the demos' plus Gaussian noise). Here the decoder drives the kitchen
through a training demo's segments, chained as it runs at deployment (posterior-mean argument, closed loop,
through the skill executor), and every state it visits is labelled with what the demonstration commanded at
that step of the segment: the absolute joint target ``q_cmd[t]``, expressed relative to the joints measured
there (the decoder's frame), and the demo's gripper command. Training on those pairs teaches it to return to
the demo's commanded path from its own drift.

Each segment is run for exactly the demo segment's length (progress head ignored), so every step has a label
and the progress target stays the demo's. A skill the executor refuses ends that episode's collection: the
states after it are not ones the decoder reaches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from extract_skills.core.control.safety import SafetyLimits
from extract_skills.core.control.skill_executor import SkillStatus
from extract_skills.core.data.dataset import EpisodeData, segment_labels
from extract_skills.core.sim.fidelity import SIM_LIMITS, _Runner, reset_like
from extract_skills.core.sim.kitchen import KitchenSim

#: Largest relabelled joint command relative to the measured joints (rad): the scripted demos' own command lead
#: (``IKController.MAX_LEAD``); a state drifted further is steered back at that rate over several steps.
MAX_CORRECTION = 0.2


@dataclass
class OnPolicySegment:
    """One decoded segment: which demo segment, what the decoder saw, and what it should have commanded."""

    index: int  # position of the segment in the ``segments`` passed in
    states: np.ndarray  # (L, 8) float32 measured [q, gripper] before each decoded step
    targets: np.ndarray  # (L, 8) float32 relabelled commands in the decoder's (measured) frame
    drift: float  # rad, mean |q - q_demo| over the segment's joints and steps


def relabel(labels: np.ndarray, proprio: np.ndarray, start: int, end: int, visited: np.ndarray,
            max_correction: float = MAX_CORRECTION) -> np.ndarray:
    """Demo commands of segment [start, end) re-expressed from ``visited`` (L, 8) proprio: joint part
    ``q_cmd[t] - q_visited[t]`` (clipped to +- ``max_correction``), gripper part the demo's gripper command."""
    seg = segment_labels(labels, proprio, start, end, "measured").astype(np.float64)
    q_cmd = seg[:, :7] + proprio[start:end, :7]
    out = seg.copy()
    out[:, :7] = np.clip(q_cmd - visited[:, :7], -max_correction, max_correction)
    return out.astype(np.float32)


def collect_onpolicy(sim: KitchenSim, episode: EpisodeData, segments: Iterable[tuple[int, int, int]], bundle,
                     limits: SafetyLimits = SIM_LIMITS, max_correction: float = MAX_CORRECTION,
                     rng: np.random.Generator | None = None) -> list[OnPolicySegment]:
    """Chain the episode's segments through the decoder (posterior mean, demo length each) from the demo's start
    state and return the visited states with relabelled commands. ``segments``: (start, end, skill). With ``rng``
    each argument is sampled from the posterior instead of its mean: other drifts from the same demo, and a decoder
    that learns to reach the demo's commands from arguments as spread as the ones it was trained on."""
    if bundle.action_frame != "measured" or not bundle.closed_loop:
        raise ValueError("on-policy relabelling needs a closed-loop decoder in the 'measured' action frame")
    reset_like(sim, episode)
    labels, proprio = episode.skill_actions(), episode.proprio()
    runner = _Runner(sim, limits, max_steps=bundle.max_skill_steps, action_frame=bundle.action_frame)
    out: list[OnPolicySegment] = []
    for i, (start, end, d) in enumerate(segments):
        length = end - start
        seen: list[np.ndarray] = []

        def proprio_fn() -> np.ndarray:
            p = runner.executor.proprio()
            seen.append(np.asarray(p, np.float32))
            return p

        z, std = bundle.posterior(segment_labels(labels, proprio, start, end, bundle.action_frame), d,
                                  proprio[start:end])
        if rng is not None:
            z = z + std * rng.standard_normal(z.shape).astype(z.dtype)
        # a decoder with command feedback computes the lead from its own outputs in training too: the visited
        # states are all it needs
        res = runner.run(bundle.rollout(d, z, max_steps=length, progress_threshold=2.0, proprio_fn=proprio_fn,
                                        lead_fn=runner.executor.command_lead))
        if res.status is not SkillStatus.SUCCEEDED or len(seen) != length:
            break
        visited = np.stack(seen)
        out.append(OnPolicySegment(i, visited, relabel(labels, proprio, start, end, visited, max_correction),
                                   float(np.abs(visited[:, :7] - proprio[start:end, :7]).mean())))
    return out
