"""Baselines of the sample-efficiency benchmark, on the same observation (embedding + proprio) as EXTRACT:

* flat SAC on low-level actions (cleanrl's ``sac_continuous_action`` in this project's types): a tanh-squashed
  Gaussian over ``[dq (7) rad, gripper]`` each control step, twin critics, automatic entropy tuning;
* behaviour cloning on the demonstrations: an MLP regressing the commanded action of every demo step.

The SPiRL-style baseline needs no code here: it is :class:`~extract_skills.core.rl.skill_sac.HybridSkillSAC`
with one skill (K=1: only the continuous argument and its prior remain) on a skill model trained on fixed
10-step windows of the same data (``extract all --num-skills 1 --min-segment-len 5 --max-segment-len 10``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from extract_skills.core.rl.skill_sac import polyak_update


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out))


@dataclass(frozen=True)
class FlatSACConfig:
    gamma: float = 0.99  # discount per control step
    tau: float = 0.005  # Polyak rate of the target critics
    batch_size: int = 256  # transitions per gradient step
    buffer_capacity: int = 200_000  # low-level transitions kept
    lr: float = 3e-4  # Adam step
    hidden: int = 256  # MLP width
    learning_starts: int = 1000  # random-action steps before learning
    max_delta: float = 0.16  # rad per step: the action's joint range (the safety function's step limit)


class FlatSAC(nn.Module):
    """SAC with automatic entropy tuning on a_t = [max_delta * tanh(u_1..7), (tanh(u_8) + 1) / 2]."""

    BUFFERS = ("obs", "next_obs", "act_buf", "rew", "term")  # the replay ring's arrays, in checkpoints

    def __init__(self, obs_dim: int, cfg: FlatSACConfig | None = None, action_dim: int = 8) -> None:
        super().__init__()
        self.cfg = cfg or FlatSACConfig()
        h = self.cfg.hidden
        self.action_dim = action_dim
        self.actor = _mlp(obs_dim, h, 2 * action_dim)
        self.q1, self.q2 = _mlp(obs_dim + action_dim, h, 1), _mlp(obs_dim + action_dim, h, 1)
        self.q1_t, self.q2_t = copy.deepcopy(self.q1).requires_grad_(False), copy.deepcopy(self.q2).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.zeros(()))
        self.target_entropy = -float(action_dim)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=self.cfg.lr)
        self.q_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=self.cfg.lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=self.cfg.lr)
        self.obs = np.zeros((self.cfg.buffer_capacity, obs_dim), np.float32)
        self.next_obs = np.zeros_like(self.obs)
        self.act_buf = np.zeros((self.cfg.buffer_capacity, action_dim), np.float32)  # squashed u in [-1, 1]
        self.rew = np.zeros(self.cfg.buffer_capacity, np.float32)
        self.term = np.zeros(self.cfg.buffer_capacity, np.float32)
        self.n = 0

    def _dist(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.actor(obs).chunk(2, -1)
        return mean, log_std.clamp(-5.0, 2.0)

    def _sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self._dist(obs)
        u = mean + log_std.exp() * torch.randn_like(mean)
        y = torch.tanh(u)
        logp = torch.distributions.Normal(mean, log_std.exp()).log_prob(u) - torch.log(1 - y.pow(2) + 1e-6)
        return y, logp.sum(-1)

    def to_env(self, y: np.ndarray) -> np.ndarray:
        """Squashed action in [-1, 1]^8 -> [dq rad, gripper in [0, 1]]."""
        return np.concatenate([self.cfg.max_delta * y[:7], [(y[7] + 1.0) / 2.0]])

    @torch.no_grad()
    def act(self, obs: np.ndarray, rng: np.random.Generator, deterministic: bool = False) -> np.ndarray:
        """Squashed action in [-1, 1]^8 (uniform before ``learning_starts``)."""
        if not deterministic and self.n < self.cfg.learning_starts:
            return rng.uniform(-1, 1, self.action_dim).astype(np.float32)
        o = torch.as_tensor(obs, dtype=torch.float32)[None]
        if deterministic:
            return torch.tanh(self._dist(o)[0])[0].numpy()
        return self._sample(o)[0][0].numpy()

    def store(self, obs, y, r, next_obs, terminated) -> None:
        i = self.n % self.cfg.buffer_capacity
        self.obs[i], self.act_buf[i], self.rew[i], self.next_obs[i], self.term[i] = obs, y, r, next_obs, terminated
        self.n += 1

    def checkpoint(self) -> dict:
        """Networks, optimisers, temperature and the filled part of the replay buffer: everything a resumed run
        needs to continue as if it had not stopped (RNG states are the caller's)."""
        m = min(self.n, self.cfg.buffer_capacity)
        return {"modules": self.state_dict(), "actor_opt": self.actor_opt.state_dict(), "q_opt": self.q_opt.state_dict(),
                "alpha_opt": self.alpha_opt.state_dict(), "n": self.n,
                "buffer": {k: torch.from_numpy(getattr(self, k)[:m].copy()) for k in self.BUFFERS}}

    def load_checkpoint(self, state: dict) -> None:
        """Inverse of :meth:`checkpoint`; a state of another observation size is a clear error, not a broadcast."""
        buf = state["buffer"]
        if buf["obs"].shape[1:] != self.obs.shape[1:] or buf["obs"].shape[0] > self.cfg.buffer_capacity:
            raise ValueError(f"flat SAC checkpoint has a buffer of shape {tuple(buf['obs'].shape)}, this agent's is "
                             f"{self.obs.shape}")
        self.load_state_dict(state["modules"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.q_opt.load_state_dict(state["q_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])
        m = buf["obs"].shape[0]
        for k in self.BUFFERS:
            getattr(self, k)[:m] = buf[k].numpy()
        self.n = int(state["n"])

    def update(self, rng: np.random.Generator) -> dict[str, float]:
        idx = rng.integers(0, min(self.n, self.cfg.buffer_capacity), self.cfg.batch_size)
        o, a, r = (torch.as_tensor(x[idx]) for x in (self.obs, self.act_buf, self.rew))
        o2, d = torch.as_tensor(self.next_obs[idx]), torch.as_tensor(self.term[idx])
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            a2, logp2 = self._sample(o2)
            x2 = torch.cat([o2, a2], -1)
            y = r + self.cfg.gamma * (1 - d) * (torch.min(self.q1_t(x2), self.q2_t(x2)).squeeze(-1) - alpha * logp2)
        x = torch.cat([o, a], -1)
        q_loss = F.mse_loss(self.q1(x).squeeze(-1), y) + F.mse_loss(self.q2(x).squeeze(-1), y)
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()
        a_new, logp = self._sample(o)
        xn = torch.cat([o, a_new], -1)
        pi_loss = (alpha * logp - torch.min(self.q1(xn), self.q2(xn)).squeeze(-1)).mean()
        self.actor_opt.zero_grad()
        pi_loss.backward()
        self.actor_opt.step()
        a_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad()
        a_loss.backward()
        self.alpha_opt.step()
        polyak_update(((self.q1, self.q1_t), (self.q2, self.q2_t)), self.cfg.tau)
        return {"q_loss": float(q_loss.detach()), "pi_loss": float(pi_loss.detach()), "alpha": float(alpha)}


class BCPolicy(nn.Module):
    """obs -> [dq (7) rad relative to the measured joints, gripper target]: regression on demo commands."""

    def __init__(self, obs_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = _mlp(obs_dim, hidden, 8)
        self.register_buffer("scale", torch.ones(8))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs) * self.scale

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        return self(torch.as_tensor(obs, dtype=torch.float32)[None])[0].numpy().astype(np.float64)


def train_bc(obs: Sequence[np.ndarray], actions: Sequence[np.ndarray], steps: int = 3000, batch_size: int = 256,
             lr: float = 1e-3, seed: int = 0) -> BCPolicy:
    """``obs``/``actions``: per-episode arrays (T, O) and (T, 8) of the demonstrations."""
    torch.manual_seed(seed)
    o = torch.as_tensor(np.concatenate(obs), dtype=torch.float32)
    a = torch.as_tensor(np.concatenate(actions), dtype=torch.float32)
    policy = BCPolicy(o.shape[1])
    scale = a.abs().amax(0).clamp_min(1e-3)
    policy.scale.copy_(scale)
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(o), (batch_size,), generator=g)
        loss = F.mse_loss(policy(o[idx]) / scale, a[idx] / scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy.eval()
