"""Does `kill -9` of an image reader stop the sim's camera stream for everyone? (issue 14, the image outage)

Starts the real kitchen_sim node (free-running as fast as it renders), watches /camera/image_raw and
/joint_states from this process, and N times starts a reader process that subscribes to the images with the
camera node's QoS (sensor data: best effort), waits until it has received frames, then kills it with SIGKILL.
After each kill the images must reach this process again within ``--stall-s``; a stall while joint states keep
flowing is the outage (the sim is alive, its image writer delivers to nobody). A stalled sim is restarted.

    python benchmarks/reader_kill.py --kills 40                       # DDS transports as configured
    FASTDDS_BUILTIN_TRANSPORTS=UDPv4 python benchmarks/reader_kill.py  # no shared-memory transport

Prints a table row: kills, stalls, and the kill numbers after which the stream stalled.
"""
from __future__ import annotations

import argparse
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import soak  # noqa: E402 - a sibling script: the sim node is started the way the soak starts it

ROOT = soak.ROOT

READER = """
import sys, rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
rclpy.init()
n = rclpy.create_node("killed_reader")
count = [0]
def cb(_):
    count[0] += 1
    if count[0] == 3:
        print("receiving", flush=True)
n.create_subscription(Image, "/camera/image_raw", cb, qos_profile_sensor_data)
rclpy.spin(n)
"""


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=40)
    ap.add_argument("--stall-s", type=float, default=10.0, help="no image this long after a kill = a stall")
    ap.add_argument("--domain", type=int, default=88, help="private ROS domain")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sim-param", action="append", default=[], metavar="NAME:=VALUE",
                    help="a kitchen_sim parameter (e.g. image_reliability:=best_effort)")
    ap.add_argument("--log-dir", type=Path, default=ROOT / "runs" / "reader_kill", help="the sim's log")
    ns = ap.parse_args(argv)
    ns.log_dir.mkdir(parents=True, exist_ok=True)
    sim_args = ["-p", "lockstep:=false", "-p", "real_time_factor:=0.0"]  # free-running, as fast as it renders
    for p in ns.sim_param:
        sim_args += ["-p", p]

    def start_sim() -> subprocess.Popen:
        return soak.start("kitchen_sim", ns.log_dir, sim_args)
    os.environ["ROS_DOMAIN_ID"] = str(ns.domain)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    rng = random.Random(ns.seed)

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState

    rclpy.init(args=[])  # not our command line: --sim-param values look like ROS remap rules
    node = rclpy.create_node("reader_kill_probe")
    last = {"image": 0.0, "joints": 0.0}
    node.create_subscription(Image, "/camera/image_raw", lambda _: last.__setitem__("image", time.monotonic()),
                             qos_profile_sensor_data)
    node.create_subscription(JointState, "/joint_states", lambda _: last.__setitem__("joints", time.monotonic()), 10)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    threading.Thread(target=ex.spin, daemon=True).start()

    def flowing(key: str, since: float, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if last[key] > since:
                return True
            time.sleep(0.05)
        return False

    sim = start_sim()
    stalls: list[int] = []
    t0 = time.monotonic()
    try:
        if not flowing("image", 0.0, 120.0):
            raise SystemExit("the sim never published an image")
        for k in range(1, ns.kills + 1):
            reader = subprocess.Popen([sys.executable, "-c", READER], stdout=subprocess.PIPE, text=True)
            # a new reader that gets no frames is the outage too (seen: the stream died for every later reader)
            receiving = select.select([reader.stdout], [], [], 60.0)[0] and reader.stdout.readline().strip()
            if receiving:
                time.sleep(rng.uniform(0.0, 0.5))
            reader.send_signal(signal.SIGKILL)
            reader.wait()
            killed = time.monotonic()
            if not receiving or not flowing("image", killed, ns.stall_s):
                joints = flowing("joints", killed, 2.0)
                print(f"kill {k}: {'no image' if receiving else 'the new reader got no image in 60 s and'} "
                      f"this process got none for {ns.stall_s:g} s after the kill; joint states "
                      f"{'still flow' if joints else 'stopped too'}", flush=True)
                stalls.append(k)
                stop(sim)
                sim = start_sim()
                if not flowing("image", time.monotonic(), 120.0):
                    raise SystemExit("the restarted sim never published an image")
            elif k % 10 == 0:
                print(f"kill {k}: images flow ({len(stalls)} stalls so far)", flush=True)
    finally:
        stop(sim)
        ex.shutdown()
        rclpy.try_shutdown()
    config = ", ".join([f"transports {os.environ.get('FASTDDS_BUILTIN_TRANSPORTS', 'default')}",
                        f"publication mode {os.environ.get('RMW_FASTRTPS_PUBLICATION_MODE', 'default')}",
                        *ns.sim_param])
    print(f"\n| configuration | kills | stalls | after kill # | minutes |\n|---|---:|---:|---|---:|\n"
          f"| {config} | {ns.kills} | {len(stalls)} | {', '.join(map(str, stalls)) or '-'} | "
          f"{(time.monotonic() - t0) / 60:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
