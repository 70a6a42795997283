"""Shared pieces of the launch_testing tests (run by test_launch_tests.py with ROS 2's `launch_test` runner).

A launch test runs the launch in the runner's own process, so every node process is a child of it: the tests
find them by their executable name among those children, never among other processes on the machine.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable

import psutil
import rclpy
from rclpy.executors import SingleThreadedExecutor


def node_process(executable: str) -> psutil.Process | None:
    """The running child process of this launch whose command line names ``executable`` (None if none)."""
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE and any(
                    os.path.basename(part) == executable for part in proc.cmdline()):
                return proc
        except psutil.NoSuchProcess:
            continue
    return None


def wait_until(predicate: Callable[[], bool], timeout_s: float, period_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period_s)
    return predicate()


def assert_clean_shutdown(proc_info, proc_output) -> None:
    """Post-shutdown: every node exited 0 (launch keeps each node's latest exit, so a respawned node counts by its
    last instance) and no process printed a traceback or an unretrieved-exception line."""
    import launch_testing.asserts

    launch_testing.asserts.assertExitCodes(proc_info)
    for io in proc_output:
        text = io.text.decode(errors="replace")
        assert "Traceback" not in text and "never retrieved" not in text, text[-2000:]


def output_has(proc_output, text: str) -> bool:
    """True when any process printed ``text`` on stdout or stderr (launch's emulated tty may use either)."""
    return any(text in io.text.decode(errors="replace") for io in proc_output)


class GraphObserver:
    """A private rclpy context with one node spun in a background thread; tests read what it recorded."""

    def __init__(self, name: str) -> None:
        self.context = rclpy.context.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - the context was shut down under us
                return

    def record(self, msg_type, topic: str, qos: int = 50) -> list:
        """Subscribe and return the list every message on ``topic`` is appended to (with its arrival time)."""
        seen: list = []

        def cb(msg) -> None:
            with self.lock:
                seen.append((time.monotonic(), msg))

        self.node.create_subscription(msg_type, topic, cb, qos)
        return seen

    def node_names(self) -> set[str]:
        return set(self.node.get_node_names())

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self.node.destroy_node()
        if self.context.ok():
            rclpy.shutdown(context=self.context)
        self._thread.join(timeout=5.0)
