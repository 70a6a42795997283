"""High-level (one transition per skill) replay buffer that survives a crash.

In memory it is a ring of ``capacity`` transitions. On disk it is append-only: :meth:`ReplayBuffer.flush`
writes the transitions added since the last flush as one chunk (``chunk_<seq>.npz``) and then the manifest,
both tmp -> fsync -> ``os.replace`` -> directory fsync. The manifest (schema version, per chunk its name,
count and sha256) is the commit point: a chunk the manifest does not name, or whose bytes no longer match
its sha256, is skipped with a warning on :meth:`ReplayBuffer.open`, so SIGKILL at any point loses at most
the transitions not yet flushed. Chunks that fell out of the ring are deleted after the manifest stops
naming them.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from extract_skills.core.data.atomic_io import atomic_write
from extract_skills.core.skills.encoders import file_sha256

LOG = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

#: Per-transition fields: name -> (dtype, shape after the batch dim; "obs"/"z" are filled in per buffer).
FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "obs": ("float32", ("obs",)),  # observation at the decision: frame stamped after the previous skill ended
    "skill": ("int64", ()),  # d
    "z": ("float32", ("z",)),  # argument as executed (within the argument bound)
    "reward": ("float32", ()),  # summed over the skill's low-level steps
    "next_obs": ("float32", ("obs",)),
    "terminated": ("bool", ()),  # task over (all subtasks done, or a failure the episode cannot recover from)
    "truncated": ("bool", ()),  # step budget spent: bootstrap through it
    "steps": ("int32", ()),  # low-level control steps the skill took
    "log_prob": ("float32", ()),  # log pi(d, z | s) of the acting policy (off-policy diagnostics)
    "intervention": ("bool", ()),  # an operator stopped, corrected or relabelled this skill
}


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ChunkInfo:
    name: str
    count: int
    sha256: str


class ReplayBuffer:
    """Ring buffer of high-level transitions with durable, verifiable chunks (``directory=None``: memory only)."""

    def __init__(self, capacity: int, obs_dim: int, latent_dim: int, directory: Path | str | None = None) -> None:
        if capacity < 1 or obs_dim < 1 or latent_dim < 1:
            raise ValueError("capacity, obs_dim and latent_dim must be >= 1")
        self.capacity, self.obs_dim, self.latent_dim = int(capacity), int(obs_dim), int(latent_dim)
        self.directory = Path(directory) if directory is not None else None
        dims = {"obs": self.obs_dim, "z": self.latent_dim}
        self.data = {k: np.zeros((self.capacity, *(dims[s] for s in shape)), dtype)
                     for k, (dtype, shape) in FIELDS.items()}
        self.size = 0  # transitions held (<= capacity)
        self.total = 0  # transitions ever added (flushed or not)
        self.flushed = 0  # of ``total``, how many are durable on disk
        self.chunks: list[ChunkInfo] = []
        self.next_chunk = 0

    def __len__(self) -> int:
        return self.size

    @property
    def pending(self) -> int:
        """Transitions added since the last flush (lost if the process dies now)."""
        return self.total - self.flushed

    def add(self, **transition: Any) -> None:
        missing = set(FIELDS) - set(transition)
        unknown = set(transition) - set(FIELDS)
        if missing or unknown:
            raise ValueError(f"transition fields: missing {sorted(missing)}, unknown {sorted(unknown)}")
        values = {}
        for k, v in transition.items():
            arr = np.asarray(v, dtype=FIELDS[k][0])
            if arr.shape != self.data[k].shape[1:]:
                raise ValueError(f"{k} must have shape {self.data[k].shape[1:]}, got {arr.shape}")
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise ValueError(f"{k} is not finite: {arr}")
            values[k] = arr
        if self.pending >= self.capacity:
            raise RuntimeError("more unflushed transitions than the ring holds: flush more often")
        i = self.total % self.capacity
        for k, arr in values.items():
            self.data[k][i] = arr
        self.total += 1
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = rng.integers(0, self.size, size=batch_size)
        return {k: v[idx] for k, v in self.data.items()}

    def _indices(self, start: int, stop: int) -> np.ndarray:
        return np.arange(start, stop) % self.capacity

    # ------------------------------------------------------------------------------------ durability
    def flush(self) -> int:
        """Write the pending transitions as one chunk, then commit it in the manifest. Returns how many."""
        if self.directory is None:
            raise RuntimeError("this replay buffer has no directory")
        n = self.pending
        if n == 0:
            return 0
        self.directory.mkdir(parents=True, exist_ok=True)
        idx = self._indices(self.flushed, self.total)
        name = f"chunk_{self.next_chunk:08d}.npz"
        buf = io.BytesIO()
        np.savez(buf, **{k: v[idx] for k, v in self.data.items()})
        blob = buf.getvalue()
        atomic_write(self.directory / name, lambda f: f.write(blob))
        fsync_dir(self.directory)
        self.chunks.append(ChunkInfo(name, n, hashlib.sha256(blob).hexdigest()))
        self.next_chunk += 1
        self.flushed = self.total
        # Drop chunks whose transitions all fell out of the ring (keep what a reload needs to refill it).
        dropped = []
        while len(self.chunks) > 1 and sum(c.count for c in self.chunks[1:]) >= self.capacity:
            dropped.append(self.chunks.pop(0))
        self._write_manifest()
        for c in dropped:
            (self.directory / c.name).unlink(missing_ok=True)
        return n

    def _write_manifest(self) -> None:
        assert self.directory is not None
        manifest = {"schema_version": SCHEMA_VERSION, "obs_dim": self.obs_dim, "latent_dim": self.latent_dim,
                    "total": self.flushed, "next_chunk": self.next_chunk,
                    "chunks": [c.__dict__ for c in self.chunks]}
        text = json.dumps(manifest, indent=1).encode()
        atomic_write(self.directory / MANIFEST, lambda f: f.write(text))
        fsync_dir(self.directory)

    @classmethod
    def open(cls, directory: Path | str, capacity: int, obs_dim: int, latent_dim: int) -> "ReplayBuffer":
        """The buffer as last committed in ``directory`` (empty if there is none yet).

        Chunks missing, unreadable, of the wrong shape or not matching their sha256 are skipped with a
        warning; files the manifest does not name (a crash between chunk and manifest) are ignored."""
        buf = cls(capacity, obs_dim, latent_dim, directory)
        path = buf.directory / MANIFEST
        if not path.is_file():
            return buf
        manifest = json.loads(path.read_text())
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"{path}: replay schema {manifest.get('schema_version')}, this code reads {SCHEMA_VERSION}")
        if (manifest["obs_dim"], manifest["latent_dim"]) != (obs_dim, latent_dim):
            raise ValueError(f"{path}: buffer holds obs_dim={manifest['obs_dim']} latent_dim={manifest['latent_dim']}, "
                             f"this agent needs obs_dim={obs_dim} latent_dim={latent_dim}")
        named = {c["name"] for c in manifest["chunks"]}
        for stray in sorted(p.name for p in buf.directory.glob("chunk_*.npz") if p.name not in named):
            LOG.warning("replay buffer %s: %s is not in the manifest (written before a crash?); ignored", directory, stray)
        for c in manifest["chunks"]:
            info = ChunkInfo(c["name"], int(c["count"]), c["sha256"])
            arrays = buf._read_chunk(info)
            if arrays is None:
                continue
            for j in range(info.count):
                buf.add(**{k: arrays[k][j] for k in FIELDS})
            buf.flushed = buf.total
            buf.chunks.append(info)
        buf.next_chunk = int(manifest["next_chunk"])
        LOG.info("replay buffer %s: resumed %d transitions from %d chunks", directory, buf.size, len(buf.chunks))
        return buf

    def _read_chunk(self, info: ChunkInfo) -> dict[str, np.ndarray] | None:
        assert self.directory is not None
        p = self.directory / info.name
        if not p.is_file():
            LOG.warning("replay buffer: chunk %s is missing; its %d transitions are skipped", info.name, info.count)
            return None
        if file_sha256(p) != info.sha256:
            LOG.warning("replay buffer: chunk %s does not match its sha256 (corrupt); skipped", info.name)
            return None
        try:
            with np.load(p) as z:
                arrays = {k: z[k] for k in FIELDS}
        except Exception as e:  # noqa: BLE001 - any unreadable chunk is skipped, never fatal
            LOG.warning("replay buffer: chunk %s unreadable (%s); skipped", info.name, e)
            return None
        if any(len(a) != info.count for a in arrays.values()):
            LOG.warning("replay buffer: chunk %s has the wrong length; skipped", info.name)
            return None
        return arrays
