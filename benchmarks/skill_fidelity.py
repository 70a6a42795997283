"""Skill fidelity: do skills, decoded and executed, do what unseen demonstrations did?

On freshly generated scripted demos (seeds never used for training data; held-out task orders included),
from each demo's start state, counts the subtasks of its task that the *physics* reports complete when
the kitchen is driven by
  (a) ``env``: the demo's recorded env actions, open loop;
  (b) ``labels``: its skill-action labels through the skill executor's arm path (safety function -> arm);
  (c) ``posterior``: each segment (labels from the checkpoint's K-means centres on the shipped encoder's
      embeddings, smoothed and cut as in training) decoded from its posterior mean, with its own length;
  (d) ``prior``: closed loop, argmax p(d|s) and mean p(z|s,d), one decision per skill from a fresh frame.
To show what limits (c) and (d), it also measures how far the decoded joint targets are from the labels
(mean absolute error, rad) and replays the labels per segment with every segment's joint targets shifted by
a random offset of ``--offsets`` rad (std), i.e. a decoder that is off by that much.
Prints a markdown table and writes the figures as JSON (``--json``).

    python benchmarks/skill_fidelity.py                      # 8 episodes, about 10 min on 2 cores
    python benchmarks/skill_fidelity.py --quick              # CI smoke: 1 short episode
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

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
METHODS = ("env", "labels", "posterior", "prior")


def episode_segments(episode, encoder, bundle) -> list[tuple[int, int, int]]:
    """Skill segments of an unseen episode, cut exactly as the training data was."""
    from extract_skills.core.skills.skill_extraction import ExtractionConfig, label_episodes, segment_episodes
    ex = bundle.config["extraction"]
    cfg = ExtractionConfig(num_skills=bundle.num_skills, median_kernel=ex["median_kernel"],
                           min_segment_len=ex["min_segment_len"], max_segment_len=ex["max_segment_len"])
    raw = label_episodes([encoder.embed_frames(episode.images, 32)], bundle.centres)
    _, segs = segment_episodes(raw, cfg)
    return [(s.start, s.end, s.label) for s in segs]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "extract_kitchen.pt")
    ap.add_argument("--episodes", type=int, default=8, help="unseen demos (half on held-out task orders)")
    ap.add_argument("--seed", type=int, default=900_000, help="first demo seed (training data uses < 100000)")
    ap.add_argument("--quick", action="store_true", help="1 single-subtask episode (smoke test)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--offsets", type=float, nargs="*", default=[0.01, 0.03, 0.05],
                    help="std (rad) of the per-segment target offsets for the precision rows")
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    from extract_skills.core.data.dataset import segment_labels
    from extract_skills.core.sim.fidelity import (posterior_per_segment, replay_env_actions, replay_labels,
                                                  replay_perturbed_labels, replay_posterior, run_prior)
    from extract_skills.core.sim.kitchen import KitchenConfig, KitchenSim
    from extract_skills.core.sim.scripted_demos import (DemoConfig, ScriptedDemo, heldout_task_sequences,
                                                        sample_task_sequence)
    from extract_skills.core.skills.deployment import load_deployment_bundle, load_deployment_encoder

    bundle = load_deployment_bundle(args.checkpoint)
    encoder = load_deployment_encoder(args.checkpoint, bundle)
    sim = KitchenSim(KitchenConfig(image_size=128))  # demos and the prior's frames: the camera the data used
    physics = KitchenSim(KitchenConfig(render=False))  # open-loop replays need no images
    demo = ScriptedDemo(sim)
    heldout = heldout_task_sequences(3)
    n_eps = 1 if args.quick else args.episodes
    t0 = time.monotonic()
    offset_keys = [f"labels_offset_{o:g}" for o in ([] if args.quick else args.offsets)]
    rows, totals = [], {m: 0 for m in ("demo", *METHODS, *offset_keys)}
    per_segment = [0, 0]  # decoded from the demo's state at the segment start: (completed, segments with one)
    per_segment_by_subtask: dict[str, list[int]] = {}
    target_err = []  # per segment: mean |decoded joint target - label| (rad), decoded from the posterior mean
    rng = np.random.default_rng(args.seed)
    subtasks_total = 0
    for i in range(n_eps):
        seed = args.seed + i
        if args.quick:
            seq: tuple[str, ...] = ("slide cabinet",)
        elif i % 2 == 0:
            seq = heldout[(i // 2) % len(heldout)]
        else:
            cfg = DemoConfig(min_subtasks=4, max_subtasks=4)
            seq = sample_task_sequence(np.random.default_rng(seed), cfg, heldout)
        ep, results = demo.run_episode(seq, seed=seed)
        segs = episode_segments(ep, encoder, bundle)
        done = {"demo": [s for s, ok in results.items() if ok],
                "env": replay_env_actions(physics, ep).completed, "labels": replay_labels(physics, ep).completed}
        got = {k: len(v) for k, v in done.items()}
        labels, proprio = ep.skill_actions(), ep.proprio()
        for start, end, d in segs:
            lab = segment_labels(labels, proprio, start, end, bundle.action_frame)
            z, _ = bundle.posterior(lab, d, proprio[start:end])
            k = {"t": start, "prev": None}

            def demo_state():  # the demo's own states: the decoder's error alone, not the drift it causes
                t = min(k["t"], end)
                k["t"] += 1
                return proprio[t]

            def own_lead():  # after demo_state; as the executor measures it: own last target - the joints now
                if k["prev"] is None:
                    return np.zeros(7)
                now, before = min(k["t"] - 1, end), min(k["t"] - 2, end)
                return proprio[before, :7] + k["prev"][:7] - proprio[now, :7]
            dec = []
            for a, _ in bundle.rollout(d, z, proprio_fn=demo_state, lead_fn=own_lead):
                k["prev"] = np.asarray(a, np.float64)
                dec.append(a)
            dec = np.stack(dec)
            n = min(len(dec), len(lab))
            target_err.append(float(np.abs(dec[:n, :7] - lab[:n, :7]).mean()))
        for o, key in zip(args.offsets, offset_keys):
            got[key] = len(replay_perturbed_labels(physics, ep, segs, o, rng).completed)
        hit, tot = posterior_per_segment(physics, ep, segs, bundle, by_subtask=per_segment_by_subtask)
        per_segment[0] += hit
        per_segment[1] += tot
        post = replay_posterior(physics, ep, segs, bundle)
        done["posterior"] = post.completed
        prior = run_prior(sim, ep, bundle, encoder)
        done["prior"] = prior.completed
        got.update({k: len(v) for k, v in done.items()})
        subtasks_total += len(seq)
        for k, v in got.items():
            totals[k] += v
        rows.append({"seed": seed, "task": list(seq), "heldout_task": tuple(seq) in heldout, "steps": ep.num_steps,
                     "segments": len(segs), "posterior_aborted": len(post.aborted), "prior_skills": prior.skills,
                     **got, "completed": done})
        print(f"[{i + 1}/{n_eps}] seed {seed} {' -> '.join(seq)}: " + ", ".join(f"{k} {v}" for k, v in got.items())
              + f" ({time.monotonic() - t0:.0f} s)", flush=True)
    sim.close()
    physics.close()
    elapsed = time.monotonic() - t0

    print(f"\nSkill fidelity, {n_eps} unseen episodes ({subtasks_total} subtasks), checkpoint {args.checkpoint.name}, "
          f"{time.strftime('%Y-%m-%d')}, {platform.node()} ({os.cpu_count()} CPUs), {elapsed:.0f} s\n")
    print("| replayed from the same start | subtasks completed | share of env replay |")
    print("|---|---:|---:|")
    names = {"demo": "the scripted demo itself", "env": "(a) recorded env actions, open loop",
             "labels": "(b) skill-action labels through the executor", "posterior":
             "(c) segments decoded from the posterior mean", "prior": "(d) prior only, closed loop"}
    for o, key in zip(args.offsets, offset_keys):
        names[key] = f"labels per segment, targets offset by N(0, {o:g} rad) per segment"
    for k in ("demo", *METHODS, *offset_keys):
        share = totals[k] / max(totals["env"], 1)
        print(f"| {names[k]} | {totals[k]} / {subtasks_total} | {share:.2f} |")
    print(f"| (c') each segment that completed a subtask in the demo, decoded from the demo's state at its start "
          f"(not chained) | {per_segment[0]} / {per_segment[1]} | - |")
    # where the decoded rows lose subtasks: per subtask, of the episodes whose task holds it
    # (completed lists hold only the task's own subtasks: the kitchen counts no others)
    by_subtask: dict[str, dict[str, int]] = {}
    for name in {n for row in rows for n in row["task"]}:
        tally = {"tasks": sum(name in row["task"] for row in rows)}
        tally.update({m: sum(name in row["completed"][m] for row in rows) for m in ("demo", *METHODS)})
        if name in per_segment_by_subtask:
            tally["per_segment"], tally["per_segment_of"] = per_segment_by_subtask[name]
        by_subtask[name] = tally
    print("\n| subtask | in tasks | demo | (a) env | (b) labels | (c) posterior | (d) prior | (c') per segment |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in sorted(by_subtask):
        t = by_subtask[name]
        seg = f"{t['per_segment']} / {t['per_segment_of']}" if "per_segment" in t else "-"
        print(f"| {name} | {t['tasks']} | " + " | ".join(str(t[m]) for m in ("demo", *METHODS)) + f" | {seg} |")
    err = float(np.mean(target_err)) if target_err else float("nan")
    print(f"\nPosterior-decoded joint targets vs the labels (demo states fed to the decoder): mean abs error "
          f"{err:.3f} rad over {len(target_err)} segments (median per segment "
          f"{float(np.median(target_err)) if target_err else float('nan'):.3f}).")
    if args.json is not None:
        out = {"episodes": n_eps, "subtasks_total": subtasks_total, **{k: totals[k] for k in METHODS},
               "labels_with_offsets": {k: totals[k] for k in offset_keys}, "decoded_target_error_rad": err,
               "posterior_per_segment": {"completed": per_segment[0], "segments": per_segment[1]},
               "demo": totals["demo"], "per_subtask": by_subtask, "per_episode": rows, "checkpoint": str(args.checkpoint.name),
               "date": time.strftime("%Y-%m-%d"), "seconds": round(elapsed, 1)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
