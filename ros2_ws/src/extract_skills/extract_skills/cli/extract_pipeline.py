"""Offline EXTRACT: ``extract {embed,cluster,segment,train,all,train-encoder}``.

Stages (each resumable: skipped when its artifact exists and the hash of its inputs matches; ``--force``
re-runs):

- ``embed``: frames -> encoder embeddings (plus proprio, skill actions, subtask flags, a few thumbnails)
  into ``<run>/embeddings.npz``;
- ``cluster``: MiniBatchKMeans over difference embeddings -> ``<run>/clusters.npz``, ``pca_clusters.png``;
- ``segment``: median filter + segmentation -> ``<run>/segments.json``, ``segmentation_timeline.png``,
  ``cluster_vs_subtask.md``;
- ``train``: skill VAE + priors -> the single checkpoint (``--out``), TensorBoard scalars under
  ``<run>/tb``, ``training_curves.png``;
- ``train-encoder``: the project-default encoder, an R3M-style time-contrastive fine-tune of ResNet-18,
  written in R3M's checkpoint format to ``--encoder-weights``.

Example::

    extract train-encoder --dataset data/kitchen_demos
    extract all --dataset data/kitchen_demos --run-dir runs/extract --out models/extract_kitchen.pt
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

LOG = logging.getLogger("extract")
STAGES = ("embed", "cluster", "segment", "train")
NUM_THUMBNAIL_EPISODES = 12  # episodes whose frames are kept (downscaled) for the pictures
TIMELINE_EPISODES = 3  # of those, drawn in the segmentation timeline
THUMB_PX = 64


# --------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="extract", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("stage", choices=(*STAGES, "all", "train-encoder", "import-encoder", "dagger"),
                   help="stage to run")
    p.add_argument("--dataset", type=Path, default=None,
                   help="dataset directory (episode_XXXXXX.npz); every stage but import-encoder needs it")
    p.add_argument("--run-dir", type=Path, default=Path("runs/extract"), help="artifacts, pictures, logs")
    p.add_argument("--out", type=Path, default=Path("models/extract_kitchen.pt"), help="skill checkpoint")
    p.add_argument("--force", action="store_true", help="re-run stages even if their artifacts are current")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (0: torch default). 1 by default: on a 2-core machine shared with "
                        "other jobs, 2 OpenMP threads ran 3-30x slower than 1 (see benchmarks/RESULTS.md)")
    g = p.add_argument_group("encoder")
    g.add_argument("--encoder", default="r3m_resnet18", help="encoder registry name")
    g.add_argument("--encoder-weights", type=Path, default=None,
                   help="R3M-format weights file (default models/encoders/<encoder>.pt)")
    g.add_argument("--embed-batch-size", type=int, default=64, help="frames per forward pass")
    g.add_argument("--tcn-steps", type=int, default=300, help="train-encoder: optimiser steps")
    g.add_argument("--tcn-image-size", type=int, default=112, help="train-encoder: input side, px")
    g.add_argument("--tcn-batch-episodes", type=int, default=8, help="train-encoder: triples per step")
    g.add_argument("--init-weights", type=Path, default=None,
                   help="train-encoder: start from this encoder file (e.g. written by import-encoder)")
    g.add_argument("--augment", action="store_true",
                   help="train-encoder: trajectory-consistent crop + colour augmentation")
    g.add_argument("--image-size", type=int, default=128,
                   help="import-encoder: input side stored with the weights, px")
    g = p.add_argument_group("skill extraction")
    g.add_argument("--num-skills", type=int, default=8, help="K of K-means")
    g.add_argument("--median-kernel", type=int, default=7, help="label median filter, steps (odd)")
    g.add_argument("--min-segment-len", type=int, default=5, help="steps")
    g.add_argument("--max-segment-len", type=int, default=30, help="steps")
    g = p.add_argument_group("skill learning")
    g.add_argument("--train-steps", type=int, default=8000,
                   help="optimiser steps (held-out joint-command error: 0.050 rad at 2000, 0.033 at 8000)")
    g.add_argument("--batch-size", type=int, default=128, help="segments per step")
    g.add_argument("--latent-dim", type=int, default=5)
    g.add_argument("--hidden-dim", type=int, default=128)
    g.add_argument("--beta", type=float, default=1e-2,
                   help="weight of the per-dim KL against the per-element reconstruction (mean reductions)")
    g.add_argument("--mean-bound", type=float, default=2.0, help="|mean of q(z|a,d)| bound (official: 2)")
    g.add_argument("--label-smoothing", type=float, default=0.1, help="skill-prior cross-entropy")
    g.add_argument("--prior-floor", type=float, default=0.01, help="uniform mixture weight in p(d|s)")
    g.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of whole episodes held out (model selection, prior temperature, report)")
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--state-noise", type=float, default=0.0,
                   help="rad: noise on the closed-loop decoder's joint inputs in training, labels corrected "
                        "(needs --action-frame measured)")
    g.add_argument("--lr-final-fraction", type=float, default=1.0,
                   help="cosine-decay the learning rate to lr * this over the training steps (1: constant)")
    g.add_argument("--progress-threshold", type=float, default=0.9)
    g.add_argument("--open-loop", action="store_true",
                   help="decoder without the measured proprio input (default: closed loop)")
    g.add_argument("--encoder-states", action="store_true",
                   help="skill encoder q(z|a,s,d) also reads the measured proprio of every step (closed loop only)")
    g.add_argument("--pose-features", action="store_true",
                   help="closed-loop decoder also sees the flange pose (Panda forward kinematics of the measured "
                        "joints; the dataset's env id gives its joint offset to the Panda's)")
    g.add_argument("--command-feedback", action="store_true",
                   help="closed-loop decoder also sees the lead of the last joint command over the measured joints "
                        "(the hidden state of an integrating controller; needs --action-frame measured)")
    g = p.add_argument_group("dagger (on-policy decoder rounds; needs a run directory's segments)")
    g.add_argument("--base", type=Path, default=None, help="dagger: skill checkpoint to start from")
    g.add_argument("--dagger-rounds", type=int, default=3, help="dagger: collect + fine-tune rounds")
    g.add_argument("--dagger-steps", type=int, default=2000, help="dagger: fine-tuning steps per round")
    g.add_argument("--dagger-decoder-only", action="store_true",
                   help="dagger: fine-tune only the decoder (posteriors and priors stay the base's)")
    g.add_argument("--dagger-rollouts", type=int, default=1,
                   help="dagger: decoded rollouts per training episode and round: the first from the posterior "
                        "means, the others from arguments sampled from the posteriors")
    g = p.add_argument_group("skill learning (continued)")
    g.add_argument("--action-frame", choices=("skill_start", "measured"), default="skill_start",
                   help="joint actions relative to the joints at the skill's start (errors do not integrate "
                        "over a skill) or to the joints measured at each step")
    return p


# --------------------------------------------------------------------------------------------------
# Stage bookkeeping
# --------------------------------------------------------------------------------------------------
def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dataset_fingerprint(dataset: Path) -> str:
    """Names, sizes and mtimes of the episode files plus dataset.json's content (make-like staleness)."""
    from extract_skills.core.data.dataset import episode_files
    files = episode_files(dataset)
    if not files:
        raise SystemExit(f"no episode_XXXXXX.npz files in {dataset}")
    info = dataset / "dataset.json"
    return _hash([(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files],
                 info.read_text() if info.is_file() else "")


def _stamp_path(run: Path, stage: str) -> Path:
    return run / f"{stage}.stamp.json"


def _read_stamp(run: Path, stage: str) -> str | None:
    p = _stamp_path(run, stage)
    return json.loads(p.read_text())["inputs_hash"] if p.is_file() else None


def _write_stamp(run: Path, stage: str, inputs_hash: str, seconds: float) -> None:
    tmp = _stamp_path(run, stage).with_suffix(".tmp")
    tmp.write_text(json.dumps({"stage": stage, "inputs_hash": inputs_hash, "seconds": round(seconds, 2),
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2))
    os.replace(tmp, _stamp_path(run, stage))


def _run_stage(name: str, args: argparse.Namespace, inputs_hash: str, artifact: Path,
               fn: Callable[[], None]) -> str:
    """Run ``fn`` unless ``artifact`` exists with a stamp for the same inputs; returns the stage hash."""
    if not args.force and artifact.exists() and _read_stamp(args.run_dir, name) == inputs_hash:
        print(f"[{name}] up to date ({artifact}), skipping")
        return inputs_hash
    print(f"[{name}] running")
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    _write_stamp(args.run_dir, name, inputs_hash, dt)
    print(f"[{name}] done in {dt:.1f} s")
    return inputs_hash


def _savez_atomic(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _weights_path(args: argparse.Namespace) -> Path:
    from extract_skills.core.skills.encoders import default_weights_path
    return args.encoder_weights or default_weights_path(args.encoder)


def _extraction_config(args: argparse.Namespace):
    from extract_skills.core.skills.skill_extraction import ExtractionConfig
    return ExtractionConfig(num_skills=args.num_skills, median_kernel=args.median_kernel,
                            min_segment_len=args.min_segment_len, max_segment_len=args.max_segment_len,
                            seed=args.seed)


def _load_embeddings(run: Path, thumbs: bool = True) -> dict[str, Any]:
    """What ``embed`` wrote; ``thumbs=False`` skips the thumbnails (only the pictures need them)."""
    with np.load(run / "embeddings.npz") as z:
        n = int(z["num_episodes"])
        out: dict[str, Any] = {"episode_ids": z["episode_ids"].tolist(), "image_size": int(z["image_size"])}
        for key in ("emb", "proprio", "actions", "subtasks"):
            out[key] = [z[f"{key}_{i}"] for i in range(n)]
        out["thumbs"] = [z[f"thumbs_{i}"] for i in range(min(n, NUM_THUMBNAIL_EPISODES))
                         if thumbs and f"thumbs_{i}" in z.files]
    return out


# --------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------
def stage_embed(args: argparse.Namespace) -> str:
    from tqdm import tqdm

    from extract_skills.core.data.dataset import episode_files, read_episode
    from extract_skills.core.skills.encoders import file_sha256, load_encoder
    weights = _weights_path(args)
    enc = load_encoder(args.encoder, weights)  # fails early, naming the expected path
    h = _hash("embed", dataset_fingerprint(args.dataset), enc.identity.name, file_sha256(weights))
    out = args.run_dir / "embeddings.npz"

    def run() -> None:
        import torch
        files = episode_files(args.dataset)
        arrays: dict[str, np.ndarray] = {}
        ids = []
        with tqdm(desc="embed frames", unit="frame") as bar:
            for i, path in enumerate(files):
                ep = read_episode(path)
                ids.append(int(path.stem.split("_")[1]))
                arrays[f"emb_{i}"] = enc.embed_frames(ep.images, args.embed_batch_size, progress=bar.update)
                arrays[f"proprio_{i}"] = ep.proprio()
                arrays[f"actions_{i}"] = ep.skill_actions()
                arrays[f"subtasks_{i}"] = ep.subtasks_done
                if i < NUM_THUMBNAIL_EPISODES:
                    t = torch.from_numpy(ep.images).permute(0, 3, 1, 2).float()
                    t = torch.nn.functional.interpolate(t, size=(THUMB_PX, THUMB_PX), mode="bilinear",
                                                        antialias=True)
                    arrays[f"thumbs_{i}"] = t.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
        _savez_atomic(out, num_episodes=np.array(len(files)), episode_ids=np.array(ids),
                      image_size=np.array(enc.image_size), encoder_name=np.array(enc.identity.name),
                      encoder_sha256=np.array(enc.identity.sha256), **arrays)

    return _run_stage("embed", args, h, out, run)


def stage_cluster(args: argparse.Namespace, embed_hash: str) -> str:
    from extract_skills.core.skills.skill_extraction import assign_labels, fit_kmeans, step_features
    cfg = _extraction_config(args)
    h = _hash("cluster", embed_hash, cfg.num_skills, cfg.kmeans_batch_size, cfg.kmeans_n_init, cfg.seed)
    out = args.run_dir / "clusters.npz"

    def run() -> None:
        data = _load_embeddings(args.run_dir)
        feats = [step_features(e) for e in data["emb"]]
        allf = np.concatenate(feats)
        centres = fit_kmeans(allf, cfg)
        labels = [assign_labels(f, centres) for f in feats]
        _savez_atomic(out, centres=centres, num_episodes=np.array(len(labels)),
                      **{f"labels_{i}": lab for i, lab in enumerate(labels)})
        plot_pca(allf, np.concatenate(labels), centres, args.run_dir / "pca_clusters.png", args.seed)

    return _run_stage("cluster", args, h, out, run)


def stage_segment(args: argparse.Namespace, cluster_hash: str) -> str:
    from extract_skills.core.skills.skill_extraction import segment_episodes
    cfg = _extraction_config(args)
    h = _hash("segment", cluster_hash, cfg.median_kernel, cfg.min_segment_len, cfg.max_segment_len)
    out = args.run_dir / "segments.json"

    def run() -> None:
        data = _load_embeddings(args.run_dir)
        with np.load(args.run_dir / "clusters.npz") as z:
            raw = [z[f"labels_{i}"] for i in range(int(z["num_episodes"]))]
        smoothed, segments = segment_episodes(raw, cfg, episode_ids=range(len(raw)))
        lengths = np.array([s.length for s in segments])
        doc = {"episode_ids": data["episode_ids"], "config": asdict(cfg),
               "segments": [asdict(s) for s in segments],
               "smoothed_labels": [s.tolist() for s in smoothed]}
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, out)
        print(f"[segment] {len(segments)} segments, length mean {lengths.mean():.1f} "
              f"min {lengths.min()} max {lengths.max()}; per skill: "
              f"{np.bincount([s.label for s in segments], minlength=cfg.num_skills).tolist()}")
        table = cluster_subtask_table(smoothed, data["subtasks"], cfg.num_skills)
        (args.run_dir / "cluster_vs_subtask.md").write_text(table)
        print(table)
        plot_timeline(smoothed, segments, data["thumbs"][:TIMELINE_EPISODES], cfg.num_skills,
                      args.run_dir / "segmentation_timeline.png")
        plot_skill_gallery(segments, data["thumbs"], data["subtasks"], cfg.num_skills,
                           args.run_dir / "skill_gallery.png")

    return _run_stage("segment", args, h, out, run)


def load_training_data(run: Path, action_frame: str = "skill_start") -> dict[str, Any]:
    """Segments of an ``extract`` run as :class:`SkillTrainingData` (obs at each segment's first frame, actions
    in ``action_frame``), with the embedding normalisation, action bounds, K-means centres and encoder identity."""
    from extract_skills.core.data.dataset import segment_labels
    from extract_skills.core.skills.skill_model import SkillTrainingData, compute_action_bounds
    data = _load_embeddings(run, thumbs=False)
    doc = json.loads((run / "segments.json").read_text())
    with np.load(run / "embeddings.npz") as z:
        enc_name, enc_sha = str(z["encoder_name"]), str(z["encoder_sha256"])
    with np.load(run / "clusters.npz") as z:
        centres = z["centres"]
    all_emb = np.concatenate(data["emb"])
    obs_mean = all_emb.mean(0)
    obs_std = np.maximum(all_emb.std(0), 1e-3)  # floor: constant (dead) feature dims stay finite
    segs = doc["segments"]
    actions = [segment_labels(data["actions"][s["episode"]], data["proprio"][s["episode"]], s["start"], s["end"],
                              action_frame) for s in segs]
    obs = np.stack([np.concatenate([(data["emb"][s["episode"]][s["start"]] - obs_mean) / obs_std,
                                    data["proprio"][s["episode"]][s["start"]]]) for s in segs])
    low, high = compute_action_bounds(np.concatenate(actions))
    states = [data["proprio"][s["episode"]][s["start"]:s["end"]] for s in segs]  # before each action
    return {"data": SkillTrainingData(actions, np.array([s["label"] for s in segs]), obs.astype(np.float32),
                                      np.array([s["episode"] for s in segs]), states),
            "obs_mean": obs_mean, "obs_std": obs_std, "action_low": low, "action_high": high, "centres": centres,
            "encoder_name": enc_name, "encoder_sha256": enc_sha, "extraction": doc["config"],
            "image_size": data["image_size"], "num_segments": len(segs)}


def _pose_joint_offset(args: argparse.Namespace) -> tuple[float, ...]:
    """Offset from the dataset's joints to the Panda's, by the dataset's env id (kinematics.py)."""
    from extract_skills.core.data.dataset import read_dataset_info
    from extract_skills.core.skills.kinematics import joint_offset_to_panda
    return joint_offset_to_panda(str(read_dataset_info(args.dataset).get("env_id", "")))


def stage_train(args: argparse.Namespace, segment_hash: str) -> str:
    from extract_skills.core.skills.checkpoint import PROPRIO_DIM
    from extract_skills.core.skills.encoders import embedding_dim
    from extract_skills.core.skills.skill_model import SkillModelConfig
    mcfg = SkillModelConfig(num_skills=args.num_skills, obs_dim=embedding_dim(args.encoder) + PROPRIO_DIM,
                            latent_dim=args.latent_dim, mean_bound=args.mean_bound,
                            label_smoothing=args.label_smoothing, prior_floor=args.prior_floor,
                            hidden_dim=args.hidden_dim, beta=args.beta, lr=args.lr,
                            lr_final_fraction=args.lr_final_fraction, state_noise=args.state_noise,
                            max_segment_len=args.max_segment_len, progress_threshold=args.progress_threshold,
                            closed_loop=not args.open_loop, action_frame=args.action_frame,
                            encoder_states=args.encoder_states, pose_features=args.pose_features,
                            command_feedback=args.command_feedback,
                            pose_joint_offset=_pose_joint_offset(args) if args.pose_features else (0.0,) * 7,
                            batch_size=args.batch_size, train_steps=args.train_steps, seed=args.seed)
    cfg_key = asdict(mcfg)
    if not mcfg.encoder_states:
        del cfg_key["encoder_states"]  # runs from before the option keep their stamps
    if not mcfg.pose_features:
        del cfg_key["pose_features"], cfg_key["pose_joint_offset"]
    if not mcfg.command_feedback:
        del cfg_key["command_feedback"]
    h = _hash("train", segment_hash, cfg_key, args.val_fraction, str(args.out.resolve()))

    def run() -> None:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        from extract_skills.core.skills.checkpoint import save_skill_bundle
        from extract_skills.core.skills.skill_model import evaluate_skill_model, split_by_episode, train_skill_model
        td = load_training_data(args.run_dir, mcfg.action_frame)
        everything, low, high = td["data"], td["action_low"], td["action_high"]
        if everything.obs.shape[1] != mcfg.obs_dim:
            raise SystemExit(f"embeddings have {everything.obs.shape[1] - PROPRIO_DIM} dims, encoder {args.encoder} "
                             f"gives {mcfg.obs_dim - PROPRIO_DIM}; re-run embed")
        cfg = mcfg
        writer = SummaryWriter(str(args.run_dir / "tb"))
        bar = tqdm(total=cfg.train_steps, desc="train skills", unit="step")

        def log(step: int, scalars: dict[str, float]) -> None:
            bar.update(1)
            if step % 10 == 0 or step == cfg.train_steps - 1:
                bar.set_postfix(loss=f"{scalars['total']:.3f}")
                for k, v in scalars.items():
                    writer.add_scalar(f"skill_model/{k}", v, step)

        train, val = split_by_episode(everything, args.val_fraction, args.seed)
        print(f"[train] {len(train.labels)} training segments, {len(val.labels)} held-out segments from "
              f"{len(np.unique(val.episodes))} whole episodes")
        model, history = train_skill_model(train, cfg, low, high, callback=log, val=val)
        bar.close()
        writer.close()
        metrics = {"train": evaluate_skill_model(model, train, low, high),
                   "validation": evaluate_skill_model(model, val, low, high)}
        report = skill_model_report(metrics)
        (args.run_dir / "skill_model_report.md").write_text(report)
        print(report)
        save_skill_bundle(args.out, model, encoder_name=td["encoder_name"], encoder_sha256=td["encoder_sha256"],
                          centres=td["centres"], obs_mean=td["obs_mean"], obs_std=td["obs_std"], action_low=low,
                          action_high=high,
                          config={"extraction": td["extraction"], "dataset": str(args.dataset),
                                  "encoder_image_size": td["image_size"], "num_segments": td["num_segments"],
                                  "validation": metrics["validation"], "train_metrics": metrics["train"],
                                  "validation_episodes": sorted(int(e) for e in np.unique(val.episodes))})
        plot_curves(history, args.run_dir / "training_curves.png")
        print(f"[train] final losses: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in history.items()))
        print(f"[train] wrote {args.out}")

    return _run_stage("train", args, h, args.out, run)


def _episode_segments(run: Path) -> tuple[list[int], dict[int, list[tuple[int, int, int, int]]]]:
    """(dataset file index per embedded episode, episode -> [(training row, start, end, skill)] in order)."""
    doc = json.loads((run / "segments.json").read_text())
    per: dict[int, list[tuple[int, int, int, int]]] = {}
    for row, s in enumerate(doc["segments"]):  # load_training_data keeps this order: row = segment index
        per.setdefault(int(s["episode"]), []).append((row, int(s["start"]), int(s["end"]), int(s["label"])))
    return [int(i) for i in doc["episode_ids"]], per


def chained_completions(sim, dataset: Path, ids: list[int], per: dict, episodes, bundle) -> tuple[int, int]:
    """Subtasks completed when each episode's segments are decoded chained from its start (posterior mean, own
    length), against what the demo itself completed: (decoded, demo)."""
    from extract_skills.core.data.dataset import SUBTASK_NAMES, episode_path, read_episode
    from extract_skills.core.sim.fidelity import replay_posterior
    got = want = 0
    for e in episodes:
        ep = read_episode(episode_path(dataset, ids[e]))
        task = list(ep.meta["task_sequence"])
        demo = {SUBTASK_NAMES[i] for i in np.flatnonzero(ep.subtasks_done.any(0))}
        res = replay_posterior(sim, ep, [(a, b, d) for _, a, b, d in per[e]], bundle)
        got += len(set(res.completed) & set(task))
        want += len(demo & set(task))
    return got, want


def run_dagger(run: Path, dataset: Path, base: Path, out: Path, rounds: int, steps: int, val_fraction: float,
               seed: int = 0, force: bool = False, decoder_only: bool = False,
               rollouts: int = 1) -> list[dict[str, Any]]:
    """DAgger rounds for the closed-loop decoder, starting from the skill checkpoint ``base``.

    Each round drives the kitchen through every training episode's segments with the current decoder
    (:func:`extract_skills.core.sim.onpolicy.collect_onpolicy`), adds the visited states with the demo's commands
    relabelled from there to the aggregate, and fine-tunes the whole model ``steps`` steps on demos + aggregate.
    After every round the held-out episodes are decoded chained from their start; ``out`` gets the round with the
    most held-out subtasks completed (round 0 = ``base``). Resumable: a finished round's checkpoint and data in
    ``run`` are reused if they grew from the same ``base`` (``force``: start over). ``decoder_only``: fine-tune only
    the decoder (the encoder's posteriors and both priors stay the base's). ``rollouts``: decoded runs per
    training episode and round, the first from the posterior means, the others with sampled arguments (seeded by
    ``seed``, the round and the episode). Returns one record per round."""
    import dataclasses
    import shutil

    from tqdm import tqdm

    from extract_skills.core.data.dataset import episode_path, read_episode
    from extract_skills.core.sim.kitchen import KitchenConfig, KitchenSim
    from extract_skills.core.sim.onpolicy import collect_onpolicy
    from extract_skills.core.skills.checkpoint import load_skill_bundle, save_skill_bundle
    from extract_skills.core.skills.skill_model import (SkillTrainingData, concat_training_data,
                                                         evaluate_skill_model, split_by_episode, train_skill_model)
    from extract_skills.core.skills.encoders import file_sha256
    bundle = load_skill_bundle(base)
    base_sha = file_sha256(base)
    # a finished round is reused only if it was made the way this call would make it
    for old in sorted(run.glob("dagger_round*.pt")) + sorted(run.glob("dagger_data_round*.npz")):
        if force:
            old.unlink()
            continue
        if old.suffix != ".pt":
            continue
        made = load_skill_bundle(old).config.get("dagger", {})
        if made.get("base_sha256") != base_sha:
            raise SystemExit(f"{old} grew from another base checkpoint than {base}: pass --force to start over")
        if made.get("rollouts", 1) != rollouts:
            raise SystemExit(f"{old} was collected with --dagger-rollouts {made.get('rollouts', 1)}, not {rollouts}: "
                             f"pass the same, or --force to start over")
    cfg = dataclasses.replace(bundle.model_config, train_steps=steps)
    td = load_training_data(run, cfg.action_frame)
    data, low, high = td["data"], bundle.action_low, bundle.action_high
    train, val = split_by_episode(data, val_fraction, seed)
    val_eps = sorted(int(e) for e in np.unique(val.episodes))
    recorded = bundle.config.get("validation_episodes")
    if recorded is not None and sorted(recorded) != val_eps:
        raise SystemExit(f"{base} was validated on episodes {recorded}, this split holds out {val_eps}: "
                         f"use the run directory and --val-fraction/--seed it was trained with")
    ids, per = _episode_segments(run)
    train_eps = sorted(int(e) for e in np.unique(train.episodes))
    sim = KitchenSim(KitchenConfig(render=False))
    agg_rows: list[int] = []
    agg_states: list[np.ndarray] = []
    agg_targets: list[np.ndarray] = []
    best = (-1, 0, base, bundle.config)
    records: list[dict[str, Any]] = []
    for r in range(rounds + 1):
        ckpt = base if r == 0 else run / f"dagger_round{r}.pt"
        if r > 0 and not ckpt.exists():
            t0 = time.perf_counter()
            drift, done_segs = [], 0
            for e in tqdm(train_eps, desc=f"dagger round {r}: decode training episodes", unit="episode"):
                ep = read_episode(episode_path(dataset, ids[e]))
                for k in range(rollouts):
                    rng = None if k == 0 else np.random.default_rng([seed, r, e, k])
                    got = collect_onpolicy(sim, ep, [(a, b, d) for _, a, b, d in per[e]], bundle, rng=rng)
                    for seg in got:
                        agg_rows.append(per[e][seg.index][0])
                        agg_states.append(seg.states)
                        agg_targets.append(seg.targets)
                        drift.append(seg.drift)
                    done_segs += len(got)
            collect_s = time.perf_counter() - t0
            _savez_atomic(run / f"dagger_data_round{r}.npz", rows=np.array(agg_rows),
                          lengths=np.array([len(s) for s in agg_states]),
                          states=np.concatenate(agg_states), targets=np.concatenate(agg_targets))
            print(f"[dagger] round {r}: {done_segs} of {rollouts} x {len(train.labels)} training segments decoded on-policy in "
                  f"{collect_s:.0f} s (mean drift {np.mean(drift):.3f} rad); aggregate {len(agg_rows)} segments")
            rows = np.array(agg_rows)
            onp = SkillTrainingData([data.actions[i] for i in rows], data.labels[rows], data.obs[rows],
                                    data.episodes[rows], list(agg_states), list(agg_targets))
            t0 = time.perf_counter()
            model, _ = train_skill_model(concat_training_data([train, onp]), cfg, low, high, val=val,
                                         init=bundle.model, decoder_only=decoder_only)
            metrics = {"train": evaluate_skill_model(model, train, low, high),
                       "validation": evaluate_skill_model(model, val, low, high)}
            config = {**bundle.config, "validation": metrics["validation"], "train_metrics": metrics["train"],
                      "dagger": {"round": r, "steps": steps, "aggregate_segments": len(agg_rows), "base": str(base),
                                 "base_sha256": base_sha, "decoder_only": decoder_only, "rollouts": rollouts}}
            save_skill_bundle(ckpt, model, encoder_name=bundle.meta.encoder_name,
                              encoder_sha256=bundle.meta.encoder_sha256, centres=bundle.centres,
                              obs_mean=bundle.obs_mean, obs_std=bundle.obs_std, action_low=low, action_high=high,
                              config=config)
            print(f"[dagger] round {r}: fine-tuned {steps} steps in {time.perf_counter() - t0:.0f} s; held-out "
                  f"joint command error {metrics['validation']['joint_command_error_rad']:.4f} rad")
        elif r > 0:  # resume: the aggregate this round trained on
            with np.load(run / f"dagger_data_round{r}.npz") as z:
                cuts = np.cumsum(z["lengths"])[:-1]
                agg_rows = z["rows"].tolist()
                agg_states = np.split(z["states"], cuts)
                agg_targets = np.split(z["targets"], cuts)
            print(f"[dagger] round {r}: reusing {ckpt}")
        bundle = load_skill_bundle(ckpt)
        got, want = chained_completions(sim, dataset, ids, per, val_eps, bundle)
        records.append({"round": r, "checkpoint": str(ckpt), "heldout_chained": got, "heldout_demo": want,
                        "aggregate_segments": len(agg_rows)})
        print(f"[dagger] round {r}: held-out episodes decoded chained: {got} / {want} subtasks")
        if got > best[0]:
            best = (got, r, ckpt, bundle.config)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.copyfile(best[2], tmp)
    os.replace(tmp, out)
    # the run's report describes the checkpoint that ships (make_models.sh copies it to models/report/)
    chosen = best[3]
    if "train_metrics" in chosen and "validation" in chosen:
        report = skill_model_report({"train": chosen["train_metrics"], "validation": chosen["validation"]})
        report += (f"\nDAgger round {best[1]} of {rounds} (round 0: the base), chosen for the most held-out subtasks "
                   f"decoded chained: {best[0]} of {records[best[1]]['heldout_demo']}.\n")
        (run / "skill_model_report.md").write_text(report)
    print(f"[dagger] {out} <- round {best[1]} ({best[0]} held-out subtasks)")
    return records


def stage_train_encoder(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from extract_skills.core.data.dataset import iter_dataset
    from extract_skills.core.skills.encoders import TCNConfig, train_tcn_encoder
    cfg = TCNConfig(name=args.encoder, image_size=args.tcn_image_size, steps=args.tcn_steps,
                    batch_episodes=args.tcn_batch_episodes, seed=args.seed, augment=args.augment,
                    init_weights=str(args.init_weights) if args.init_weights else None)
    frames = [ep.images for _, ep in iter_dataset(args.dataset)]
    if len(frames) < 2:
        raise SystemExit(f"train-encoder needs >= 2 episodes in {args.dataset}")
    out = _weights_path(args)
    with tqdm(total=cfg.steps, desc="TCN fine-tune", unit="step") as bar:
        def progress(step: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
        path, losses = train_tcn_encoder(frames, cfg, out, progress=progress)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    plot_curves({"tcn_loss": losses}, args.run_dir / "encoder_training_curve.png")
    print(f"[train-encoder] wrote {path} (loss {np.mean(losses[:10]):.3f} -> {np.mean(losses[-10:]):.3f})")


# --------------------------------------------------------------------------------------------------
# Reports and pictures
# --------------------------------------------------------------------------------------------------
def skill_model_report(metrics: dict[str, dict[str, float]]) -> str:
    """Markdown table of the skill model's measures on training and held-out episodes."""
    rows = [("segments", "segments", "{:.0f}"),
            ("free-running reconstruction (normalised MSE, posterior mean)", "recon_free", "{:.4f}"),
            ("joint command error, mean abs (rad)", "joint_command_error_rad", "{:.4f}"),
            ("gripper command error, mean abs (0..1)", "gripper_command_error", "{:.3f}"),
            ("posterior std, mean", "posterior_std_mean", "{:.3f}"),
            ("largest |posterior mean|", "posterior_abs_mean_max", "{:.2f}"),
            ("argument prior KL(q || p) (nats)", "argument_prior_kl", "{:.2f}"),
            ("skill prior accuracy", "prior_accuracy", "{:.3f}"),
            ("skill prior NLL (nats)", "prior_nll", "{:.3f}"),
            ("skill prior ECE (10 bins)", "prior_ece", "{:.3f}"),
            ("smallest prior probability", "prior_min_prob", "{:.4f}"),
            ("prior temperature (fitted on held-out)", "prior_temperature", "{:.2f}")]
    lines = ["Skill model on training vs held-out episodes\n", "| measure | train | held-out |", "|---|---:|---:|"]
    for name, key, fmt in rows:
        lines.append(f"| {name} | {fmt.format(metrics['train'][key])} | {fmt.format(metrics['validation'][key])} |")
    return "\n".join(lines) + "\n"


def next_subtask_per_step(subtasks_done: np.ndarray) -> np.ndarray:
    """(N,) index of the subtask completed next after action step t (-1 when none is left)."""
    done = np.asarray(subtasks_done, bool)
    n = done.shape[0] - 1
    newly = done[1:] & ~done[:-1]  # (N, S): completed by action t
    out = np.full(n, -1, np.int64)
    nxt = -1
    for t in range(n - 1, -1, -1):
        hits = np.flatnonzero(newly[t])
        if hits.size:
            nxt = int(hits[0])
        out[t] = nxt
    return out


def cluster_subtask_table(labels: list[np.ndarray], subtasks: list[np.ndarray], num_skills: int) -> str:
    """Markdown table: rows = skill clusters, columns = the subtask being completed next (step counts)."""
    from extract_skills.core.data.dataset import SUBTASK_NAMES
    names = list(SUBTASK_NAMES) + ["(none)"]
    counts = np.zeros((num_skills, len(names)), np.int64)
    for lab, sub in zip(labels, subtasks):
        nxt = next_subtask_per_step(sub)
        np.add.at(counts, (lab, nxt), 1)  # -1 indexes the "(none)" column
    lines = ["| skill | " + " | ".join(names) + " | total |", "|---" * (len(names) + 2) + "|"]
    for k in range(num_skills):
        lines.append(f"| {k} | " + " | ".join(str(c) for c in counts[k]) + f" | {counts[k].sum()} |")
    purity = counts.max(1).sum() / max(counts.sum(), 1)
    return ("Cluster vs next subtask (steps)\n\n" + "\n".join(lines)
            + f"\n\npurity (share of steps in their cluster's majority subtask): {purity:.3f}\n")


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_pca(features: np.ndarray, labels: np.ndarray, centres: np.ndarray, path: Path, seed: int) -> None:
    from sklearn.decomposition import PCA
    plt = _plt()
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(features), size=min(len(features), 20000), replace=False)
    pca = PCA(n_components=2, random_state=seed).fit(features[idx])
    xy, c = pca.transform(features[idx]), pca.transform(centres)
    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels[idx], cmap="tab10", s=3, alpha=0.6)
    ax.scatter(c[:, 0], c[:, 1], c="k", marker="x", s=60, label="centres")
    ax.set_title("Difference embeddings E(s_t) - E(s_0), PCA")
    ax.legend(*sc.legend_elements(), title="skill", fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_timeline(smoothed: list[np.ndarray], segments: list, thumbs: list[np.ndarray], num_skills: int,
                  path: Path) -> None:
    """Per episode: a coloured label strip and, underneath, the first frame of every segment."""
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    n_eps = len(thumbs)
    fig, axes = plt.subplots(2 * n_eps, 1, figsize=(12, 2.6 * n_eps), squeeze=False)
    for e in range(n_eps):
        segs = [s for s in segments if s.episode == e]
        ax = axes[2 * e, 0]
        ax.imshow(smoothed[e][None], aspect="auto", cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
        for s in segs:
            ax.axvline(s.start - 0.5, color="k", lw=0.8)
        ax.set_yticks([])
        ax.set_title(f"episode {e}: {len(segs)} segments (colour = skill)", fontsize=9)
        ax = axes[2 * e + 1, 0]
        if not segs:
            ax.axis("off")
            continue
        strip = np.concatenate([thumbs[e][s.start] for s in segs], axis=1)
        ax.imshow(strip)
        for j, s in enumerate(segs):
            ax.add_patch(plt.Rectangle((j * THUMB_PX, 0), THUMB_PX - 1, 6, color=cmap(s.label % 10)))
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_skill_gallery(segments: list, thumbs: list[np.ndarray], subtasks: list[np.ndarray], num_skills: int,
                       path: Path, per_skill: int = 6) -> None:
    """One row per skill: example segments as (first frame | last frame) pairs, titled with what the physics
    says that segment completed, so a person can see what each discrete skill does."""
    from extract_skills.core.data.dataset import SUBTASK_NAMES
    plt = _plt()
    fig, axes = plt.subplots(num_skills, per_skill, figsize=(1.9 * per_skill, 1.25 * num_skills), squeeze=False)
    for k in range(num_skills):
        examples = [s for s in segments if s.label == k and s.episode < len(thumbs)]
        step = max(len(examples) // per_skill, 1)
        for j in range(per_skill):
            ax = axes[k, j]
            ax.axis("off")
            if j * step >= len(examples):
                continue
            s = examples[j * step]
            ax.imshow(np.concatenate([thumbs[s.episode][s.start], thumbs[s.episode][s.end]], axis=1))
            done = subtasks[s.episode]
            new = [SUBTASK_NAMES[i] for i in np.flatnonzero(done[s.end] & ~done[s.start])]
            ax.set_title(", ".join(new) if new else "-", fontsize=6)
        axes[k, 0].text(-8, 32, f"skill {k}\n({len([s for s in segments if s.label == k])} segs)",
                        fontsize=7, ha="right", va="center")
    fig.suptitle("Each skill: first | last frame of example segments (title: subtasks that segment completed)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_curves(history: dict[str, list[float]], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(history), figsize=(3.2 * len(history), 2.8), squeeze=False)
    for ax, (k, v) in zip(axes[0], history.items()):
        ax.plot(v, lw=0.8)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step")
        if min(v) > 0:
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads > 0:
        import torch
        torch.set_num_threads(args.threads)
    if args.stage == "import-encoder":
        from extract_skills.core.skills.encoders import import_pretrained
        path = import_pretrained(args.encoder, _weights_path(args), args.image_size)
        print(f"[import-encoder] wrote {path} ({args.encoder}, pretrained weights from its installed package)")
        return 0
    if args.dataset is None or not args.dataset.is_dir():
        print(f"dataset directory not found: {args.dataset}", file=sys.stderr)
        return 2
    args.run_dir.mkdir(parents=True, exist_ok=True)
    if args.stage == "train-encoder":
        stage_train_encoder(args)
        return 0
    if args.stage == "dagger":
        if args.base is None or not args.base.is_file():
            print(f"dagger needs --base, an existing skill checkpoint (got {args.base})", file=sys.stderr)
            return 2
        if args.dagger_rounds < 1 or args.dagger_steps < 1 or args.dagger_rollouts < 1:
            print("--dagger-rounds, --dagger-steps and --dagger-rollouts must be >= 1", file=sys.stderr)
            return 2
        records = run_dagger(args.run_dir, args.dataset, args.base, args.out, args.dagger_rounds, args.dagger_steps,
                             args.val_fraction, args.seed, force=args.force,
                             decoder_only=args.dagger_decoder_only, rollouts=args.dagger_rollouts)
        (args.run_dir / "dagger.json").write_text(json.dumps(records, indent=1))
        return 0
    from extract_skills.core.skills.encoders import EncoderWeightsMissingError
    wanted = STAGES if args.stage == "all" else STAGES[:STAGES.index(args.stage) + 1]
    # earlier stages are always checked (and skipped when current) so a later stage never uses stale inputs
    try:
        h = stage_embed(args)
    except EncoderWeightsMissingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "cluster" in wanted:
        h = stage_cluster(args, h)
    if "segment" in wanted:
        h = stage_segment(args, h)
    if "train" in wanted:
        stage_train(args, h)
    return 0


if __name__ == "__main__":
    sys.exit(main())
