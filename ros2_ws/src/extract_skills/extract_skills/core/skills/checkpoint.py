"""The skill checkpoint: the one contract between offline training and online execution.

One ``torch.save`` dict (tensors and plain Python values only, so it loads with ``weights_only=True``)
holding: schema and code version, config dict, encoder name + sha256, embedding / proprio / action dims,
skill count K, K-means centres, observation normalisation (mean, std of the embedding), action bounds,
and the state dicts of skill encoder, skill decoder, skill prior and argument prior.
:func:`load_skill_bundle` rebuilds a ready :class:`SkillBundle` from the file alone and raises
:class:`CheckpointMismatchError` naming every field that differs from what the caller expects.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from extract_skills.core.data.atomic_io import atomic_torch_save
from .skill_model import PROPRIO_DIM, SkillModel, SkillModelConfig, denormalise_actions, normalise_actions

LOG = logging.getLogger(__name__)

# 2: the skill decoder takes elapsed time as an input
# 3: labels are commands; free-running decoder; bounded posterior mean and the goal argument bound;
#    calibrated skill prior (temperature buffer, uniform floor); held-out metrics in config["validation"]
SCHEMA_VERSION = 3
CODE_VERSION = "0.1.0"
ACTION_DIM = 8
NETWORKS = ("skill_encoder", "skill_decoder", "skill_prior", "argument_prior")
#: fields a caller may pin in ``load_skill_bundle(path, expect=...)``
EXPECTABLE = ("schema_version", "encoder_name", "encoder_sha256", "embed_dim", "proprio_dim", "action_dim",
              "num_skills", "latent_dim", "argument_bound", "action_low", "action_high")


class CheckpointCorruptError(ValueError):
    """A checkpoint file that cannot be trusted (unreadable, truncated, non-finite, impossible values)."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"checkpoint {path} is corrupt or unusable: " + "; ".join(problems)
                         + " (regenerate it with scripts/make_models.sh)")


