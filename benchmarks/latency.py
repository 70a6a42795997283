#!/usr/bin/env python3
"""Latency of the deployment graph on this machine's CPU, printed as a markdown table.

  frame -> SkillCommand: camera image published -> embedding -> policy -> SkillCommand published
                         (the goal is sent in the same callback), through real rclpy nodes, both composed
                         in one process (the in-process runner) and one process per node (ros2 launch)
  baseline:              the encoder alone on one frame, same run (the irreducible part on CPU)
  decoder step:          one autoregressive decoder step (bundle.rollout)
  stream jitter:         SkillExecutor + FakeArm at 0.08 s period: deviation of send intervals

    .venv/bin/python benchmarks/latency.py [--models-dir models] [--frames 100]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ros2_ws/src/extract_skills"))


def pct(a, q):
    return float(np.percentile(np.asarray(a) * 1000.0, q))


def run_graph(mode: str, models: Path, frames: np.ndarray, rate_hz: float) -> tuple[list, list]:
    import subprocess

    import rclpy
    from extract_msgs.msg import SkillCommand, SkillEmbedding
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image

    from extract_skills.graph import TOPICS
    from extract_skills.nodes.camera_embedding_node import CameraEmbeddingNode
    from extract_skills.nodes.common import ExecutorThreads, rgb_to_image
    from extract_skills.nodes.skill_decoder_server import SkillDecoderServer
    from extract_skills.nodes.skill_policy_node import SkillPolicyNode

    params = {
        "camera": (CameraEmbeddingNode, "extract_skills.nodes.camera_embedding_node",
                   {"models_dir": str(models), "num_threads": 1}),  # as config/sim.yaml
        "policy": (SkillPolicyNode, "extract_skills.nodes.skill_policy_node",
                   {"models_dir": str(models), "act_without_episode": True}),
        "decoder": (SkillDecoderServer, "extract_skills.nodes.skill_decoder_server",
                    {"models_dir": str(models), "arm": "fake", "control_period_s": 0.0,
                     "max_step_delta": 0.01}),
    }
    rclpy.init()
    nodes, procs = [], []
    for cls, module, p in params.values():
        if mode == "one process":
            nodes.append(cls(parameter_overrides=[Parameter(k, value=v) for k, v in p.items()]))
        else:
            args = [a for k, v in p.items() for a in ("-p", f"{k}:={str(v).lower() if isinstance(v, bool) else v}")]
            procs.append(subprocess.Popen([sys.executable, "-m", module, "--ros-args", *args],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    bench = rclpy.create_node("latency_bench")
    lat_cmd, lat_emb = [], []
    now_s = lambda: bench.get_clock().now().nanoseconds * 1e-9  # noqa: E731
    stamp_s = lambda st: st.sec + st.nanosec * 1e-9  # noqa: E731
    bench.create_subscription(SkillCommand, TOPICS["skill_command"],
                              lambda m: lat_cmd.append(now_s() - stamp_s(m.header.stamp)), 100)
    bench.create_subscription(SkillEmbedding, TOPICS["embedding"],
                              lambda m: lat_emb.append(now_s() - stamp_s(m.header.stamp)), 100)
    pub = bench.create_publisher(Image, TOPICS["image"], 10)
    # as `run_graph` runs them: each node (and this observer) its own single-threaded executor in its own thread
    ex = ExecutorThreads([*nodes, bench])
    ex.start()
    time.sleep(3.0 if nodes else 25.0)  # discovery + warm-up (child processes load torch)
    lat_cmd.clear()
    lat_emb.clear()
    t_next = time.monotonic()
    for f in frames:
        pub.publish(rgb_to_image(f, bench.get_clock().now().to_msg(), "cam"))
        t_next += 1.0 / rate_hz
        time.sleep(max(0.0, t_next - time.monotonic()))
    ex.stop()
    for n in nodes:
        getattr(n, "close", lambda: None)()
    for n in (*nodes, bench):
        n.destroy_node()
    rclpy.shutdown()
    for pr in procs:
        pr.send_signal(2)
        pr.wait(10)
    return lat_emb, lat_cmd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--rate-hz", type=float, default=5.0)
    ns = ap.parse_args()
    os.environ.setdefault("ROS_DOMAIN_ID", "87")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

    from extract_skills.core.control.arm import FakeArm
    from extract_skills.core.skills.deployment import load_deployment_bundle, load_deployment_encoder
    from extract_skills.core.control.safety import SafetyLimits
    from extract_skills.core.control.skill_executor import ExecutorConfig, SkillExecutor
    from extract_skills.core.sim.scripted_demos import REST_Q

    models = ns.models_dir
    note = ""
    if not (models / "extract_kitchen.pt").is_file():
        sys.path.insert(0, str(ROOT / "ros2_ws/src/extract_skills/test"))
        from support.tiny_models import make_tiny_models

        models = Path(tempfile.mkdtemp())
        make_tiny_models(models, image_size=224, max_segment_len=3)
        note = " (no shipped models found: random-init ResNet-18 at 224 px, untrained skill model)"
    ckpt = models / "extract_kitchen.pt"
    bundle = load_deployment_bundle(ckpt)
    encoder = load_deployment_encoder(ckpt, bundle)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(ns.frames, 128, 128, 3), dtype=np.uint8)

    # baseline: encoder alone, one frame at a time
    encoder.embed_frames(frames[:2], batch_size=1)
    base = []
    for f in frames[:30]:
        t = time.perf_counter()
        encoder.embed_frames(f[None], batch_size=1)
        base.append(time.perf_counter() - t)

    # decoder compute per step
    dec = []
    z = np.zeros(bundle.meta.latent_dim, np.float32)
    for d in range(bundle.num_skills):
        it = bundle.rollout(d, z, max_steps=30, progress_threshold=1.0,
                            proprio_fn=lambda: np.r_[REST_Q, 1.0],  # the shipped decoder is closed-loop
                            lead_fn=lambda: np.zeros(7))
        while True:
            t = time.perf_counter()
            try:
                next(it)
            except StopIteration:
                break
            dec.append(time.perf_counter() - t)

    # stream jitter: executor pacing at 0.08 s on the fake arm
    arm = FakeArm()
    arm.connect()
    sends = []
    orig = arm._send
    arm._send = lambda cmd: (sends.append(time.monotonic()), orig(cmd))[1]
    ex_core = SkillExecutor(arm, SafetyLimits(), ExecutorConfig(period_s=0.08, max_steps=60))
    ex_core.run(((np.zeros(8), i / 60) for i in range(60)))
    jitter = np.abs(np.diff(sends) - 0.08)

    # the graph: camera -> policy -> decoder (fake arm, no pacing), composed in one process
    # (the in-process runner) and as one process per node (as `ros2 launch` runs them)
    results = {mode: run_graph(mode, models, frames, ns.rate_hz) for mode in ("one process", "process per node")}

    b50 = pct(base, 50)
    print(f"\n### Latency ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, CPU only{note})\n")
    print(f"Command: `.venv/bin/python benchmarks/latency.py --frames {ns.frames} --rate-hz {ns.rate_hz}`; "
          f"encoder {encoder.identity.name} at {encoder.image_size} px.\n")
    print("| measure | n | p50 ms | p99 ms | p50 / encoder-only p50 |")
    print("|---|---|---|---|---|")
    print(f"| encoder alone, 1 frame (baseline) | {len(base)} | {b50:.1f} | {pct(base, 99):.1f} | 1.00 |")
    for mode, (lat_emb, lat_cmd) in results.items():
        for what, lat in (("frame -> embedding published", lat_emb), ("frame -> SkillCommand + goal sent", lat_cmd)):
            if lat:
                print(f"| {what} ({mode}) | {len(lat)} | {pct(lat, 50):.1f} | {pct(lat, 99):.1f} | "
                      f"{pct(lat, 50) / b50:.2f} |")
            else:
                print(f"| {what} ({mode}) | 0 | - | - | - |")
    print(f"| decoder step (compute) | {len(dec)} | {pct(dec, 50):.2f} | {pct(dec, 99):.2f} | {pct(dec, 50) / b50:.3f} |")
    print(f"| stream jitter \\|interval - 80 ms\\| | {len(jitter)} | {pct(jitter, 50):.2f} | {pct(jitter, 99):.2f} | - |")
    print(f"\n{ns.frames} frames at {ns.rate_hz} Hz per mode; one goal at a time, so frames arriving mid-goal are "
          "not acted on (fewer SkillCommands than frames). Target p99 < 50 ms.")


if __name__ == "__main__":
    main()
