"""Run one skill: decoder outputs -> safety function -> arm, with cancel, preemption and watchdogs.

The ROS action server stays thin: its goal callback calls :func:`validate_goal`, its execute
callback calls :meth:`SkillExecutor.run` with the decoder's rollout iterator and predicates bound
to the goal handle, and turns the :class:`SkillResult` into the action result.

Per step (in this order): cancel? -> preempted? -> heartbeat stale? -> deadline? -> step limit? ->
read arm state (age checked; kept in :attr:`SkillExecutor.state`, so a closed-loop decoder sees the same
measurement instead of reading the arm a second time) -> next decoder output -> q_target = q_ref + dq ->
check_command -> send
-> feedback -> wait for the next period (monotonic). Commands keep the period's ticks across skills too: a skill
that ended early never brings the next command forward (:attr:`Arm.next_command_not_before`). After a skill's last
command (its progress reached :attr:`ExecutorConfig.stop_progress`) an arm whose next state is final
(:attr:`Arm.state_after_command_is_final`, the sim twin in lockstep) is not waited on for the rest of the period:
the skill ends as soon as that state arrives, so the next decision overlaps the period. ``q_ref`` is what the skill's actions are relative to
(:attr:`ExecutorConfig.action_frame`): the joints measured now (``"measured"``), or the joints measured
when the skill started (``"skill_start"``: an action is a joint target relative to the skill's start, so
a decoder's per-step errors do not integrate into the arm's position over the skill).

On every way out except SUCCEEDED the arm is stopped and the executor waits (bounded) until it is
stationary: CANCELED is only reported once the arm stands still.
Pure python + numpy (core layer).
"""
from __future__ import annotations

import enum
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from .arm import (
    Arm,
    ArmState,
    ArmCommandError,
    ArmControlError,
    ArmError,
    ArmNetworkError,
    ArmRealtimeError,
    ArmUserStopError,
)
from .safety import NUM_JOINTS, SafetyLimits, UnsafeCommandError, check_command

logger = logging.getLogger(__name__)

ACTION_DIM = NUM_JOINTS + 1
ACTION_FRAMES = ("measured", "skill_start")


class GoalRejectedError(ValueError):
    """A skill goal that must not be accepted; the message says why."""


@dataclass(frozen=True)
class ValidatedGoal:
    skill_id: int
    argument: np.ndarray  # (arg_dim,) float64, clipped to [-arg_bound, arg_bound]
    clipped_count: int  # how many argument components were clipped


def validate_goal(skill_id: Any, argument: Any, num_skills: int, arg_dim: int, arg_bound: float) -> ValidatedGoal:
    """Check a skill goal before accepting it.

    Unknown skill id, wrong argument shape or NaN/Inf argument: GoalRejectedError.
    Argument components beyond +-arg_bound: clipped and counted.
    """
    if isinstance(skill_id, (bool, np.bool_)) or not isinstance(skill_id, (int, np.integer)):
        raise GoalRejectedError(f"skill id must be an integer, got {skill_id!r}")
    if not 0 <= int(skill_id) < num_skills:
        raise GoalRejectedError(f"unknown skill id {int(skill_id)}: valid ids are 0..{num_skills - 1}")
    try:
        arg = np.asarray(argument, dtype=np.float64)
    except (TypeError, ValueError):
        raise GoalRejectedError(f"skill argument is not numeric: {argument!r}") from None
    if arg.shape != (arg_dim,):
        raise GoalRejectedError(f"skill argument must have shape ({arg_dim},), got {arg.shape}")
    if not np.all(np.isfinite(arg)):
        raise GoalRejectedError("skill argument contains NaN/Inf")
    if not (math.isfinite(arg_bound) and arg_bound > 0):
        raise ValueError(f"arg_bound must be a finite positive number, got {arg_bound}")
    clipped = np.clip(arg, -arg_bound, arg_bound)
    n = int(np.count_nonzero(clipped != arg))
    if n:
        logger.info("skill %d argument: %d component(s) clipped to +-%g", int(skill_id), n, arg_bound)
    return ValidatedGoal(skill_id=int(skill_id), argument=clipped, clipped_count=n)


class SkillStatus(enum.Enum):
    SUCCEEDED = "succeeded"
    CANCELED = "canceled"
    ABORTED = "aborted"


