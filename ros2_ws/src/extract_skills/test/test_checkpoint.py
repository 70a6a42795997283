"""Checkpoint contract: round trip, mismatches refused with the differing fields named, atomic write."""
import numpy as np
import pytest
import torch

from extract_skills.core.skills.checkpoint import (CheckpointMismatchError, load_skill_bundle, save_skill_bundle)
from extract_skills.core.skills.skill_model import SkillModel, SkillModelConfig

EMBED_DIM, K = 16, 3


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    cfg = SkillModelConfig(num_skills=K, obs_dim=EMBED_DIM + 8, hidden_dim=16, max_segment_len=12)
    model = SkillModel(cfg).eval()
    model.skill_prior.temperature.fill_(2.5)  # as if fitted on held-out episodes
    rng = np.random.default_rng(0)
    kwargs = dict(encoder_name="r3m_resnet18", encoder_sha256="ab" * 32,
                  centres=rng.standard_normal((K, EMBED_DIM)).astype(np.float32),
                  obs_mean=rng.standard_normal(EMBED_DIM).astype(np.float32),
                  obs_std=np.full(EMBED_DIM, 2.0, np.float32),
                  action_low=np.full(8, -0.1, np.float32), action_high=np.full(8, 1.1, np.float32),
                  config={"note": "test"})
    path = save_skill_bundle(tmp_path / "models" / "extract_kitchen.pt", model, **kwargs)
    return path, model, kwargs


def test_round_trip_reproduces_priors_and_rollout(saved):
    path, model, kw = saved
    bundle = load_skill_bundle(path, expect={"encoder_name": "r3m_resnet18", "encoder_sha256": "ab" * 32,
                                             "embed_dim": EMBED_DIM, "num_skills": K,
                                             "action_low": kw["action_low"], "action_high": kw["action_high"]})
    assert bundle.num_skills == K and bundle.config["note"] == "test"
    np.testing.assert_allclose(bundle.centres, kw["centres"])
    obs = bundle.make_obs(np.zeros(EMBED_DIM), np.zeros(8))
    np.testing.assert_allclose(obs[:EMBED_DIM], -kw["obs_mean"] / 2.0, rtol=1e-6)
    probs = bundle.skill_prior(obs)
    assert probs.shape == (K,) and abs(probs.sum() - 1) < 1e-5
    with torch.no_grad():  # the calibrated prior: fitted temperature and uniform floor survive the round trip
        ref = torch.softmax(model.skill_prior(torch.as_tensor(obs)[None]) / 2.5, -1)[0].numpy()
    np.testing.assert_allclose(probs, 0.99 * ref + 0.01 / K, rtol=1e-5)
    # what the decoder node reads from the checkpoint instead of its own parameters
    assert bundle.max_skill_steps == 12 and bundle.progress_threshold == 0.9 and bundle.argument_bound == 4.0
    zq, sq = bundle.posterior(np.full((5, 8), 0.5, np.float32), 2)
    assert zq.shape == sq.shape == (5,) and np.all(np.abs(zq) <= 2.0) and np.all(sq > 0)
    mean, std = bundle.argument_prior(obs, 1)
    assert mean.shape == (5,) and (std > 0).all()
    steps = list(bundle.rollout(1, mean, max_steps=9, progress_threshold=1.0))
    assert len(steps) == 9
    for action, progress in steps:
        assert action.shape == (8,) and 0.0 <= progress <= 1.0
        assert (action >= -0.1 - 1e-6).all() and (action <= 1.1 + 1e-6).all()
    assert not list(path.parent.glob("*.tmp"))  # atomic write leaves no temp file


def test_mismatch_names_every_differing_field(saved):
    path, _, kw = saved
    with pytest.raises(CheckpointMismatchError) as err:
        load_skill_bundle(path, expect={"encoder_name": "r3m_resnet50", "encoder_sha256": "cd" * 32,
                                        "embed_dim": 2048, "num_skills": K,
                                        "action_high": np.full(8, 1.0, np.float32)})
    assert set(err.value.fields) == {"encoder_name", "encoder_sha256", "embed_dim", "action_high"}
    for name in ("encoder_name", "encoder_sha256", "embed_dim", "action_high"):
        assert name in str(err.value)


