"""Simulated kitchen throughput: env steps/s with and without rendering, fast vs default render
settings, and scripted demonstrations per minute. Prints a markdown table (and writes it with --write).

    MUJOCO_GL=osmesa .venv/bin/python benchmarks/sim_throughput.py --write benchmarks/RESULTS_sim.md

Takes about 2-3 minutes on 2 CPU cores without a GPU (software GL).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "osmesa")
if os.environ["MUJOCO_GL"] == "osmesa":
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ros2_ws" / "src" / "extract_skills"))

import numpy as np  # noqa: E402

from extract_skills.core.sim.kitchen import KitchenConfig, KitchenSim  # noqa: E402
from extract_skills.core.sim.scripted_demos import DemoConfig, ScriptedDemo, heldout_task_sequences, sample_task_sequence  # noqa: E402


def steps_per_s(sim: KitchenSim, n: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    sim.reset(seed=seed)
    t = time.perf_counter()
    for _ in range(n):
        sim.step(rng.uniform(-0.2, 0.2, 9))
    return n / (time.perf_counter() - t)


def frames_per_s(sim: KitchenSim, n: int) -> float:
    sim.reset(seed=0)
    sim.render()  # warm-up
    t = time.perf_counter()
    for _ in range(n):
        sim.render()
    return n / (time.perf_counter() - t)


def demos_per_min(sim: KitchenSim, episodes: int, seed: int = 500) -> tuple[float, float, int]:
    cfg = DemoConfig()
    demo = ScriptedDemo(sim, cfg)
    held = heldout_task_sequences(cfg.heldout_count)
    steps, ok = 0, 0
    t = time.perf_counter()
    for i in range(episodes):
        seq = sample_task_sequence(np.random.default_rng(seed + i), cfg, held)
        ep, _ = demo.run_episode(seq, seed=seed + i)
        steps += ep.num_steps
        ok += int(ep.meta["success"])
    dt = time.perf_counter() - t
    return 60.0 * episodes / dt, steps / dt, ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--physics-steps", type=int, default=400)
    p.add_argument("--render-steps", type=int, default=150)
    p.add_argument("--default-render-steps", type=int, default=12, help="the kitchen's own settings are slow")
    p.add_argument("--demo-episodes", type=int, default=3)
    p.add_argument("--write", default=None, help="also write the results markdown here")
    args = p.parse_args(argv)
    size = args.image_size
    rows = []
    t_all = time.perf_counter()

    physics = KitchenSim(KitchenConfig(render=False))
    sps_phys = steps_per_s(physics, args.physics_steps)
    rows.append(("env steps/s, physics only (no rendering)", f"{sps_phys:.0f}"))

    fast = KitchenSim(KitchenConfig(image_size=size, fast_render=True))
    sps_fast = steps_per_s(fast, args.render_steps)
    fps_fast = frames_per_s(fast, args.render_steps)
    rows.append((f"env steps/s + {size}x{size} image, fast render (default)", f"{sps_fast:.1f}"))

    slow = KitchenSim(KitchenConfig(image_size=size, fast_render=False))
    sps_slow = steps_per_s(slow, args.default_render_steps)
    fps_slow = frames_per_s(slow, args.default_render_steps)
    slow.close()
    rows.append((f"env steps/s + {size}x{size} image, kitchen's own render settings", f"{sps_slow:.2f}"))
    rows.append((f"render-only frames/s {size}x{size}: fast / default", f"{fps_fast:.1f} / {fps_slow:.2f}"))
    rows.append(("fast / default render speed-up (frames/s ratio)", f"{fps_fast / fps_slow:.1f}x"))

    dpm_img, sps_demo, ok_img = demos_per_min(fast, args.demo_episodes)
    rows.append((f"scripted demos/min ({size}x{size} fast render, 2-4 subtasks each)", f"{dpm_img:.1f} ({sps_demo:.0f} steps/s, {ok_img}/{args.demo_episodes} fully successful)"))
    dpm_phys, sps_demo_p, ok_p = demos_per_min(physics, args.demo_episodes * 3)
    rows.append(("scripted demos/min, physics only (no images)", f"{dpm_phys:.1f} ({sps_demo_p:.0f} steps/s, {ok_p}/{args.demo_episodes * 3} fully successful)"))
    fast.close()
    physics.close()

    table = "| measurement | value |\n|---|---:|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    print(table)
    print(f"\n(total {time.perf_counter() - t_all:.0f} s; control step dt = {fast.dt:.3f} s sim time)")
    if args.write:
        cmd = "MUJOCO_GL=osmesa .venv/bin/python benchmarks/sim_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
        text = (
            "# Simulated kitchen throughput\n\n"
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n"
            f"- machine: {os.cpu_count()}-core x86_64 CPU, no GPU, software GL (MUJOCO_GL={os.environ['MUJOCO_GL']}), "
            f"Python {platform.python_version()}, {platform.platform()}\n"
            f"- command: `{cmd}`\n"
            "- env: gymnasium-robotics FrankaKitchen-v1 (mujoco 3.3.7), one env step = 0.08 s sim time\n\n"
            + table
            + "\n\nFast render = shadows, reflections and skybox off, `offsamples = 0` (`KitchenConfig.fast_render=True`,"
            " the default); the default row uses the kitchen model's own visual settings.\n"
        )
        Path(args.write).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