class Fault(enum.Enum):
    """Why a skill did not succeed; tells the caller which recovery applies."""

    NONE = "none"
    CANCELED = "canceled"  # client asked; arm stopped
    PREEMPTED = "preempted"  # a newer goal took over
    HEARTBEAT = "heartbeat"  # command source stale (policy died): arm stopped
    DEADLINE = "deadline"  # skill ran past its wall-clock budget
    STALE_STATE = "stale_state"  # arm state too old
    DECODER = "decoder"  # decoder raised or produced a malformed action
    UNSAFE = "unsafe"  # safety function refused (e.g. pose outside the box)
    REFLEX = "reflex"  # ArmControlError: classified recover_from_errors
    USER_STOP = "user_stop"  # e-stop: wait for a human, no auto recovery
    COMMAND = "command"  # ArmCommandError: command rejected, do not retry
    NETWORK = "network"  # ArmNetworkError: recreate the arm, back off
    REALTIME = "realtime"  # ArmRealtimeError: configuration, fatal
    ARM = "arm"  # other ArmError
    STOP_TIMEOUT = "stop_timeout"  # the arm did not become stationary in time


def classify_arm_error(exc: ArmError) -> Fault:
    """Map an ArmError subclass onto a Fault (most specific class first)."""
    for cls, fault in (
        (ArmUserStopError, Fault.USER_STOP),
        (ArmControlError, Fault.REFLEX),
        (ArmCommandError, Fault.COMMAND),
        (ArmNetworkError, Fault.NETWORK),
        (ArmRealtimeError, Fault.REALTIME),
    ):
        if isinstance(exc, cls):
            return fault
    return Fault.ARM


@dataclass(frozen=True)
class SkillResult:
    status: SkillStatus
    success: bool
    error: str  # empty on success
    steps_executed: int  # commands sent to the arm
    final_q: np.ndarray  # (7,) rad, last measured joint positions (NaN if never read)
    clipped_count: int  # steps whose command the safety function changed
    fault: Fault = Fault.NONE
    truncated: bool = False  # SUCCEEDED because the step limit ended the skill, not the decoder
    ticks_dropped: int = 0  # control periods missed: consecutive commands more than 1.5 periods apart
    late_phase_s: dict[str, float] = field(default_factory=dict)  # LoopTiming.PHASES -> s, over late intervals


def missed_ticks(interval_s: float, period_s: float) -> int:
    """Control ticks missed between two commands ``interval_s`` apart: none up to 1.5 periods, else one per
    period beyond the first (the soak applies the same rule to the feedback it receives)."""
    if period_s <= 0 or interval_s <= 1.5 * period_s:
        return 0
    return int(round(interval_s / period_s)) - 1


class LoopTiming:
    """Where the time between two commands goes, for the commands that came late.

    An interval between consecutive sends drops :func:`missed_ticks` ticks (the soak's measure, taken here at
    the sender, so a slow observer cannot add any). The interval is split
    into the phases of the loop: ``feedback`` (after the previous send), ``wake`` (how late the sleep returned
    past its tick), ``state`` (watchdogs and reading the arm: under the kitchen's lockstep this waits for the
    sim's physics step), ``decode`` (the decoder's next output) and ``send`` (safety check and publish); the
    phases of late intervals are summed, so a result says which one ate the period."""

    PHASES = ("feedback", "wake", "state", "decode", "send")

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self.ticks_dropped = 0
        self.late_phase_s = dict.fromkeys(self.PHASES, 0.0)
        self._last_send: float | None = None
        self._pending = dict.fromkeys(self.PHASES, 0.0)  # phases of the interval in progress

    def add(self, phase: str, seconds: float) -> None:
        self._pending[phase] += max(0.0, seconds)

    def sent(self, t: float) -> None:
        """A command left at ``t``: close the interval since the previous one."""
        missed = missed_ticks(t - self._last_send, self.period_s) if self._last_send is not None else 0
        if missed:
            self.ticks_dropped += missed
            for k, v in self._pending.items():
                self.late_phase_s[k] += v
        self._last_send = t
        self._pending = dict.fromkeys(self.PHASES, 0.0)


