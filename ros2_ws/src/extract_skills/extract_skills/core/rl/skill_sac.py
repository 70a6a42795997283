"""EXTRACT's online phase: soft actor-critic in the hybrid skill space (discrete skill d, continuous argument z).

The policy factorises as pi(d, z | s) = pi(d | s) pi(z | s, d) and starts as a copy of the offline priors
p(d | s), p(z | s, d). Twin critics Q(s, z) output one value per skill. With ``alpha_z``/``alpha_d`` the
weights of the two divergences to the priors (instead of SAC's entropy bonus), the actor minimises

    E_s [ sum_d pi(d|s) ( -min_i Q_i(s, z_d)[d] + alpha_z KL(pi(z|s,d) || p(z|s,d)) ) + alpha_d KL(pi(d|s) || p(d|s)) ]

with z_d ~ pi(z|s,d) reparameterised, and the critics regress onto

    r + gamma (1 - terminated) V(s'),   V(s') = sum_d pi(d|s') ( min_i Qtarg_i(s', z'_d)[d] - alpha_z KL_z ) - alpha_d KL_d

One transition is one skill (a high-level step): r is the reward summed over the skill's low-level steps and
gamma applies once per skill. Truncation (step budget spent) bootstraps; termination (task done) does not.
Defaults are the official configuration (alpha_d 0.1, batch 256, gamma 0.99, 50k transitions) except alpha_z: 0.1,
not 0.01. At 0.01 the argument term is too weak to matter against Q (final agents 3-6 nats per skill from
p(z|s,d), means moved ~0.5-0.8 per dimension in 2.4k updates) and, on the shipped skills, whose motions depend on z
sharply, the held-out-task return did not rise; at 0.1 the policy stays near the argument prior (0.1-0.3 nats),
learns mostly which skill to pick, and rises (benchmarks/RESULTS.md, session 15).
Pure torch: no ROS, no franky.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from extract_skills.core.skills.skill_model import ArgumentPrior, SkillModel, SkillPrior, _gauss_kl


@dataclass(frozen=True)
class SkillSACConfig:
    """Hyperparameters of the hybrid skill-space SAC (one line each)."""

    gamma: float = 0.99  # discount per skill (high-level) step
    tau: float = 0.005  # Polyak rate of the target critics
    batch_size: int = 256  # transitions per gradient step
    buffer_capacity: int = 50_000  # high-level transitions kept
    lr: float = 3e-4  # Adam step of actor, critics and alphas
    critic_hidden: int = 256  # width of the two critic MLPs
    alpha_z: float = 0.1  # weight of KL(pi(z|s,d) || p(z|s,d)) (start value when auto-tuned); official 0.01, see above
    alpha_d: float = 0.1  # weight of KL(pi(d|s) || p(d|s)) (start value when auto-tuned)
    auto_alpha: bool = False  # tune both alphas towards the target divergences below
    target_kl_z: float = 1.0  # nats, per skill: the argument divergence auto-tuning aims at
    target_kl_d: float = 0.1  # nats: the skill-choice divergence auto-tuning aims at
    utd: float = 1.0  # gradient steps per collected transition
    learning_starts: int = 256  # transitions collected before the first gradient step
    # "env_step": utd and learning_starts count low-level env steps instead of skill transitions, so agents whose
    # skills differ in length get the same gradient steps per env step (with "transition", EXTRACT's ~24-step
    # skills got a third of the 10-step SPiRL-style agent's updates and started learning 3.5k env steps later).
    utd_unit: str = "transition"
    max_grad_norm: float = 10.0  # clip of every gradient (a few big rewards must not blow up the actor)

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"gamma must be in [0, 1), got {self.gamma}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if self.batch_size < 1 or self.buffer_capacity < self.batch_size:
            raise ValueError("need 1 <= batch_size <= buffer_capacity")
        if self.lr <= 0 or self.alpha_z < 0 or self.alpha_d < 0 or self.utd <= 0:
            raise ValueError("lr and utd must be > 0, alphas >= 0")
        if self.auto_alpha and (self.alpha_z <= 0 or self.alpha_d <= 0):
            raise ValueError("auto_alpha tunes log(alpha): start values must be > 0")
        if self.utd_unit not in ("transition", "env_step"):
            raise ValueError(f"utd_unit must be 'transition' or 'env_step', got {self.utd_unit!r}")
        if self.learning_starts < 0 or self.max_grad_norm <= 0:
            raise ValueError("learning_starts must be >= 0 and max_grad_norm > 0")


@dataclass
class Batch:
    """High-level transitions as tensors: obs (B, O), skill (B,), z (B, Z), reward (B,), next_obs (B, O),
    terminated (B,) float."""

    obs: torch.Tensor
    skill: torch.Tensor
    z: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out))


class SkillCritic(nn.Module):
    """Q(s, z) -> (..., K): the value of executing each skill d with argument z."""

    def __init__(self, obs_dim: int, latent_dim: int, num_skills: int, hidden: int) -> None:
        super().__init__()
        self.net = _mlp(obs_dim + latent_dim, hidden, num_skills)

    def forward(self, obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, z], -1))


class HybridPolicy(nn.Module):
    """pi(d|s) and pi(z|s,d): the prior networks' architecture, initialised with their weights."""

    def __init__(self, skill_prior: SkillPrior, argument_prior: ArgumentPrior, argument_bound: float) -> None:
        super().__init__()
        self.skill_head = copy.deepcopy(skill_prior)
        self.argument_head = copy.deepcopy(argument_prior)
        self.num_skills = skill_prior.net[-1].out_features
        self.argument_bound = float(argument_bound)

    def skill_probs(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, K); same temperature and uniform floor as the prior, so KL(pi || p) is finite and 0 at start."""
        return self.skill_head.probs(obs)

    def arguments(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian over z for every skill: mean, log_std, each (B, K, Z)."""
        return _all_skills(self.argument_head, obs, self.num_skills)


