"""Per-episode ``.npz`` demonstration dataset (the one format every data source converts into).

Layout of a dataset directory::

    <dir>/dataset.json          format version, env id, image size, dt, render settings, subtask names
    <dir>/episode_000000.npz    one episode per file
    <dir>/episode_000001.npz
    ...

An episode with N control steps holds N+1 observations and N actions (observation t is what the
controller saw before it applied action t; observation N is the final state):

==================  =========  ================  =======================================================
key                 dtype      shape             meaning
==================  =========  ================  =======================================================
``images``          uint8      (N+1, H, W, 3)    RGB camera image
``qpos``            float64    (N+1, 9)          robot joints: 7 arm joints (rad) + 2 finger joints (m)
``qvel``            float64    (N+1, 9)          their velocities (rad/s, m/s)
``subtasks_done``   bool       (N+1, 7)          completion flags in :data:`SUBTASK_NAMES` order,
                                                 measured in the physics (not from the commands)
``env_actions``     float64    (N, 9)            raw env action applied after observation t
                                                 (kitchen: normalised joint velocities in [-1, 1])
``commands``        float64    (N, 8)            what the arm controller was told after observation t:
                                                 joint position target (7, rad) + gripper target [0, 1]
                                                 (format 2; absent in format 1 and in joint-state-only bags)
``stamps``          float64    (N+1,)            seconds since episode start
``meta``            str (0-d)  ()                JSON: task sequence, seed, success, source, ...
==================  =========  ================  =======================================================

Derived views (DESIGN.md): :meth:`EpisodeData.proprio` ``(N+1, 8) = [q(7), gripper_opening]`` and
:meth:`EpisodeData.skill_actions` ``(N, 8) = [q_cmd[t] - q[t] (7), gripper_cmd[t]]``: the commanded
joint target relative to the measured joints, and the commanded gripper target. That is exactly what
the skill executor sends (``q_measured + dq``), so replaying the labels replays the commands. The kitchen
gripper opening is ``(qpos[7] + qpos[8]) / 0.08`` clipped to [0, 1].

Realised motion (``q[t+1] - q[t]``, measured opening) is *not* a command: under position control with
gravity and contact the arm moves only ~0.4 of what it was told, and a closed gripper squeezing an object
measures 0.2-0.4 open. Episodes without ``commands`` (format 1, bags with joint states only) fall back
to realised motion with a warning, and :attr:`EpisodeData.action_labels` says which labels you got.

Actions and commands are kept in float64 (files written before 2026-11-26 hold float32; they load the
same): open-loop replay in the kitchen is chaotic, and float32 rounding (1e-8) of a 4-subtask demo's env
actions made its replay diverge by 1.6 rad after 81 steps and complete 2 of 4 subtasks, where the float64
actions replay it exactly (4 of 4).

Episodes are written atomically (temporary file in the same directory, then :func:`os.replace`),
so a reader never sees a half-written episode even while a generator is still running.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

LOG = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: per-step commands (the skill-action labels)
#: Formats this code reads; format 1 has no commands (labels fall back to realised motion, with a warning).
READABLE_FORMATS = (1, 2)
COMMAND_DIM = 8
#: Kitchen subtask names, in the column order of ``subtasks_done``.
SUBTASK_NAMES: tuple[str, ...] = (
    "microwave",
    "kettle",
    "light switch",
    "slide cabinet",
    "hinge cabinet",
    "bottom burner",
    "top burner",
)
#: Kitchen gripper: opening = (finger1 + finger2) / FINGER_SUM_OPEN (each finger travels 0..0.04 m).
FINGER_SUM_OPEN = 0.08  # m
EPISODE_RE = re.compile(r"^episode_(\d{6})\.npz$")
DATASET_JSON = "dataset.json"


def gripper_opening(qpos: np.ndarray) -> np.ndarray:
    """Normalised gripper opening in [0, 1] from kitchen qpos rows (..., 9)."""
    qpos = np.asarray(qpos)
    return np.clip((qpos[..., 7] + qpos[..., 8]) / FINGER_SUM_OPEN, 0.0, 1.0)


@dataclass
class EpisodeData:
    """One episode: N+1 observations and N actions (see the module docstring for units)."""

    images: np.ndarray
    qpos: np.ndarray
    qvel: np.ndarray
    subtasks_done: np.ndarray
    env_actions: np.ndarray
    stamps: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    commands: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images, dtype=np.uint8)
        self.qpos = np.asarray(self.qpos, dtype=np.float64)
        self.qvel = np.asarray(self.qvel, dtype=np.float64)
        self.subtasks_done = np.asarray(self.subtasks_done, dtype=bool)
        self.env_actions = np.asarray(self.env_actions, dtype=np.float64)
        self.stamps = np.asarray(self.stamps, dtype=np.float64)
        if self.commands is not None:
            self.commands = np.asarray(self.commands, dtype=np.float64)
        self.validate()

    @property
    def num_steps(self) -> int:
        """N, the number of actions."""
        return int(self.env_actions.shape[0])

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field whose shape breaks the format."""
        n1 = self.qpos.shape[0]
        checks = [
            ("images", self.images.ndim == 4 and self.images.shape[0] == n1 and self.images.shape[3] == 3),
            ("qpos", self.qpos.ndim == 2 and self.qpos.shape[1] == 9),
            ("qvel", self.qvel.shape == (n1, 9)),
            ("subtasks_done", self.subtasks_done.shape == (n1, len(SUBTASK_NAMES))),
            ("env_actions", self.env_actions.ndim == 2 and self.env_actions.shape[0] == n1 - 1),
            ("stamps", self.stamps.shape == (n1,)),
            ("commands", self.commands is None or self.commands.shape == (n1 - 1, COMMAND_DIM)),
        ]
        for name, ok in checks:
            if not ok:
                raise ValueError(
                    f"EpisodeData.{name} has a bad shape: images {self.images.shape}, qpos {self.qpos.shape}, "
                    f"qvel {self.qvel.shape}, subtasks_done {self.subtasks_done.shape}, "
                    f"env_actions {self.env_actions.shape}, stamps {self.stamps.shape}, "
                    f"commands {None if self.commands is None else self.commands.shape} "
                    "(expected N+1 observations, N actions)"
                )
        if n1 < 1:
            raise ValueError("EpisodeData needs at least one observation")
        if self.commands is not None and not np.all(np.isfinite(self.commands)):
            raise ValueError("EpisodeData.commands contains NaN/Inf")

    @property
    def action_labels(self) -> str:
        """``"commands"`` (labels are what the controller was told) or ``"realised_motion"`` (fallback)."""
        return "commands" if self.commands is not None else "realised_motion"

    def gripper_opening(self) -> np.ndarray:
        """(N+1,) normalised opening in [0, 1]."""
        return gripper_opening(self.qpos)

    def proprio(self) -> np.ndarray:
        """(N+1, 8) float32 ``[q(7) rad, gripper_opening]``."""
        return np.concatenate([self.qpos[:, :7], self.gripper_opening()[:, None]], axis=1).astype(np.float32)

    def skill_actions(self) -> np.ndarray:
        """(N, 8) float64 skill-action labels (what the skill decoder emits and the executor sends).

        With commands: ``[q_cmd[t] - q[t] (7), gripper_cmd[t]]``. Without (format 1, joint-state-only
        bags): realised motion ``[q[t+1] - q[t], opening[t+1]]``, with a warning, since replaying those
        under-drives the arm (see the module docstring).
        """
        if self.commands is not None:
            dq = self.commands[:, :7].astype(np.float64) - self.qpos[:-1, :7]
            return np.concatenate([dq, self.commands[:, 7:8]], axis=1)
        LOG.warning("episode %s has no recorded commands: skill actions fall back to realised motion "
                    "(q[t+1] - q[t]), which under-drives a position-controlled arm; record the command topic",
                    self.meta.get("bag") or self.meta.get("seed", "?"))
        dq = self.qpos[1:, :7] - self.qpos[:-1, :7]
        return np.concatenate([dq, self.gripper_opening()[1:, None]], axis=1)


