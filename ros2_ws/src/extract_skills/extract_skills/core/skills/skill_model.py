"""EXTRACT phase 2: skill learning (a VAE over variable-length action segments plus two priors).

- skill encoder q(z | a_bar, d): LSTM over [action, one-hot d] -> Gaussian over the argument z;
- skill decoder p(a_bar | z, d): autoregressive LSTM fed [z, one-hot d, previous action]; its progress head is
  trained toward linspace(0, 1) over each segment, so execution ends when progress >= threshold
  (or at ``max_steps``), which gives variable-length skills;
- skill-selection prior p(d | s): categorical; argument prior p(z | s, d): Gaussian, trained by
  KL(q(z | a_bar, d) || p(z | s, d)) with q held fixed (as in SPiRL/EXTRACT);
- observation s = concat((embedding of the segment's first frame - mean) / std, proprio 8-D).

Defaults follow the official EXTRACT configuration: latent 5, beta 1e-3, hidden 128, AdamW lr 1e-3.
Actions are scaled to [-1, 1] with the dataset's action bounds (widened by a margin so tanh targets are
not saturated); decoder outputs are tanh'ed, so decoded actions always lie inside the bounds.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class SkillModelConfig:
    """Skill VAE + priors. Defaults: official EXTRACT values where they exist."""

    num_skills: int = 8  # K discrete skills (from skill extraction)
    obs_dim: int = 520  # embedding dim + proprio dim (8)
    action_dim: int = 8  # [dq_target(7) rad/step, gripper_target(1)]
    latent_dim: int = 5  # dim of the continuous skill argument z (EXTRACT: 5)
    hidden_dim: int = 128  # LSTM / MLP width (EXTRACT: 128)
    beta: float = 1e-3  # weight of KL(q(z|a,d) || N(0, I)) (EXTRACT: 1e-3)
    lr: float = 1e-3  # AdamW learning rate (EXTRACT: 1e-3)
    weight_decay: float = 1e-2  # AdamW default
    max_segment_len: int = 30  # steps, longest segment = default rollout cap
    progress_threshold: float = 0.9  # stop a rollout once predicted progress >= this (see README/report)
    batch_size: int = 128  # segments per step
    train_steps: int = 2000  # optimiser steps
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_skills", "obs_dim", "action_dim", "latent_dim", "hidden_dim", "max_segment_len",
                     "batch_size", "train_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.beta < 0 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("beta and weight_decay must be >= 0 and lr > 0")
        if not 0.0 < self.progress_threshold <= 1.0:
            raise ValueError(f"progress_threshold must be in (0, 1], got {self.progress_threshold}")


# --------------------------------------------------------------------------------------------------
# Action scaling
# --------------------------------------------------------------------------------------------------
def compute_action_bounds(actions: np.ndarray, margin: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension [min, max] of (M, A) actions widened by ``margin`` x range on each side."""
    a = np.asarray(actions, dtype=np.float32)
    lo, hi = a.min(0), a.max(0)
    span = np.maximum(hi - lo, 1e-6)
    return (lo - margin * span).astype(np.float32), (hi + margin * span).astype(np.float32)


def normalise_actions(actions: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    return (2.0 * (actions - low) / torch.clamp(high - low, min=1e-6) - 1.0).clamp(-1.0, 1.0)


def denormalise_actions(actions: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    return low + (actions + 1.0) * 0.5 * (high - low)


# --------------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------------
def _one_hot(d: torch.Tensor, k: int) -> torch.Tensor:
    return F.one_hot(d.long(), k).float()


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, out))


