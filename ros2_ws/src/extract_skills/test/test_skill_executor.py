"""SkillExecutor against the scripted FakeArm: results, cancel, preemption, watchdogs, arm faults."""
import math

import numpy as np
import pytest

from extract_skills.core.control.arm import (
    ArmCommandError,
    ArmControlError,
    ArmError,
    ArmNetworkError,
    ArmRealtimeError,
    ArmUserStopError,
    FakeArm,
    FakeArmScript,
)
from extract_skills.core.control.safety import SafetyLimits, check_command, robot_model
from extract_skills.core.control.skill_executor import (
    ExecutorConfig,
    Fault,
    GoalRejectedError,
    SkillExecutor,
    SkillStatus,
    validate_goal,
)

HOME = np.array([0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4])
LIMITS = SafetyLimits(robot="fr3", max_step_delta=0.05)


class FakeClock:
    """Monotonic test clock: sleep() advances it instantly."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        assert s >= 0, f"negative sleep {s} (time.sleep raises on it)"
        self.t += s


def make(script=None, config=None, **arm_kw):
    clock = FakeClock()
    arm = FakeArm(script=script, clock=clock, **arm_kw)
    arm.connect()
    ex = SkillExecutor(arm, LIMITS, config or ExecutorConfig(period_s=0.08, max_steps=100), clock=clock, sleep=clock.sleep)
    return arm, ex, clock


def actions(n, dq=0.01, grip=0.5):
    for i in range(n):
        yield np.r_[np.full(7, dq), grip], (i + 1) / n


# ---------------------------------------------------------------- goal validation
def test_validate_goal_ok_and_clips():
    g = validate_goal(3, [0.5, -4.0, 2.5], num_skills=8, arg_dim=3, arg_bound=2.0)
    assert g.skill_id == 3 and g.clipped_count == 2
    np.testing.assert_allclose(g.argument, [0.5, -2.0, 2.0])


@pytest.mark.parametrize("skill_id", [-1, 8, 100, 2.0, "1", True, None])
def test_unknown_skill_id_rejected(skill_id):
    with pytest.raises(GoalRejectedError, match="skill id"):
        validate_goal(skill_id, [0.0, 0.0, 0.0], num_skills=8, arg_dim=3, arg_bound=2.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_argument_rejected(bad):
    with pytest.raises(GoalRejectedError, match="NaN/Inf"):
        validate_goal(1, [0.0, bad, 0.0], num_skills=8, arg_dim=3, arg_bound=2.0)


def test_wrong_argument_shape_rejected():
    with pytest.raises(GoalRejectedError, match="shape"):
        validate_goal(1, [0.0, 0.0], num_skills=8, arg_dim=3, arg_bound=2.0)


# ---------------------------------------------------------------- normal run
def test_skill_start_frame_targets_are_relative_to_where_the_skill_began():
    """action_frame skill_start: target = q at the skill's start + action, whatever the arm lags; measured:
    target = q measured now + action (the two differ as soon as the arm does not reach its targets)."""
    sent = {}
    for frame in ("measured", "skill_start"):
        arm, ex, _ = make(config=ExecutorConfig(period_s=0.08, max_steps=100, action_frame=frame),
                          tracking_gain=0.5)
        q0 = arm.read_state().q.copy()
        targets = []
        orig = arm._send
        arm._send = lambda cmd, orig=orig: (targets.append(np.array(cmd.q)), orig(cmd))
        res = ex.run((np.r_[np.full(7, 0.01 * (i + 1)), 1.0], 0.0) for i in range(4))
        assert res.status is SkillStatus.SUCCEEDED
        sent[frame] = np.stack(targets)
    # skill_start: the targets are exactly q0 + 0.01, 0.02, 0.03, 0.04
    np.testing.assert_allclose(sent["skill_start"], q0 + np.outer(0.01 * np.arange(1, 5), np.ones(7)), atol=1e-12)
    # measured: each target is relative to where the arm is by then, so they differ from those
    assert np.all(np.abs(sent["measured"][1:] - sent["skill_start"][1:]) > 1e-3)
    with pytest.raises(ValueError, match="action_frame"):
        ExecutorConfig(action_frame="base")


def test_normal_run_succeeds_and_tracks():
    arm, ex, clock = make()
    fb = []
    t0 = clock()
    res = ex.run(actions(10), feedback=lambda s, p, q: fb.append((s, p, q.copy())))
    assert res.status is SkillStatus.SUCCEEDED and res.success and res.error == "" and res.fault is Fault.NONE
    assert res.steps_executed == 10 and len(arm.commands) == 10 and res.clipped_count == 0
    assert [s for s, _, _ in fb] == list(range(1, 11)) and fb[-1][1] == pytest.approx(1.0)
    np.testing.assert_allclose(fb[0][2], HOME + 0.01)
    assert np.all(res.final_q > HOME)  # the arm moved in the commanded direction
    assert clock() - t0 == pytest.approx(10 * 0.08)  # paced at the control period
    assert arm.stop_calls == 0  # a finished skill hands over to the next one without a stop
    assert arm.commands[0].gripper == 0.5


def test_missed_control_ticks_are_counted_at_the_sender_and_blamed_on_the_phase_that_took_the_time():
    arm, ex, clock = make()

    def slow_decoder(n):  # step 4's output takes 2.2 periods; every other step is instant
        for i, out in enumerate(actions(n)):
            if i == 3:
                clock.t += 2.2 * 0.08
            yield out

    late_wake = {"n": 0}

    def sleep(s):  # the 7th sleep returns 1.1 periods late (a core busy elsewhere)
        late_wake["n"] += 1
        clock.t += s + (1.1 * 0.08 if late_wake["n"] == 7 else 0.0)

    ex.sleep = sleep
    res = ex.run(slow_decoder(10))
    assert res.success and res.steps_executed == 10
    # steps 3 -> 4: 3.2 periods apart (2 ticks missed); the late wake: 2.1 periods (1 missed)
    assert res.ticks_dropped == 3
    assert res.late_phase_s["decode"] == pytest.approx(2.2 * 0.08)
    assert res.late_phase_s["wake"] == pytest.approx(1.1 * 0.08)
    assert res.late_phase_s["state"] == res.late_phase_s["send"] == res.late_phase_s["feedback"] == 0.0
    ex.sleep = clock.sleep
    res = ex.run(actions(10))  # paced on time: nothing missed, nothing carried over from the last skill
    assert res.ticks_dropped == 0 and sum(res.late_phase_s.values()) == 0.0


def _send_times(arm, clock):
    times = []
    orig = arm._send
    arm._send = lambda cmd: (times.append(clock()), orig(cmd))
    return times


@pytest.mark.parametrize("final", [False, True])
def test_a_skill_ends_on_the_twins_state_after_its_last_command_and_the_next_keeps_the_period(final):
    """An arm whose next state is final (the sim twin) ends a skill as soon as that state is read after the
    announced last command (no sleep out of the period); a real arm waits the period. Either way no command
    leaves less than a period after the one before, across skills too."""
    arm, ex, clock = make(config=ExecutorConfig(period_s=0.08, max_steps=100, stop_progress=1.0))
    arm.state_after_command_is_final = final
    sent = _send_times(arm, clock)
    t0 = clock()
    res = ex.run(actions(10))
    assert res.success and res.steps_executed == 10
    assert clock() - t0 == pytest.approx((9 if final else 10) * 0.08)
    res = ex.run(actions(3))  # the next skill starts at once
    assert res.success and res.ticks_dropped == 0
    gaps = np.diff(sent)
    assert len(sent) == 13 and np.all(gaps >= 0.08 - 1e-9) and np.all(gaps <= 0.08 + 1e-9)


def test_another_executor_on_the_same_arm_keeps_the_tick_after_an_early_end():
    """Move home runs on its own executor: its first command must not come sooner after a skill's early end."""
    arm, ex, clock = make(config=ExecutorConfig(period_s=0.08, max_steps=100, stop_progress=1.0))
    arm.state_after_command_is_final = True
    home = SkillExecutor(arm, LIMITS, ExecutorConfig(period_s=0.08, max_steps=400), clock=clock, sleep=clock.sleep)
    sent = _send_times(arm, clock)
    assert ex.run(actions(4)).success and home.run(actions(2)).success
    assert np.all(np.diff(sent) >= 0.08 - 1e-9)


