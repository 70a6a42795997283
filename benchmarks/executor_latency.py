"""Command -> sim latency of the kitchen sim node under each rclpy executor (issue 14: the dropped control ticks).

The real kitchen_sim node and a driver node in one process, both in the executor under test; the driver sends one
joint command per control period (80 ms, lockstep) and waits for the sim's state of that step. Each phase is timed
inside the process (perf_counter): send -> the sim's command callback (DDS + the executor's dispatch), callback ->
the physics step starting, the step, step -> state published, and the whole round trip.

    .venv/bin/python benchmarks/executor_latency.py [--commands 600]

Prints one table (p50 / p99 / max in ms per phase and executor), executors measured one after the other in the same
run. Run it with nothing else on the machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ros2_ws/src/extract_skills"))
PHASES = ("send -> sim's callback", "callback -> step start", "step", "step -> state out", "round trip")


def measure(executor_name: str, commands: int) -> np.ndarray:
    import rclpy
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import JointState

    import extract_skills.nodes.kitchen_sim_node as ksn
    from extract_skills.core.sim import kitchen
    from extract_skills.core.sim.scripted_demos import REST_Q
    from extract_skills.graph import TOPICS
    from extract_skills.nodes.common import joint_state_msg

    marks = {"callback": [], "step": [], "out": []}

    class TimedSim(ksn.KitchenSimNode):  # the node's own code, with clock reads around it
        def _on_command(self, msg):
            marks["callback"].append(time.perf_counter())
            super()._on_command(msg)

        def _publish_state(self, obs, state):
            stamp = super()._publish_state(obs, state)
            marks["out"].append(time.perf_counter())
            return stamp

    step_to = kitchen.KitchenArm.step_to

    def timed_step(self, *args):
        t = time.perf_counter()
        result = step_to(self, *args)
        marks["step"].append((t, time.perf_counter()))
        return result

    kitchen.KitchenArm.step_to = timed_step
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        sim = TimedSim(context=ctx, parameter_overrides=[Parameter("task", value="microwave")])
        drv = rclpy.create_node("executor_latency_driver", context=ctx)
        answered = threading.Event()
        drv.create_subscription(JointState, TOPICS["joint_states"], lambda _m: answered.set(), 10)
        pub = drv.create_publisher(JointState, TOPICS["joint_commands"], 10)
        ex = (SingleThreadedExecutor(context=ctx) if executor_name == "SingleThreadedExecutor"
              else MultiThreadedExecutor(context=ctx))
        ex.add_node(sim)
        ex.add_node(drv)
        spinner = threading.Thread(target=ex.spin, daemon=True)
        spinner.start()
        deadline = time.monotonic() + 30.0
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        sends = []
        for i in range(commands + 20):  # the first 20 warm up and are dropped
            answered.clear()
            t = time.perf_counter()
            if i == 20:
                for v in marks.values():
                    v.clear()
                sends.clear()
            sends.append(t)
            pub.publish(joint_state_msg(REST_Q + 0.01 * np.sin(i / 10), 1.0, drv.get_clock().now().to_msg()))
            answered.wait(2.0)
            time.sleep(max(0.0, 0.08 - (time.perf_counter() - t)))
        time.sleep(0.5)
        sim.close()
        ex.shutdown()
    finally:
        kitchen.KitchenArm.step_to = step_to
        rclpy.shutdown(context=ctx)
    cb, out = np.asarray(marks["callback"]), np.asarray(marks["out"])
    steps = np.asarray(marks["step"]).reshape(-1, 2)

    def first_after(ts, t):
        i = np.searchsorted(ts, t)
        return (ts[i], i) if i < len(ts) else (np.nan, -1)

    rows = []
    for t in sends:  # each command's own callback, step and state: the first of each after it was sent
        c, _ = first_after(cb, t)
        s0, k = first_after(steps[:, 0], c) if np.isfinite(c) else (np.nan, -1)
        s1 = steps[k, 1] if k >= 0 else np.nan
        o, _ = first_after(out, s1) if np.isfinite(s1) else (np.nan, -1)
        rows.append((c - t, s0 - c, s1 - s0, o - s1, o - t))
    return np.asarray(rows) * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commands", type=int, default=600)
    ns = ap.parse_args(argv)
    os.environ.setdefault("ROS_DOMAIN_ID", "77")
    results = {name: measure(name, ns.commands) for name in ("MultiThreadedExecutor", "SingleThreadedExecutor")}
    print(f"\nCommand -> sim latency, kitchen sim node + driver in one process, {ns.commands} commands at 12.5 Hz "
          f"({platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}); p50 / p99 / max (ms)\n")
    print("| executor | " + " | ".join(PHASES) + " | commands over 50 ms |")
    print("|---|" + "---|" * len(PHASES) + "---:|")
    for name, rows in results.items():
        cells = [" / ".join(f"{np.nanpercentile(rows[:, i], q):.1f}" for q in (50, 99)) + f" / {np.nanmax(rows[:, i]):.1f}"
                 for i in range(len(PHASES))]
        print(f"| {name} | " + " | ".join(cells) + f" | {int(np.sum(rows[:, 4] > 50))} of {len(rows)} |")
    m, s = (np.nanpercentile(results[n][:, 4], 99) for n in results)
    print(f"\nround trip p99, multi- / single-threaded: {m / s:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