class SkillEncoder(nn.Module):
    """q(z | a_bar, d): LSTM over [normalised action, one-hot d]; last valid hidden -> (mean, log_std)."""

    def __init__(self, cfg: SkillModelConfig) -> None:
        super().__init__()
        self.k = cfg.num_skills
        self.lstm = nn.LSTM(cfg.action_dim + cfg.num_skills, cfg.hidden_dim, batch_first=True)
        self.head = nn.Linear(cfg.hidden_dim, 2 * cfg.latent_dim)

    def forward(self, actions: torch.Tensor, d: torch.Tensor, lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        B, L, _ = actions.shape
        x = torch.cat([actions, _one_hot(d, self.k)[:, None].expand(B, L, self.k)], -1)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        mean, log_std = self.head(h[-1]).chunk(2, -1)
        return mean, log_std.clamp(-7.0, 2.0)


class SkillDecoder(nn.Module):
    """p(a_bar | z, d): autoregressive LSTM; per step a tanh action in [-1, 1] and a progress logit."""

    def __init__(self, cfg: SkillModelConfig) -> None:
        super().__init__()
        self.k, self.a_dim, self.h = cfg.num_skills, cfg.action_dim, cfg.hidden_dim
        self.max_len = cfg.max_segment_len
        cond = cfg.latent_dim + cfg.num_skills
        self.init = nn.Linear(cond, 2 * cfg.hidden_dim)
        # +1 input: elapsed time t / max_segment_len. Without it the progress head had to infer the
        # phase from its own (free-running) actions and, on the kitchen data, never reached the stop
        # threshold; with it, progress is a function of time and (z, d), i.e. of the skill's length.
        self.lstm = nn.LSTM(cond + cfg.action_dim + 1, cfg.hidden_dim, batch_first=True)
        self.action_head = nn.Linear(cfg.hidden_dim, cfg.action_dim)
        self.progress_head = nn.Linear(cfg.hidden_dim, 1)

    def _cond(self, z: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return torch.cat([z, _one_hot(d, self.k)], -1)

    def initial_state(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = torch.tanh(self.init(cond)).chunk(2, -1)
        return h[None].contiguous(), c[None].contiguous()

    def forward(self, z: torch.Tensor, d: torch.Tensor, prev_actions: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass; ``prev_actions`` (B, L, A) is the shifted target (zeros at t = 0)."""
        cond = self._cond(z, d)
        B, L, _ = prev_actions.shape
        t = (torch.arange(L, dtype=prev_actions.dtype) / self.max_len).view(1, L, 1).expand(B, L, 1)
        x = torch.cat([cond[:, None].expand(B, L, cond.shape[-1]), prev_actions, t], -1)
        out, _ = self.lstm(x, self.initial_state(cond))
        return torch.tanh(self.action_head(out)), self.progress_head(out).squeeze(-1)

    @torch.no_grad()
    def rollout(self, z: torch.Tensor, d: int, max_steps: int, progress_threshold: float
                ) -> Iterator[tuple[torch.Tensor, float]]:
        """Free-running generation for one skill: yields (normalised action (A,), progress in [0, 1])."""
        cond = self._cond(z.reshape(1, -1).float(), torch.tensor([d]))
        state = self.initial_state(cond)
        prev = torch.zeros(1, 1, self.a_dim)
        for step in range(max_steps):
            t = torch.full((1, 1, 1), step / self.max_len)
            out, state = self.lstm(torch.cat([cond[:, None], prev, t], -1), state)
            action = torch.tanh(self.action_head(out))
            progress = float(torch.sigmoid(self.progress_head(out)).item())
            yield action[0, 0], progress
            if progress >= progress_threshold:
                return
            prev = action


class SkillPrior(nn.Module):
    """p(d | s): logits over K skills."""

    def __init__(self, cfg: SkillModelConfig) -> None:
        super().__init__()
        self.net = _mlp(cfg.obs_dim, cfg.hidden_dim, cfg.num_skills)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


class ArgumentPrior(nn.Module):
    """p(z | s, d): Gaussian (mean, log_std) over the skill argument."""

    def __init__(self, cfg: SkillModelConfig) -> None:
        super().__init__()
        self.k = cfg.num_skills
        self.net = _mlp(cfg.obs_dim + cfg.num_skills, cfg.hidden_dim, 2 * cfg.latent_dim)

    def forward(self, obs: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(torch.cat([obs, _one_hot(d, self.k)], -1)).chunk(2, -1)
        return mean, log_std.clamp(-7.0, 2.0)


def _gauss_kl(m1: torch.Tensor, ls1: torch.Tensor, m2: torch.Tensor, ls2: torch.Tensor) -> torch.Tensor:
    """KL(N(m1, e^ls1) || N(m2, e^ls2)), summed over the last dim."""
    return (ls2 - ls1 + (torch.exp(2 * ls1) + (m1 - m2) ** 2) / (2 * torch.exp(2 * ls2)) - 0.5).sum(-1)


class SkillModel(nn.Module):
    """The four networks of EXTRACT's skill learning, with the joint loss."""

    def __init__(self, cfg: SkillModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.skill_encoder = SkillEncoder(cfg)
        self.skill_decoder = SkillDecoder(cfg)
        self.skill_prior = SkillPrior(cfg)
        self.argument_prior = ArgumentPrior(cfg)

    def loss(self, actions: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor, obs: torch.Tensor
             ) -> dict[str, torch.Tensor]:
        """actions (B, L, A) normalised and zero-padded; lengths (B,); labels (B,); obs (B, obs_dim)."""
        B, L, _ = actions.shape
        steps = torch.arange(L)[None]
        mask = (steps < lengths[:, None]).float()
        mean, log_std = self.skill_encoder(actions, labels, lengths)
        z = mean + torch.randn_like(mean) * torch.exp(log_std)
        prev = torch.cat([torch.zeros_like(actions[:, :1]), actions[:, :-1]], 1)
        pred, progress_logit = self.skill_decoder(z, labels, prev)
        # reconstruction: unit-variance Gaussian NLL (up to a constant), summed over steps and dims
        recon = (((pred - actions) ** 2).sum(-1) * mask).sum(1).mean()
        target = steps.float() / torch.clamp(lengths[:, None].float() - 1.0, min=1.0)
        target = torch.where(lengths[:, None] == 1, torch.ones_like(target), target).clamp(max=1.0)
        progress = (F.binary_cross_entropy_with_logits(progress_logit, target, reduction="none") * mask
                    ).sum(1).mean()
        kl = _gauss_kl(mean, log_std, torch.zeros_like(mean), torch.zeros_like(log_std)).mean()
        prior_ce = F.cross_entropy(self.skill_prior(obs), labels.long())
        pm, pls = self.argument_prior(obs, labels)
        arg_kl = _gauss_kl(mean.detach(), log_std.detach(), pm, pls).mean()
        total = recon + progress + self.cfg.beta * kl + prior_ce + arg_kl
        return {"total": total, "recon": recon, "progress": progress, "kl": kl,
                "skill_prior_ce": prior_ce, "argument_prior_kl": arg_kl}


# --------------------------------------------------------------------------------------------------
# Training data and loop
# --------------------------------------------------------------------------------------------------
@dataclass
class SkillTrainingData:
    """Segments ready for training: raw actions, skill labels and observations at each segment's start."""

    actions: list[np.ndarray]  # per segment (L_i, A) float32, raw units
    labels: np.ndarray  # (S,) int64 skill ids
    obs: np.ndarray  # (S, obs_dim) float32, already normalised (embedding part) + proprio

    def __post_init__(self) -> None:
        if not (len(self.actions) == len(self.labels) == len(self.obs)):
            raise ValueError("actions, labels and obs must have one entry per segment")
        if len(self.actions) == 0:
            raise ValueError("no segments to train on")


def pad_segments(actions: Sequence[np.ndarray], max_len: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad (L_i, A) segments to (S, L_max, A); returns (padded, lengths)."""
    lengths = np.array([len(a) for a in actions], dtype=np.int64)
    if (lengths < 1).any():
        raise ValueError("empty segment")
    L = int(max_len or lengths.max())
    out = np.zeros((len(actions), L, actions[0].shape[-1]), dtype=np.float32)
    for i, a in enumerate(actions):
        out[i, :min(len(a), L)] = a[:L]
    return out, np.minimum(lengths, L)


def train_skill_model(data: SkillTrainingData, cfg: SkillModelConfig, action_low: np.ndarray,
                      action_high: np.ndarray, callback: Callable[[int, dict[str, float]], None] | None = None
                      ) -> tuple[SkillModel, dict[str, list[float]]]:
    """AdamW on the joint loss over random minibatches of segments; returns (model in eval mode, history)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    padded, lengths = pad_segments(data.actions, cfg.max_segment_len)
    low, high = torch.as_tensor(action_low), torch.as_tensor(action_high)
    acts = normalise_actions(torch.from_numpy(padded), low, high)
    acts = acts * (torch.arange(acts.shape[1])[None, :, None] < torch.from_numpy(lengths)[:, None, None])
    lens = torch.from_numpy(lengths)
    labels = torch.as_tensor(data.labels, dtype=torch.long)
    if labels.min() < 0 or labels.max() >= cfg.num_skills:
        raise ValueError(f"labels must be in [0, {cfg.num_skills}), got range [{labels.min()}, {labels.max()}]")
    obs = torch.as_tensor(data.obs, dtype=torch.float32)
    if obs.shape[1] != cfg.obs_dim:
        raise ValueError(f"obs dim {obs.shape[1]} != config obs_dim {cfg.obs_dim}")
    model = SkillModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: dict[str, list[float]] = {}
    n = len(lens)
    model.train()
    for step in range(cfg.train_steps):
        idx = torch.from_numpy(rng.choice(n, size=min(cfg.batch_size, n), replace=False))
        Lb = int(lens[idx].max())
        losses = model.loss(acts[idx, :Lb], lens[idx], labels[idx], obs[idx])
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        scalars = {k: float(v.item()) for k, v in losses.items()}
        for k, v in scalars.items():
            history.setdefault(k, []).append(v)
        if callback is not None:
            callback(step, scalars)
    model.eval()
    return model, history