@dataclass(frozen=True)
class ExecutorConfig:
    """Timing and watchdogs of the skill executor."""

    period_s: float = 0.08
    """s, control period of one skill step; 0 = no pacing (simulated arms that step on send)."""
    max_steps: int = 200
    """Step limit of one skill; reaching it ends the skill (SUCCEEDED, truncated=True)."""
    heartbeat_timeout_s: float = 0.5
    """s, a command-source heartbeat older than this stops the arm (ABORTED)."""
    max_duration_s: float = 60.0
    """s, wall-clock deadline of one skill (monotonic)."""
    state_max_age_s: float = 0.5
    """s, arm state older than this aborts the skill."""
    stop_timeout_s: float = 3.0
    """s, how long to wait for the arm to become stationary after stop()."""
    stationary_poll_s: float = 0.01
    """s, polling interval while waiting for stationary."""
    action_frame: str = "measured"
    """What a decoded joint action is relative to: ``measured`` (now) or ``skill_start`` (the skill's start)."""
    stop_progress: float | None = None
    """The decoder's stop threshold (the checkpoint's): a command whose progress reaches it is the skill's last.
    None: the end is only known when the decoder's outputs run out."""

    def __post_init__(self) -> None:
        for name in ("period_s", "heartbeat_timeout_s", "max_duration_s", "state_max_age_s", "stop_timeout_s", "stationary_poll_s"):
            v = float(getattr(self, name))
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"ExecutorConfig.{name} must be a finite number >= 0 s, got {v}")
        for name in ("heartbeat_timeout_s", "max_duration_s", "state_max_age_s", "stop_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ExecutorConfig.{name} must be > 0 s")
        if int(self.max_steps) != self.max_steps or self.max_steps < 1:
            raise ValueError(f"ExecutorConfig.max_steps must be a positive integer, got {self.max_steps}")
        if self.action_frame not in ACTION_FRAMES:
            raise ValueError(f"ExecutorConfig.action_frame must be one of {ACTION_FRAMES}, got {self.action_frame!r}")
        if self.stop_progress is not None and not 0.0 < float(self.stop_progress) <= 1.0:
            raise ValueError(f"ExecutorConfig.stop_progress must be in (0, 1] or None, got {self.stop_progress!r}")


DecoderOutput = tuple[Any, float]  # (action (8,) = [dq(7) rad/step, gripper in [0,1]], progress)
FeedbackFn = Callable[[int, float, np.ndarray], None]


class _Exit(Exception):
    def __init__(self, status: SkillStatus, fault: Fault, error: str, stop: bool = True) -> None:
        super().__init__(error)
        self.status, self.fault, self.error, self.stop = status, fault, error, stop


