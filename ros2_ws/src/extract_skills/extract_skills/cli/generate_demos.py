"""Generate scripted Franka Kitchen demonstrations into a per-episode npz dataset.

Example::

    extract-generate-demos --out data/kitchen_demos --episodes 50 --seed 0 --image-size 128
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter

import numpy as np


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="dataset directory (created)")
    p.add_argument("--episodes", type=int, default=50, help="number of episodes")
    p.add_argument("--seed", type=int, default=0, help="base seed; episode i uses seed + i")
    p.add_argument("--image-size", type=int, default=128, help="square image side (px)")
    p.add_argument("--camera", default=None, choices=[None, "left_cap", "right_cap"], help="model camera (default: free camera)")
    p.add_argument("--slow-render", action="store_true", help="use the kitchen's full visual settings (shadows, MSAA)")
    p.add_argument("--min-subtasks", type=int, default=1)
    p.add_argument("--max-subtasks", type=int, default=4)
    p.add_argument("--start-noise", type=float, default=0.08, help="joint noise on the start posture (+- rad)")
    p.add_argument("--only-successful", action="store_true", help="skip episodes where a subtask failed (default: write all; meta says which succeeded)")
    p.add_argument("--resume", action="store_true",
                   help="keep episodes already in --out (episode i always uses seed + i) and generate the rest; "
                        "not with --only-successful")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def success_table(attempts: Counter, successes: Counter) -> str:
    """Markdown table of per-subtask success rates."""
    from extract_skills.core.data.dataset import SUBTASK_NAMES

    lines = ["| subtask | success | attempts | rate |", "|---|---:|---:|---:|"]
    for name in SUBTASK_NAMES:
        n, k = attempts[name], successes[name]
        rate = f"{100.0 * k / n:.0f}%" if n else "-"
        lines.append(f"| {name} | {k} | {n} | {rate} |")
    n, k = sum(attempts.values()), sum(successes.values())
    lines.append(f"| **all** | {k} | {n} | {100.0 * k / max(n, 1):.0f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    if os.environ["MUJOCO_GL"] == "osmesa":
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    from tqdm import tqdm

    from extract_skills.core.data.dataset import write_dataset_info, write_episode
    from extract_skills.core.sim.kitchen import ENV_ID, KitchenConfig, KitchenSim
    from extract_skills.core.sim.scripted_demos import (
        DemoConfig,
        ScriptedDemo,
        heldout_task_sequences,
        sample_task_sequence,
    )

    if args.episodes < 1:
        print("--episodes must be >= 1", file=sys.stderr)
        return 2
    if args.resume and args.only_successful:
        print("--resume needs one file per seed: it cannot be combined with --only-successful", file=sys.stderr)
        return 2
    try:
        kcfg = KitchenConfig(image_size=args.image_size, fast_render=not args.slow_render, camera=args.camera)
        dcfg = DemoConfig(start_noise=args.start_noise, min_subtasks=args.min_subtasks, max_subtasks=args.max_subtasks)
    except ValueError as exc:
        print(f"invalid arguments: {exc}", file=sys.stderr)
        return 2
    sim = KitchenSim(kcfg)
    demo = ScriptedDemo(sim, dcfg)
    heldout = heldout_task_sequences(dcfg.heldout_count)
    info = {
        "env_id": ENV_ID,
        "image_size": kcfg.image_size,
        "dt": sim.dt,
        "render": sim.render_settings,
        "source": "scripted_sim",
        "heldout_task_sequences": [list(h) for h in heldout],
        "generator": {"seed": args.seed, "episodes": args.episodes, "demo_config": dcfg.__dict__},
    }
    write_dataset_info(args.out, info)
    attempts: Counter = Counter()
    successes: Counter = Counter()
    written, full_success, steps = 0, 0, 0
    t0 = time.monotonic()
    bar = tqdm(range(args.episodes), desc="episodes", unit="ep", disable=args.no_progress)
    from extract_skills.core.data.dataset import episode_path, read_episode
    for i in bar:
        seed = args.seed + i
        if args.resume and episode_path(args.out, i).is_file():
            try:
                episode = read_episode(episode_path(args.out, i))
            except (ValueError, OSError) as exc:  # writes are atomic, but say so rather than crash
                print(f"re-generating unreadable {episode_path(args.out, i)}: {exc}", file=sys.stderr)
            else:
                if episode.meta.get("seed") == seed and episode.commands is not None:
                    written += 1
                    full_success += int(episode.meta["success"])
                    steps += episode.num_steps
                    for name, ok in episode.meta["subtask_success"].items():
                        attempts[name] += 1
                        successes[name] += int(ok)
                    continue
        seq = sample_task_sequence(np.random.default_rng(seed), dcfg, heldout)
        episode, results = demo.run_episode(seq, seed=seed)
        for name, ok in results.items():
            attempts[name] += 1
            successes[name] += int(ok)
        full_success += int(episode.meta["success"])
        steps += episode.num_steps
        if episode.meta["success"] or not args.only_successful:
            write_episode(args.out, written, episode)
            written += 1
        bar.set_postfix(written=written, ok=f"{full_success}/{i + 1}")
    elapsed = time.monotonic() - t0
    info["stats"] = {
        "episodes_attempted": args.episodes,
        "episodes_written": written,
        "episodes_fully_successful": full_success,
        "steps": steps,
        "seconds": round(elapsed, 1),
        "subtask_attempts": dict(attempts),
        "subtask_successes": dict(successes),
    }
    write_dataset_info(args.out, info)
    sim.close()
    print(success_table(attempts, successes))
    print(
        f"\n{written} episodes written to {args.out} ({full_success}/{args.episodes} fully successful, "
        f"{steps} steps, {elapsed:.0f} s, {60.0 * args.episodes / max(elapsed, 1e-9):.1f} demos/min)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
