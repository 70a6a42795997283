"""Online fine-tuning loop: act with the hybrid policy, store skill transitions, update, checkpoint, resume.

The same loop drives the ROS-free harness (:class:`~extract_skills.core.rl.skill_env.SkillEnv`) used by the
benchmarks and tests; the policy node runs its pieces (``Learner``) between skills.

Crash safety: every ``checkpoint_every`` episodes the replay buffer is flushed (its own manifest commits it),
then ``agent.pt`` is written atomically with the agent (weights, optimisers, alphas, update count), the step
counters and every RNG state. After SIGKILL, :meth:`Learner.resume` restores the last complete checkpoint and
the buffer as last committed: at most the transitions not yet flushed are lost.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from extract_skills.core.data.atomic_io import atomic_torch_save
from extract_skills.core.rl.replay_buffer import ReplayBuffer, fsync_dir
from extract_skills.core.rl.skill_sac import Batch, HybridSkillSAC

LOG = logging.getLogger(__name__)

CHECKPOINT = "agent.pt"
CHECKPOINT_SCHEMA = 1


@dataclass(frozen=True)
class TrainConfig:
    """The loop around the agent (the agent's own hyperparameters are :class:`SkillSACConfig`)."""

    total_env_steps: int = 20_000  # low-level control steps of training episodes (the budget)
    seed: int = 0  # RNG seed; training episode i resets the kitchen with seed ``seed * 100_000 + i``
    eval_every: int = 2_000  # env steps between evaluations (0: never)
    eval_episodes: int = 5  # episodes per evaluation, seeds fixed across evaluations
    eval_deterministic: bool = False  # evaluate argmax d / mean z instead of sampling
    checkpoint_every: int = 5  # episodes between buffer flush + agent checkpoint

    def __post_init__(self) -> None:
        if self.total_env_steps < 1 or self.eval_every < 0 or self.eval_episodes < 0 or self.checkpoint_every < 1:
            raise ValueError("total_env_steps and checkpoint_every must be >= 1; eval_every, eval_episodes >= 0")


def to_batch(sample: dict[str, np.ndarray]) -> Batch:
    return Batch(obs=torch.as_tensor(sample["obs"]), skill=torch.as_tensor(sample["skill"]),
                 z=torch.as_tensor(sample["z"]), reward=torch.as_tensor(sample["reward"]),
                 next_obs=torch.as_tensor(sample["next_obs"]),
                 terminated=torch.as_tensor(sample["terminated"], dtype=torch.float32))


@dataclass
class Counters:
    env_steps: int = 0  # low-level steps of training episodes
    episodes: int = 0
    transitions: int = 0
    update_credit: float = 0.0  # utd credit not yet spent on gradient steps
    observed_env_steps: int = 0  # low-level steps of every stored transition (SkillSACConfig.utd_unit)


class Learner:
    """Agent + replay buffer + counters + RNGs, with the update schedule and the checkpoint contract."""

    def __init__(self, agent: HybridSkillSAC, run_dir: Path | str | None, seed: int = 0,
                 skill_checkpoint_sha256: str = "") -> None:
        self.agent = agent
        # The skill checkpoint (priors, decoder) this agent acts through: a resume with another one is refused.
        self.skill_sha256 = skill_checkpoint_sha256
        self.run_dir = Path(run_dir) if run_dir is not None else None
        cap = agent.cfg.buffer_capacity
        bdir = self.run_dir / "replay" if self.run_dir is not None else None
        self.buffer = ReplayBuffer(cap, agent.obs_dim, agent.latent_dim, bdir)
        self.counters = Counters()
        self.rng = np.random.default_rng(seed)
        self.torch_gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # reparameterisation noise inside the updates
        self.last_info: dict[str, float] = {}
        self.write_failures = 0  # consecutive failed checkpoint writes (disk full ...)

    # ------------------------------------------------------------------------------------------ acting
    def act(self, obs: np.ndarray, deterministic: bool = False) -> tuple[int, np.ndarray, float]:
        return self.agent.act(obs, deterministic=deterministic, generator=self.torch_gen)

    def observe(self, **transition: Any) -> int:
        """Store one skill transition and run the gradient steps it pays for; returns how many ran.

        A transition this agent could not have produced (skill id out of range, argument beyond the bound) is
        refused with ValueError before it reaches the buffer: one junk message must not poison training."""
        d, z = int(transition["skill"]), np.asarray(transition["z"], np.float64)
        if not 0 <= d < self.agent.num_skills:
            raise ValueError(f"skill id {d} is not in [0, {self.agent.num_skills})")
        if z.shape == (self.agent.latent_dim,) and not np.all(np.abs(z) <= self.agent.argument_bound + 1e-6):
            raise ValueError(f"argument {z} exceeds the argument bound {self.agent.argument_bound}")
        self.buffer.add(**transition)
        self.counters.transitions += 1
        cfg = self.agent.cfg
        per_env_step = cfg.utd_unit == "env_step"
        steps = max(int(transition.get("steps", 1)), 1)
        self.counters.observed_env_steps += steps
        seen = self.counters.observed_env_steps if per_env_step else len(self.buffer)
        if seen < max(cfg.learning_starts, 1):  # the buffer holds this transition at least
            return 0
        self.counters.update_credit += cfg.utd * (steps if per_env_step else 1)
        n = int(self.counters.update_credit)
        self.counters.update_credit -= n
        for _ in range(n):
            self.last_info = self.agent.update(to_batch(self.buffer.sample(self.agent.cfg.batch_size, self.rng)))
        return n

    # ------------------------------------------------------------------------------------------ durability
    def checkpoint(self, extra: dict[str, Any] | None = None) -> Path:
        """Flush the buffer, then write agent + counters + RNG states atomically."""
        if self.run_dir is None:
            raise RuntimeError("this learner has no run directory")
        self.buffer.flush()
        state = {"schema_version": CHECKPOINT_SCHEMA, "skill_checkpoint_sha256": self.skill_sha256,
                 "agent": self.agent.training_state(),
                 "counters": asdict(self.counters), "numpy_rng": self.rng.bit_generator.state,
                 "torch_gen": self.torch_gen.get_state(), "torch_rng": torch.get_rng_state(),
                 "extra": dict(extra or {})}
        path = atomic_torch_save(state, self.run_dir / CHECKPOINT)
        fsync_dir(self.run_dir)
        return path

    def try_checkpoint(self, extra: dict[str, Any] | None = None) -> Path | None:
        """:meth:`checkpoint`, but a failed write (disk full, file too large, I/O error) is logged and training
        goes on: the pending transitions stay in memory and the previous checkpoint stays intact (atomic
        writes), and the next call writes everything. Returns None when the write failed."""
        try:
            path = self.checkpoint(extra)
        except OSError as exc:
            self.write_failures += 1
            LOG.error("checkpoint to %s failed (%s): %d transitions kept in memory, retrying at the next "
                      "checkpoint; the last complete checkpoint is intact", self.run_dir, exc, self.buffer.pending)
            return None
        if self.write_failures:
            LOG.warning("checkpoint written again after %d failed attempts", self.write_failures)
            self.write_failures = 0
        return path

    def resume(self) -> dict[str, Any] | None:
        """Load the last complete checkpoint and the committed buffer; None (fresh start) if there is none."""
        if self.run_dir is None:
            return None
        self.buffer = ReplayBuffer.open(self.run_dir / "replay", self.agent.cfg.buffer_capacity,
                                        self.agent.obs_dim, self.agent.latent_dim)
        path = self.run_dir / CHECKPOINT
        if not path.is_file():
            return None
        state = read_agent_checkpoint(path, self.skill_sha256)
        self.agent.load_training_state(state["agent"])
        self.counters = Counters(**state["counters"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.torch_gen.set_state(state["torch_gen"])
        torch.set_rng_state(state["torch_rng"])
        LOG.info("resumed %s: %d episodes, %d env steps, %d updates, %d transitions in the buffer", path,
                 self.counters.episodes, self.counters.env_steps, self.agent.updates, len(self.buffer))
        return state["extra"]


def read_agent_checkpoint(path: Path | str, skill_checkpoint_sha256: str = "") -> dict[str, Any]:
    """Load ``agent.pt``, refusing another schema or (when both are known) another skill checkpoint."""
    from extract_skills.core.skills.deployment import verify_against_manifest

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"agent checkpoint not found: {path.resolve()}")
    verify_against_manifest(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated or altered bytes surface as many torch/zip errors
        raise ValueError(f"agent checkpoint {path} is unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("schema_version") != CHECKPOINT_SCHEMA:
        got = state.get("schema_version") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: agent checkpoint schema {got}, this code reads {CHECKPOINT_SCHEMA}")
    theirs = state.get("skill_checkpoint_sha256", "")
    if skill_checkpoint_sha256 and theirs and theirs != skill_checkpoint_sha256:
        raise ValueError(f"{path} was trained on skill checkpoint sha256 {theirs[:12]}..., this graph loads "
                         f"{skill_checkpoint_sha256[:12]}...: its policy would act through other skills")
    return state


def load_policy(path: Path | str, agent: HybridSkillSAC, skill_checkpoint_sha256: str = "") -> int:
    """Put the policy weights of a training run's ``agent.pt`` into ``agent``; returns their update count."""
    state = read_agent_checkpoint(path, skill_checkpoint_sha256)
    model = state["agent"]["model"]
    agent.load_policy_state({k[len("policy."):]: v for k, v in model.items() if k.startswith("policy.")})
    return int(state["agent"]["updates"])


@dataclass
class EpisodeLog:
    episode: int
    env_steps: int
    ret: float
    skills: int
    completed: list[str] = field(default_factory=list)


def run_episode(env, learner: Learner, seed: int, learn: bool, deterministic: bool = False,
                max_steps: int | None = None) -> EpisodeLog:
    """One episode on a :class:`SkillEnv`-like env (``reset(seed) -> obs``, ``step(d, z)``)."""
    obs = env.reset(seed=seed)
    ret, skills, steps = 0.0, 0, 0
    while True:
        d, z, logp = learner.act(obs, deterministic=deterministic)
        s = env.step(d, z)
        skills += 1
        steps += s.steps
        ret += s.reward
        truncated = s.truncated or (max_steps is not None and steps >= max_steps and not s.terminated)
        if learn:
            learner.observe(obs=obs, skill=d, z=z, reward=s.reward, next_obs=s.obs, terminated=s.terminated,
                            truncated=truncated, steps=s.steps, log_prob=logp, intervention=False)
        obs = s.obs
        if s.terminated or truncated:
            break
    return EpisodeLog(-1, steps, ret, skills, list(env.tracker.completed))


def evaluate(env, learner: Learner, cfg: TrainConfig) -> float:
    """Mean return over the fixed evaluation seeds (never trained on)."""
    rets = [run_episode(env, learner, seed=10_000_000 + cfg.seed * 1000 + i, learn=False,
                        deterministic=cfg.eval_deterministic).ret for i in range(cfg.eval_episodes)]
    return float(np.mean(rets)) if rets else float("nan")


def train(env, learner: Learner, cfg: TrainConfig,
          on_episode: Callable[[EpisodeLog, dict[str, float]], None] | None = None) -> list[tuple[int, float]]:
    """Train until ``cfg.total_env_steps``; returns the evaluation curve [(env_steps, mean return)].

    Resumes from ``learner.run_dir`` if it holds a checkpoint (the curve so far is kept in it)."""
    extra = learner.resume() or {}
    curve: list[tuple[int, float]] = [tuple(p) for p in extra.get("curve", [])]
    c = learner.counters
    if cfg.eval_every and not curve:
        curve.append((0, evaluate(env, learner, cfg)))
    next_eval = (c.env_steps // cfg.eval_every + 1) * cfg.eval_every if cfg.eval_every else None
    while c.env_steps < cfg.total_env_steps:
        log = run_episode(env, learner, seed=cfg.seed * 100_000 + c.episodes, learn=True,
                          max_steps=cfg.total_env_steps - c.env_steps)
        c.env_steps += log.env_steps
        c.episodes += 1
        log.episode, log.env_steps = c.episodes, c.env_steps
        if on_episode is not None:
            on_episode(log, learner.last_info)
        while next_eval is not None and c.env_steps >= next_eval and next_eval <= cfg.total_env_steps:
            curve.append((next_eval, evaluate(env, learner, cfg)))  # at the first episode end past the point
            next_eval += cfg.eval_every
        if learner.run_dir is not None and (c.episodes % cfg.checkpoint_every == 0 or c.env_steps >= cfg.total_env_steps):
            learner.checkpoint({"curve": curve, "train_config": asdict(cfg)})
    return curve

