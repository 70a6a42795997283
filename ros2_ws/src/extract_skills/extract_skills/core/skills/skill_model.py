"""EXTRACT phase 2: skill learning (a VAE over variable-length action segments plus two priors).

- skill encoder q(z | a_bar, d): LSTM over [action, one-hot d] -> Gaussian over the argument z, its mean
  bounded to |mu| <= ``mean_bound`` (official EXTRACT: 2) so the argument space a policy searches is bounded;
- skill decoder p(a_bar | z, d): autoregressive LSTM fed [z, one-hot d, previous action, elapsed time]. It is
  trained *free-running*, on its own previous outputs, exactly as it runs on the robot (teacher forcing
  trained it on inputs it never sees at execution and its error compounded 9x over a segment). Its progress
  head is trained toward linspace(0, 1) over each segment, so execution ends when progress >= threshold
  (or at ``max_segment_len``), which gives variable-length skills;
- skill-selection prior p(d | s): categorical, trained with label smoothing, then temperature-scaled on
  held-out episodes; a uniform floor keeps every probability >= ``prior_floor / K`` (a KL to it stays finite);
- argument prior p(z | s, d): Gaussian, trained by KL(q(z | a_bar, d) || p(z | s, d)) with q held fixed
  (as in SPiRL/EXTRACT);
- observation s = concat((embedding of the segment's first frame - mean) / std, proprio 8-D).

Loss scaling follows the official configuration: reconstruction is a *mean* over valid steps and action
dims, the KL to N(0, I) a mean over latent dims, weighted by beta (a sum over 20-30 steps x 8 dims against
beta 1e-3 had made the KL ~100x weaker: posterior std 0.02 and means up to 5.5).
Defaults: latent 5, hidden 128, AdamW lr 1e-3 (official). Actions are scaled to [-1, 1] with the dataset's
action bounds (widened by a margin so tanh targets are not saturated); decoder outputs are tanh'ed, so
decoded actions always lie inside the bounds.
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

from extract_skills.core.skills.kinematics import POSE_FEATURE_DIM, pose_features

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class SkillModelConfig:
    """Skill VAE + priors. Defaults: official EXTRACT values where they exist."""

    num_skills: int = 8  # K discrete skills (from skill extraction)
    obs_dim: int = 520  # embedding dim + proprio dim (8)
    action_dim: int = 8  # [dq_target(7) rad/step, gripper_target(1)]
    latent_dim: int = 5  # dim of the continuous skill argument z (EXTRACT: 5)
    hidden_dim: int = 128  # LSTM / MLP width (EXTRACT: 128)
    beta: float = 1e-2  # weight of the per-dim mean KL(q(z|a,d) || N(0, I)) against the per-element mean recon
    mean_bound: float = 2.0  # |mean of q(z|a,d)| <= this (official EXTRACT: 2)
    label_smoothing: float = 0.1  # skill-prior cross-entropy (calibration; temperature is fitted afterwards)
    prior_floor: float = 0.01  # p(d|s) = (1 - floor) softmax + floor / K: no probability below floor / K
    lr: float = 1e-3  # AdamW learning rate (EXTRACT: 1e-3)
    lr_final_fraction: float = 1.0  # cosine decay of lr to lr * this over train_steps (1.0: constant)
    weight_decay: float = 1e-2  # AdamW default
    max_segment_len: int = 30  # steps, longest segment = default rollout cap
    progress_threshold: float = 0.9  # stop a rollout once predicted progress >= this (see README/report)
    closed_loop: bool = False  # decoder also sees the measured proprio each step (q, gripper, q - q_start)
    action_frame: str = "measured"  # joint actions relative to the joints measured now / at the skill's start
    state_noise: float = 0.0  # rad; training only: noise on the decoder's measured joints, labels corrected (see loss)
    encoder_states: bool = False  # q(z | a, s, d): the encoder also reads the measured proprio of every step
    pose_features: bool = False  # closed-loop decoder also sees the flange pose (forward kinematics of q)
    pose_joint_offset: tuple[float, ...] = (0.0,) * 7  # data joints + this = Panda joints (kinematics.py)
    command_feedback: bool = False  # closed-loop decoder also sees the last joint command minus the measured joints
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
        if not 0.0 < self.lr_final_fraction <= 1.0:
            raise ValueError(f"lr_final_fraction must be in (0, 1], got {self.lr_final_fraction}")
        if self.encoder_states and not self.closed_loop:
            raise ValueError("encoder_states needs closed_loop (the per-step states come with it)")
        object.__setattr__(self, "pose_joint_offset", tuple(float(x) for x in self.pose_joint_offset))
        if len(self.pose_joint_offset) != 7:
            raise ValueError(f"pose_joint_offset needs 7 values, got {len(self.pose_joint_offset)}")
        if self.pose_features and not self.closed_loop:
            raise ValueError("pose_features needs closed_loop (the pose is computed from the measured joints)")
        if self.command_feedback and not (self.closed_loop and self.action_frame == "measured"):
            raise ValueError("command_feedback needs a closed-loop decoder in the 'measured' frame")
        if not self.mean_bound > 0:
            raise ValueError(f"mean_bound must be > 0, got {self.mean_bound}")
        if not 0.0 <= self.label_smoothing < 1.0 or not 0.0 <= self.prior_floor < 1.0:
            raise ValueError("label_smoothing and prior_floor must be in [0, 1)")
        if not 0.0 < self.progress_threshold <= 1.0:
            raise ValueError(f"progress_threshold must be in (0, 1], got {self.progress_threshold}")
        if self.action_frame not in ("measured", "skill_start"):
            raise ValueError(f"action_frame must be 'measured' or 'skill_start', got {self.action_frame!r}")
        if self.state_noise < 0 or (self.state_noise > 0 and not (self.closed_loop and self.action_frame == "measured")):
            raise ValueError("state_noise needs a closed-loop decoder in the 'measured' frame (>= 0)")

    @property
    def argument_bound(self) -> float:
        """|z_i| a goal may carry: the posterior-mean bound plus 2 standard deviations of the N(0, I) prior.

        Every argument the data produced lies within ``mean_bound``; the margin leaves room for a policy's
        exploration around them. Stored in the checkpoint; the decoder's goal validator clips to it."""
        return float(self.mean_bound + 2.0)


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


