"""How much demonstration data does the skill model need? Held-out metrics vs number of training episodes.

Reuses an ``extract`` run directory (embeddings, clusters, segments of the full dataset), holds out a fixed
set of whole episodes, and trains the skill model (same configuration as ``extract train``) on nested
subsets of the remaining episodes. Prints one row per subset size: held-out free-running reconstruction,
joint-command error, argument-prior KL, skill-prior accuracy, NLL and ECE.

    python benchmarks/data_scaling.py --run-dir runs/kitchen --sizes 25 50 100 200
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, required=True, help="an `extract all` run directory")
    ap.add_argument("--sizes", type=int, nargs="+", required=True, help="training episodes per row")
    ap.add_argument("--heldout", type=int, default=30, help="held-out episodes (fixed across rows)")
    ap.add_argument("--train-steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch
    from extract_skills.cli.extract_pipeline import load_training_data
    from extract_skills.core.skills.skill_model import SkillModelConfig, evaluate_skill_model, train_skill_model
    torch.set_num_threads(args.threads)

    td = load_training_data(args.run_dir, "skill_start")
    data, low, high = td["data"], td["action_low"], td["action_high"]
    eps = np.random.default_rng(args.seed).permutation(np.unique(data.episodes))
    heldout, pool = eps[:args.heldout], eps[args.heldout:]
    if max(args.sizes) > len(pool):
        raise SystemExit(f"only {len(pool)} episodes besides the {args.heldout} held out; sizes {args.sizes}")
    val = data.subset(np.flatnonzero(np.isin(data.episodes, heldout)))
    cfg = SkillModelConfig(num_skills=int(data.labels.max()) + 1, obs_dim=data.obs.shape[1],
                           max_segment_len=int(td["extraction"]["max_segment_len"]), closed_loop=True,
                           action_frame="skill_start",
                           train_steps=args.train_steps, seed=args.seed)
    rows = []
    t_all = time.monotonic()
    for n in sorted(args.sizes):
        train = data.subset(np.flatnonzero(np.isin(data.episodes, pool[:n])))  # nested: n grows by adding
        t0 = time.monotonic()
        model, _ = train_skill_model(train, cfg, low, high, val=val)
        m = evaluate_skill_model(model, val, low, high)
        rows.append({**m, "episodes": n, "segments": len(train.labels), "seconds": round(time.monotonic() - t0, 1)})
        print(f"{n} episodes: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                            for k, v in rows[-1].items()), flush=True)
    print(f"\nSkill model vs training data: {args.heldout} fixed held-out episodes ({len(val.labels)} segments), "
          f"{args.train_steps} steps per row; {time.strftime('%Y-%m-%d')}, {platform.node()} "
          f"({os.cpu_count()} CPUs), {time.monotonic() - t_all:.0f} s\n")
    print("| training episodes | segments | free-running recon | joint cmd error (rad) | gripper cmd error "
          "| arg-prior KL | prior acc. | prior NLL | prior ECE |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['episodes']} | {r['segments']} | {r['recon_free']:.4f} | {r['joint_command_error_rad']:.4f} | "
              f"{r['gripper_command_error']:.3f} | {r['argument_prior_kl']:.2f} | {r['prior_accuracy']:.3f} | "
              f"{r['prior_nll']:.3f} | {r['prior_ece']:.3f} |")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"run_dir": str(args.run_dir), "heldout": args.heldout, "rows": rows},
                                        indent=2) + "\n")
    return 0

if __name__ == "__main__":
    sys.exit(main())
