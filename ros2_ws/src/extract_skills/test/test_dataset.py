"""Per-episode npz dataset: round trip, atomic writes, derived views, validation."""
import json
import os

import numpy as np
import pytest

from extract_skills.core.data.dataset import (
    FORMAT_VERSION,
    SUBTASK_NAMES,
    EpisodeData,
    episode_files,
    iter_dataset,
    read_dataset_info,
    read_episode,
    write_dataset_info,
    write_episode,
)


def make_episode(n: int = 5, size: int = 8, seed: int = 0) -> EpisodeData:
    rng = np.random.default_rng(seed)
    qpos = rng.normal(size=(n + 1, 9))
    qpos[:, 7:] = rng.uniform(0, 0.04, size=(n + 1, 2))
    flags = np.zeros((n + 1, 7), bool)
    flags[n // 2 :, 2] = True
    return EpisodeData(
        images=rng.integers(0, 255, size=(n + 1, size, size, 3), dtype=np.uint8),
        qpos=qpos,
        qvel=rng.normal(size=(n + 1, 9)),
        subtasks_done=flags,
        env_actions=rng.uniform(-1, 1, size=(n, 9)).astype(np.float32),
        stamps=np.arange(n + 1) * 0.08,
        meta={"task_sequence": ["light switch"], "seed": seed, "success": True, "source": "test"},
    )


def test_round_trip_is_exact(tmp_path):
    ep = make_episode()
    path = write_episode(tmp_path, 3, ep)
    assert path.name == "episode_000003.npz"
    back = read_episode(path)
    for key in ("images", "qpos", "qvel", "subtasks_done", "env_actions", "stamps"):
        a, b = getattr(ep, key), getattr(back, key)
        assert a.dtype == b.dtype, key
        np.testing.assert_array_equal(a, b, err_msg=key)
    assert back.meta == ep.meta
    assert back.images.dtype == np.uint8 and back.qpos.dtype == np.float64
    assert back.env_actions.dtype == np.float64 and back.subtasks_done.dtype == bool


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    ep = make_episode()
    write_episode(tmp_path, 0, ep)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_episode(tmp_path, 1, make_episode(seed=1))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episode_000000.npz"]
    # An overwrite replaces the whole file.
    write_episode(tmp_path, 0, make_episode(n=3, seed=2))
    assert read_episode(tmp_path / "episode_000000.npz").num_steps == 3


def test_skill_actions_and_proprio():
    ep = make_episode(n=4)
    opening = np.clip((ep.qpos[:, 7] + ep.qpos[:, 8]) / 0.08, 0, 1)
    prop = ep.proprio()
    assert prop.shape == (5, 8) and prop.dtype == np.float32
    np.testing.assert_allclose(prop[:, :7], ep.qpos[:, :7], rtol=1e-6)
    np.testing.assert_allclose(prop[:, 7], opening, rtol=1e-6)
    act = ep.skill_actions()
    assert act.shape == (4, 8) and act.dtype == np.float64
    np.testing.assert_allclose(act[:, :7], ep.qpos[1:, :7] - ep.qpos[:-1, :7], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(act[:, 7], opening[1:], rtol=1e-6)
    # Integrating the skill actions from q0 gives back the joint trajectory.
    np.testing.assert_allclose(ep.qpos[0, :7] + np.cumsum(act[:, :7], axis=0), ep.qpos[1:, :7], atol=1e-5)


@pytest.mark.parametrize(
    "field, bad",
    [
        ("qpos", np.zeros((6, 8))),
        ("env_actions", np.zeros((6, 9), np.float32)),
        ("subtasks_done", np.zeros((6, 6), bool)),
        ("images", np.zeros((5, 8, 8, 3), np.uint8)),
        ("stamps", np.zeros(5)),
    ],
)
def test_bad_shapes_are_refused(field, bad):
    ep = make_episode()
    kwargs = {k: getattr(ep, k) for k in ("images", "qpos", "qvel", "subtasks_done", "env_actions", "stamps", "meta")}
    kwargs[field] = bad
    with pytest.raises(ValueError):
        EpisodeData(**kwargs)


def test_iter_dataset_in_index_order_and_info(tmp_path):
    for i in (2, 0, 1):
        write_episode(tmp_path, i, make_episode(seed=i))
    (tmp_path / ".episode_000009.abc.npz.tmp").write_bytes(b"partial")
    info = write_dataset_info(tmp_path, {"env_id": "FrankaKitchen-v1", "image_size": 8, "dt": 0.08})
    assert [p.name for p in episode_files(tmp_path)] == [f"episode_00000{i}.npz" for i in range(3)]
    seeds = [ep.meta["seed"] for _, ep in iter_dataset(tmp_path)]
    assert seeds == [0, 1, 2]
    data = read_dataset_info(tmp_path)
    assert data["format_version"] == FORMAT_VERSION and data["subtask_names"] == list(SUBTASK_NAMES)
    assert data["dt"] == 0.08
    raw = json.loads(info.read_text())
    raw["format_version"] = 999
    info.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="format_version"):
        read_dataset_info(tmp_path)
