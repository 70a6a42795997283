"""Offline EXTRACT pipeline benchmark (CPU).

Measures, in one run:
1. frames/s embedded batched vs one by one (same encoder, same frames), and the ratio;
2. MiniBatchKMeans (K = 8, the pipeline's settings) time on random 512-D embeddings (100k, 1M rows);
3. the full pipeline (``extract train-encoder`` + ``extract all`` with default budgets) on ~10k frames:
   a synthetic dataset (moving coloured blocks, 128 px) unless ``--dataset`` names a real one.

Prints a markdown table (and writes it with ``--out``). Run from the repository root::

    .venv/bin/python benchmarks/offline_pipeline.py (prints the table; copy it into benchmarks/RESULTS.md)
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ros2_ws" / "src" / "extract_skills"))

from extract_skills.cli.extract_pipeline import main as extract_main  # noqa: E402
from extract_skills.core.data.dataset import EpisodeData, write_dataset_info, write_episode  # noqa: E402
from extract_skills.core.skills.encoders import build_trunk, load_encoder, save_r3m_checkpoint  # noqa: E402
from extract_skills.core.skills.skill_extraction import ExtractionConfig, fit_kmeans  # noqa: E402


def synthetic_episode(rng: np.random.Generator, n_steps: int, px: int) -> EpisodeData:
    """Blocks that move in phases (one per 'subtask'), joints that move with them, subtask flags."""
    n1 = n_steps + 1
    images = np.zeros((n1, px, px, 3), np.uint8) + rng.integers(0, 50, 3, dtype=np.uint8)
    qpos = np.zeros((n1, 9))
    qpos[:, 7:] = 0.04
    done = np.zeros((n1, 7), bool)
    order = rng.permutation(7)[:4]
    bounds = np.linspace(0, n1, 5).astype(int)
    s = px // 8
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        sub = order[k]
        colour = np.array([(sub * 97) % 256, (sub * 53 + 80) % 256, (sub * 29 + 160) % 256], np.uint8)
        for t in range(a, b):
            f = (t - a) / max(b - a - 1, 1)
            x = int(s + f * (px - 3 * s))
            y = x if sub % 2 else s * (1 + sub % 6)
            images[t:, y:y + s, x:x + s] = colour if t == b - 1 else images[t:, y:y + s, x:x + s]
            images[t, y:y + s, x:x + s] = colour
            if t > 0:
                qpos[t, :7] = qpos[t - 1, :7]
                qpos[t, sub] += 0.01  # rad per step on the subtask's joint
        done[b:, sub] = True
    images = np.clip(images.astype(np.int16) + rng.integers(-6, 7, images.shape), 0, 255).astype(np.uint8)
    return EpisodeData(images=images, qpos=qpos, qvel=np.zeros((n1, 9)), subtasks_done=done,
                       env_actions=np.zeros((n_steps, 9), np.float32), stamps=np.arange(n1) * 0.08,
                       meta={"source": "benchmark-synthetic"})


def bench_embedding(tmp: Path, n_frames: int, image_size: int, px: int) -> tuple[float, float]:
    save_r3m_checkpoint(build_trunk("r3m_resnet18"), tmp / "enc.pt", image_size=image_size)
    enc = load_encoder("r3m_resnet18", tmp / "enc.pt")
    frames = np.random.default_rng(0).integers(0, 256, (n_frames, px, px, 3), dtype=np.uint8)
    enc.embed_frames(frames[:8], 8)  # warm-up
    t0 = time.perf_counter()
    enc.embed_frames(frames, 64)
    batched = n_frames / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for f in frames:
        enc.embed_frames(f[None], 1)
    single = n_frames / (time.perf_counter() - t0)
    return batched, single


def bench_kmeans(n: int, dim: int = 512) -> float:
    x = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
    t0 = time.perf_counter()
    fit_kmeans(x, ExtractionConfig())
    return time.perf_counter() - t0


def bench_pipeline(tmp: Path, dataset: Path | None, n_frames: int, px: int) -> dict[str, float]:
    times: dict[str, float] = {}
    if dataset is None:
        dataset = tmp / "demos"
        rng = np.random.default_rng(0)
        steps = 250
        t0 = time.perf_counter()
        for i in range(max(1, round(n_frames / (steps + 1)))):
            write_episode(dataset, i, synthetic_episode(rng, steps, px))
        write_dataset_info(dataset, {"env_id": "benchmark-synthetic", "image_size": px, "dt": 0.08})
        times["(write synthetic dataset)"] = time.perf_counter() - t0
    common = ["--dataset", str(dataset), "--run-dir", str(tmp / "run"), "--out", str(tmp / "extract.pt"),
              "--encoder-weights", str(tmp / "tcn_encoder.pt")]
    t0 = time.perf_counter()
    extract_main(["train-encoder", *common])
    times["train-encoder (TCN, 300 steps, 112 px)"] = time.perf_counter() - t0
    t_all = time.perf_counter()
    extract_main(["all", *common])
    times["all (embed+cluster+segment+train 2000 steps)"] = time.perf_counter() - t_all
    import json
    for stage in ("embed", "cluster", "segment", "train"):
        times[f"  stage {stage}"] = json.loads((tmp / "run" / f"{stage}.stamp.json").read_text())["seconds"]
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--embed-frames", type=int, default=256)
    p.add_argument("--kmeans-sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--pipeline-frames", type=int, default=10_000)
    p.add_argument("--px", type=int, default=128, help="dataset image side, px")
    p.add_argument("--dataset", type=Path, default=None, help="real dataset instead of synthetic frames")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    import torch
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for threads, size in ((2, 112), (1, 112), (1, 224)):
            torch.set_num_threads(threads)
            b, s = bench_embedding(tmp, args.embed_frames, size, args.px)
            tag = f"r3m_resnet18 @{size}px, {threads} thread(s)"
            rows.append((f"embed {tag}, batched (64)", f"{b:.1f} frames/s"))
            rows.append((f"embed {tag}, one by one", f"{s:.1f} frames/s"))
            rows.append((f"embed {tag}: speed-up batched / one by one", f"{b / s:.2f}x"))
        torch.set_num_threads(1)  # the CLI default (--threads 1)
        for n in args.kmeans_sizes:
            rows.append((f"MiniBatchKMeans K=8, {n:,} x 512", f"{bench_kmeans(n):.1f} s"))
        if args.pipeline_frames > 0:
            t = bench_pipeline(tmp, args.dataset, args.pipeline_frames, args.px)
            for k, v in t.items():
                rows.append((f"pipeline {args.pipeline_frames:,} frames: {k}", f"{v:.1f} s"))
            total = t["train-encoder (TCN, 300 steps, 112 px)"] + t["all (embed+cluster+segment+train 2000 steps)"]
            rows.append((f"pipeline {args.pipeline_frames:,} frames -> trained model, total (target < 900 s)",
                         f"{total:.1f} s ({total / 60:.1f} min)"))
        shutil.rmtree(tmp, ignore_errors=True)
    header = (f"# Offline pipeline benchmark\n\n- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
              f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
              f"torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}\n"
              f"- load average at end: {os.getloadavg()[0]:.2f} (other jobs share these cores)\n"
              f"- command: `.venv/bin/python benchmarks/offline_pipeline.py {' '.join(sys.argv[1:])}`\n\n")
    table = "| measurement | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n"
    print(header + table)
    if args.out:
        args.out.write_text(header + table)


if __name__ == "__main__":
    main()