def _all_skills(head: ArgumentPrior, obs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    b = obs.shape[0]
    d = torch.arange(k).repeat(b)
    mean, log_std = head(obs.repeat_interleave(k, 0), d)
    return mean.view(b, k, -1), log_std.view(b, k, -1)


def _q_all(critic: SkillCritic, obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Q(s, z_d)[d] for every d: obs (B, O), z (B, K, Z) -> (B, K)."""
    b, k, _ = z.shape
    q = critic(obs.repeat_interleave(k, 0), z.reshape(b * k, -1)).view(b, k, k)
    return torch.diagonal(q, dim1=1, dim2=2)


@torch.no_grad()
def polyak_update(pairs, tau: float) -> None:
    """target <- (1 - tau) target + tau online, for every (online, target) network pair."""
    for net, targ in pairs:
        for p, tp in zip(net.parameters(), targ.parameters()):
            tp.lerp_(p, tau)


def categorical_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dim; both strictly positive (the floor guarantees it)."""
    return (p * (p.log() - q.log())).sum(-1)


class HybridSkillSAC(nn.Module):
    """Policy, twin critics with targets, frozen priors, alphas and their optimisers: everything a resume needs."""

    def __init__(self, skill_model: SkillModel, argument_bound: float, cfg: SkillSACConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or SkillSACConfig()
        mcfg = skill_model.cfg
        self.obs_dim, self.latent_dim, self.num_skills = mcfg.obs_dim, mcfg.latent_dim, mcfg.num_skills
        self.argument_bound = float(argument_bound)
        # Frozen targets of the two KL terms.
        self.prior_skill = copy.deepcopy(skill_model.skill_prior).requires_grad_(False)
        self.prior_argument = copy.deepcopy(skill_model.argument_prior).requires_grad_(False)
        self.policy = HybridPolicy(skill_model.skill_prior, skill_model.argument_prior, argument_bound)
        self.policy.requires_grad_(True)
        h = self.cfg.critic_hidden
        self.q1 = SkillCritic(self.obs_dim, self.latent_dim, self.num_skills, h)
        self.q2 = SkillCritic(self.obs_dim, self.latent_dim, self.num_skills, h)
        self.q1_target = copy.deepcopy(self.q1).requires_grad_(False)
        self.q2_target = copy.deepcopy(self.q2).requires_grad_(False)
        self.log_alpha_z = nn.Parameter(torch.tensor(math.log(max(self.cfg.alpha_z, 1e-12))))
        self.log_alpha_d = nn.Parameter(torch.tensor(math.log(max(self.cfg.alpha_d, 1e-12))))
        self.actor_opt = torch.optim.Adam(self.policy.parameters(), lr=self.cfg.lr)
        self.critic_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=self.cfg.lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha_z, self.log_alpha_d], lr=self.cfg.lr)
        self.updates = 0

    # ------------------------------------------------------------------------------------------- acting
    @property
    def alphas(self) -> tuple[float, float]:
        if self.cfg.auto_alpha:
            return float(self.log_alpha_z.detach().exp()), float(self.log_alpha_d.detach().exp())
        return self.cfg.alpha_z, self.cfg.alpha_d

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False,
            generator: torch.Generator | None = None) -> tuple[int, np.ndarray, float]:
        """One decision: (skill d, argument z (Z,) within the argument bound, log pi(d, z | s)).

        ``deterministic``: the most likely skill and the mean argument (evaluation)."""
        o = torch.as_tensor(np.asarray(obs, np.float32)).reshape(1, -1)
        if o.shape[1] != self.obs_dim or not torch.isfinite(o).all():
            raise ValueError(f"observation must be {self.obs_dim} finite values, got shape {tuple(o.shape)}")
        probs = self.policy.skill_probs(o)[0]
        d = int(probs.argmax()) if deterministic else int(torch.multinomial(probs, 1, generator=generator))
        mean, log_std = self.policy.argument_head(o, torch.tensor([d]))
        std = log_std.exp()
        z = mean if deterministic else mean + std * torch.randn(mean.shape, generator=generator)
        logp = torch.log(probs[d]) + torch.distributions.Normal(mean, std).log_prob(z).sum()
        z = z.clamp(-self.argument_bound, self.argument_bound)
        return d, z[0].numpy().astype(np.float64), float(logp)

    # ------------------------------------------------------------------------------------------- losses
    def divergences(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """pi(d|s) (B, K), KL_d (B,), argument mean/log_std (B, K, Z) and KL_z (B, K) of the policy vs the priors."""
        probs = self.policy.skill_probs(obs)
        prior_probs = self.prior_skill.probs(obs)
        mean, log_std = self.policy.arguments(obs)
        pm, pls = _all_skills(self.prior_argument, obs, self.num_skills)
        return {"probs": probs, "kl_d": categorical_kl(probs, prior_probs), "mean": mean, "log_std": log_std,
                "kl_z": _gauss_kl(mean, log_std, pm, pls)}

    def _sample_z(self, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
        z = mean + log_std.exp() * torch.randn_like(mean)
        return z.clamp(-self.argument_bound, self.argument_bound)

    def critic_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        alpha_z, alpha_d = self.alphas
        with torch.no_grad():
            nxt = self.divergences(batch.next_obs)
            z_next = self._sample_z(nxt["mean"], nxt["log_std"])
            q_next = torch.min(_q_all(self.q1_target, batch.next_obs, z_next),
                               _q_all(self.q2_target, batch.next_obs, z_next))
            v_next = (nxt["probs"] * (q_next - alpha_z * nxt["kl_z"])).sum(-1) - alpha_d * nxt["kl_d"]
            y = batch.reward + self.cfg.gamma * (1.0 - batch.terminated) * v_next
        idx = batch.skill.long().unsqueeze(-1)
        q1 = self.q1(batch.obs, batch.z).gather(-1, idx).squeeze(-1)
        q2 = self.q2(batch.obs, batch.z).gather(-1, idx).squeeze(-1)
        loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)
        return loss, {"critic_loss": float(loss.detach()), "q_mean": float(q1.detach().mean()), "target_mean": float(y.mean())}

    def actor_loss(self, obs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The hybrid objective above; returns it and the divergences (for the alpha update)."""
        alpha_z, alpha_d = self.alphas
        div = self.divergences(obs)
        z = self._sample_z(div["mean"], div["log_std"])
        q = torch.min(_q_all(self.q1, obs, z), _q_all(self.q2, obs, z))
        per_skill = -q + alpha_z * div["kl_z"]
        loss = ((div["probs"] * per_skill).sum(-1) + alpha_d * div["kl_d"]).mean()
        return loss, div

    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step on critics, actor and (if tuned) alphas, then Polyak-average the targets."""
        c_loss, info = self.critic_loss(batch)
        self.critic_opt.zero_grad()
        c_loss.backward()
        nn.utils.clip_grad_norm_([*self.q1.parameters(), *self.q2.parameters()], self.cfg.max_grad_norm)
        self.critic_opt.step()

        # critics are not updated by the actor step (their grads are zeroed before their next step)
        a_loss, div = self.actor_loss(batch.obs)
        self.actor_opt.zero_grad()
        a_loss.backward()
        nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.max_grad_norm)
        self.actor_opt.step()

        kl_z = float((div["probs"] * div["kl_z"]).sum(-1).mean().detach())
        kl_d = float(div["kl_d"].mean().detach())
        if self.cfg.auto_alpha:
            alpha_loss = -(self.log_alpha_z * (kl_z - self.cfg.target_kl_z)
                           + self.log_alpha_d * (kl_d - self.cfg.target_kl_d))
            self.alpha_opt.zero_grad()
            alpha_loss.backward()
            self.alpha_opt.step()

        polyak_update(((self.q1, self.q1_target), (self.q2, self.q2_target)), self.cfg.tau)
        self.updates += 1
        alpha_z, alpha_d = self.alphas
        info.update(actor_loss=float(a_loss.detach()), kl_z=kl_z, kl_d=kl_d, alpha_z=alpha_z, alpha_d=alpha_d)
        return info

    # ------------------------------------------------------------------------------------------- state
    def training_state(self) -> dict[str, Any]:
        """Everything a resume needs from the agent (weights, optimisers, alphas, counters, config)."""
        return {"config": asdict(self.cfg), "argument_bound": self.argument_bound, "updates": self.updates,
                "model": self.state_dict(), "actor_opt": self.actor_opt.state_dict(),
                "critic_opt": self.critic_opt.state_dict(), "alpha_opt": self.alpha_opt.state_dict()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        # A field added after the checkpoint was written takes its default, which by convention is the behaviour
        # from before the field existed (e.g. utd_unit, added in session 5): an older run directory still resumes.
        saved, current = {**asdict(SkillSACConfig()), **state["config"]}, asdict(self.cfg)
        if saved != current:
            diff = {k: (v, saved.get(k)) for k, v in current.items() if saved.get(k) != v}
            diff.update({k: (None, v) for k, v in saved.items() if k not in current})
            raise ValueError(f"agent checkpoint was written with other hyperparameters (this run, checkpoint): {diff}")
        self.load_state_dict(state["model"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])
        self.updates = int(state["updates"])

    def policy_state(self) -> dict[str, torch.Tensor]:
        """The actor's weights only: what a learner sends to the acting policy node."""
        return {k: v.detach().clone() for k, v in self.policy.state_dict().items()}

    def load_policy_state(self, state: dict[str, torch.Tensor]) -> None:
        self.policy.load_state_dict(state)
