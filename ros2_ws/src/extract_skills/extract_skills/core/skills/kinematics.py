"""Franka Panda forward kinematics in torch, as a decoder input feature.

The scripted (and human) demos steer the gripper to Cartesian targets; the closed-loop decoder sees only joint
angles, so to reproduce a command it must learn the arm's forward kinematics to millimetres on top of the skill.
Giving it the flange pose (what franky's ``current_pose`` reports on the real arm) removes that burden.

Parameters: Franka's published Denavit-Hartenberg table (Craig's convention), robot base to flange, as the safety
function's numpy ``flange_pose`` uses them (this is the batched, differentiable torch form). A fixed
transform between this base and a simulator's world does not matter to a learned decoder: the feature only has to
be the same function of the joints in training and at execution.
"""
from __future__ import annotations

import math

import torch

from extract_skills.core.control.safety import FRANKA_DH, FRANKA_FLANGE_D

#: flange position (3) + the rotation's first two columns (6, a continuous rotation representation)
POSE_FEATURE_DIM = 9
#: Added to a data source's joint angles to get the Panda's (DH) joint angles. The kitchen twin's arm
#: (Gymnasium-Robotics FrankaKitchen-v1) has joint 6 zeroed a quarter turn from the real Panda's: with it, this
#: module's chain matches the kitchen's link 7 to 0.1 mm (test_kinematics.py). Real-robot data: no offset.
JOINT_OFFSET_TO_PANDA: dict[str, tuple[float, ...]] = {
    "FrankaKitchen-v1": (0.0, 0.0, 0.0, 0.0, 0.0, math.pi / 2, 0.0),
}


def joint_offset_to_panda(env_id: str) -> tuple[float, ...]:
    """The offset (7,) for a dataset's ``env_id`` (zeros for the real arm and anything not listed)."""
    return JOINT_OFFSET_TO_PANDA.get(env_id, (0.0,) * 7)


def _craig(a: float, d: float, alpha: float, theta: torch.Tensor) -> torch.Tensor:
    """(..., 4, 4) transform RotX(alpha) TransX(a) RotZ(theta) TransZ(d)."""
    ct, st = torch.cos(theta), torch.sin(theta)
    ca, sa = math.cos(alpha), math.sin(alpha)
    zero, one = torch.zeros_like(theta), torch.ones_like(theta)
    rows = (
        (ct, -st, zero, a * one),
        (st * ca, ct * ca, -sa * one, -d * sa * one),
        (st * sa, ct * sa, ca * one, d * ca * one),
        (zero, zero, zero, one),
    )
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def panda_flange_pose(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Joints (..., 7) rad -> flange (position (..., 3) m, rotation (..., 3, 3)) in the robot's base frame."""
    if q.shape[-1] != 7:
        raise ValueError(f"panda forward kinematics needs 7 joint angles, got shape {tuple(q.shape)}")
    t = None
    for i, (a, d, alpha) in enumerate(FRANKA_DH):
        step = _craig(a, d, alpha, q[..., i])
        t = step if t is None else t @ step
    flange = _craig(0.0, FRANKA_FLANGE_D, 0.0, torch.zeros_like(q[..., 0]))
    t = t @ flange
    return t[..., :3, 3], t[..., :3, :3]


def pose_features(q: torch.Tensor) -> torch.Tensor:
    """(..., 7) joints -> (..., 9): flange position and the first two columns of its rotation."""
    pos, rot = panda_flange_pose(q)
    return torch.cat([pos, rot[..., :, 0], rot[..., :, 1]], -1)