def episode_path(directory: str | os.PathLike, index: int) -> Path:
    if index < 0 or index > 999_999:
        raise ValueError(f"episode index must be in [0, 999999], got {index}")
    return Path(directory) / f"episode_{index:06d}.npz"


def write_episode(directory: str | os.PathLike, index: int, episode: EpisodeData) -> Path:
    """Write ``episode`` as ``<directory>/episode_<index:06d>.npz`` atomically; returns the path."""
    episode.validate()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = episode_path(directory, index)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=".npz.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(
                fh,
                images=episode.images,
                qpos=episode.qpos,
                qvel=episode.qvel,
                subtasks_done=episode.subtasks_done,
                env_actions=episode.env_actions,
                stamps=episode.stamps,
                meta=np.array(json.dumps(episode.meta, sort_keys=True)),
                **({} if episode.commands is None else {"commands": episode.commands}),
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    LOG.debug("wrote %s (%d steps)", final, episode.num_steps)
    return final


def read_episode(path: str | os.PathLike) -> EpisodeData:
    """Load one episode file (raises ``ValueError`` on a malformed file)."""
    with np.load(path, allow_pickle=False) as z:
        missing = {"images", "qpos", "qvel", "subtasks_done", "env_actions", "stamps", "meta"} - set(z.files)
        if missing:
            raise ValueError(f"{path}: missing keys {sorted(missing)}")
        return EpisodeData(
            images=z["images"],
            qpos=z["qpos"],
            qvel=z["qvel"],
            subtasks_done=z["subtasks_done"],
            env_actions=z["env_actions"],
            stamps=z["stamps"],
            meta=json.loads(str(z["meta"][()])),
            commands=z["commands"] if "commands" in z.files else None,
        )


