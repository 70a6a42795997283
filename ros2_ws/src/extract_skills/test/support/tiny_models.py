"""A small but real models directory for node tests: random-init R3M-format encoder + untrained skill model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from extract_skills.core.skills.checkpoint import save_skill_bundle
from extract_skills.core.skills.encoders import build_trunk, embedding_dim, file_sha256, save_r3m_checkpoint
from extract_skills.core.skills.skill_model import SkillModel, SkillModelConfig

ENCODER = "r3m_resnet18"


def make_tiny_models(models_dir: Path, num_skills: int = 4, image_size: int = 64, seed: int = 0,
                     max_segment_len: int = 300, progress_threshold: float = 1.0) -> Path:
    """Untrained, so its progress head means nothing: by default a skill runs to the goal's step_limit
    (or the checkpoint's cap, ``max_segment_len``), which is what node tests control."""
    torch.manual_seed(seed)
    models_dir = Path(models_dir)
    enc_path = save_r3m_checkpoint(build_trunk(ENCODER), models_dir / "encoders" / f"{ENCODER}.pt",
                                   image_size=image_size)
    d = embedding_dim(ENCODER)
    cfg = SkillModelConfig(num_skills=num_skills, obs_dim=d + 8, hidden_dim=32,
                           max_segment_len=max_segment_len, progress_threshold=progress_threshold, train_steps=1)
    model = SkillModel(cfg)
    rng = np.random.default_rng(seed)
    return save_skill_bundle(
        models_dir / "extract_kitchen.pt", model, encoder_name=ENCODER, encoder_sha256=file_sha256(enc_path),
        centres=rng.standard_normal((num_skills, d)).astype(np.float32),
        obs_mean=np.zeros(d, np.float32), obs_std=np.ones(d, np.float32),
        action_low=np.array([-0.03] * 7 + [0.0], np.float32), action_high=np.array([0.03] * 7 + [1.0], np.float32))
