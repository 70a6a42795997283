"""What the online nodes load: the skill checkpoint and the exact encoder it was trained with.

Layout of a models directory (the shipped one is the repository's models/):
    <models_dir>/extract_kitchen.pt          skill checkpoint (core.checkpoint contract)
    <models_dir>/encoders/<encoder_name>.pt  encoder weights in R3M checkpoint format
The encoder file's sha256 must equal the one recorded in the checkpoint: embeddings from any
other weights would put the policy's inputs off the distribution it was trained on.

``<models_dir>/SHA256SUMS`` (``sha256sum`` format, written by ``scripts/make_models.sh``; check by hand with
``sha256sum -c SHA256SUMS``) pins every shipped file: a file it lists whose bytes differ is refused before it
is loaded (a copy cut short, flipped bytes, an edited model).
"""
from __future__ import annotations

from pathlib import Path

import torch

from extract_skills.core.skills.checkpoint import (CheckpointCorruptError, CheckpointMismatchError, SkillBundle,
                                                   load_skill_bundle)
from extract_skills.core.skills.encoders import FrameEncoder, file_sha256, load_encoder

MANIFEST = "SHA256SUMS"

REGENERATE_HINT = "regenerate the shipped models with `scripts/make_models.sh` (see models/README.md)"


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found at {path.resolve()}; {REGENERATE_HINT}")
    verify_against_manifest(path)
    return path


def read_manifest(models_dir: Path) -> dict[str, str]:
    """relative path -> sha256 of ``models_dir/SHA256SUMS`` (empty if there is none)."""
    path = Path(models_dir) / MANIFEST
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            out[name.lstrip("*").strip()] = digest
    return out


def write_manifest(models_dir: Path, files: list[Path]) -> Path:
    models_dir = Path(models_dir)
    lines = [f"{file_sha256(f)}  {Path(f).resolve().relative_to(models_dir.resolve()).as_posix()}" for f in sorted(files)]
    path = models_dir / MANIFEST
    path.write_text("\n".join(lines) + "\n")
    return path


def verify_against_manifest(path: Path) -> None:
    """Refuse ``path`` if a SHA256SUMS in its models directory (or the one above, for encoders/ and
    policies/) lists it with other bytes."""
    path = Path(path).resolve()
    for root in (path.parent, path.parent.parent):
        sums = read_manifest(root)
        if not sums:
            continue
        rel = path.relative_to(root).as_posix()
        if rel in sums and file_sha256(path) != sums[rel]:
            raise CheckpointCorruptError(path, [f"sha256 differs from {root / MANIFEST} (a truncated or altered "
                                                f"copy?)"])
        return


def encoder_path_for(checkpoint: Path, encoder_name: str) -> Path:
    return checkpoint.parent / "encoders" / f"{encoder_name}.pt"


def load_deployment_bundle(checkpoint: Path | str) -> SkillBundle:
    return load_skill_bundle(_require(Path(checkpoint), "skill checkpoint"))


def load_deployment_encoder(checkpoint: Path | str, bundle: SkillBundle | None = None) -> FrameEncoder:
    """Load the encoder named in the checkpoint and refuse weights whose hash differs."""
    checkpoint = Path(checkpoint)
    bundle = bundle or load_deployment_bundle(checkpoint)
    path = _require(encoder_path_for(checkpoint, bundle.meta.encoder_name), "encoder weights")
    encoder = load_encoder(bundle.meta.encoder_name, path)
    if encoder.identity.sha256 != bundle.meta.encoder_sha256:
        raise CheckpointMismatchError(path, {"encoder_sha256": (bundle.meta.encoder_sha256, encoder.identity.sha256)})
    # NHWC convolutions: the same embeddings (bit-identical on this CPU), one frame ~15% faster (17 vs 20 ms
    # single-threaded), on the camera node's critical path
    encoder.trunk.to(memory_format=torch.channels_last)
    return encoder
