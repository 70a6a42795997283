"""Where a skill decoder's per-step joint-command error sits, on the held-out episodes of its run.

The held-out segments' posterior mean is decoded free-running over the demos' recorded states, as in training,
and the error against the labels is broken down by step in the segment, by the size of the label's jump from the
step before (the scripted controller switching waypoint or gripper), and by joint.

    python benchmarks/decoder_error.py models/extract_kitchen.pt runs/kitchen

The run directory must be the one the checkpoint was trained in (its segments and held-out split).
``--argument-noise 0.3 0.6`` also decodes from the posterior mean plus Gaussian noise of each std (fixed seed): how
far the decoded commands move when the argument is not exactly one the encoder produced, as when a policy explores.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--argument-noise", type=float, nargs="*", default=[])
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    from extract_skills.cli.extract_pipeline import load_training_data
    from extract_skills.core.skills.checkpoint import load_skill_bundle
    from extract_skills.core.skills.skill_model import _tensors, denormalise_actions, split_by_episode

    b = load_skill_bundle(a.checkpoint)
    cfg = b.model_config
    _, val = split_by_episode(load_training_data(a.run_dir, cfg.action_frame)["data"], a.val_fraction, a.seed)
    acts, lens, labels, _, states = _tensors(val, cfg, b.action_low, b.action_high)
    lo, hi = torch.as_tensor(b.action_low), torch.as_tensor(b.action_high)
    mask = torch.arange(acts.shape[1])[None, :] < lens[:, None]  # valid steps, flattened segment by segment

    def joints(normalised: torch.Tensor) -> np.ndarray:
        return denormalise_actions(normalised, lo, hi)[..., :7][mask].numpy().astype(np.float64)

    def decode(z: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return joints(b.model.skill_decoder(z, labels, acts.shape[1], states)[0])

    with torch.no_grad():
        mean, _ = b.model.skill_encoder(acts, labels, lens, states)
    T = np.concatenate([act[:, :7] for act in val.actions]).astype(np.float64)  # the raw labels
    P = decode(mean)
    e = np.abs(P - T).mean(1)
    k = np.concatenate([np.arange(len(act)) for act in val.actions])
    j = np.concatenate([np.r_[0.0, np.abs(np.diff(act[:, :7], axis=0)).max(1)] for act in val.actions])
    print(f"{a.checkpoint}: {len(val.actions)} held-out segments, {len(e)} steps")
    print("| slice | steps | mean abs joint error (rad) | share of the total error |\n|---|---:|---:|---:|")
    print(f"| all | {len(e)} | {e.mean():.4f} | 1.00 |")
    print(f"| a decoder that always says 0 | {len(e)} | {np.abs(T).mean():.4f} | - |")
    for lo_step, hi_step in [(0, 1), (1, 3), (3, 10), (10, 10**6)]:
        s = (k >= lo_step) & (k < hi_step)
        if s.any():
            print(f"| steps {lo_step}-{min(hi_step, k.max() + 1) - 1} of a segment | {s.sum()} | {e[s].mean():.4f} | "
                  f"{e[s].sum() / e.sum():.2f} |")
    q50, q90, q97 = np.quantile(j, [0.5, 0.9, 0.97])
    for name, s in [(f"label jump <= {q50:.3f} (median)", j <= q50), (f"jump {q50:.3f}-{q90:.3f}", (j > q50) & (j <= q90)),
                    (f"jump {q90:.3f}-{q97:.3f}", (j > q90) & (j <= q97)), (f"jump > {q97:.3f} (top 3%)", j > q97)]:
        print(f"| {name} | {s.sum()} | {e[s].mean():.4f} | {e[s].sum() / e.sum():.2f} |")
    print("per joint error:", np.round(np.abs(P - T).mean(0), 4), " bias:", np.round((P - T).mean(0), 4))
    if a.argument_noise:
        target = joints(acts)  # the labels as the model was trained on them (normalised within its bounds)
        gen = torch.Generator().manual_seed(0)
        print("| argument = posterior mean + N(0, s^2), s | mean abs joint error (rad) |\n|---:|---:|")
        print(f"| 0 | {np.abs(P - target).mean():.4f} |")
        for sd in a.argument_noise:
            print(f"| {sd:g} | {np.abs(decode(mean + sd * torch.randn(mean.shape, generator=gen)) - target).mean():.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