PROPRIO_DIM = 8  # [q (7) rad, gripper opening]


class SkillEncoder(nn.Module):
    """q(z | a_bar, d): LSTM over [normalised action, one-hot d]; last valid hidden -> (mean, log_std).

    With ``encoder_states`` it also reads the measured proprio of every step, q(z | a_bar, s, d). Actions in the
    measured frame are commands relative to where the arm is: from them alone z can say how the arm moves but
    not where it goes, so a decoder that starts where an earlier skill left the arm off the demo's path follows
    the demo's motion from the wrong place. With the states z can carry where the commands point."""

    def __init__(self, cfg: SkillModelConfig) -> None:
        super().__init__()
        self.k = cfg.num_skills
        self.mean_bound = cfg.mean_bound
        self.state_dim = PROPRIO_DIM if cfg.encoder_states else 0
        self.lstm = nn.LSTM(cfg.action_dim + cfg.num_skills + self.state_dim, cfg.hidden_dim, batch_first=True)
        self.head = nn.Linear(cfg.hidden_dim, 2 * cfg.latent_dim)

    def forward(self, actions: torch.Tensor, d: torch.Tensor, lengths: torch.Tensor,
                states: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        B, L, _ = actions.shape
        parts = [actions, _one_hot(d, self.k)[:, None].expand(B, L, self.k)]
        if self.state_dim:
            if states is None:
                raise ValueError("this skill encoder reads states: pass the measured proprio of every step")
            parts.append(states[:, :L])
        x = torch.cat(parts, -1)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        raw, log_std = self.head(h[-1]).chunk(2, -1)
        mean = self.mean_bound * torch.tanh(raw / self.mean_bound)  # |mu| <= bound, identity near 0
        return mean, log_std.clamp(-7.0, 2.0)


class SkillDecoder(nn.Module):
    """p(a_bar | z, d): autoregressive LSTM; per step a tanh action in [-1, 1] and a progress logit.

    Closed-loop (``closed_loop``): each step also sees the measured proprio s_t and the joint displacement
    since the skill started, q_t - q_0. The labels are commands relative to the measured joints, so the
    right command depends on where the arm actually is; an open-loop decoder's small errors compound over a
    skill and across chained skills with nothing to correct them."""

    def __init__(self, cfg: SkillModelConfig) -> None:
        super().__init__()
        self.k, self.a_dim, self.h = cfg.num_skills, cfg.action_dim, cfg.hidden_dim
        self.max_len = cfg.max_segment_len
        cond = cfg.latent_dim + cfg.num_skills
        self.init = nn.Linear(cond, 2 * cfg.hidden_dim)
        # +1 input: elapsed time t / max_segment_len. Without it the progress head had to infer the
        # phase from its own (free-running) actions and, on the kitchen data, never reached the stop
        # threshold; with it, progress is a function of time and (z, d), i.e. of the skill's length.
        self.state_dim = PROPRIO_DIM + 7 if cfg.closed_loop else 0
        # Pose features: the flange pose now (9) and its displacement since the skill started (3). The demos
        # steer the gripper to Cartesian targets; from joint angles alone the decoder has to learn the arm's
        # forward kinematics to millimetres as well as the skill.
        self.pose = cfg.pose_features
        self.register_buffer("pose_offset", torch.tensor(cfg.pose_joint_offset, dtype=torch.float32),
                             persistent=False)  # from the config, which the checkpoint stores
        self.state_dim += (POSE_FEATURE_DIM + 3) if self.pose else 0
        # Command feedback: the lead of the skill's last joint command over the measured joints. The demos'
        # controller integrates its target, so a command is (joints + lead + step): without the lead the decoder
        # must guess that hidden state (gravity sag, a push against a door) from the joints alone. In training the
        # lead comes from the decoder's own previous output, as at execution (a lead taken from the demo's
        # commands decoded demo states better and executed worse: benchmarks/RESULTS.md, session 13).
        self.command_feedback = cfg.command_feedback
        self.state_dim += 7 if self.command_feedback else 0
        # raw action bounds, to turn its own normalised outputs into joint targets; from the checkpoint/training
        # data (set_action_bounds), not saved with the weights
        self.register_buffer("action_low", -torch.ones(cfg.action_dim), persistent=False)
        self.register_buffer("action_high", torch.ones(cfg.action_dim), persistent=False)
        self.lstm = nn.LSTM(cond + cfg.action_dim + 1 + self.state_dim, cfg.hidden_dim, batch_first=True)
        self.action_head = nn.Linear(cfg.hidden_dim, cfg.action_dim)
        self.progress_head = nn.Linear(cfg.hidden_dim, 1)

    def set_action_bounds(self, low: np.ndarray | torch.Tensor, high: np.ndarray | torch.Tensor) -> None:
        """The raw [low, high] the normalised actions map to (what the model was trained with)."""
        self.action_low.copy_(torch.as_tensor(np.asarray(low, np.float32)))
        self.action_high.copy_(torch.as_tensor(np.asarray(high, np.float32)))

    def _cond(self, z: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return torch.cat([z, _one_hot(d, self.k)], -1)

    def initial_state(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = torch.tanh(self.init(cond)).chunk(2, -1)
        return h[None].contiguous(), c[None].contiguous()

    def step(self, cond: torch.Tensor, prev: torch.Tensor, t: int, state: tuple[torch.Tensor, torch.Tensor],
             proprio: torch.Tensor | None = None, q0: torch.Tensor | None = None, p0: torch.Tensor | None = None,
             lead: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """One decoder step for a batch: (action (B, A) in [-1, 1], progress logit (B,), new state).
        Closed-loop: ``proprio`` (B, 8) measured now, ``q0`` (B, 7) joints when the skill started; with pose
        features ``p0`` = :meth:`start_position` (q0), computed once per skill by the caller; with command
        feedback ``lead`` (B, 7) = last joint command - joints measured now (rad)."""
        tt = torch.full((cond.shape[0], 1), t / self.max_len, dtype=cond.dtype)
        parts = [cond, prev, tt]
        if self.state_dim:
            if proprio is None or q0 is None:
                raise ValueError("this skill decoder is closed-loop: it needs the measured proprio every step")
            parts += [proprio, proprio[:, :7] - q0]
            if self.pose:
                now = pose_features(proprio[:, :7] + self.pose_offset)
                parts += [now, now[:, :3] - p0]
            if self.command_feedback:
                if lead is None:
                    raise ValueError("this skill decoder uses command feedback: it needs the last command's lead")
                parts.append(lead)
        out, state = self.lstm(torch.cat(parts, -1)[:, None], state)
        return torch.tanh(self.action_head(out[:, 0])), self.progress_head(out[:, 0]).squeeze(-1), state

    def start_position(self, q0: torch.Tensor | None) -> torch.Tensor | None:
        """(B, 3) flange position at the skill's start (pose-feature decoders only; None otherwise)."""
        return pose_features(q0 + self.pose_offset)[:, :3] if self.pose and q0 is not None else None

    def forward(self, z: torch.Tensor, d: torch.Tensor, length: int, states: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Free-running decode of ``length`` steps, each fed the previous *own* output (as at execution);
        closed-loop decoders also get the recorded proprio ``states`` (B, >= L, 8) of each step. With command
        feedback the lead is the own previous target minus the joints now, ``q[t-1] + a[t-1] - q[t]`` (zero at
        the first step), as the executor measures it.

        Returns (actions (B, L, A) in [-1, 1], progress logits (B, L)); differentiable end to end."""
        cond = self._cond(z, d)
        state = self.initial_state(cond)
        prev = torch.zeros(z.shape[0], self.a_dim, dtype=z.dtype)
        q0 = states[:, 0, :7] if states is not None else None
        p0 = self.start_position(q0)
        actions, logits = [], []
        lead = torch.zeros(z.shape[0], 7, dtype=z.dtype) if self.command_feedback else None
        for t in range(length):
            s_t = None if states is None else states[:, t]
            if self.command_feedback and t > 0:  # own last target - joints now
                target = states[:, t - 1, :7] + denormalise_actions(prev, self.action_low, self.action_high)[:, :7]
                lead = target - s_t[:, :7]
            prev, logit, state = self.step(cond, prev, t, state, s_t, q0, p0, lead)
            actions.append(prev)
            logits.append(logit)
        return torch.stack(actions, 1), torch.stack(logits, 1)

    @torch.no_grad()
    def rollout(self, z: torch.Tensor, d: int, max_steps: int, progress_threshold: float,
                proprio_fn: Callable[[], np.ndarray] | None = None,
                lead_fn: Callable[[], np.ndarray] | None = None) -> Iterator[tuple[torch.Tensor, float]]:
        """Free-running generation for one skill: yields (normalised action (A,), progress in [0, 1]).
        Closed-loop decoders call ``proprio_fn()`` -> measured (8,) [q, gripper] before every step; with command
        feedback also ``lead_fn()`` -> (7,) last joint command - measured joints."""
        cond = self._cond(z.reshape(1, -1).float(), torch.tensor([d]))
        state = self.initial_state(cond)
        prev = torch.zeros(1, self.a_dim)
        q0 = p0 = None
        if self.command_feedback and lead_fn is None:
            raise ValueError("this skill decoder uses command feedback: pass lead_fn (last command - measured joints)")
        for t in range(max_steps):
            proprio = lead = None
            if self.state_dim:
                if proprio_fn is None:
                    raise ValueError("this skill decoder is closed-loop: pass proprio_fn (the measured arm state)")
                proprio = torch.as_tensor(np.asarray(proprio_fn(), np.float32)).reshape(1, PROPRIO_DIM)
                if q0 is None:
                    q0 = proprio[:, :7].clone()
                    p0 = self.start_position(q0)
                if self.command_feedback:
                    lead = torch.as_tensor(np.asarray(lead_fn(), np.float32)).reshape(1, 7)
            prev, logit, state = self.step(cond, prev, t, state, proprio, q0, p0, lead)
            progress = float(torch.sigmoid(logit).item())
            yield prev[0], progress
            if progress >= progress_threshold:
                return


class SkillPrior(nn.Module):
    """p(d | s): logits over K skills; ``probs`` applies the fitted temperature and the uniform floor."""

    def __init__(self, cfg: SkillModelConfig) -> None:
        super().__init__()
        self.net = _mlp(cfg.obs_dim, cfg.hidden_dim, cfg.num_skills)
        self.floor = cfg.prior_floor
        # Fitted on held-out episodes after training (``fit_temperature``); saved with the weights.
        self.register_buffer("temperature", torch.ones(()))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Raw (uncalibrated) logits: what training optimises."""
        return self.net(obs)

    def probs(self, obs: torch.Tensor) -> torch.Tensor:
        """Calibrated p(d | s) with every probability >= floor / K."""
        p = torch.softmax(self.net(obs) / self.temperature, -1)
        return (1.0 - self.floor) * p + self.floor / p.shape[-1]


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

    def loss(self, actions: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor, obs: torch.Tensor,
             states: torch.Tensor | None = None, sample: bool = True,
             decoder_io: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """actions (B, L, A) normalised and zero-padded; lengths (B,); labels (B,); obs (B, obs_dim);
        states (B, L, 8) proprio at each step (closed-loop decoders).

        ``sample=False`` decodes from the posterior mean (evaluation). ``decoder_io``: (states, targets) the
        decoder sees and must reproduce instead (state-noise training); the encoder always reads ``actions``."""
        B, L, A = actions.shape
        steps = torch.arange(L)[None]
        mask = (steps < lengths[:, None]).float()
        n_valid = mask.sum().clamp(min=1.0)
        mean, log_std = self.skill_encoder(actions, labels, lengths, states)
        z = mean + torch.randn_like(mean) * torch.exp(log_std) if sample else mean
        dec_states, targets = decoder_io if decoder_io is not None else (states, actions)
        pred, progress_logit = self.skill_decoder(z, labels, L, dec_states)
        # reconstruction: unit-variance Gaussian NLL up to constants, mean over valid steps and dims
        recon = (((pred - targets) ** 2).sum(-1) * mask).sum() / (n_valid * A)
        target = steps.float() / torch.clamp(lengths[:, None].float() - 1.0, min=1.0)
        target = torch.where(lengths[:, None] == 1, torch.ones_like(target), target).clamp(max=1.0)
        progress = (F.binary_cross_entropy_with_logits(progress_logit, target, reduction="none") * mask
                    ).sum() / n_valid
        kl = _gauss_kl(mean, log_std, torch.zeros_like(mean), torch.zeros_like(log_std)).mean() / mean.shape[-1]
        prior_ce = F.cross_entropy(self.skill_prior(obs), labels.long(), label_smoothing=self.cfg.label_smoothing)
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
    episodes: np.ndarray | None = None  # (S,) episode id of each segment (validation splits whole episodes)
    states: list[np.ndarray] | None = None  # per segment (L_i, 8) proprio before each action (closed loop)
    targets: list[np.ndarray] | None = None  # per segment (L_i, A) what the decoder must emit from ``states``
    # when that differs from ``actions`` (on-policy relabelled segments: the encoder reads the demo's actions,
    # the decoder sees the states its own rollout visited and the demo's commanded targets from there)

    def __post_init__(self) -> None:
        if not (len(self.actions) == len(self.labels) == len(self.obs)):
            raise ValueError("actions, labels and obs must have one entry per segment")
        if len(self.actions) == 0:
            raise ValueError("no segments to train on")
        if self.episodes is not None and len(self.episodes) != len(self.labels):
            raise ValueError("episodes must have one entry per segment")
        if self.states is not None and [len(s) for s in self.states] != [len(a) for a in self.actions]:
            raise ValueError("states must have one (L_i, 8) entry per segment, as long as its actions")
        if self.targets is not None and (self.states is None or [t.shape for t in self.targets] !=
                                         [a.shape for a in self.actions]):
            raise ValueError("targets need states and must have one entry per segment, shaped like its actions")

    def subset(self, idx: np.ndarray) -> "SkillTrainingData":
        return SkillTrainingData([self.actions[i] for i in idx], self.labels[idx], self.obs[idx],
                                 None if self.episodes is None else self.episodes[idx],
                                 None if self.states is None else [self.states[i] for i in idx],
                                 None if self.targets is None else [self.targets[i] for i in idx])

    def decoder_targets(self) -> list[np.ndarray]:
        """What the decoder must reproduce per segment: ``targets`` where given, else the actions."""
        return self.actions if self.targets is None else self.targets


def concat_training_data(parts: Sequence[SkillTrainingData]) -> SkillTrainingData:
    """One data set from several (demo segments plus on-policy relabelled ones); per-part ``targets`` default to
    the actions, so mixing relabelled and plain data keeps both."""
    if not parts:
        raise ValueError("nothing to concatenate")
    with_states = [p.states is not None for p in parts]
    if any(with_states) and not all(with_states):
        raise ValueError("either every part has states or none does")
    relabelled = any(p.targets is not None for p in parts)
    return SkillTrainingData(
        [a for p in parts for a in p.actions], np.concatenate([p.labels for p in parts]),
        np.concatenate([p.obs for p in parts]),
        None if any(p.episodes is None for p in parts) else np.concatenate([p.episodes for p in parts]),
        [s for p in parts for s in p.states] if all(with_states) else None,
        [t for p in parts for t in p.decoder_targets()] if relabelled else None)


def split_by_episode(data: SkillTrainingData, val_fraction: float, seed: int = 0
                     ) -> tuple[SkillTrainingData, SkillTrainingData]:
    """(train, validation): whole episodes go to validation, so no segment of a validation episode is
    seen in training (neighbouring segments of one episode are near-duplicates)."""
    if data.episodes is None:
        raise ValueError("split_by_episode needs SkillTrainingData.episodes")
    eps = np.unique(data.episodes)
    n_val = int(round(val_fraction * len(eps)))
    if not 1 <= n_val < len(eps):
        raise ValueError(f"val_fraction {val_fraction} of {len(eps)} episodes leaves an empty split")
    val_eps = np.random.default_rng(seed).choice(eps, size=n_val, replace=False)
    is_val = np.isin(data.episodes, val_eps)
    return data.subset(np.flatnonzero(~is_val)), data.subset(np.flatnonzero(is_val))


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


def _normalised_padded(actions: Sequence[np.ndarray], cfg: SkillModelConfig, action_low: np.ndarray,
                       action_high: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    padded, lengths = pad_segments(actions, cfg.max_segment_len)
    acts = normalise_actions(torch.from_numpy(padded), torch.as_tensor(action_low), torch.as_tensor(action_high))
    return acts * (torch.arange(acts.shape[1])[None, :, None] < torch.from_numpy(lengths)[:, None, None]), lengths


def _decoder_targets(data: SkillTrainingData, cfg: SkillModelConfig, action_low: np.ndarray,
                     action_high: np.ndarray) -> torch.Tensor | None:
    """Normalised padded ``targets`` (None when the decoder reproduces the actions)."""
    return None if data.targets is None else _normalised_padded(data.targets, cfg, action_low, action_high)[0]


def _tensors(data: SkillTrainingData, cfg: SkillModelConfig, action_low: np.ndarray, action_high: np.ndarray
             ) -> tuple[torch.Tensor, ...]:
    """(normalised zero-padded actions, lengths, labels, obs, states or None) tensors, checked against the config."""
    acts, lengths = _normalised_padded(data.actions, cfg, action_low, action_high)
    labels = torch.as_tensor(data.labels, dtype=torch.long)
    if labels.min() < 0 or labels.max() >= cfg.num_skills:
        raise ValueError(f"labels must be in [0, {cfg.num_skills}), got range [{labels.min()}, {labels.max()}]")
    obs = torch.as_tensor(data.obs, dtype=torch.float32)
    if obs.shape[1] != cfg.obs_dim:
        raise ValueError(f"obs dim {obs.shape[1]} != config obs_dim {cfg.obs_dim}")
    states = None
    if cfg.closed_loop:
        if data.states is None:
            raise ValueError("a closed-loop decoder needs SkillTrainingData.states")
        # padding repeats the last state (masked out of the loss anyway)
        L = acts.shape[1]
        states = torch.from_numpy(np.stack([np.concatenate([s[:L], np.repeat(s[-1:], max(L - len(s), 0), 0)])
                                            for s in data.states]).astype(np.float32))
    return acts, torch.from_numpy(lengths), labels, obs, states


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE of the top-label confidence over ``bins`` equal-width bins (0 = perfectly calibrated)."""
    conf, pred = probs.max(1), probs.argmax(1)
    correct = (pred == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


@torch.no_grad()
def fit_temperature(model: SkillModel, obs: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature of p(d|s) minimising held-out NLL (grid search: one scalar, no overfitting risk)."""
    logits = model.skill_prior(obs)
    grid = torch.logspace(-1.0, 1.5, 101)
    nll = torch.stack([F.cross_entropy(logits / t, labels) for t in grid])
    t = float(grid[int(nll.argmin())])
    model.skill_prior.temperature.fill_(t)
    return t


@torch.no_grad()
def evaluate_skill_model(model: SkillModel, data: SkillTrainingData, action_low: np.ndarray,
                         action_high: np.ndarray) -> dict[str, float]:
    """Held-out measures the way the model is used: free-running decode from the posterior mean, calibrated
    prior. ``joint_command_error_rad``: mean absolute error of the decoded joint commands (relative targets)
    against the labels, over valid steps and the 7 joints; ``gripper_command_error``: the same for the gripper."""
    cfg = model.cfg
    model.eval()
    acts, lens, labels, obs, states = _tensors(data, cfg, action_low, action_high)
    losses = model.loss(acts, lens, labels, obs, states, sample=False)
    mean, log_std = model.skill_encoder(acts, labels, lens, states)
    pred, _ = model.skill_decoder(mean, labels, acts.shape[1], states)
    low, high = torch.as_tensor(action_low), torch.as_tensor(action_high)
    mask = (torch.arange(acts.shape[1])[None, :, None] < lens[:, None, None]).float()
    raw_pred = denormalise_actions(pred, low, high) * mask
    raw_true = denormalise_actions(acts, low, high) * mask
    n_valid = mask[..., 0].sum()
    err = (raw_pred - raw_true).abs() * mask
    probs = model.skill_prior.probs(obs).numpy()
    y = labels.numpy()
    return {
        "recon_free": float(losses["recon"]),
        "progress": float(losses["progress"]),
        "argument_prior_kl": float(losses["argument_prior_kl"]),
        "joint_command_error_rad": float(err[..., :7].sum() / (7 * n_valid)),
        "gripper_command_error": float(err[..., 7].sum() / n_valid),
        "posterior_std_mean": float(torch.exp(log_std).mean()),
        "posterior_abs_mean_max": float(mean.abs().max()),
        "prior_accuracy": float((probs.argmax(1) == y).mean()),
        "prior_nll": float(-np.log(probs[np.arange(len(y)), y]).mean()),
        "prior_ece": expected_calibration_error(probs, y),
        "prior_min_prob": float(probs.min()),
        "prior_temperature": float(model.skill_prior.temperature),
        "segments": float(len(y)),
    }


def _noisy_states(acts: torch.Tensor, states: torch.Tensor, cfg: SkillModelConfig, low: torch.Tensor,
                  high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise injection for the closed-loop decoder (DART-style, without simulating): each step's measured joints
    are perturbed by N(0, state_noise) and the label is corrected to the same commanded target from there
    (measured frame: cmd - q~ = label - noise). The decoder thus learns to steer back to the demo's commands from
    states the demo never visited, which is where its own small errors put the arm at execution."""
    eps = torch.randn(*states.shape[:2], 7) * cfg.state_noise
    noisy = states.clone()
    noisy[..., :7] += eps
    raw = denormalise_actions(acts, low, high)
    raw[..., :7] -= eps
    mask = (acts.abs().sum(-1, keepdim=True) > 0).float()  # padding stays zero
    return noisy, normalise_actions(raw, low, high) * mask


def train_skill_model(data: SkillTrainingData, cfg: SkillModelConfig, action_low: np.ndarray,
                      action_high: np.ndarray, callback: Callable[[int, dict[str, float]], None] | None = None,
                      val: SkillTrainingData | None = None, eval_every: int = 100, init: SkillModel | None = None,
                      decoder_only: bool = False) -> tuple[SkillModel, dict[str, list[float]]]:
    """AdamW on the joint loss over random minibatches of segments; returns (model in eval mode, history).

    With ``val`` (held-out episodes): every ``eval_every`` steps the validation losses (free-running, posterior
    mean) are measured and the VAE (skill encoder + decoder) of the best reconstruction + progress + beta KL
    is kept. The priors overfit long before the VAE stops improving, and the argument prior's target (the
    posterior) moves while the VAE trains, so both priors are then refitted against the final posterior with
    early stopping on ``val`` (:func:`fit_priors`), and the skill prior's temperature is fitted on ``val``.

    ``init``: continue from this model (same config shapes) instead of a fresh one, e.g. a DAgger round
    (:mod:`extract_skills.core.sim.onpolicy`) fine-tuning the decoder on the states its own rollouts visited.
    ``decoder_only`` (with ``init``): only the skill decoder is trained; the encoder, hence every segment's
    posterior, and both priors (their fit and temperature) stay exactly those of ``init``.
    """
    if decoder_only and init is None:
        raise ValueError("decoder_only fine-tunes an existing model: pass init")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    acts, lens, labels, obs, states = _tensors(data, cfg, action_low, action_high)
    targets = _decoder_targets(data, cfg, action_low, action_high)
    low, high = torch.as_tensor(action_low), torch.as_tensor(action_high)
    model = SkillModel(cfg)
    if init is not None:
        model.load_state_dict(init.state_dict())
    model.skill_decoder.set_action_bounds(action_low, action_high)
    trained = model.skill_decoder if decoder_only else model
    opt = torch.optim.AdamW(trained.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Cosine decay: at a constant lr the minibatch noise sets a floor on the decoder's precision.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.train_steps, eta_min=cfg.lr * cfg.lr_final_fraction)
    history: dict[str, list[float]] = {}
    n = len(lens)
    vt = _tensors(val, cfg, action_low, action_high) if val is not None else None
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    model.train()
    for step in range(cfg.train_steps):
        idx = torch.from_numpy(rng.choice(n, size=min(cfg.batch_size, n), replace=False))
        Lb = int(lens[idx].max())
        st = None if states is None else states[idx, :Lb]
        tg = acts[idx, :Lb] if targets is None else targets[idx, :Lb]
        io = _noisy_states(tg, st, cfg, low, high) if cfg.state_noise else (None if targets is None else (st, tg))
        losses = model.loss(acts[idx, :Lb], lens[idx], labels[idx], obs[idx], st, decoder_io=io)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        nn.utils.clip_grad_norm_(trained.parameters(), 10.0)
        opt.step()
        sched.step()
        scalars = {k: float(v.item()) for k, v in losses.items()}
        if vt is not None and (step % eval_every == eval_every - 1 or step == cfg.train_steps - 1):
            model.eval()
            with torch.no_grad():
                vl = model.loss(*vt, sample=False)
            model.train()
            scalars.update({f"val_{k}": float(v) for k, v in vl.items()})
            score = float(vl["recon"] + vl["progress"] + cfg.beta * vl["kl"])
            if best is None or score < best[0]:
                best = (score, step, {k: v.detach().clone() for k, v in model.state_dict().items()})
        for k, v in scalars.items():
            history.setdefault(k, []).append(v)
        if callback is not None:
            callback(step, scalars)
    model.eval()
    if vt is not None:
        model.load_state_dict(best[2])
        LOG.info("VAE: kept the weights of step %d (best held-out score)", best[1])
        if not decoder_only:  # the posterior did not move: the priors fitted to it stay
            history["prior_refit"] = fit_priors(model, (acts, lens, labels, obs, states), vt[:5], seed=cfg.seed)
            fit_temperature(model, vt[3], vt[2])
    return model, history


def fit_priors(model: SkillModel, train: tuple[torch.Tensor, ...], val: tuple[torch.Tensor, ...], steps: int = 3000,
               batch_size: int = 256, eval_every: int = 50, seed: int = 0) -> list[float]:
    """Re-initialise and fit p(d|s) and p(z|s,d) against the *final* posterior (frozen), keeping the weights
    with the best held-out cross-entropy / KL (early stopping). ``train``/``val``: (acts, lens, labels, obs[, states]).
    Returns the held-out score curve (skill-prior CE + argument-prior KL)."""
    cfg = model.cfg
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        post = {name: model.skill_encoder(t[0], t[2], t[1], t[4] if len(t) > 4 else None)
                for name, t in (("train", train), ("val", val))}
    model.skill_prior = SkillPrior(cfg)
    model.argument_prior = ArgumentPrior(cfg)
    priors = (model.skill_prior, model.argument_prior)
    opt = torch.optim.AdamW([p for m in priors for p in m.parameters()], lr=cfg.lr, weight_decay=cfg.weight_decay)

    def losses(t: tuple[torch.Tensor, ...], mean: torch.Tensor, log_std: torch.Tensor) -> tuple[torch.Tensor, ...]:
        labels, obs = t[2], t[3]
        ce = F.cross_entropy(model.skill_prior(obs), labels, label_smoothing=cfg.label_smoothing)
        pm, pls = model.argument_prior(obs, labels)
        return ce, _gauss_kl(mean, log_std, pm, pls).mean()

    n = len(train[2])
    best: dict[str, tuple[float, dict]] = {}
    curve: list[float] = []
    for step in range(steps):
        for m in priors:
            m.train()
        idx = torch.from_numpy(rng.choice(n, size=min(batch_size, n), replace=False))
        ce, kl = losses(tuple(None if x is None else x[idx] for x in train), post["train"][0][idx],
                        post["train"][1][idx])
        opt.zero_grad(set_to_none=True)
        (ce + kl).backward()
        opt.step()
        if step % eval_every == eval_every - 1 or step == steps - 1:
            for m in priors:
                m.eval()
            with torch.no_grad():
                vce, vkl = losses(val, *post["val"])
            curve.append(float(vce + vkl))
            for name, score, module in (("skill_prior", vce, model.skill_prior), ("argument_prior", vkl,
                                                                                  model.argument_prior)):
                if name not in best or float(score) < best[name][0]:
                    best[name] = (float(score), {k: v.detach().clone() for k, v in module.state_dict().items()})
    model.skill_prior.load_state_dict(best["skill_prior"][1])
    model.argument_prior.load_state_dict(best["argument_prior"][1])
    model.eval()
    return curve
