#!/usr/bin/env python3
"""How far trained skill agents moved from the offline priors, on the observations they trained on.

For each agent directory (``<out-dir>/<method>_s<seed>`` of ``benchmarks/sample_efficiency.py``: ``agent.pt`` and its
``replay/``), averaged over the observations its replay buffer holds: KL(pi(z|s,d) || p(z|s,d)) weighted by pi(d|s), the mean
|policy mean - prior mean| per argument dimension, the policy's and the prior's argument std, and KL(pi(d|s) || p(d|s)).

    python benchmarks/policy_drift.py models/extract_kitchen.pt runs/sample_efficiency/extract_s0 ...
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ros2_ws" / "src" / "extract_skills"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path, help="the skill checkpoint the agents were trained with")
    ap.add_argument("agents", type=Path, nargs="+", help="agent directories (agent.pt + replay/)")
    a = ap.parse_args(argv)

    import torch

    from extract_skills.core.rl.replay_buffer import ReplayBuffer
    from extract_skills.core.rl.skill_sac import HybridSkillSAC, SkillSACConfig, _all_skills
    from extract_skills.core.rl.trainer import read_agent_checkpoint
    from extract_skills.core.skills.checkpoint import load_skill_bundle
    from extract_skills.core.skills.encoders import file_sha256

    bundle = load_skill_bundle(a.checkpoint)
    sha = file_sha256(a.checkpoint)
    print("| agent | alpha_z | transitions | KL_z per skill (nats) | mean shift per dim | policy std | prior std | KL_d (nats) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for d in a.agents:
        state = read_agent_checkpoint(d / "agent.pt", sha)["agent"]
        cfg = SkillSACConfig(**state["config"])
        agent = HybridSkillSAC(bundle.model, bundle.argument_bound, cfg)
        agent.load_training_state(state)
        buf = ReplayBuffer.open(d / "replay", cfg.buffer_capacity, agent.obs_dim, agent.latent_dim)
        with torch.no_grad():
            o = torch.as_tensor(buf.data["obs"][:buf.size])
            div = agent.divergences(o)
            prior_probs = agent.prior_skill.probs(o)
            prior_mean, prior_log_std = _all_skills(agent.prior_argument, o, agent.num_skills)
        p = div["probs"]
        kl_z = float((p * div["kl_z"]).sum(-1).mean())
        shift = float((p[..., None] * (div["mean"] - prior_mean).abs()).sum(1).mean())
        std = float((p[..., None] * div["log_std"].exp()).sum(1).mean())
        pstd = float((prior_probs[..., None] * prior_log_std.exp()).sum(1).mean())
        print(f"| {d} | {cfg.alpha_z:g} | {buf.size} | {kl_z:.2f} | {shift:.3f} | {std:.3f} | {pstd:.3f} | {float(div['kl_d'].mean()):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
