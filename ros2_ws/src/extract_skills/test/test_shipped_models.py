"""The shipped models/ are a consistent, loadable contract for the online nodes."""
from __future__ import annotations

import numpy as np
import pytest

from extract_skills.core.skills.checkpoint import CheckpointMismatchError, load_skill_bundle
from extract_skills.core.skills.deployment import load_deployment_bundle, load_deployment_encoder
from extract_skills.core.control.safety import SafetyLimits, check_command
from extract_skills.core.sim.scripted_demos import REST_Q
from extract_skills.graph import default_models_dir

CKPT = default_models_dir() / "extract_kitchen.pt"


@pytest.fixture(scope="module")
def bundle():
    assert CKPT.is_file(), f"shipped checkpoint missing at {CKPT}; regenerate with scripts/make_models.sh"
    return load_deployment_bundle(CKPT)


def test_encoder_matches_checkpoint(bundle):
    enc = load_deployment_encoder(CKPT, bundle)
    assert enc.identity.sha256 == bundle.meta.encoder_sha256
    frames = np.random.default_rng(0).integers(0, 255, (2, 128, 128, 3), dtype=np.uint8)
    e = enc.embed_frames(frames)
    assert e.shape == (2, bundle.meta.embed_dim) and np.all(np.isfinite(e))


def test_checkpoint_refuses_other_expectations(bundle):
    with pytest.raises(CheckpointMismatchError, match="num_skills"):
        load_skill_bundle(CKPT, expect={"num_skills": bundle.num_skills + 1})


@pytest.fixture(scope="module")
def kitchen_obs(bundle):
    """A real observation: the kitchen at its reset pose, rendered and embedded like the nodes do."""
    from extract_skills.core.sim.kitchen import KitchenConfig, KitchenSim

    sim = KitchenSim(KitchenConfig(image_size=128))
    try:
        o = sim.reset(seed=0, arm_qpos=REST_Q)
        emb = load_deployment_encoder(CKPT, bundle).embed_frames(o.image[None])[0]
        proprio = np.concatenate([o.qpos[:7], [(o.qpos[7] + o.qpos[8]) / 0.08]])
    finally:
        sim.close()
    return bundle.make_obs(emb, proprio)


def test_priors_and_variable_length_skills(bundle, kitchen_obs):
    assert bundle.num_skills == 8 and bundle.meta.latent_dim == 5
    obs = kitchen_obs
    probs = bundle.skill_prior(obs)
    assert probs.shape == (8,) and probs.sum() == pytest.approx(1.0, abs=1e-5)
    lengths = set()
    limits = SafetyLimits(robot="panda", max_step_delta=0.16)
    rng = np.random.default_rng(0)
    for d in range(bundle.num_skills):
        mean, std = bundle.argument_prior(obs, d)
        z = mean + std * rng.standard_normal(mean.shape)  # as the skill policy samples it
        steps = list(bundle.rollout(d, z, max_steps=30, progress_threshold=0.9))
        lengths.add(len(steps))
        q = REST_Q.copy()
        for action, progress in steps:
            assert np.all(np.isfinite(action)) and action.shape == (8,)
            assert np.all(action >= bundle.action_low - 1e-6) and np.all(action <= bundle.action_high + 1e-6)
            cmd = check_command(q, q + action[:7], action[7], limits)  # every decoded step passes the checks
            q = np.asarray(cmd.q)
    assert len(lengths) > 1, f"all skills decoded to the same length {lengths}: not variable-length"