#: Skill actions are joint offsets (rad) and a gripper target in [0, 1]: bounds beyond this are not a model of
#: the arm (a corrupted or wrongly scaled file), whatever else loads.
MAX_ACTION_BOUND = 10.0


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit what the caller (or the code) expects; ``.fields`` lists what differs."""

    def __init__(self, path: Path | str, differences: dict[str, tuple[Any, Any]]) -> None:
        self.fields = sorted(differences)
        self.differences = differences
        lines = [f"  {k}: expected {_short(e)}, checkpoint has {_short(a)}" for k, (e, a) in sorted(differences.items())]
        super().__init__(f"checkpoint {path} does not match ({', '.join(self.fields)}):\n" + "\n".join(lines))


def _short(v: Any) -> str:
    if isinstance(v, (np.ndarray, torch.Tensor)):
        a = np.asarray(v)
        return f"array{list(a.shape)} {np.array2string(a.ravel()[:8], precision=4)}"
    return repr(v)


@dataclass(frozen=True)
class BundleMeta:
    """Header of the checkpoint (everything except the weights)."""

    schema_version: int
    code_version: str
    encoder_name: str
    encoder_sha256: str
    embed_dim: int
    proprio_dim: int
    action_dim: int
    num_skills: int
    latent_dim: int
    argument_bound: float


class SkillBundle:
    """Everything the online side needs: priors, decoder rollout, normalisation, centres."""

    def __init__(self, meta: BundleMeta, model: SkillModel, centres: np.ndarray, obs_mean: np.ndarray,
                 obs_std: np.ndarray, action_low: np.ndarray, action_high: np.ndarray,
                 config: dict[str, Any]) -> None:
        self.meta = meta
        self.model = model.eval()
        self.centres = np.asarray(centres, np.float32)
        self.obs_mean = np.asarray(obs_mean, np.float32)
        self.obs_std = np.asarray(obs_std, np.float32)
        self.action_low = np.asarray(action_low, np.float32)
        self.action_high = np.asarray(action_high, np.float32)
        self.config = config
        self.model_config = model.cfg

    @property
    def num_skills(self) -> int:
        return self.meta.num_skills

    @property
    def obs_dim(self) -> int:
        return self.meta.embed_dim + self.meta.proprio_dim

    def make_obs(self, embedding: np.ndarray, proprio: np.ndarray) -> np.ndarray:
        """obs = concat((embedding - mean) / std, proprio), float32 (embed_dim + 8,)."""
        e = (np.asarray(embedding, np.float32) - self.obs_mean) / self.obs_std
        return np.concatenate([e, np.asarray(proprio, np.float32)], -1)

    def _obs_tensor(self, obs: np.ndarray) -> torch.Tensor:
        o = torch.as_tensor(np.asarray(obs, np.float32)).reshape(1, -1)
        if o.shape[1] != self.obs_dim:
            raise ValueError(f"obs must have {self.obs_dim} values (embedding {self.meta.embed_dim} + proprio "
                             f"{self.meta.proprio_dim}), got {o.shape[1]}")
        return o

    @property
    def argument_bound(self) -> float:
        """|z_i| a skill goal may carry (from the posterior-mean bound the model was trained with)."""
        return float(self.meta.argument_bound)

    @property
    def progress_threshold(self) -> float:
        """Decoder progress that ends a skill."""
        return float(self.model_config.progress_threshold)

    @property
    def max_skill_steps(self) -> int:
        """Longest skill the decoder was trained on: the step cap of one rollout."""
        return int(self.model_config.max_segment_len)

    def skill_prior(self, obs: np.ndarray) -> np.ndarray:
        """Calibrated p(d | s) as probabilities (K,), each >= ``prior_floor / K``."""
        with torch.no_grad():
            return self.model.skill_prior.probs(self._obs_tensor(obs))[0].numpy()

    def posterior(self, actions: np.ndarray, d: int, states: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """q(z | actions, d) as (mean (Z,), std (Z,)) for one segment of raw skill actions (L, 8); encoders
        trained with ``encoder_states`` also need ``states`` (L, 8), the proprio measured before each action."""
        self._check_skill(d)
        a = torch.as_tensor(np.asarray(actions, np.float32))
        if a.ndim != 2 or a.shape[1] != self.meta.action_dim or len(a) < 1:
            raise ValueError(f"actions must have shape (L >= 1, {self.meta.action_dim}), got {tuple(a.shape)}")
        st = None
        if self.model.skill_encoder.state_dim:
            if states is None:
                raise ValueError("this checkpoint's skill encoder reads states: pass the proprio of every step")
            st = torch.as_tensor(np.asarray(states, np.float32))
            if st.shape != (len(a), self.model.skill_encoder.state_dim):
                raise ValueError(f"states must have shape ({len(a)}, {self.model.skill_encoder.state_dim}), "
                                 f"got {tuple(st.shape)}")
            st = st[None]
        a = normalise_actions(a, torch.as_tensor(self.action_low), torch.as_tensor(self.action_high))
        with torch.no_grad():
            mean, log_std = self.model.skill_encoder(a[None], torch.tensor([int(d)]), torch.tensor([len(a)]), st)
        return mean[0].numpy(), torch.exp(log_std)[0].numpy()

    def argument_prior(self, obs: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
        """p(z | s, d) as (mean (Z,), std (Z,))."""
        self._check_skill(d)
        with torch.no_grad():
            mean, log_std = self.model.argument_prior(self._obs_tensor(obs), torch.tensor([int(d)]))
        return mean[0].numpy(), torch.exp(log_std)[0].numpy()

    @property
    def action_frame(self) -> str:
        """What decoded joint actions are relative to (``ExecutorConfig.action_frame``)."""
        return str(self.model_config.action_frame)

    @property
    def closed_loop(self) -> bool:
        """The decoder needs the measured proprio every step (``rollout(..., proprio_fn=...)``)."""
        return bool(self.model_config.closed_loop)

    @property
    def command_feedback(self) -> bool:
        """The decoder also needs the lead of the skill's last command (``rollout(..., lead_fn=...)``)."""
        return bool(self.model_config.command_feedback)

    def rollout(self, d: int, z: np.ndarray, max_steps: int | None = None,
                progress_threshold: float | None = None,
                proprio_fn: Callable[[], np.ndarray] | None = None,
                lead_fn: Callable[[], np.ndarray] | None = None) -> Iterator[tuple[np.ndarray, float]]:
        """Decode skill ``d`` with argument ``z``: yields (action (8,) in raw units, progress), variable length.

        Stops after the first step whose progress >= ``progress_threshold`` or after ``max_steps``
        (defaults, and what the decoder node uses: the checkpoint's threshold and max segment length).
        A closed-loop decoder calls ``proprio_fn()`` -> measured ``[q (7) rad, gripper opening]`` each step, and one
        with command feedback (:attr:`command_feedback`) ``lead_fn()`` -> this skill's last joint target minus the
        measured joints (7,) rad, zero at its first step (``SkillExecutor.command_lead``).
        """
        self._check_skill(d)
        zt = torch.as_tensor(np.asarray(z, np.float32)).reshape(-1)
        if zt.numel() != self.meta.latent_dim:
            raise ValueError(f"z must have {self.meta.latent_dim} values, got {zt.numel()}")
        steps = int(max_steps if max_steps is not None else self.model_config.max_segment_len)
        thr = float(progress_threshold if progress_threshold is not None else self.model_config.progress_threshold)
        low, high = torch.as_tensor(self.action_low), torch.as_tensor(self.action_high)
        for action, progress in self.model.skill_decoder.rollout(zt, int(d), steps, thr, proprio_fn, lead_fn):
            yield denormalise_actions(action, low, high).numpy().astype(np.float32), progress

    def _check_skill(self, d: int) -> None:
        if not 0 <= int(d) < self.meta.num_skills:
            raise ValueError(f"skill id must be in [0, {self.meta.num_skills}), got {d}")


