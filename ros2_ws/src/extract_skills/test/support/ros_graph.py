"""Helpers for tests that run real rclpy graphs (in-process executors and child processes)."""
from __future__ import annotations

import faulthandler
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import rclpy
from rclpy.executors import Executor

TEST_DIR = Path(__file__).resolve().parents[1]
PKG_ROOT = TEST_DIR.parent


def spin_until(executor: Executor, predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Spin `executor` until `predicate()` holds or the timeout (monotonic) expires."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=0.02)
    if predicate():
        return True
    # A wait that times out is a failing test (or a deliberate negative check): show where every thread of this
    # process stood at that moment, so a rare hang in a node's thread can be read from one CI log.
    print(f"spin_until: predicate still false after {timeout_s} s; thread stacks:", file=sys.stderr, flush=True)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    return False


class Every:
    """True at most once per ``period_s`` (monotonic). A test that publishes from its spin loop's predicate must
    publish at a rate, not on every spin: each message wakes the next spin at once, and that busy loop holds
    the GIL against the node's own threads (a skill thread starved this way ran 60 steps in over 30 s)."""

    def __init__(self, period_s: float) -> None:
        self.period_s, self._next = period_s, 0.0

    def __call__(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.period_s
        return True


def spin_for(executor: Executor, seconds: float) -> None:
    """Spin `executor` for `seconds` (monotonic), e.g. to let callbacks run before a check that nothing happened."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=min(0.02, max(deadline - time.monotonic(), 0.0)))


def wait_future(executor: Executor, future, timeout_s: float = 30.0):
    assert spin_until(executor, future.done, timeout_s), "future did not complete in time"
    return future.result()


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PKG_ROOT), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_python(module_or_path: str, *args: str, module: bool = True) -> subprocess.Popen:
    """Start `python -m module args` (or a script path) as a child process sharing our ROS domain."""
    cmd = [sys.executable, "-m", module_or_path, *args] if module else [sys.executable, module_or_path, *args]
    return subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> str:
    """SIGINT then SIGKILL; returns the child's output (for assertion messages)."""
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.stdout.read() if proc.stdout else ""


class RclpyContext:
    """A private rclpy context per test, shut down afterwards."""

    def __enter__(self) -> rclpy.context.Context:
        import gc

        gc.collect()  # earlier tests' garbage (those without this context manager) is finalised before we spin
        self.context = rclpy.context.Context()
        rclpy.init(context=self.context)
        return self.context

    def __exit__(self, *exc) -> None:
        # Destroy every node made in this context before shutting it down: a node left alive keeps
        # its DDS entities, and a later test's client then matched a dead action server (seen here).
        import gc

        from rclpy.executors import Executor
        from rclpy.node import Node

        from extract_skills.nodes.common import destroy_waitables

        # First stop the executors (their worker threads may still run callbacks), then the nodes.
        for obj in gc.get_objects():
            if isinstance(obj, Executor) and obj.context is self.context:
                try:
                    obj.shutdown(timeout_sec=5.0)
                except Exception:  # noqa: BLE001
                    pass
        for obj in gc.get_objects():
            if isinstance(obj, Node) and obj.context is self.context:
                close = getattr(obj, "close", None)
                try:
                    if close:
                        close()
                    destroy_waitables(obj)  # a test's own action clients too
                    obj.destroy_node()
                except Exception:  # noqa: BLE001 - already destroyed or half-built
                    pass
        if self.context.ok():
            rclpy.shutdown(context=self.context)
        # Finalise this test's garbage (rclpy handles in reference cycles) now, while no executor of any context
        # spins, rather than at a random allocation inside the next test's spin_once: one CI run died of a
        # segfault while collecting there.
        gc.collect()


def wait_for_decoder_process(executor: Executor, node, client, timeout_s: float = 90.0) -> bool:
    """Wait until a decoder *process* can take a goal: its /diagnostics arrives (only a live, spinning decoder
    publishes them) and the action server is ready, then give discovery a second to match our endpoints on
    its side. ``server_is_ready()`` alone can be true for an earlier test's killed server still in discovery
    (DDS lease ~20 s), or before the server has matched our request writer: a goal sent then is never
    answered (seen in CI)."""
    from diagnostic_msgs.msg import DiagnosticArray

    seen: list = []
    sub = node.create_subscription(DiagnosticArray, "/diagnostics", seen.append, 10)
    try:
        ok = spin_until(executor, lambda: bool(seen) and client.server_is_ready(), timeout_s)
        spin_for(executor, 1.0)
        return ok
    finally:
        node.destroy_subscription(sub)
