"""The one safety function: limits, deltas, workspace box, FK, dynamics factor, fuzzing."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extract_skills.core.control.safety import (
    REASON_GRIPPER_RANGE,
    REASON_JOINT_LIMIT,
    REASON_STEP_DELTA,
    REASON_WORKSPACE,
    ROBOT_MODELS,
    CheckedCommand,
    SafetyLimits,
    UnsafeCommandError,
    check_command,
    check_dynamics_factor,
    checked_points,
    end_effector_pose,
    flange_pose,
)

HOME = np.array([0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4])
EPS = 1e-6  # rad
POS_ATOL = 2e-3  # m, FK reference values are published to the millimetre


def _reasons(cmd: CheckedCommand) -> set[str]:
    return {r.split(":")[0] for r in cmd.reasons}


# ---------------------------------------------------------------- limits
@pytest.mark.parametrize("robot", ["fr3", "panda"])
def test_published_limit_tables(robot):
    m = ROBOT_MODELS[robot]
    if robot == "fr3":
        assert m.q_max[3] == -0.1518 and m.q_min[5] == 0.5445 and m.dq_safe[1] == 1.0
    else:
        assert m.q_max[3] == -0.0698 and m.q_min[5] == -0.0175 and m.dq_max[4] == 2.61


@pytest.mark.parametrize("robot", ["fr3", "panda"])
@pytest.mark.parametrize("joint", range(7))
@pytest.mark.parametrize("side", ["low", "high"])
def test_joint_limits_at_plus_minus_eps(robot, joint, side):
    lim = SafetyLimits(robot=robot, max_step_delta=0.05, workspace_min=(-2, -2, -2), workspace_max=(2, 2, 2))
    bound = (lim.q_low if side == "low" else lim.q_high)[joint]
    sign = -1.0 if side == "low" else 1.0
    # state parked exactly at the allowed bound, so one step can reach both sides of it
    state = np.clip(HOME, lim.q_low, lim.q_high)
    state[joint] = bound
    inside = state.copy()
    inside[joint] = bound - sign * EPS
    cmd = check_command(state, inside, 1.0, lim)
    assert not cmd.clipped and cmd.q[joint] == pytest.approx(bound - sign * EPS, abs=1e-12)
    outside = state.copy()
    outside[joint] = bound + sign * EPS
    cmd = check_command(state, outside, 1.0, lim)
    assert REASON_JOINT_LIMIT in _reasons(cmd) and f"j{joint + 1}" in cmd.reasons[0]
    assert cmd.q[joint] == pytest.approx(bound, abs=1e-12)
    # far past the hard limit: still clamped to the limit minus margin
    far = state.copy()
    far[joint] = bound + sign * 10.0
    cmd = check_command(state, far, 1.0, lim)
    assert lim.q_low[joint] - 1e-12 <= cmd.q[joint] <= lim.q_high[joint] + 1e-12


def test_margin_is_applied():
    lim = SafetyLimits(robot="fr3", joint_margin=0.1)
    np.testing.assert_allclose(lim.q_high - lim.q_low, np.subtract(ROBOT_MODELS["fr3"].q_max, ROBOT_MODELS["fr3"].q_min) - 0.2)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["state", "target", "gripper"])
def test_non_finite_rejected(bad, where):
    lim = SafetyLimits()
    state, target, grip = HOME.copy(), HOME.copy(), 0.5
    if where == "state":
        state[2] = bad
    elif where == "target":
        target[6] = bad
    else:
        grip = bad
    with pytest.raises(UnsafeCommandError):
        check_command(state, target, grip, lim)


@pytest.mark.parametrize("shape", [(6,), (8,), (7, 1), ()])
def test_wrong_shape_rejected(shape):
    with pytest.raises(UnsafeCommandError, match="shape"):
        check_command(HOME, np.zeros(shape), 0.5, SafetyLimits())


def test_non_numeric_rejected():
    with pytest.raises(UnsafeCommandError):
        check_command(HOME, ["a"] * 7, 0.5, SafetyLimits())
    with pytest.raises(UnsafeCommandError):
        check_command(HOME, HOME, "open", SafetyLimits())


def test_gripper_clipped():
    cmd = check_command(HOME, HOME, 1.7, SafetyLimits())
    assert cmd.gripper == 1.0 and REASON_GRIPPER_RANGE in _reasons(cmd)
    assert check_command(HOME, HOME, -0.2, SafetyLimits()).gripper == 0.0


def test_output_is_read_only():
    cmd = check_command(HOME, HOME, 0.5, SafetyLimits())
    with pytest.raises(ValueError):
        cmd.q[0] = 1.0


# ---------------------------------------------------------------- per-step delta
def test_per_step_delta_clipped():
    lim = SafetyLimits(max_step_delta=0.04)
    target = HOME + np.array([0.5, -0.3, 0.01, 0.0, 0.2, -0.04, 0.041])
    cmd = check_command(HOME, target, 0.5, lim)
    assert REASON_STEP_DELTA in _reasons(cmd)
    delta = cmd.q - HOME
    assert np.max(np.abs(delta)) <= 0.04 + 1e-12
    np.testing.assert_allclose(delta, [0.04, -0.04, 0.01, 0.0, 0.04, -0.04, 0.04], atol=1e-12)


def test_state_far_outside_limits_is_refused():
    lim = SafetyLimits(robot="fr3")
    state = HOME.copy()
    state[3] = ROBOT_MODELS["fr3"].q_max[3] + 0.2  # beyond the hard limit by more than a step
    with pytest.raises(UnsafeCommandError, match="supervised recovery"):
        check_command(state, state, 0.5, lim)


def test_state_slightly_inside_margin_band_moves_back():
    lim = SafetyLimits(robot="fr3")
    state = HOME.copy()
    state[3] = lim.q_high[3] + 0.02  # overshoot into the margin band
    cmd = check_command(state, state + 0.01, 0.5, lim)
    assert cmd.q[3] == pytest.approx(lim.q_high[3])


# ---------------------------------------------------------------- forward kinematics
def test_fk_zero_pose_by_hand():
    # all joints 0: arm straight up; x = a4 + a5 + a7, z = d1 + d3 + d5 - flange (pointing down)
    p = flange_pose(np.zeros(7))[:3, 3]
    np.testing.assert_allclose(p, [0.0825 - 0.0825 + 0.088, 0.0, 0.333 + 0.316 + 0.384 - 0.107], atol=1e-9)


def test_fk_home_pose_known_values():
    # Franka's documented "ready" pose: O_T_EE = [[1,0,0,0.307],[0,-1,0,0],[0,0,-1,0.487]] with the hand,
    # so the flange (0.1034 m above the TCP along base z) is at (0.307, 0, 0.590)
    f = flange_pose(HOME)
    np.testing.assert_allclose(f[:3, 3], [0.307, 0.0, 0.590], atol=POS_ATOL)
    ee = end_effector_pose(HOME)
    np.testing.assert_allclose(ee[:3, 3], [0.307, 0.0, 0.487], atol=POS_ATOL)
    np.testing.assert_allclose(ee[:3, :3], np.diag([1.0, -1.0, -1.0]), atol=1e-9)
    pts = checked_points(HOME, 0.1034)
    np.testing.assert_allclose(pts[1], ee[:3, 3], atol=1e-12)


def test_fk_matches_franky_sim_reading():
    # O_T_EE read from franky-sim (MuJoCo FR3) at its start pose: t = (0.554434, 0, 0.521406)
    q = np.array([0.0, 0.0, 0.0, -1.57, 0.0, 1.57, 0.785])
    np.testing.assert_allclose(end_effector_pose(q)[:3, 3], [0.554434, 0.0, 0.521406], atol=1e-4)


def test_fk_rotation_is_orthonormal():
    rng = np.random.default_rng(0)
    for _ in range(20):
        r = flange_pose(rng.uniform(-2, 2, 7))[:3, :3]
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)


# ---------------------------------------------------------------- workspace box
def test_workspace_box_scales_step_back():
    # box whose floor is 1 cm below the home TCP: lowering the arm must stop at the floor
    ee_z = end_effector_pose(HOME)[2, 3]
    lim = SafetyLimits(workspace_min=(-0.85, -0.85, ee_z - 0.01), workspace_max=(0.85, 0.85, 1.2), max_step_delta=0.08)
    target = HOME.copy()
    target[3] -= 0.08  # bend the elbow: the TCP goes down (about 2.5 cm)
    assert not lim.in_workspace(target)
    cmd = check_command(HOME, target, 0.5, lim)
    assert REASON_WORKSPACE in _reasons(cmd)
    assert lim.in_workspace(cmd.q)
    z = end_effector_pose(cmd.q)[2, 3]
    assert ee_z - 0.01 - 1e-6 <= z <= ee_z - 0.01 + 1e-3  # scaled to the floor, not just back to the start
    # the result lies on the segment between state and target
    frac = (cmd.q - HOME) / (target - HOME + 1e-300)
    assert 0.0 < frac[3] < 1.0


def test_workspace_inside_is_untouched():
    lim = SafetyLimits()
    target = HOME + 0.01
    cmd = check_command(HOME, target, 0.5, lim)
    assert not cmd.clipped
    np.testing.assert_allclose(cmd.q, target)


def test_current_pose_outside_box_holds_or_recovers():
    """Outside the box (overshoot): holding still is always allowed, moving further out never is,
    and a step that brings the arm back toward the box is let through."""
    from extract_skills.core.control.safety import _box_violation

    lim = SafetyLimits(workspace_min=(-0.85, -0.85, 0.6), workspace_max=(0.85, 0.85, 1.2))
    assert not lim.in_workspace(HOME)
    hold = check_command(HOME, HOME, 0.5, lim)
    assert np.allclose(hold.q, HOME) and any(r.startswith("workspace:hold") for r in hold.reasons)
    worse = HOME.copy()
    worse[3] -= 0.04  # fold the elbow: the hand goes lower, further below the box
    assert _box_violation(worse, lim) > _box_violation(HOME, lim)
    out = check_command(HOME, worse, 0.5, lim)
    assert np.allclose(out.q, HOME) and "workspace:hold" in out.reasons
    better = HOME.copy()
    better[3] += 0.04  # unfold: the hand rises toward the box
    assert _box_violation(better, lim) < _box_violation(HOME, lim)
    rec = check_command(HOME, better, 0.5, lim)
    assert np.allclose(rec.q, better) and "workspace:recovering" in rec.reasons


# ---------------------------------------------------------------- configuration
@pytest.mark.parametrize("factor", [1.0001, 2.0, -0.1, 0.0, float("nan"), float("inf")])
def test_limits_refuse_bad_max_dynamics_factor(factor):
    with pytest.raises(ValueError, match="max_dynamics_factor"):
        SafetyLimits(max_dynamics_factor=factor)


@pytest.mark.parametrize("factor", [1.5, 0.31, 0.0, -1.0, float("nan"), "fast"])
def test_check_dynamics_factor_refuses(factor):
    with pytest.raises(UnsafeCommandError):
        check_dynamics_factor(factor, SafetyLimits(max_dynamics_factor=0.3))


def test_check_dynamics_factor_accepts():
    assert check_dynamics_factor(0.3, SafetyLimits(max_dynamics_factor=0.3)) == 0.3
    assert check_dynamics_factor(1.0, SafetyLimits(max_dynamics_factor=1.0)) == 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"robot": "ur5"},
        {"joint_margin": -0.01},
        {"joint_margin": 2.0},
        {"max_step_delta": 0.0},
        {"max_step_delta": 0.5},  # 6.25 rad/s at dt 0.08: faster than any joint may go
        {"dt": 0.0},
        {"workspace_min": (0, 0, 1), "workspace_max": (1, 1, 0.5)},
        {"workspace_min": (0, 0)},
        {"workspace_max": (1, float("nan"), 1)},
    ],
)
def test_limits_validation(kwargs):
    with pytest.raises(ValueError):
        SafetyLimits(**kwargs)


# ---------------------------------------------------------------- fuzzing
finite = st.floats(min_value=-10.0, max_value=10.0, allow_nan=False)
anyfloat = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    robot=st.sampled_from(["fr3", "panda"]),
    frac=st.lists(st.floats(0.0, 1.0), min_size=7, max_size=7),
    target=st.lists(st.one_of(finite, anyfloat), min_size=7, max_size=7),
    grip=st.one_of(finite, anyfloat),
)
def test_fuzz_output_always_finite_and_within_limits(robot, frac, target, grip):
    lim = SafetyLimits(robot=robot)
    m = ROBOT_MODELS[robot]
    state = np.asarray(m.q_min) + np.asarray(frac) * (np.asarray(m.q_max) - np.asarray(m.q_min))
    try:
        cmd = check_command(state, np.asarray(target), grip, lim)
    except UnsafeCommandError:
        return  # refusal is always allowed; what is returned must be safe
    assert cmd.q.shape == (7,) and np.all(np.isfinite(cmd.q)) and math.isfinite(cmd.gripper)
    assert np.all(cmd.q >= lim.q_low - 1e-12) and np.all(cmd.q <= lim.q_high + 1e-12)
    assert np.max(np.abs(cmd.q - state)) <= lim.max_step_delta + 1e-9
    assert 0.0 <= cmd.gripper <= 1.0
    # inside the box, or (starting outside it) never further out than where the arm already is
    from extract_skills.core.control.safety import _box_violation

    anchor = np.clip(state, lim.q_low, lim.q_high)
    assert lim.in_workspace(cmd.q) or _box_violation(cmd.q, lim) <= _box_violation(anchor, lim) + 1e-12


@settings(max_examples=200, deadline=None)
@given(delta=st.lists(st.floats(-1.0, 1.0), min_size=7, max_size=7))
def test_fuzz_from_home_never_refused(delta):
    # home is inside every limit and the default box: a finite request is clipped, never refused
    lim = SafetyLimits()
    cmd = check_command(HOME, HOME + np.asarray(delta), 0.5, lim)
    assert np.max(np.abs(cmd.q - HOME)) <= lim.max_step_delta + 1e-12


TIGHT = SafetyLimits(workspace_min=(0.2, -0.15, 0.40), workspace_max=(0.45, 0.15, 0.75))


@settings(max_examples=200, deadline=None)
@given(
    offset=st.lists(st.floats(-0.3, 0.3), min_size=7, max_size=7),
    delta=st.lists(st.floats(-1.0, 1.0), min_size=7, max_size=7),
)
def test_fuzz_tight_box_output_inside_or_not_further_out(offset, delta):
    # states around home in a box that is tight around it: exercises the scale-back often
    from extract_skills.core.control.safety import _box_violation

    state = HOME + np.asarray(offset)
    try:
        cmd = check_command(state, state + np.asarray(delta), 0.5, TIGHT)
    except UnsafeCommandError as exc:
        assert not TIGHT.in_workspace(state), exc  # only a pose already outside may be refused
        return
    if TIGHT.in_workspace(np.clip(state, TIGHT.q_low, TIGHT.q_high)):
        assert TIGHT.in_workspace(cmd.q)
    else:  # already outside: hold, or move back toward the box
        assert _box_violation(cmd.q, TIGHT) <= _box_violation(np.clip(state, TIGHT.q_low, TIGHT.q_high), TIGHT) + 1e-12
    assert np.max(np.abs(cmd.q - state)) <= TIGHT.max_step_delta + 1e-9
