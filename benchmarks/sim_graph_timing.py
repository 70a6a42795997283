"""Does the ROS graph execute skills the way the training harness does? Sim lockstep vs free-running.

Runs the main job's graph (`run_graph sim`, the shipped online policy, no learning) once per sim clock mode and,
from a probe node on the same ROS domain, counts the physics ticks (/joint_states) between consecutive decoder
commands (/joint_commands) inside a skill. The harness steps the physics exactly once per command; so does the
real arm's control loop. Prints one markdown table row per mode: ticks per command (0 / 1 / 2+), tick rate,
mean subtasks completed per episode (the supervisor's summary), seconds per episode.

    python benchmarks/sim_graph_timing.py --episodes 5            # both modes
    python benchmarks/sim_graph_timing.py --modes true --episodes 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PERIOD_S = 0.08  # the decoder's control period in config/sim.yaml


def probe_run(mode: str, episodes: int, policy: Path, domain: int, out_dir: Path, timeout_s: float) -> dict:
    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import JointState

    summary = out_dir / f"summary_lockstep_{mode}.json"
    summary.unlink(missing_ok=True)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    args = ["run_graph", "sim", f"lockstep:={mode}", "learn:=false", f"policy_checkpoint:={policy}",
            f"num_episodes:={episodes}", f"run_dir:={out_dir / ('run_' + mode)}", "--summary-json", str(summary)]
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx, domain_id=domain)
    node = Node("sim_graph_timing_probe", context=ctx)
    ticks: list[float] = []
    cmds: list[float] = []
    node.create_subscription(JointState, "/joint_states", lambda m: ticks.append(time.monotonic()), 100)
    node.create_subscription(JointState, "/joint_commands", lambda m: cmds.append(time.monotonic()), 100)
    from rclpy.executors import SingleThreadedExecutor
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    t0 = time.monotonic()
    with open(out_dir / f"graph_lockstep_{mode}.log", "w") as log:
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            while proc.poll() is None and time.monotonic() - t0 < timeout_s:
                ex.spin_once(timeout_sec=0.05)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
    wall = time.monotonic() - t0
    node.destroy_node()
    rclpy.shutdown(context=ctx)
    tk, cm = np.array(ticks), np.array(cmds)
    # consecutive commands of one skill (between skills the decoder is silent for longer)
    between = [int(((tk > a) & (tk <= b)).sum()) for a, b in zip(cm[:-1], cm[1:]) if b - a < 2.5 * PERIOD_S]
    hist = np.bincount(np.minimum(between, 2), minlength=3) if between else np.zeros(3, int)
    eps = json.loads(summary.read_text()) if summary.is_file() else []
    return {"mode": mode, "returncode": proc.returncode, "wall_s": wall, "commands": len(cm),
            "ticks_per_command": hist.tolist(), "tick_rate_hz": len(tk) / max(tk[-1] - tk[0], 1e-9) if len(tk) > 1 else 0,
            "episodes": len(eps), "subtasks": [len(e["completed"]) for e in eps],
            "episode_s": [e["seconds"] for e in eps]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=["true", "false"], choices=["true", "false"],
                    help="lockstep:= values to run")
    ap.add_argument("--episodes", type=int, default=5)
    ap.add_argument("--policy", type=Path, default=ROOT / "models" / "policies" / "extract_heldout0.pt")
    ap.add_argument("--domain", type=int, default=83, help="ROS domain of the graph and the probe (not a robot's)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "sim_graph_timing")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--timeout-s", type=float, default=1800.0)
    args = ap.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows = [probe_run(m, args.episodes, args.policy, args.domain, args.out_dir, args.timeout_s) for m in args.modes]
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores; "
          f"{args.episodes} episodes per mode, policy {args.policy.name}\n")
    print("| sim clock | commands | ticks per command 0 / 1 / 2+ | tick rate (Hz) | mean subtasks per episode "
          "| per episode | s per episode |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for r in rows:
        h = np.array(r["ticks_per_command"], float)
        share = " / ".join(f"{x:.0%}" for x in h / max(h.sum(), 1))
        mean = np.mean(r["subtasks"]) if r["subtasks"] else float("nan")
        name = "lockstep" if r["mode"] == "true" else "free-running"
        print(f"| {name} | {r['commands']} | {share} | {r['tick_rate_hz']:.1f} | {mean:.2f} | "
              f"{r['subtasks']} | {np.mean(r['episode_s']) if r['episode_s'] else float('nan'):.0f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all(r["returncode"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
