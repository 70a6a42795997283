"""Skill extraction: difference embeddings, K-means labels, median filter, segmentation invariants."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extract_skills.core.skills.skill_extraction import (ExtractionConfig, difference_embeddings, extract_skills,
                                                  median_filter_labels, segment_labels)


def _check_segments(segs, n, min_len, max_len):
    covered = np.zeros(n, int)
    prev_end = 0
    for a, b, _ in segs:
        assert a == prev_end  # contiguous, in order
        covered[a:b] += 1
        prev_end = b
        if n >= min_len:
            assert min_len <= b - a <= max_len, (a, b)
    assert prev_end == n and (covered == 1).all()  # every step exactly once


@settings(max_examples=200, deadline=None)
@given(labels=st.lists(st.integers(0, 4), min_size=1, max_size=200),
       min_len=st.integers(1, 8), extra=st.integers(0, 30))
def test_segmentation_invariants(labels, min_len, extra):
    max_len = 2 * min_len + extra
    segs = segment_labels(np.array(labels), min_len, max_len)
    _check_segments(segs, len(labels), min_len, max_len)
    # a segment's label is one of the labels it covers or a neighbour's (merge takes the neighbour's label)
    assert {s[2] for s in segs} <= set(labels)


def test_segmentation_keeps_clean_runs_and_splits_long_ones():
    labels = np.array([0] * 10 + [1] * 12 + [2] * 65)
    segs = segment_labels(labels, 5, 30)
    assert segs[:2] == [(0, 10, 0), (10, 22, 1)]
    assert [s[2] for s in segs[2:]] == [2, 2, 2] and all(b - a in (21, 22) for a, b, _ in segs[2:])


def test_short_blip_is_merged_into_a_neighbour():
    labels = np.array([0] * 12 + [3] * 2 + [1] * 12)
    segs = segment_labels(labels, 5, 30)
    assert len(segs) == 2 and 3 not in {s[2] for s in segs}


def test_median_filter_removes_isolated_flips_without_edge_bias():
    labels = np.array([2] * 10 + [5] + [2] * 10 + [5] * 10)
    out = median_filter_labels(labels, 7)
    assert (out[:21] == 2).all() and (out[-3:] == 5).all()
    assert median_filter_labels(np.array([3, 3, 3]), 7).tolist() == [3, 3, 3]  # no zero padding


def test_config_validation():
    with pytest.raises(ValueError, match="median_kernel"):
        ExtractionConfig(median_kernel=4)
    with pytest.raises(ValueError, match="max_segment_len"):
        ExtractionConfig(min_segment_len=10, max_segment_len=15)


def test_extract_skills_recovers_phases():
    """Episodes that move through two visual phases get two skills whose segments follow the phases."""
    rng = np.random.default_rng(0)
    embs = []
    for _ in range(6):
        n = 40
        t = np.arange(n + 1)
        e = np.zeros((n + 1, 6), np.float32)
        e[:, 0] = np.minimum(t, 20)  # phase A: moves along dim 0
        e[:, 1] = np.maximum(t - 20, 0)  # phase B: then along dim 1
        embs.append(e + 0.05 * rng.standard_normal(e.shape).astype(np.float32))
    np.testing.assert_allclose(difference_embeddings(embs[0])[0], 0)
    cfg = ExtractionConfig(num_skills=2, min_segment_len=5, max_segment_len=30, kmeans_batch_size=64)
    res = extract_skills(embs, cfg)
    assert res.centres.shape == (2, 6)
    for ep in range(6):
        segs = [s for s in res.segments if s.episode == ep]
        _check_segments([(s.start, s.end, s.label) for s in segs], 40, 5, 30)
        lab = res.smoothed_labels[ep]
        # steps well inside phase A and phase B carry different labels
        assert lab[2] != lab[38]
