"""Junk joint states never escape as anything but ValueError (the nodes drop those and go on)."""
import math

import numpy as np
import pytest

pytest.importorskip("rclpy")
from sensor_msgs.msg import JointState  # noqa: E402

from extract_skills.nodes.common import ARM_JOINT_NAMES, FINGER_JOINT_NAMES, joint_state_msg, parse_joint_state  # noqa: E402

NAMES = list(ARM_JOINT_NAMES + FINGER_JOINT_NAMES)


def _msg(names, position, velocity=()):
    m = JointState()
    m.name, m.position, m.velocity = list(names), [float(x) for x in position], [float(x) for x in velocity]
    return m


@pytest.mark.parametrize("msg,why", [
    (_msg(NAMES, [0.0] * 3), "positions"),  # short position array (was IndexError: killed the node)
    (_msg(NAMES, [0.0] * 9 + [1.0]), "positions"),
    (_msg(NAMES, [0.0] * 9, [0.0] * 4), "velocities"),
    (_msg(NAMES[:7] + [NAMES[0]], [0.0] * 8), "repeats"),
    (_msg(NAMES[1:], [0.0] * 8), "lacks"),
    (_msg(NAMES, [0.0] * 7 + [math.nan, 0.0]), "NaN"),  # NaN finger (was passed on: killed the physics)
    (_msg(NAMES, [0.0] * 6 + [math.inf, 0.0, 0.0]), "NaN"),
    (_msg(NAMES, [0.0] * 9, [0.0] * 8 + [math.nan]), None),  # NaN finger velocity is not used: accepted
])
def test_malformed_joint_states_raise_value_error_with_a_reason(msg, why):
    if why is None:
        q, dq, g = parse_joint_state(msg)
        assert np.all(np.isfinite(q)) and np.all(np.isfinite(dq)) and 0.0 <= g <= 1.0
        return
    with pytest.raises(ValueError, match=why):
        parse_joint_state(msg)


def test_random_junk_never_raises_anything_but_value_error():
    rng = np.random.default_rng(0)
    pool = NAMES + ["elbow", "", "fr3_joint8"]
    for _ in range(2000):
        names = list(rng.choice(pool, size=int(rng.integers(0, 12))))
        pos = rng.choice([0.0, 1e308, -1e308, math.nan, math.inf, 0.3], size=int(rng.integers(0, 12)))
        vel = rng.choice([0.0, math.nan, 2.0], size=int(rng.integers(0, 12)))
        try:
            q, dq, g = parse_joint_state(_msg(names, pos, vel))
        except ValueError:
            continue
        assert q.shape == (7,) and np.all(np.isfinite(q)) and np.all(np.isfinite(dq)) and 0.0 <= g <= 1.0


def test_round_trip_of_the_nodes_own_messages():
    q = np.linspace(-1, 1, 7)
    back = parse_joint_state(joint_state_msg(q, 0.5, JointState().header.stamp, dq=np.ones(7)))
    np.testing.assert_allclose(back[0], q)
    np.testing.assert_allclose(back[1], np.ones(7))
    assert abs(back[2] - 0.5) < 1e-9