def test_schema_version_and_skill_count_mismatch(saved, tmp_path):
    path, _, _ = saved
    blob = torch.load(path, weights_only=True)
    blob["schema_version"] = 99
    torch.save(blob, tmp_path / "old.pt")
    with pytest.raises(CheckpointMismatchError, match="schema_version"):
        load_skill_bundle(tmp_path / "old.pt")
    with pytest.raises(CheckpointMismatchError, match="num_skills"):
        load_skill_bundle(path, expect={"num_skills": 8})


def test_wrong_shape_state_dict_refused(saved, tmp_path):
    path, _, _ = saved
    blob = torch.load(path, weights_only=True)
    blob["skill_prior"]["net.4.weight"] = torch.zeros(K + 1, 16)  # one more skill than the header says
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(CheckpointMismatchError) as err:
        load_skill_bundle(tmp_path / "bad.pt")
    assert "skill_prior.net.4.weight" in err.value.fields


def test_unknown_expect_field_and_missing_file(saved, tmp_path):
    path, _, _ = saved
    with pytest.raises(ValueError, match="valid"):
        load_skill_bundle(path, expect={"colour": "red"})
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_skill_bundle(tmp_path / "nope.pt")


def test_corrupt_files_are_refused_with_the_path_and_reason(saved, tmp_path):
    from extract_skills.core.skills.checkpoint import CheckpointCorruptError

    path, model, kwargs = saved
    raw = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(raw[: len(raw) // 2])  # a copy cut short
    with pytest.raises(CheckpointCorruptError, match="cut.pt.*unreadable"):
        load_skill_bundle(cut)
    flipped = bytearray(raw)
    for i in range(64):  # 64 flipped bytes in the middle (tensor data or zip structure)
        flipped[len(raw) // 3 + 97 * i] ^= 0xFF
    (tmp_path / "flip.pt").write_bytes(bytes(flipped))
    try:
        load_skill_bundle(tmp_path / "flip.pt")
    except (CheckpointCorruptError, CheckpointMismatchError):
        pass  # refused, with the path in the message
    else:  # the flips hit only float payload that still loads: only the manifest can catch that
        from extract_skills.core.skills.deployment import verify_against_manifest, write_manifest

        good = tmp_path / "m"
        good.mkdir()
        (good / "extract_kitchen.pt").write_bytes(raw)
        write_manifest(good, [good / "extract_kitchen.pt"])
        (good / "extract_kitchen.pt").write_bytes(bytes(flipped))
        with pytest.raises(CheckpointCorruptError, match="sha256 differs"):
            verify_against_manifest(good / "extract_kitchen.pt")


@pytest.mark.parametrize("field,value,why", [
    ("obs_std", np.zeros(EMBED_DIM, np.float32), "obs_std has"),
    ("action_low", np.full(8, -1e6, np.float32), "action bounds beyond"),
    ("action_high", np.full(8, -0.2, np.float32), "action_low >= action_high"),
    ("obs_mean", np.full(EMBED_DIM, np.nan, np.float32), "obs_mean is not finite"),
])
def test_values_that_load_but_must_not_reach_the_arm_are_refused(saved, tmp_path, field, value, why):
    from extract_skills.core.skills.checkpoint import CheckpointCorruptError

    _, model, kwargs = saved
    p = tmp_path / "bad.pt"
    torch.save({**torch.load(saved[0], weights_only=True), field: torch.as_tensor(value)}, p)
    with pytest.raises(CheckpointCorruptError, match=why):
        load_skill_bundle(p)


def test_nan_weights_are_refused(saved, tmp_path):
    from extract_skills.core.skills.checkpoint import CheckpointCorruptError

    blob = torch.load(saved[0], weights_only=True)
    k = next(k for k, v in blob["skill_decoder"].items() if v.is_floating_point())
    blob["skill_decoder"][k] = torch.full_like(blob["skill_decoder"][k], float("nan"))
    torch.save(blob, tmp_path / "nan.pt")
    with pytest.raises(CheckpointCorruptError, match="non-finite weights in skill_decoder"):
        load_skill_bundle(tmp_path / "nan.pt")


def test_shipped_manifest_lists_every_model_file_with_its_hash():
    from extract_skills.core.skills.deployment import MANIFEST, read_manifest
    from extract_skills.core.skills.encoders import file_sha256
    from extract_skills.graph import default_models_dir

    root = default_models_dir()
    sums = read_manifest(root)
    shipped = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.pt"))
    assert sorted(sums) == shipped, f"{MANIFEST} must list exactly the shipped model files"
    for rel, digest in sums.items():
        assert file_sha256(root / rel) == digest, rel
