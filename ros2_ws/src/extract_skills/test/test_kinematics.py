"""Panda forward kinematics (the decoder's pose features) against published values and the kitchen's MuJoCo model."""
import math

import numpy as np
import pytest
import torch

from extract_skills.core.control.safety import FRANKA_FLANGE_D, flange_pose
from extract_skills.core.skills.kinematics import (
    joint_offset_to_panda,
    panda_flange_pose,
    pose_features,
)
from extract_skills.core.skills.skill_model import SkillDecoder, SkillModelConfig


def test_zero_posture_is_franka_s_published_flange_pose():
    # Franka's documentation: at q = 0 the flange is 0.088 m forward, 0.926 m up, pointing down.
    pos, rot = panda_flange_pose(torch.zeros(7, dtype=torch.float64))
    assert torch.allclose(pos, torch.tensor([0.088, 0.0, 0.926], dtype=torch.float64), atol=1e-9)
    assert torch.allclose(rot[:, 2], torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64), atol=1e-9)
    assert torch.allclose(rot @ rot.T, torch.eye(3, dtype=torch.float64), atol=1e-9)


def test_torch_chain_equals_the_safety_function_s():
    q = np.random.default_rng(1).uniform(-2.0, 2.0, (16, 7))
    pos, rot = panda_flange_pose(torch.tensor(q))
    for i in range(len(q)):
        t = flange_pose(q[i])
        assert np.allclose(pos[i].numpy(), t[:3, 3], atol=1e-9) and np.allclose(rot[i].numpy(), t[:3, :3], atol=1e-9)


def test_batched_features_and_bad_shapes():
    q = torch.randn(4, 3, 7)
    f = pose_features(q)
    assert f.shape == (4, 3, 9)
    assert torch.allclose(f[1, 2], pose_features(q[1, 2]), atol=1e-6)
    with pytest.raises(ValueError, match="7 joint angles"):
        panda_flange_pose(torch.zeros(6))


def test_chain_with_the_kitchen_offset_matches_the_kitchen_arm():
    """The twin's joint 6 is zeroed a quarter turn from the Panda's; with the offset the chain is the kitchen's."""
    pytest.importorskip("gymnasium_robotics")
    from extract_skills.core.sim.kitchen import KitchenConfig, KitchenSim

    sim = KitchenSim(KitchenConfig(render=False))
    try:
        mj, m = sim._mujoco, sim.model
        data = mj.MjData(m)
        base = mj.mj_name2id(m, mj.mjtObj.mjOBJ_BODY, "panda0_link0")
        link7 = mj.mj_name2id(m, mj.mjtObj.mjOBJ_BODY, "panda0_link7")
        offset = torch.tensor(joint_offset_to_panda("FrankaKitchen-v1"), dtype=torch.float64)
        assert offset[5] == pytest.approx(math.pi / 2) and joint_offset_to_panda("franka_real").count(0.0) == 7
        rng = np.random.default_rng(0)
        worst_with, worst_without = 0.0, 0.0
        for _ in range(20):
            q = rng.uniform(m.jnt_range[:7, 0], m.jnt_range[:7, 1])
            data.qpos[:7] = q
            mj.mj_kinematics(m, data)
            r0 = data.xmat[base].reshape(3, 3)
            want = r0.T @ (data.xpos[link7] - data.xpos[base])  # link 7's origin in the arm's base frame
            for off, worst in ((offset, "with"), (torch.zeros(7, dtype=torch.float64), "without")):
                pos, rot = panda_flange_pose(torch.tensor(q) + off)
                err = float(np.linalg.norm((pos - FRANKA_FLANGE_D * rot[:, 2]).numpy() - want))
                if worst == "with":
                    worst_with = max(worst_with, err)
                else:
                    worst_without = max(worst_without, err)
        assert worst_with < 1e-3, worst_with
        assert worst_without > 0.05  # the offset is needed: without it the chain is centimetres off
    finally:
        sim.close()


def test_a_pose_feature_decoder_runs_closed_loop_and_needs_the_joints():
    with pytest.raises(ValueError, match="closed_loop"):
        SkillModelConfig(pose_features=True)
    with pytest.raises(ValueError, match="7 values"):
        SkillModelConfig(closed_loop=True, pose_features=True, pose_joint_offset=(0.0,) * 6)
    cfg = SkillModelConfig(closed_loop=True, pose_features=True, pose_joint_offset=[0, 0, 0, 0, 0, 1.5, 0],
                           max_segment_len=6)
    assert cfg.pose_joint_offset == (0.0, 0.0, 0.0, 0.0, 0.0, 1.5, 0.0)
    torch.manual_seed(0)
    dec = SkillDecoder(cfg)
    assert "pose_offset" not in dec.state_dict()  # the config carries it: old checkpoints load unchanged
    plain = SkillDecoder(SkillModelConfig(closed_loop=True, max_segment_len=6))
    assert dec.lstm.input_size == plain.lstm.input_size + 9 + 3  # pose now + its displacement since the start
    states = torch.zeros(2, 6, 8)
    states[1, :, :7] = 0.3
    out, _ = dec(torch.zeros(2, cfg.latent_dim), torch.zeros(2, dtype=torch.long), 6, states)
    assert out.shape == (2, 6, cfg.action_dim) and not torch.allclose(out[0], out[1])
    steps = list(dec.rollout(torch.zeros(cfg.latent_dim), 0, 6, 1.1, proprio_fn=lambda: np.zeros(8)))
    assert len(steps) == 6
