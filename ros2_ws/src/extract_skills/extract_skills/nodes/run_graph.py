"""In-process runner: the same node graph as `ros2 launch extract_skills sim.launch.py`, in one rclpy executor.

For machines without `ros2 launch` (launch/launch_ros are not on PyPI). It reads the same graph
description (`extract_skills.graph`) and parameter file as the launch files, takes the launch
arguments as `name:=value`, and for the sim ends by itself when the supervisor has run its episodes,
printing a summary.

    run_graph sim num_episodes:=3
    run_graph real robot_ip:=172.16.0.2 use_fake_hardware:=true
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import yaml

from extract_skills.core.rl.episode import format_summary


def parse_launch_args(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if ":=" not in item:
            raise SystemExit(f"argument {item!r} must look like name:=value")
        k, v = item.split(":=", 1)
        out[k] = v
    return out


def node_parameters(mode: str, values: dict[str, str], param_path: Path | None = None) -> dict[str, dict]:
    """Per-node parameter dicts: the mode's YAML file, then the launch-argument overrides (typed like launch_ros)."""
    from extract_skills.graph import nodes_for, overrides_for, param_file

    path = param_path or param_file(mode)
    data = yaml.safe_load(path.read_text()) or {}
    params = {}
    overrides = overrides_for(mode, values)
    for spec in nodes_for(mode, values):
        p = dict((data.get(spec.name) or {}).get("ros__parameters") or {})
        for k, v in overrides.get(spec.name, {}).items():
            p[k] = yaml.safe_load(v) if v != "" else v
        params[spec.name] = p
    return params


def build_nodes(mode: str, params: dict[str, dict], context=None):
    from rclpy.parameter import Parameter

    from extract_skills.graph import nodes_for

    # Import every node module before constructing any node: the kitchen node starts its physics
    # thread in its constructor, and loading torch's native libraries while MuJoCo/OSMesa runs in
    # another thread crashed the process (SIGSEGV, seen here).
    specs = [spec for spec in nodes_for(mode) if spec.name in params]  # params holds the enabled nodes
    classes = [getattr(importlib.import_module(spec.module), spec.node_class) for spec in specs]
    nodes = []
    for spec, cls in zip(specs, classes):
        overrides = [Parameter(k, value=v) for k, v in params[spec.name].items()]
        nodes.append(cls(parameter_overrides=overrides, context=context))
    return nodes


def _progress(supervisor, policy):
    """A progress bar over episodes that prints each finished episode's return as it ends."""
    from tqdm import tqdm

    total = supervisor.p["num_episodes"] or None
    bar = tqdm(total=total, unit="episode", desc="episodes", dynamic_ncols=True)
    seen = [0]

    def update() -> None:
        while seen[0] < len(supervisor.summary):
            s = supervisor.summary[seen[0]]
            seen[0] += 1
            who = "learned policy" if getattr(policy, "agent", None) is not None else "priors"
            learning = getattr(policy, "learner", None)
            extra = f", {learning.agent.updates} fine-tuning updates" if learning is not None else ""
            bar.write(f"episode {s['episode']}: {s['outcome']}, return {s['return']:.0f}, {s['skills']} skills "
                      f"({who}{extra}), completed: {', '.join(s['completed']) or '-'}")
            bar.update(1)
            rets = [x["return"] for x in supervisor.summary]
            bar.set_postfix(mean_return=f"{sum(rets) / len(rets):.2f}")
        if supervisor.finished:
            bar.close()

    return update


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("sim", "real"))
    ap.add_argument("args", nargs="*", help="launch arguments, name:=value")
    ap.add_argument("--params", type=Path, help="parameter file (default: config/<mode>.yaml)")
    ap.add_argument("--summary-json", type=Path, help="write the episode summary here")
    ap.add_argument("--timeout-s", type=float, default=0.0, help="give up after this many seconds (0 = never)")
    ns = ap.parse_args(argv)

    import rclpy
    from rclpy.executors import ExternalShutdownException

    from extract_skills.nodes.common import ExecutorThreads, drain, init_rclpy, route_core_logging

    params = node_parameters(ns.mode, parse_launch_args(ns.args), ns.params)
    init_rclpy()
    route_core_logging()
    try:
        nodes = build_nodes(ns.mode, params)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:  # a node refused its configuration or files
        print(f"run_graph: cannot start the {ns.mode} graph: {exc}", file=sys.stderr)
        rclpy.shutdown()
        return 2
    # a node per executor, an executor per thread: one shared executor queued each node's callbacks behind the others'
    executor = ExecutorThreads(nodes)
    supervisor = next(n for n in nodes if n.get_name() == "reward_reset_supervisor")
    policy = next(n for n in nodes if n.get_name() == "skill_policy")
    bar = _progress(supervisor, policy)
    t0 = time.monotonic()
    rc = 0
    executor.start()
    try:
        while rclpy.ok() and not supervisor.finished:
            if not executor.alive():
                print(f"run_graph: a node's callback failed: {executor.errors!r}", file=sys.stderr)
                rc = 1
                break
            executor.spin_once(timeout_sec=0.1)
            bar()
            if ns.timeout_s and time.monotonic() - t0 > ns.timeout_s:
                print(f"run_graph: timed out after {ns.timeout_s} s", file=sys.stderr)
                rc = 1
                break
        bar()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        drain(executor, nodes)
        executor.shutdown(timeout_sec=5.0)
        for n in nodes:
            close = getattr(n, "close", None)
            if close:
                close()
            n.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    summary = supervisor.summary
    if not supervisor.finished:  # a finished supervisor has logged the table itself
        print("\n" + format_summary(summary))
    if ns.summary_json:
        ns.summary_json.parent.mkdir(parents=True, exist_ok=True)
        ns.summary_json.write_text(json.dumps(summary, indent=2))
    return rc


if __name__ == "__main__":
    sys.exit(main())
