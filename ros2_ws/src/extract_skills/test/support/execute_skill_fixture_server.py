"""Interface fixture: a minimal single-goal ExecuteSkill server (no decoder, no arm), run as its own process.

It exists only to exercise the action interface across processes; the real server is
extract_skills.nodes.skill_decoder_server.
"""
import math
import threading
import time

import rclpy
from extract_msgs.action import ExecuteSkill
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node


class FixtureServer(Node):
    def __init__(self):
        super().__init__("execute_skill_fixture")
        self._lock = threading.Lock()
        self._active = None
        self._preempted = set()
        self._server = ActionServer(
            self, ExecuteSkill, "execute_skill", self._execute,
            goal_callback=self._on_goal, handle_accepted_callback=self._on_accepted,
            cancel_callback=lambda _: CancelResponse.ACCEPT, callback_group=ReentrantCallbackGroup())

    def _on_goal(self, goal):
        ok = all(math.isfinite(a) for a in goal.argument)
        return GoalResponse.ACCEPT if ok else GoalResponse.REJECT

    def _on_accepted(self, handle):
        with self._lock:
            if self._active is not None and self._active.is_active:
                self._preempted.add(id(self._active))
            self._active = handle
        handle.execute()

    def _execute(self, handle):
        n = handle.request.step_limit
        result = ExecuteSkill.Result()
        q = [0.0] * 7
        for step in range(n):
            if id(handle) in self._preempted:
                handle.abort()
                result.error = "preempted by a newer goal"
                result.steps_executed = step
                return result
            if handle.is_cancel_requested:
                handle.canceled()
                result.error = "canceled"
                result.steps_executed = step
                return result
            q = [qi + 0.01 for qi in q]
            handle.publish_feedback(ExecuteSkill.Feedback(
                step=step, progress=(step + 1) / n, commanded_joint_positions=q))
            time.sleep(0.02)
        handle.succeed()
        result.success = True
        result.steps_executed = n
        result.final_joint_positions = q
        return result


def main():
    rclpy.init()
    node = FixtureServer()
    ex = MultiThreadedExecutor()
    ex.add_node(node)
    try:
        ex.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass


if __name__ == "__main__":
    main()