def save_skill_bundle(path: Path | str, model: SkillModel, *, encoder_name: str, encoder_sha256: str,
                      centres: np.ndarray, obs_mean: np.ndarray, obs_std: np.ndarray, action_low: np.ndarray,
                      action_high: np.ndarray, config: Mapping[str, Any] | None = None) -> Path:
    """Write the checkpoint atomically (temp file in the same directory -> fsync -> ``os.replace``)."""
    cfg = model.cfg
    embed_dim = cfg.obs_dim - PROPRIO_DIM
    checks = {"centres": (np.shape(centres), (cfg.num_skills, embed_dim)),
              "obs_mean": (np.shape(obs_mean), (embed_dim,)), "obs_std": (np.shape(obs_std), (embed_dim,)),
              "action_low": (np.shape(action_low), (cfg.action_dim,)),
              "action_high": (np.shape(action_high), (cfg.action_dim,))}
    bad = {k: (want, got) for k, (got, want) in checks.items() if tuple(got) != want}
    if bad:
        raise ValueError(f"inconsistent bundle contents (expected, got): {bad}")
    blob = {
        "schema_version": SCHEMA_VERSION,
        "code_version": CODE_VERSION,
        "config": {"skill_model": asdict(cfg), **dict(config or {})},
        "encoder_name": str(encoder_name),
        "encoder_sha256": str(encoder_sha256),
        "embed_dim": int(embed_dim),
        "proprio_dim": PROPRIO_DIM,
        "action_dim": int(cfg.action_dim),
        "num_skills": int(cfg.num_skills),
        "latent_dim": int(cfg.latent_dim),
        "argument_bound": float(cfg.argument_bound),
        "kmeans_centres": torch.as_tensor(np.asarray(centres, np.float32)),
        "obs_mean": torch.as_tensor(np.asarray(obs_mean, np.float32)),
        "obs_std": torch.as_tensor(np.asarray(obs_std, np.float32)),
        "action_low": torch.as_tensor(np.asarray(action_low, np.float32)),
        "action_high": torch.as_tensor(np.asarray(action_high, np.float32)),
        **{name: {k: v.detach().cpu().clone() for k, v in getattr(model, name).state_dict().items()}
           for name in NETWORKS},
    }
    path = atomic_torch_save(blob, path)
    LOG.info("saved skill bundle %s (K=%d, encoder %s)", path, cfg.num_skills, encoder_name)
    return path


def _differs(expected: Any, actual: Any) -> bool:
    if isinstance(expected, (np.ndarray, torch.Tensor, list, tuple)) or isinstance(actual, torch.Tensor):
        e, a = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
        return e.shape != a.shape or not np.allclose(e, a, rtol=1e-6, atol=1e-8)
    return expected != actual


