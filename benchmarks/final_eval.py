#!/usr/bin/env python3
"""Re-evaluate the sample-efficiency benchmark's final agents with more episodes and both action modes.

The benchmark's curve (benchmarks/sample_efficiency.py) scores 5 episodes per point with skills *sampled* from the
policy, so one episode is 0.2 subtasks and single seeds swing by +-0.4 between points. This script takes the
agents it left at the end of training (``<out-dir>/<method>_s<seed>/agent.pt``, 20k env steps), their prior-only
start (a fresh agent: the policy equals the priors) and BC, and scores each over ``--episodes`` evaluation
episodes (the benchmark's evaluation seeds, extended), both sampling (as in the curve) and deterministic (argmax
skill, mean argument: the usual way SAC agents are evaluated; BC is deterministic anyway).

    python benchmarks/final_eval.py --episodes 20 --json benchmarks/results/final_eval.json
    python benchmarks/final_eval.py --episodes 10 --methods extract --task-index 1 --checkpoint C --out-dir O

Options this script does not define go to sample_efficiency.py's parser: give the ones the agents were trained with.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ros2_ws" / "src" / "extract_skills"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv: list[str] | None = None) -> int:
    import sample_efficiency as se

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["extract", "spirl", "bc"], choices=("extract", "spirl", "bc"))
    ap.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "sample_efficiency")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    # every other option is the benchmark's own (--checkpoint, --task-index, --alpha-z, ...): pass those the agents
    # were trained with, and the agents are rebuilt with the same config and evaluated on the same task
    a, benchmark_args = ap.parse_known_args(argv)
    base = se.parse_args(["--threads", str(a.threads), *benchmark_args])
    base.eval_episodes = a.episodes

    import torch

    from extract_skills.core.rl.skill_sac import HybridSkillSAC
    from extract_skills.core.rl.trainer import Learner, run_episode
    from extract_skills.core.skills.encoders import file_sha256

    torch.set_num_threads(a.threads)
    results: dict[str, dict] = {}
    t0 = time.time()
    for method in a.methods:
        if method == "bc":
            vals = [se.run_bc(base, s)["mean_subtasks"][-1] for s in a.seeds]
            results["bc"] = {"deterministic": vals}
            print(f"bc: {vals} ({time.time() - t0:.0f} s)", flush=True)
            continue
        ckpt = base.checkpoint if method == "extract" else base.spirl_checkpoint
        env, bundle = se._env(base, ckpt, spirl=method == "spirl")
        out = {"start_sampled": [], "start_deterministic": [], "final_sampled": [], "final_deterministic": []}
        for s in a.seeds:
            run_dir = a.out_dir / f"{method}_s{s}"
            for stage in ("start", "final"):
                torch.manual_seed(s)
                agent = HybridSkillSAC(bundle.model, bundle.argument_bound, se.agent_config(base))
                learner = Learner(agent, run_dir if stage == "final" else None, seed=s,
                                  skill_checkpoint_sha256=file_sha256(ckpt))
                if stage == "final" and learner.resume() is None:
                    raise SystemExit(f"no agent checkpoint in {run_dir}: run benchmarks/sample_efficiency.py first")
                for det in (False, True):
                    rets = [run_episode(env, learner, seed=10_000_000 + s * 1000 + i, learn=False,
                                        deterministic=det).ret for i in range(a.episodes)]
                    out[f"{stage}_{'deterministic' if det else 'sampled'}"].append(float(np.mean(rets)))
            print(f"{method} s{s}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in out.items())
                  + f" ({time.time() - t0:.0f} s)", flush=True)
        results[method] = out
    print(f"\nFinal agents of the sample-efficiency benchmark, {a.episodes} evaluation episodes per agent "
          f"(mean subtasks of 4; mean +- std over seeds {a.seeds}):\n")
    print("| method | start, sampled | start, deterministic | final, sampled | final, deterministic |")
    print("|---|---:|---:|---:|---:|")
    fmt = lambda v: f"{np.mean(v):.2f} +- {np.std(v):.2f}"  # noqa: E731
    for m, r in results.items():
        if m == "bc":
            print(f"| bc (no env steps) | - | {fmt(r['deterministic'])} | - | {fmt(r['deterministic'])} |")
        else:
            print(f"| {m} | {fmt(r['start_sampled'])} | {fmt(r['start_deterministic'])} | {fmt(r['final_sampled'])} "
                  f"| {fmt(r['final_deterministic'])} |")
    print(f"\n({time.time() - t0:.0f} s)")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"episodes": a.episodes, "seeds": a.seeds, "methods": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
