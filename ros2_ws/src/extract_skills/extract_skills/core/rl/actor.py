"""What the acting side of an actor/learner split needs, without ROS: assembling skill transitions from the
graph's asynchronous events, and moving policy weights between processes as checked bytes.

In the graph, a skill's reward arrives as supervisor events while (or shortly after) the skill runs, and the
next observation only exists at the next decision. :class:`TransitionAssembler` keeps the open transition:
``decide`` closes the previous one with the new observation as ``next_obs``; ``reward`` adds to the open one;
``end_episode`` closes it as terminated (task done / failure) or truncated (budget, abort). Rewards that
arrive after an episode ended, or for another episode, are dropped and counted, never credited elsewhere.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class OpenTransition:
    episode_id: int
    obs: np.ndarray
    skill: int
    z: np.ndarray
    log_prob: float
    policy_version: int
    reward: float = 0.0
    steps: int = 0
    intervention: bool = False


@dataclass
class TransitionAssembler:
    """Turns decide / reward / skill-result / episode-end events into complete high-level transitions."""

    open: OpenTransition | None = None
    dropped_rewards: int = 0
    closed: int = 0

    def decide(self, episode_id: int, obs: np.ndarray, skill: int, z: np.ndarray, log_prob: float,
               policy_version: int = 0) -> dict[str, Any] | None:
        """A new skill starts on ``obs``; returns the previous skill's transition if it belongs to this episode."""
        out = None
        if self.open is not None and self.open.episode_id == episode_id:
            out = self._close(obs, terminated=False, truncated=False)
        self.open = OpenTransition(int(episode_id), np.asarray(obs, np.float32).copy(), int(skill),
                                   np.asarray(z, np.float32).copy(), float(log_prob), int(policy_version))
        return out

    def reward(self, episode_id: int, reward: float, intervention: bool = False) -> bool:
        """Credit ``reward`` to the skill running in ``episode_id``; False (dropped) if there is none."""
        if self.open is None or self.open.episode_id != episode_id:
            self.dropped_rewards += 1
            return False
        self.open.reward += float(reward)
        self.open.intervention |= bool(intervention)
        return True

    def skill_finished(self, steps: int) -> None:
        if self.open is not None:
            self.open.steps += int(steps)

    def end_episode(self, episode_id: int, last_obs: np.ndarray | None, terminated: bool) -> dict[str, Any] | None:
        """Close the open transition of ``episode_id``: ``terminated`` (no bootstrap) or truncated.
        ``last_obs`` None (no fresh observation): the decision's own observation stands in; harmless when
        terminated, a small bias when truncated."""
        if self.open is None or self.open.episode_id != episode_id:
            return None
        nxt = self.open.obs if last_obs is None else last_obs
        return self._close(nxt, terminated=terminated, truncated=not terminated)

    def discard(self, episode_id: int) -> bool:
        """Drop the open transition of ``episode_id`` (the operator asked to rerecord the episode)."""
        if self.open is None or self.open.episode_id != episode_id:
            return False
        self.open = None
        return True

    def _close(self, next_obs: np.ndarray, terminated: bool, truncated: bool) -> dict[str, Any]:
        o = self.open
        assert o is not None
        self.open = None
        self.closed += 1
        return {"episode_id": o.episode_id, "obs": o.obs, "skill": o.skill, "z": o.z, "reward": o.reward,
                "next_obs": np.asarray(next_obs, np.float32), "terminated": bool(terminated),
                "truncated": bool(truncated), "steps": o.steps, "log_prob": o.log_prob,
                "policy_version": o.policy_version, "intervention": o.intervention}


def replay_fields(transition: dict[str, Any]) -> dict[str, Any]:
    """The subset :class:`~extract_skills.core.rl.replay_buffer.ReplayBuffer` stores."""
    return {k: transition[k] for k in ("obs", "skill", "z", "reward", "next_obs", "terminated", "truncated", "steps",
                                       "log_prob", "intervention")}


# ------------------------------------------------------------------------------------------ policy weights
class PolicyWeightsError(ValueError):
    """Policy weights that must not be loaded; the message says why."""


def encode_policy_state(state: dict[str, torch.Tensor]) -> tuple[bytes, str]:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buf)
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def decode_policy_state(data: bytes, sha256: str, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Bytes from the learner -> state dict, refusing a wrong hash, unreadable bytes, other keys or shapes,
    and non-finite values (a diverged learner must not reach the arm)."""
    if hashlib.sha256(data).hexdigest() != sha256:
        raise PolicyWeightsError("policy weights do not match their sha256 (corrupted in transit?)")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable payload is refused with the reason
        raise PolicyWeightsError(f"policy weights unreadable: {e}") from e
    if not isinstance(state, dict) or set(state) != set(expected):
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise PolicyWeightsError(f"policy weights have keys {got}, this policy needs {sorted(expected)}")
    bad = {k: (tuple(expected[k].shape), tuple(v.shape)) for k, v in state.items() if v.shape != expected[k].shape}
    if bad:
        raise PolicyWeightsError(f"policy weights of the wrong shape (expected, got): {bad}")
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        raise PolicyWeightsError(f"policy weights are not finite in {nonfinite}")
    return state
