"""Latched arm faults: after an e-stop, a reflex, a lost network or a realtime failure nothing moves the arm
again (no skill goal, no move home) until a person has looked and cleared the fault.

The decoder node records every skill result here; its goal and move-home callbacks ask :meth:`FaultLatch.check`
first, and its ``/clear_fault`` service calls :meth:`FaultLatch.clear`, which also runs the arm's own error
recovery where one exists (a reflex) and refuses while the e-stop is still pressed. Pure Python (core layer).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from .arm import Arm
from .skill_executor import Fault, GoalRejectedError, SkillResult

#: Faults after which a person must look at the robot before it moves again.
LATCHING = frozenset({Fault.USER_STOP, Fault.REFLEX, Fault.NETWORK, Fault.REALTIME, Fault.STOP_TIMEOUT, Fault.ARM})

CLEAR_HINT = "an operator must check the robot and clear it: ros2 service call /clear_fault std_srvs/srv/Trigger"


@dataclass(frozen=True)
class LatchedFault:
    fault: Fault
    error: str
    since: float  # time.monotonic() when it latched


class FaultLatch:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latched: LatchedFault | None = None
        self.cleared = 0  # how many times an operator cleared a fault

    @property
    def latched(self) -> LatchedFault | None:
        return self._latched

    def record(self, result: SkillResult) -> bool:
        """Latch if the skill ended on a latching fault; True if it did (the first fault is kept)."""
        if result.fault not in LATCHING:
            return False
        with self._lock:
            if self._latched is None:
                self._latched = LatchedFault(result.fault, result.error, time.monotonic())
        return True

    def check(self) -> None:
        """Raise :class:`GoalRejectedError` naming the fault while one is latched."""
        f = self._latched
        if f is not None:
            raise GoalRejectedError(f"arm fault latched ({f.fault.value}: {f.error}); {CLEAR_HINT}")

    def clear(self, arm: Arm) -> tuple[bool, str]:
        """The operator's clear: run the arm's recovery when the fault needs one; (ok, message)."""
        with self._lock:
            f = self._latched
            if f is None:
                return True, "no fault latched"
            if f.fault is Fault.REFLEX and not arm.recover_from_errors():
                return False, "the arm did not recover from the reflex (e-stop still pressed?); fault stays latched"
            if f.fault is Fault.USER_STOP and not arm.recover_from_errors():
                return False, "release the e-stop (external activation device) first; fault stays latched"
            self._latched = None
            self.cleared += 1
            return True, f"cleared {f.fault.value} ({f.error})"