def test_a_decoder_that_goes_on_after_announcing_its_end_is_still_paced():
    arm, ex, clock = make(config=ExecutorConfig(period_s=0.08, max_steps=100, stop_progress=0.5))
    arm.state_after_command_is_final = True
    sent = _send_times(arm, clock)
    res = ex.run(actions(6))  # progress reaches 0.5 at step 3 and the decoder goes on to 6
    assert res.success and res.steps_executed == 6 and res.ticks_dropped == 0
    assert np.all(np.diff(sent) >= 0.08 - 1e-9)


def test_a_stop_the_safety_function_refuses_is_an_unsafe_abort_not_an_exception():
    """The sim twin stops by commanding a hold through check_command; with a joint measured past its limit the
    hold itself is refused (seen in the soak: joint 6 at -0.19 rad). run() must still return a result."""
    arm, ex, _ = make()
    limits = LIMITS

    def stop():
        s = arm.read_state()
        arm.send(check_command(s.q, s.q, s.gripper, limits))

    arm.stop = stop
    arm.q[5] = robot_model("fr3").q_min[5] - 0.19  # joint 6 below its limit by more than one step
    res = ex.run(actions(5))
    assert res.status is SkillStatus.ABORTED and res.fault is Fault.UNSAFE
    assert "supervised recovery" in res.error and "stop command refused" in res.error
    assert arm.commands == []  # nothing reached the arm


