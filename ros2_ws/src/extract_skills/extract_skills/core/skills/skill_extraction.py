"""EXTRACT phase 1: discrete skills from visual difference embeddings.

Per episode, the difference embeddings E(s_t) - E(s_0) describe how far the scene has moved from its start;
K-means over all of them gives K high-level behaviours (paper: R3M + K = 8). Per-step labels are smoothed
with a median filter and cut into contiguous same-label segments whose length lies in
[min_segment_len, max_segment_len]; every action step of an episode lies in exactly one segment.

Step convention: an episode has N+1 observations and N actions. Action step t (observation t -> t+1) gets
the label of the difference embedding at observation t+1, i.e. the change the action produced; using
observation t would give step 0 the all-zero difference E(s_0) - E(s_0) in every episode.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from sklearn.cluster import MiniBatchKMeans

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractionConfig:
    """Skill-extraction parameters (paper: K-means, K = 8)."""

    num_skills: int = 8  # K, number of K-means clusters = discrete skills (1: SPiRL-style, length-only cuts)
    median_kernel: int = 7  # steps, odd; median filter over per-step labels
    min_segment_len: int = 5  # steps (x 0.08 s in the kitchen); shorter runs merge into a neighbour
    max_segment_len: int = 30  # steps; longer runs split into near-equal pieces
    kmeans_batch_size: int = 4096  # MiniBatchKMeans batch size
    kmeans_n_init: int = 3  # MiniBatchKMeans restarts
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_skills < 1:
            raise ValueError(f"num_skills must be >= 1, got {self.num_skills}")
        if self.median_kernel < 1 or self.median_kernel % 2 == 0:
            raise ValueError(f"median_kernel must be a positive odd number, got {self.median_kernel}")
        if self.min_segment_len < 1:
            raise ValueError(f"min_segment_len must be >= 1, got {self.min_segment_len}")
        if self.max_segment_len < 2 * self.min_segment_len:
            # splitting a run longer than max into ceil(L/max) near-equal pieces only keeps every piece
            # >= min when max >= 2 * min
            raise ValueError(f"max_segment_len ({self.max_segment_len}) must be >= 2 * min_segment_len "
                             f"({self.min_segment_len})")
        if self.kmeans_batch_size < 1 or self.kmeans_n_init < 1:
            raise ValueError("kmeans_batch_size and kmeans_n_init must be >= 1")


@dataclass(frozen=True)
class Segment:
    """Action steps [start, end) of one episode; uses observations start..end."""

    episode: int
    start: int
    end: int
    label: int

    @property
    def length(self) -> int:
        return self.end - self.start


def difference_embeddings(embeddings: np.ndarray) -> np.ndarray:
    """E(s_t) - E(s_0) for one episode's (N+1, D) embeddings."""
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] < 1:
        raise ValueError(f"expected (N+1, D) embeddings, got {emb.shape}")
    return emb - emb[:1]


def step_features(embeddings: np.ndarray) -> np.ndarray:
    """(N, D) per-action-step features: the difference embedding after each action (see module doc)."""
    return difference_embeddings(embeddings)[1:]


def fit_kmeans(features: np.ndarray, config: ExtractionConfig) -> np.ndarray:
    """MiniBatchKMeans over (M, D) features; returns float32 centres (K, D)."""
    x = np.asarray(features, dtype=np.float32)
    if x.shape[0] < config.num_skills:
        raise ValueError(f"need at least K={config.num_skills} feature vectors, got {x.shape[0]}")
    km = MiniBatchKMeans(n_clusters=config.num_skills, batch_size=config.kmeans_batch_size,
                         n_init=config.kmeans_n_init, random_state=config.seed)
    km.fit(x)
    return km.cluster_centers_.astype(np.float32)


