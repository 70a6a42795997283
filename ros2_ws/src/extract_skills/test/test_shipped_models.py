"""The shipped models/ are a consistent, loadable contract for the online nodes."""
from __future__ import annotations

import numpy as np
import pytest

from extract_skills.core.skills.checkpoint import CheckpointMismatchError, load_skill_bundle
from extract_skills.core.skills.deployment import encoder_path_for, load_deployment_bundle, load_deployment_encoder
from extract_skills.core.skills.encoders import load_encoder
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
    # the camera node's (channels-last) encoder embeds as the offline pipeline's did
    offline = load_encoder(bundle.meta.encoder_name, encoder_path_for(CKPT, bundle.meta.encoder_name))
    np.testing.assert_allclose(e, offline.embed_frames(frames), rtol=1e-5, atol=1e-5)


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
    floor = bundle.model_config.prior_floor
    assert floor > 0 and probs.min() >= floor / 8 - 1e-7  # a KL to the prior stays finite
    # held-out validation figures travel with the model (see models/report/skill_model_report.md)
    assert 0.0 < bundle.config["validation"]["prior_accuracy"] <= 1.0
    lengths = set()
    limits = SafetyLimits(robot="panda", max_step_delta=0.16)
    rng = np.random.default_rng(0)
    for d in range(bundle.num_skills):
        mean, std = bundle.argument_prior(obs, d)
        z = mean + std * rng.standard_normal(mean.shape)  # as the skill policy samples it
        assert np.all(np.abs(mean) <= bundle.argument_bound)
        q = REST_Q.copy()
        asked = None  # the last joint target this skill asked for (the executor's command_lead reads it)
        # stop threshold and step cap from the checkpoint; a closed-loop decoder reads the (here: commanded)
        # joint state before each step, and the lead of its last target over it
        steps = []
        for action, progress in bundle.rollout(d, z, proprio_fn=lambda: np.concatenate([q, [1.0]]),
                                               lead_fn=lambda: np.zeros(7) if asked is None else asked - q):
            steps.append((action, progress))
            assert np.all(np.isfinite(action)) and action.shape == (8,)
            assert np.all(action >= bundle.action_low - 1e-6) and np.all(action <= bundle.action_high + 1e-6)
            asked = q + action[:7]
            cmd = check_command(q, asked, action[7], limits)  # every decoded step passes the checks
            q = np.asarray(cmd.q)
        lengths.add(len(steps))
    assert len(lengths) > 1, f"all skills decoded to the same length {lengths}: not variable-length"


def test_skill_fidelity_benchmark_quick(tmp_path):
    """The fidelity benchmark's smoke mode on the shipped models: one fresh demo of one subtask, replayed from
    its start state; the recorded actions and the labels through the executor both complete it (physics)."""
    import importlib.util
    import json
    from pathlib import Path

    script = Path(__file__).resolve().parents[4] / "benchmarks" / "skill_fidelity.py"
    spec = importlib.util.spec_from_file_location("skill_fidelity", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "fidelity.json"
    assert mod.main(["--quick", "--checkpoint", str(CKPT), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res) >= {"episodes", "env", "labels", "posterior", "prior", "subtasks_total"}
    assert res["episodes"] == 1 and res["subtasks_total"] == 1
    assert res["env"] == 1 and res["labels"] == 1
    # the per-subtask table adds up to the totals, and the per-segment row found the segment that did it
    tally = res["per_subtask"]["slide cabinet"]
    assert tally["tasks"] == 1 and all(tally[m] == res[m] for m in ("env", "labels", "posterior", "prior"))
    assert tally["per_segment_of"] == res["posterior_per_segment"]["segments"] >= 1