def test_step_limit_truncates():
    arm, ex, _ = make(config=ExecutorConfig(max_steps=5))
    res = ex.run(actions(50))
    assert res.status is SkillStatus.SUCCEEDED and res.truncated and res.steps_executed == 5


def test_deadline_aborts():
    arm, ex, clock = make(config=ExecutorConfig(period_s=0.08, max_duration_s=0.5))
    res = ex.run(actions(50))
    assert res.status is SkillStatus.ABORTED and res.fault is Fault.DEADLINE and res.steps_executed <= 7
    assert arm.stop_calls == 1


# ---------------------------------------------------------------- cancel / preempt
def test_cancel_mid_skill_canceled_only_when_stationary():
    arm, ex, _ = make(script=FakeArmScript(stop_extra_polls=5))
    polls = []
    orig = arm.is_stationary

    def spy():
        r = orig()
        polls.append(r)
        return r

    arm.is_stationary = spy
    step = {"n": 0}

    def fb(s, p, q):
        step["n"] = s

    res = ex.run(actions(50), is_cancel_requested=lambda: step["n"] >= 4, feedback=fb)
    assert res.status is SkillStatus.CANCELED and not res.success and res.fault is Fault.CANCELED
    assert res.steps_executed == 4 and arm.stop_calls == 1
    # the arm reported moving 5 times after stop() returned; CANCELED came only after it stood still
    assert polls[:5] == [False] * 5 and polls[-1] is True
    assert arm.is_stationary()


def test_cancel_but_arm_never_stops_is_aborted():
    arm, ex, _ = make(script=FakeArmScript(stop_never=True), config=ExecutorConfig(stop_timeout_s=0.5))
    res = ex.run(actions(50), is_cancel_requested=lambda: len(arm.commands) >= 2)
    assert res.status is SkillStatus.ABORTED and res.fault is Fault.STOP_TIMEOUT
    assert "not stationary" in res.error


def test_cancel_before_first_step_sends_nothing():
    arm, ex, _ = make()
    res = ex.run(actions(10), is_cancel_requested=lambda: True)
    assert res.status is SkillStatus.CANCELED and arm.commands == [] and res.steps_executed == 0


def test_preemption_aborts_with_reason():
    arm, ex, _ = make()
    res = ex.run(actions(50), is_preempted=lambda: "new goal 7" if len(arm.commands) >= 3 else None)
    assert res.status is SkillStatus.ABORTED and res.fault is Fault.PREEMPTED
    assert "new goal 7" in res.error and res.steps_executed == 3 and arm.stop_calls == 1


# ---------------------------------------------------------------- watchdogs
def test_heartbeat_stale_stops_arm():
    arm, ex, clock = make(config=ExecutorConfig(heartbeat_timeout_s=0.3))
    last_beat = {"t": clock()}

    def fb(s, p, q):
        if s <= 3:  # the policy process dies after step 3
            last_beat["t"] = clock()

    res = ex.run(actions(50), heartbeat=lambda: last_beat["t"], feedback=fb)
    assert res.status is SkillStatus.ABORTED and res.fault is Fault.HEARTBEAT and "heartbeat" in res.error
    assert 3 < res.steps_executed <= 3 + math.ceil(0.3 / 0.08) + 1
    assert arm.stop_calls == 1 and arm.is_stationary()