def assign_labels(features: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Nearest-centre label per row (int64)."""
    x = np.asarray(features, dtype=np.float32)
    c = np.asarray(centres, dtype=np.float32)
    d2 = (x ** 2).sum(1, keepdims=True) - 2.0 * x @ c.T + (c ** 2).sum(1)[None]
    return d2.argmin(1).astype(np.int64)


def median_filter_labels(labels: np.ndarray, kernel: int) -> np.ndarray:
    """Sliding median of integer labels with edge replication.

    Unlike ``scipy.signal.medfilt`` (zero padding), the ends are not pulled toward label 0. The median of an
    odd window is always one of its values, so the output only contains labels present in the input.
    """
    lab = np.asarray(labels, dtype=np.int64)
    if kernel <= 1 or lab.size == 0:
        return lab.copy()
    half = kernel // 2
    padded = np.pad(lab, half, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel)
    return np.median(windows, axis=1).astype(np.int64)


def _runs(labels: np.ndarray) -> list[list[int]]:
    """[[start, end, label], ...] contiguous same-label runs."""
    runs: list[list[int]] = []
    for t, lab in enumerate(labels.tolist()):
        if runs and runs[-1][2] == lab:
            runs[-1][1] = t + 1
        else:
            runs.append([t, t + 1, lab])
    return runs


def segment_labels(labels: np.ndarray, min_len: int, max_len: int) -> list[tuple[int, int, int]]:
    """Cut a label sequence into (start, end, label) segments covering every step exactly once.

    1. contiguous same-label runs; 2. repeatedly merge the shortest run below ``min_len`` into a neighbour
    (the longer one), taking the neighbour's label, and coalesce equal-label neighbours; 3. split runs above ``max_len`` into ceil(L / max_len)
    near-equal pieces. An episode shorter than ``min_len`` yields one short segment.
    """
    lab = np.asarray(labels, dtype=np.int64)
    if lab.size == 0:
        return []
    runs = _runs(lab)
    while len(runs) > 1:
        lengths = [r[1] - r[0] for r in runs]
        i = int(np.argmin(lengths))
        if lengths[i] >= min_len:
            break
        if i == 0:
            j = 1
        elif i == len(runs) - 1:
            j = i - 1
        else:
            j = i - 1 if lengths[i - 1] >= lengths[i + 1] else i + 1
        target_label = runs[j][2]
        lo, hi = min(i, j), max(i, j)
        merged = [runs[lo][0], runs[hi][1], target_label]
        runs[lo:hi + 1] = [merged]
        # coalesce with equal-label neighbours
        k = lo
        if k + 1 < len(runs) and runs[k + 1][2] == runs[k][2]:
            runs[k:k + 2] = [[runs[k][0], runs[k + 1][1], runs[k][2]]]
        if k > 0 and runs[k - 1][2] == runs[k][2]:
            runs[k - 1:k + 1] = [[runs[k - 1][0], runs[k][1], runs[k][2]]]
    out: list[tuple[int, int, int]] = []
    for start, end, label in runs:
        length = end - start
        n = -(-length // max_len)
        bounds = np.linspace(start, end, n + 1).round().astype(int)
        out.extend((int(a), int(b), int(label)) for a, b in zip(bounds[:-1], bounds[1:]))
    return out


@dataclass
class ExtractionResult:
    """Artifacts of skill extraction."""

    centres: np.ndarray  # (K, D) float32 K-means centres in difference-embedding space
    raw_labels: list[np.ndarray]  # per episode (N,) nearest-centre labels
    smoothed_labels: list[np.ndarray]  # per episode (N,) median-filtered labels
    segments: list[Segment]


def label_episodes(embeddings: Sequence[np.ndarray], centres: np.ndarray) -> list[np.ndarray]:
    return [assign_labels(step_features(e), centres) for e in embeddings]


def segment_episodes(raw_labels: Sequence[np.ndarray], config: ExtractionConfig,
                     episode_ids: Sequence[int] | None = None) -> tuple[list[np.ndarray], list[Segment]]:
    """Smooth and segment every episode's labels; returns (smoothed labels, segments)."""
    ids = list(episode_ids) if episode_ids is not None else list(range(len(raw_labels)))
    smoothed, segments = [], []
    for ep, lab in zip(ids, raw_labels):
        sm = median_filter_labels(lab, config.median_kernel)
        smoothed.append(sm)
        segments.extend(Segment(int(ep), a, b, c)
                        for a, b, c in segment_labels(sm, config.min_segment_len, config.max_segment_len))
    return smoothed, segments


def extract_skills(embeddings: Sequence[np.ndarray], config: ExtractionConfig,
                   episode_ids: Sequence[int] | None = None) -> ExtractionResult:
    """Whole phase 1 on per-episode (N+1, D) embeddings."""
    feats = [step_features(e) for e in embeddings]
    centres = fit_kmeans(np.concatenate(feats), config)
    raw = [assign_labels(f, centres) for f in feats]
    smoothed, segments = segment_episodes(raw, config, episode_ids)
    LOG.info("extracted %d segments from %d episodes", len(segments), len(embeddings))
    return ExtractionResult(centres, raw, smoothed, segments)