def episode_files(directory: str | os.PathLike) -> list[Path]:
    """Sorted episode files of a dataset directory (temporary files are ignored)."""
    return sorted(p for p in Path(directory).iterdir() if EPISODE_RE.match(p.name))


def iter_dataset(directory: str | os.PathLike) -> Iterator[tuple[Path, EpisodeData]]:
    """Yield ``(path, episode)`` in index order."""
    for path in episode_files(directory):
        yield path, read_episode(path)


def write_dataset_info(directory: str | os.PathLike, info: dict[str, Any]) -> Path:
    """Write ``dataset.json`` (atomically). ``format_version`` and ``subtask_names`` are filled in."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = {"format_version": FORMAT_VERSION, "subtask_names": list(SUBTASK_NAMES), **info}
    final = directory / DATASET_JSON
    tmp = directory / f".{DATASET_JSON}.tmp"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, final)
    return final


def read_dataset_info(directory: str | os.PathLike) -> dict[str, Any]:
    """Read ``dataset.json``; refuses an unknown format version with a ``ValueError``."""
    path = Path(directory) / DATASET_JSON
    data = json.loads(path.read_text())
    if data.get("format_version") not in READABLE_FORMATS:
        raise ValueError(f"{path}: format_version {data.get('format_version')!r}, this code reads {READABLE_FORMATS}")
    if data["format_version"] < FORMAT_VERSION:
        LOG.warning("%s: format %d has no recorded commands; skill-action labels fall back to realised motion "
                    "(regenerate or re-convert the demos)", path, data["format_version"])
    return data


def segment_labels(step_actions: np.ndarray, proprio: np.ndarray, start: int, end: int,
                   frame: str = "measured") -> np.ndarray:
    """Labels of one skill segment ``[start, end)`` in the skill decoder's action frame.

    ``step_actions`` (N, 8) are :meth:`EpisodeData.skill_actions` (relative to the joints measured at each
    step) and ``proprio`` (N+1, 8) :meth:`EpisodeData.proprio`. ``frame="skill_start"`` re-expresses the joint
    targets relative to the joints measured at the segment's first step: ``q_cmd[t] - q[start]``, which the
    executor turns back into exactly ``q_cmd[t]``."""
    seg = np.array(step_actions[start:end], dtype=np.float64, copy=True)
    if frame == "skill_start":
        seg[:, :7] += proprio[start:end, :7] - proprio[start, :7]
    elif frame != "measured":
        raise ValueError(f"frame must be 'measured' or 'skill_start', got {frame!r}")
    return seg