def test_stale_arm_state_aborts():
    arm, ex, clock = make(config=ExecutorConfig(state_max_age_s=0.2))
    arm.clock = lambda: clock() - 1.0  # the arm's stamps lag by 1 s
    res = ex.run(actions(5))
    assert res.status is SkillStatus.ABORTED and res.fault is Fault.STALE_STATE and arm.commands == []


# ---------------------------------------------------------------- arm errors
@pytest.mark.parametrize(
    "err, fault, stops",
    [
        (ArmControlError, Fault.REFLEX, True),
        (ArmUserStopError, Fault.USER_STOP, True),
        (ArmCommandError, Fault.COMMAND, True),
        (ArmNetworkError, Fault.NETWORK, False),
        (ArmRealtimeError, Fault.REALTIME, False),
        (ArmError, Fault.ARM, True),
    ],
)
def test_arm_error_mapping(err, fault, stops):
    arm, ex, _ = make(script=FakeArmScript(raise_at_step={3: err}))
    res = ex.run(actions(10))
    assert res.status is SkillStatus.ABORTED and not res.success and res.fault is fault
    assert err.__name__ in res.error and res.steps_executed == 3 and len(arm.commands) == 3
    assert (arm.stop_calls == 1) is stops


def test_estop_is_sticky_and_needs_a_human():
    arm, ex, _ = make(script=FakeArmScript(estop_at_step=2))
    res = ex.run(actions(10))
    assert res.fault is Fault.USER_STOP
    assert not arm.recover_from_errors()  # no auto recovery while the e-stop is engaged
    res2 = ex.run(actions(3))
    assert res2.fault is Fault.USER_STOP and res2.steps_executed == 0
    arm.release_estop()
    assert arm.recover_from_errors()
    assert ex.run(actions(3)).success


def test_reflex_then_classified_recovery_then_run():
    arm, ex, _ = make(script=FakeArmScript(raise_at_step={1: ArmControlError}))
    res = ex.run(actions(5))
    assert res.fault is Fault.REFLEX
    assert arm.recover_from_errors()
    assert ex.run(actions(5)).success


def test_off_pose_arm_plans_from_measured_state():
    offset = np.full(7, 0.02)
    arm, ex, _ = make(script=FakeArmScript(off_pose_offset=offset), tracking_gain=1.0)
    res = ex.run(actions(3, dq=0.0))
    assert res.success
    # each target is measured q + dq, so it follows the arm's real (offset) pose
    np.testing.assert_allclose(arm.commands[1].q, arm.commands[0].q + offset, atol=1e-12)


def test_command_lead_is_this_skills_last_requested_target_minus_the_measured_joints():
    """A decoder with command feedback sees (its last joint target, before the safety function) - (joints now):
    zero at a skill's first step, and a clipped command still reports what was asked for."""
    arm, ex, _ = make(tracking_gain=0.5)
    seen, sent_from = [], []

    def decoder(n, dq):
        for i in range(n):
            seen.append(ex.command_lead())
            sent_from.append(np.array(ex.state.q))
            yield np.r_[np.full(7, dq), 0.5], (i + 1) / n

    assert ex.run(decoder(3, 0.01)).success
    np.testing.assert_array_equal(seen[0], np.zeros(7))
    for i in (1, 2):  # the arm closed half of the gap: the lead is what is left of the last command
        np.testing.assert_allclose(seen[i], sent_from[i - 1] + 0.01 - sent_from[i], atol=1e-12)
        assert np.all(seen[i] > 0)
    seen.clear()
    sent_from.clear()
    assert ex.run(decoder(2, 0.3)).success  # 0.3 rad asked, 0.05 sent (max_step_delta)
    np.testing.assert_array_equal(seen[0], np.zeros(7))  # a new skill starts without the last one's lead
    np.testing.assert_allclose(seen[1], sent_from[0] + 0.3 - sent_from[1], atol=1e-12)


