"""What the online nodes load: the skill checkpoint and the exact encoder it was trained with.

Layout of a models directory (the shipped one is the repository's models/):
    <models_dir>/extract_kitchen.pt          skill checkpoint (core.checkpoint contract)
    <models_dir>/encoders/<encoder_name>.pt  encoder weights in R3M checkpoint format
The encoder file's sha256 must equal the one recorded in the checkpoint: embeddings from any
other weights would put the policy's inputs off the distribution it was trained on.
"""
from __future__ import annotations

from pathlib import Path

from extract_skills.core.skills.checkpoint import CheckpointMismatchError, SkillBundle, load_skill_bundle
from extract_skills.core.skills.encoders import FrameEncoder, load_encoder

REGENERATE_HINT = "regenerate the shipped models with `scripts/make_models.sh` (see models/README.md)"


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found at {path.resolve()}; {REGENERATE_HINT}")
    return path


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
    return encoder
