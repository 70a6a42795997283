"""Which vision encoder extracts skills best? Measured on held-out episodes, not on the data K-means saw.

For each encoder file: embed the frames of the training and held-out episodes, fit K-means (K=8) on the
training episodes' difference embeddings E(s_t) - E(s_0) (as ``extract cluster`` does), assign the held-out
steps to the nearest centre, and score the held-out labels against what the physics says happened:
  * purity / NMI against the *set of subtasks completed so far* (the object-state change E(s_t) - E(s_0)
    should encode) and against the *next subtask* being worked on;
  * a linear probe: logistic regression from the difference embedding to each subtask's done flag,
    trained on training episodes, balanced accuracy on held-out episodes (mean over subtasks).
Prints a markdown table; ``--json`` writes the figures.

    python benchmarks/encoder_comparison.py --dataset data/kitchen_demos \\
        --encoder tcn_resnet18=r3m_resnet18:models/encoders/r3m_resnet18.pt \\
        --encoder imagenet_lite0=efficientnet_lite0:runs/enc/efficientnet_lite0_imagenet.pt
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


def set_labels(flags: np.ndarray) -> np.ndarray:
    """(N+1, 7) done flags -> (N,) integer code of the set of subtasks completed by step t+1."""
    return (flags[1:].astype(np.int64) * (1 << np.arange(flags.shape[1]))).sum(1)


def purity(labels: np.ndarray, truth: np.ndarray) -> float:
    total = 0
    for k in np.unique(labels):
        _, counts = np.unique(truth[labels == k], return_counts=True)
        total += counts.max()
    return float(total / len(labels))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--encoder", action="append", required=True,
                    help="label=registry_name:weights_file (repeat); the first is the baseline")
    ap.add_argument("--train-episodes", type=int, default=40)
    ap.add_argument("--heldout-episodes", type=int, default=12, help="the last ones of the dataset")
    ap.add_argument("--num-skills", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, normalized_mutual_info_score
    from sklearn.preprocessing import StandardScaler

    from extract_skills.cli.extract_pipeline import next_subtask_per_step
    from extract_skills.core.data.dataset import episode_files, read_episode
    from extract_skills.core.skills.encoders import load_encoder
    from extract_skills.core.skills.skill_extraction import ExtractionConfig, assign_labels, fit_kmeans, step_features
    torch.set_num_threads(args.threads)

    files = episode_files(args.dataset)
    if len(files) < args.train_episodes + args.heldout_episodes:
        raise SystemExit(f"{args.dataset} has {len(files)} episodes, need {args.train_episodes + args.heldout_episodes}")
    split = {"train": files[:args.train_episodes], "heldout": files[-args.heldout_episodes:]}
    episodes = {k: [read_episode(f) for f in v] for k, v in split.items()}
    truth = {k: {"set": np.concatenate([set_labels(e.subtasks_done) for e in eps]),
                 "next": np.concatenate([next_subtask_per_step(e.subtasks_done) for e in eps]),
                 "flags": np.concatenate([e.subtasks_done[1:] for e in eps])} for k, eps in episodes.items()}
    t_all = time.monotonic()
    results = {}
    for spec in args.encoder:
        label, rest = spec.split("=", 1)
        name, path = rest.split(":", 1)
        t0 = time.monotonic()
        enc = load_encoder(name, path)
        feats = {k: [step_features(enc.embed_frames(e.images, 32)) for e in eps] for k, eps in episodes.items()}
        t_embed = time.monotonic() - t0
        train_x, held_x = np.concatenate(feats["train"]), np.concatenate(feats["heldout"])
        centres = fit_kmeans(train_x, ExtractionConfig(num_skills=args.num_skills))
        lab = assign_labels(held_x, centres)
        h = truth["heldout"]
        scaler = StandardScaler().fit(train_x)
        probe = []
        for j in range(h["flags"].shape[1]):
            y_tr, y_te = truth["train"]["flags"][:, j], h["flags"][:, j]
            if y_tr.all() or not y_tr.any() or y_te.all() or not y_te.any():
                continue  # a subtask never (or always) done in a split says nothing
            clf = LogisticRegression(max_iter=300, C=0.1).fit(scaler.transform(train_x), y_tr)
            probe.append(balanced_accuracy_score(y_te, clf.predict(scaler.transform(held_x))))
        results[label] = {
            "encoder": name, "weights": str(path), "embed_dim": int(enc.embed_dim), "image_size": enc.image_size,
            "purity_set": purity(lab, h["set"]), "nmi_set": float(normalized_mutual_info_score(h["set"], lab)),
            "purity_next": purity(lab, h["next"]), "nmi_next": float(normalized_mutual_info_score(h["next"], lab)),
            "probe_balanced_accuracy": float(np.mean(probe)) if probe else float("nan"),
            "probe_subtasks": len(probe), "embed_s": round(t_embed, 1),
            "frames_per_s": round((len(train_x) + len(held_x) + args.train_episodes + args.heldout_episodes) / max(t_embed, 1e-9), 1),
        }
        print(f"{label}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in results[label].items()), flush=True)
    n_tr, n_he = len(truth["train"]["set"]), len(truth["heldout"]["set"])
    print(f"\nEncoders for skill extraction: K-means K={args.num_skills} fitted on {args.train_episodes} training "
          f"episodes ({n_tr} steps), scored on {args.heldout_episodes} held-out episodes ({n_he} steps); "
          f"{time.strftime('%Y-%m-%d')}, {platform.node()} ({os.cpu_count()} CPUs), {time.monotonic() - t_all:.0f} s\n")
    print("| encoder | purity (done set) | NMI (done set) | purity (next subtask) | NMI (next subtask) "
          "| linear probe (balanced acc.) | embed frames/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, r in results.items():
        print(f"| {label} ({r['encoder']}, {r['image_size']} px) | {r['purity_set']:.3f} | {r['nmi_set']:.3f} | "
              f"{r['purity_next']:.3f} | {r['nmi_next']:.3f} | {r['probe_balanced_accuracy']:.3f} | "
              f"{r['frames_per_s']:.0f} |")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"dataset": str(args.dataset), "train_episodes": args.train_episodes,
                                         "heldout_episodes": args.heldout_episodes, "encoders": results},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