# ---------------------------------------------------------------- decoder faults / clipping
def test_big_jump_is_clipped_per_step():
    arm, ex, _ = make(tracking_gain=1.0)
    jumps = [np.r_[np.full(7, 0.5), 1.0], np.r_[np.full(7, -2.0), 0.0], np.r_[np.zeros(7), 1.0]]
    res = ex.run((a, 0.5) for a in jumps * 3)
    assert res.success and res.clipped_count >= 6
    sent = np.array([c.q for c in arm.commands])
    prev = np.vstack([HOME, sent[:-1]])  # tracking_gain 1: the measured q equals the previous target
    assert np.max(np.abs(sent - prev)) <= LIMITS.max_step_delta + 1e-12
    assert np.all(sent >= LIMITS.q_low) and np.all(sent <= LIMITS.q_high)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_action_never_reaches_arm(bad):
    arm, ex, _ = make()

    def gen():
        yield np.r_[np.full(7, 0.01), 0.5], 0.1
        a = np.r_[np.full(7, 0.01), 0.5]
        a[2] = bad
        yield a, 0.2

    res = ex.run(gen())
    assert res.status is SkillStatus.ABORTED and res.fault is Fault.UNSAFE
    assert len(arm.commands) == 1 and all(np.all(np.isfinite(c.q)) for c in arm.commands)
    assert arm.stop_calls == 1


def test_malformed_action_aborts():
    arm, ex, _ = make()
    res = ex.run(iter([(np.zeros(7), 0.1)]))
    assert res.fault is Fault.DECODER and "shape" in res.error and arm.commands == []


def test_decoder_exception_stops_arm():
    arm, ex, _ = make()

    def gen():
        yield np.r_[np.full(7, 0.01), 0.5], 0.1
        raise RuntimeError("CUDA fell over")

    res = ex.run(gen())
    assert res.fault is Fault.DECODER and "CUDA fell over" in res.error and arm.stop_calls == 1


def test_send_refuses_unchecked_commands():
    arm = FakeArm()
    arm.connect()
    with pytest.raises(TypeError, match="CheckedCommand"):
        arm.send(np.zeros(7))  # type: ignore[arg-type]
    arm.send(check_command(HOME, HOME, 1.0, LIMITS))
    assert len(arm.commands) == 1


def test_config_validation():
    with pytest.raises(ValueError):
        ExecutorConfig(max_steps=0)
    with pytest.raises(ValueError):
        ExecutorConfig(heartbeat_timeout_s=float("nan"))
    with pytest.raises(ValueError):
        ExecutorConfig(period_s=-1)


# ---------------------------------------------------------------- fault latch
def test_reflex_latches_until_an_operator_clears_it_and_the_arm_recovers():
    from extract_skills.core.control.arm import ArmControlError
    from extract_skills.core.control.fault_latch import FaultLatch

    arm, ex, _ = make(script=FakeArmScript(raise_at_step={3: ArmControlError}))
    latch = FaultLatch()
    res = ex.run(actions(10))
    assert res.fault is Fault.REFLEX and latch.record(res)
    with pytest.raises(GoalRejectedError, match="arm fault latched \\(reflex.*clear_fault"):
        latch.check()
    # a second fault does not overwrite the first one
    from extract_skills.core.control.skill_executor import SkillResult, SkillStatus
    assert latch.record(SkillResult(SkillStatus.ABORTED, False, "net", 0, np.zeros(7), 0, fault=Fault.NETWORK))
    assert latch.latched.fault is Fault.REFLEX
    arm.script.recover_succeeds = False
    ok, msg = latch.clear(arm)
    assert not ok and "did not recover" in msg and latch.latched is not None
    arm.script.recover_succeeds = True
    ok, msg = latch.clear(arm)
    assert ok and latch.latched is None and arm.recover_calls == 2
    latch.check()  # nothing latched: goals pass


def test_estop_cannot_be_cleared_before_it_is_released():
    from extract_skills.core.control.fault_latch import FaultLatch

    arm, ex, _ = make(script=FakeArmScript(estop_at_step=2))
    latch = FaultLatch()
    res = ex.run(actions(10))
    assert res.fault is Fault.USER_STOP and latch.record(res)
    ok, msg = latch.clear(arm)
    assert not ok and "release the e-stop" in msg
    arm.release_estop()
    assert latch.clear(arm)[0] and latch.latched is None


@pytest.mark.parametrize("fault", [Fault.CANCELED, Fault.PREEMPTED, Fault.HEARTBEAT, Fault.UNSAFE, Fault.NONE])
def test_faults_the_software_handles_do_not_latch(fault):
    from extract_skills.core.control.fault_latch import FaultLatch
    from extract_skills.core.control.skill_executor import SkillResult, SkillStatus

    latch = FaultLatch()
    res = SkillResult(SkillStatus.ABORTED, False, "x", 0, np.zeros(7), 0, fault=fault)
    assert not latch.record(res) and latch.latched is None