class SkillExecutor:
    """Executes skills on one Arm under one set of SafetyLimits."""

    def __init__(
        self,
        arm: Arm,
        limits: SafetyLimits,
        config: ExecutorConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.arm = arm
        self.limits = limits
        self.config = config or ExecutorConfig()
        self.clock = clock
        self.sleep = sleep
        self.timing = LoopTiming(self.config.period_s)  # of the skill running or last run
        self.state: ArmState | None = None  # the arm state measured this step, before the decoder is asked
        self._last_target: np.ndarray | None = None  # joint target this skill asked for last (before the checks)

    def proprio(self) -> np.ndarray:
        """``[q, gripper]`` measured this step: the ``proprio_fn`` of a closed-loop decoder's rollout."""
        if self.state is None:
            raise RuntimeError("no arm state measured yet: proprio() is for decoders run by this executor")
        return self.state.proprio()

    def command_lead(self) -> np.ndarray:
        """(7,) rad: the joint target the decoder asked for last in this skill (before the safety function) minus
        the joints measured this step; zero at the skill's first step. The ``lead_fn`` of a decoder with command
        feedback: the demos' controller integrated its target, and this is that hidden state, measured."""
        if self.state is None:
            raise RuntimeError("no arm state measured yet: command_lead() is for decoders run by this executor")
        if self._last_target is None:
            return np.zeros(NUM_JOINTS)
        return self._last_target - np.asarray(self.state.q, dtype=np.float64)

    # ------------------------------------------------------------------------------------
    def run(
        self,
        actions: Iterable[DecoderOutput],
        *,
        is_cancel_requested: Callable[[], bool] = lambda: False,
        is_preempted: Callable[[], str | None] = lambda: None,
        heartbeat: Callable[[], float] | None = None,
        feedback: FeedbackFn | None = None,
        dynamics_factor: float | None = None,
    ) -> SkillResult:
        """Run one skill to its end.

        Args:
            actions: decoder outputs ``(action (8,), progress)``; the skill ends when it is exhausted.
            is_cancel_requested: polled every step; True -> stop, wait stationary, CANCELED.
            is_preempted: polled every step; a non-empty reason string -> stop, ABORTED with it.
            heartbeat: returns the monotonic time (same clock) the command source was last alive;
                older than ``heartbeat_timeout_s`` -> stop, ABORTED.  None disables the check.
            feedback: called after each sent command with (step, progress, q_sent (7,)).
            dynamics_factor: the goal's dynamics factor in (0, 1] for this skill's motions (None: the arm's
                configured one); set on the arm before the first command.
        """
        cfg = self.config
        t_start = self.clock()
        steps = 0
        q_start: np.ndarray | None = None  # joints measured at the skill's first step
        self._last_target = None
        clipped = 0
        it = iter(actions)
        next_tick = max(t_start, self.arm.next_command_not_before)  # the last skill may have ended before its period
        self.timing = timing = LoopTiming(cfg.period_s)
        self.arm.set_dynamics_factor(dynamics_factor)  # raises before anything moves if it is invalid
        try:
            while True:
                if is_cancel_requested():
                    raise _Exit(SkillStatus.CANCELED, Fault.CANCELED, "canceled by client")
                reason = is_preempted()
                if reason:
                    raise _Exit(SkillStatus.ABORTED, Fault.PREEMPTED, f"preempted: {reason}")
                now = t_top = self.clock()
                if heartbeat is not None:
                    age = now - float(heartbeat())
                    if not age <= cfg.heartbeat_timeout_s:  # also catches NaN
                        raise _Exit(SkillStatus.ABORTED, Fault.HEARTBEAT,
                                    f"command source heartbeat stale ({age:.3f} s > {cfg.heartbeat_timeout_s} s)")
                if now - t_start > cfg.max_duration_s:
                    raise _Exit(SkillStatus.ABORTED, Fault.DEADLINE, f"skill exceeded {cfg.max_duration_s} s")
                if steps >= cfg.max_steps:
                    logger.info("skill reached the step limit (%d)", cfg.max_steps)
                    return self._finish(SkillStatus.SUCCEEDED, Fault.NONE, "", steps, clipped, truncated=True)

                state = self.state = self.arm.read_state()
                age = self.clock() - state.stamp
                if not age <= cfg.state_max_age_s:
                    raise _Exit(SkillStatus.ABORTED, Fault.STALE_STATE, f"arm state is {age:.3f} s old")
                t_state = self.clock()
                timing.add("state", t_state - t_top)
                try:
                    out = next(it)
                except StopIteration:
                    return self._finish(SkillStatus.SUCCEEDED, Fault.NONE, "", steps, clipped)
                except Exception as exc:  # decoder crashed: the arm must still stop
                    raise _Exit(SkillStatus.ABORTED, Fault.DECODER, f"decoder raised {type(exc).__name__}: {exc}") from exc
                t_decoded = self.clock()
                timing.add("decode", t_decoded - t_state)
                action, progress = self._parse(out)
                try:
                    if q_start is None:
                        q_start = np.array(state.q, dtype=np.float64)
                    q_ref = q_start if cfg.action_frame == "skill_start" else state.q
                    target = q_ref + action[:NUM_JOINTS]
                    self._last_target = np.array(target, dtype=np.float64)  # NaN stays NaN: refused just below
                    cmd = check_command(state.q, target, action[NUM_JOINTS], self.limits)
                except UnsafeCommandError as exc:
                    raise _Exit(SkillStatus.ABORTED, Fault.UNSAFE, f"unsafe command refused: {exc}") from exc
                if cmd.clipped:
                    clipped += 1
                wait = next_tick - self.clock() if cfg.period_s > 0 else 0.0
                if wait > 0:
                    # the previous command's period is not over: it ended a skill early (below), or the decoder
                    # went on after a stop it announced; either way the arm gets one command per tick
                    self.sleep(wait)
                    t_decoded = self.clock()  # not "send" time; and never lateness (it only fills a short interval)
                self.arm.send(cmd)
                t_sent = self.clock()
                timing.add("send", t_sent - t_decoded)
                timing.sent(t_sent)
                steps += 1
                if feedback is not None:
                    feedback(steps, progress, np.array(cmd.q))
                if cfg.period_s > 0:
                    next_tick += cfg.period_s
                    t_fb = self.clock()
                    timing.add("feedback", t_fb - t_sent)
                    delay = next_tick - t_fb
                    if delay <= 0:
                        next_tick = t_fb  # overran: do not try to catch up
                    self.arm.next_command_not_before = next_tick
                    last = (cfg.stop_progress is not None and progress >= cfg.stop_progress) or steps >= cfg.max_steps
                    if delay > 0 and not (last and self.arm.state_after_command_is_final):
                        self.sleep(delay)
                        timing.add("wake", self.clock() - next_tick)
        except _Exit as ex:
            logger.warning("skill %s: %s", ex.status.value, ex.error)
            return self._finish(ex.status, ex.fault, ex.error, steps, clipped, stop=ex.stop)
        except ArmError as exc:
            fault = classify_arm_error(exc)
            logger.error("skill aborted by arm error (%s): %s", fault.value, exc)
            # a reflex/e-stop has already stopped the robot and a dead network cannot carry a stop
            return self._finish(SkillStatus.ABORTED, fault, f"{type(exc).__name__}: {exc}", steps, clipped,
                                stop=fault not in (Fault.NETWORK, Fault.REALTIME))

    # ------------------------------------------------------------------------------------
    @staticmethod
    def _parse(out: Any) -> tuple[np.ndarray, float]:
        try:
            action, progress = out
            a = np.asarray(action, dtype=np.float64)
            p = float(progress)
        except (TypeError, ValueError) as exc:
            raise _Exit(SkillStatus.ABORTED, Fault.DECODER, f"malformed decoder output: {exc}") from None
        if a.shape != (ACTION_DIM,):
            raise _Exit(SkillStatus.ABORTED, Fault.DECODER, f"decoder action must have shape ({ACTION_DIM},), got {a.shape}")
        # NaN/Inf in the action is refused by check_command (Fault.UNSAFE)
        return a, p

    def stop_and_wait(self) -> bool:
        """Stop the arm and wait until it is stationary (bounded by stop_timeout_s); True if stationary."""
        self.arm.stop()
        deadline = self.clock() + self.config.stop_timeout_s
        while not self.arm.is_stationary():
            if self.clock() >= deadline:
                return False
            self.sleep(self.config.stationary_poll_s)
        return True

    def _finish(self, status: SkillStatus, fault: Fault, error: str, steps: int, clipped: int,
                *, stop: bool = False, truncated: bool = False) -> SkillResult:
        if stop:
            try:
                stationary = self.stop_and_wait()
            except ArmError as exc:
                logger.error("stopping the arm failed: %s", exc)
                status, fault = SkillStatus.ABORTED, classify_arm_error(exc)
                error = f"{error}; stopping the arm failed: {type(exc).__name__}: {exc}"
            except UnsafeCommandError as exc:
                # An arm that stops through the safety function (the sim twin's hold command) cannot be told to
                # hold where it is once it measures outside its limits: supervised recovery, not an internal error.
                logger.error("the safety function refused the stop command: %s", exc)
                status, fault = SkillStatus.ABORTED, Fault.UNSAFE
                error = f"{error}; stop command refused: {exc}"
            else:
                if not stationary:
                    error = f"{error}; arm not stationary {self.config.stop_timeout_s} s after stop()"
                    status, fault = SkillStatus.ABORTED, Fault.STOP_TIMEOUT
                    logger.error("arm did not stop within %s s", self.config.stop_timeout_s)
        try:
            final_q = np.array(self.arm.read_state().q, dtype=np.float64)
        except ArmError:
            final_q = np.full(NUM_JOINTS, np.nan)
        return SkillResult(
            status=status,
            success=status is SkillStatus.SUCCEEDED,
            error=error,
            steps_executed=steps,
            final_q=final_q,
            clipped_count=clipped,
            fault=fault,
            truncated=truncated,
            ticks_dropped=self.timing.ticks_dropped,
            late_phase_s={k: round(v, 6) for k, v in self.timing.late_phase_s.items()},
        )