def _sanity_problems(blob: dict[str, Any]) -> list[str]:
    """Values that load but must never reach the arm: non-finite weights, a zero or negative embedding std
    (obs = (e - mean) / std), impossible action bounds."""
    out = []
    for name in NETWORKS:
        bad = [k for k, v in blob[name].items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            out.append(f"non-finite weights in {name}: {bad[:4]}")
    for key in ("kmeans_centres", "obs_mean", "obs_std", "action_low", "action_high"):
        if not torch.isfinite(blob[key]).all():
            out.append(f"{key} is not finite")
    if (blob["obs_std"] <= 0).any():
        out.append(f"obs_std has {int((blob['obs_std'] <= 0).sum())} values <= 0")
    low, high = blob["action_low"], blob["action_high"]
    if (low >= high).any():
        out.append("action_low >= action_high")
    if (low.abs() > MAX_ACTION_BOUND).any() or (high.abs() > MAX_ACTION_BOUND).any():
        out.append(f"action bounds beyond +-{MAX_ACTION_BOUND} (rad offsets and a gripper in [0, 1])")
    bound = float(blob["argument_bound"])
    if not (0 < bound < 100):
        out.append(f"argument_bound {bound} is not in (0, 100)")
    return out


def load_skill_bundle(path: Path | str, expect: Mapping[str, Any] | None = None) -> SkillBundle:
    """Rebuild a :class:`SkillBundle` from the file alone.

    ``expect`` pins header fields (see :data:`EXPECTABLE`), e.g. the online encoder's name and hash; every
    field that differs, plus a schema version other than this code's and any state-dict tensor whose shape
    does not fit the header, is named in one :class:`CheckpointMismatchError`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"skill checkpoint not found: {path.resolve()}")
    expect = dict(expect or {})
    unknown = set(expect) - set(EXPECTABLE)
    if unknown:
        raise ValueError(f"unknown expect fields {sorted(unknown)}; valid: {', '.join(EXPECTABLE)}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated or flipped bytes surface as many torch/zip errors
        raise CheckpointCorruptError(path, [f"unreadable ({type(e).__name__}: {e})"]) from e
    if not isinstance(blob, dict):
        raise CheckpointCorruptError(path, [f"holds a {type(blob).__name__}, not a skill checkpoint"])
    missing = [k for k in ("schema_version", "encoder_name", "num_skills", "argument_bound", *NETWORKS)
               if k not in blob]
    if missing:
        raise CheckpointMismatchError(path, {k: ("present", "missing") for k in missing})
    diffs: dict[str, tuple[Any, Any]] = {}
    if blob["schema_version"] != SCHEMA_VERSION and "schema_version" not in expect:
        diffs["schema_version"] = (SCHEMA_VERSION, blob["schema_version"])
    for key, want in expect.items():
        if _differs(want, blob.get(key)):
            diffs[key] = (want, blob.get(key))
    # rebuild the networks from the header and check every tensor's shape against it
    sm = dict(blob["config"]["skill_model"])
    sm.update(num_skills=int(blob["num_skills"]), latent_dim=int(blob["latent_dim"]),
              action_dim=int(blob["action_dim"]), obs_dim=int(blob["embed_dim"]) + int(blob["proprio_dim"]))
    model = SkillModel(SkillModelConfig(**{f.name: sm[f.name] for f in fields(SkillModelConfig) if f.name in sm}))
    for name in NETWORKS:
        want_sd = getattr(model, name).state_dict()
        got_sd = blob[name]
        for k in sorted(set(want_sd) | set(got_sd)):
            w, g = want_sd.get(k), got_sd.get(k)
            ws = tuple(w.shape) if w is not None else "absent"
            gs = tuple(g.shape) if g is not None else "absent"
            if ws != gs:
                diffs[f"{name}.{k}"] = (ws, gs)
    K, D = int(blob["num_skills"]), int(blob["embed_dim"])
    for key, shape in (("kmeans_centres", (K, D)), ("obs_mean", (D,)), ("obs_std", (D,)),
                       ("action_low", (int(blob["action_dim"]),)), ("action_high", (int(blob["action_dim"]),))):
        if tuple(blob[key].shape) != shape:
            diffs[f"{key}.shape"] = (shape, tuple(blob[key].shape))
    if diffs:
        raise CheckpointMismatchError(path, diffs)
    problems = _sanity_problems(blob)
    if problems:
        raise CheckpointCorruptError(path, problems)
    for name in NETWORKS:
        getattr(model, name).load_state_dict(blob[name])
    model.skill_decoder.set_action_bounds(blob["action_low"], blob["action_high"])
    meta = BundleMeta(**{f.name: blob[f.name] for f in fields(BundleMeta)})
    return SkillBundle(meta, model, blob["kmeans_centres"].numpy(), blob["obs_mean"].numpy(),
                       blob["obs_std"].numpy(), blob["action_low"].numpy(), blob["action_high"].numpy(),
                       blob["config"])
