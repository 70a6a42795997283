"""Smoke run of the offline pipeline CLI on a tiny synthetic dataset: artifacts, checkpoint, resumability."""
import numpy as np
import pytest
import torch

from extract_skills.cli.extract_pipeline import main, next_subtask_per_step
from extract_skills.core.skills.checkpoint import load_skill_bundle
from extract_skills.core.data.dataset import EpisodeData, write_dataset_info, write_episode
from extract_skills.core.skills.encoders import file_sha256

N_STEPS, N_EPISODES, PX = 40, 4, 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _episode(seed: int) -> EpisodeData:
    rng = np.random.default_rng(seed)
    n1 = N_STEPS + 1
    images = np.zeros((n1, PX, PX, 3), np.uint8) + rng.integers(0, 40, 3, dtype=np.uint8)
    qpos = np.zeros((n1, 9))
    for t in range(n1):
        if t <= 20:  # phase 1: a red block slides right, joint 0 moves
            images[t, 4:12, t:t + 8, 0] = 255
            qpos[t, 0] = 0.01 * t
        else:  # phase 2: a green block slides down, joint 1 moves
            images[t, t - 20:t - 12, 20:28, 1] = 255
            qpos[t, :1], qpos[t, 1] = 0.2, 0.02 * (t - 20)
    qpos[:, 7:] = 0.04
    done = np.zeros((n1, 7), bool)
    done[21:, 0] = True  # microwave done after phase 1
    done[38:, 1] = True  # kettle done near the end
    return EpisodeData(images=images, qpos=qpos, qvel=np.zeros((n1, 9)), subtasks_done=done,
                       env_actions=np.zeros((N_STEPS, 9), np.float32), stamps=np.arange(n1) * 0.08,
                       meta={"seed": seed})


@pytest.fixture()
def dataset(tmp_path):
    d = tmp_path / "demos"
    for i in range(N_EPISODES):
        write_episode(d, i, _episode(i))
    write_dataset_info(d, {"env_id": "synthetic", "image_size": PX, "dt": 0.08})
    return d


def test_next_subtask_per_step():
    done = np.zeros((6, 7), bool)
    done[2:, 3] = True
    done[4:, 0] = True
    assert next_subtask_per_step(done).tolist() == [3, 3, 0, 0, -1]


def test_pipeline_end_to_end_and_resumable(dataset, tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "models" / "extract_kitchen.pt"
    weights = tmp_path / "models" / "encoders" / "r3m_resnet18.pt"
    common = ["--dataset", str(dataset), "--run-dir", str(run), "--out", str(out),
              "--encoder-weights", str(weights)]
    # no weights yet: a clear error naming the expected file
    assert main(["all", *common]) == 2
    assert str(weights) in capsys.readouterr().err
    assert main(["train-encoder", *common, "--tcn-steps", "3", "--tcn-image-size", "32",
                 "--tcn-batch-episodes", "2"]) == 0
    tiny = ["--num-skills", "3", "--train-steps", "40", "--batch-size", "8", "--hidden-dim", "16",
            "--embed-batch-size", "16"]
    assert main(["all", *common, *tiny]) == 0
    first = capsys.readouterr().out
    for stage in ("embed", "cluster", "segment", "train"):
        assert f"[{stage}] running" in first
    for name in ("embeddings.npz", "clusters.npz", "segments.json", "pca_clusters.png",
                 "segmentation_timeline.png", "skill_gallery.png", "training_curves.png", "cluster_vs_subtask.md",
                 "skill_model_report.md"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    assert "| skill | microwave | kettle" in (run / "cluster_vs_subtask.md").read_text()
    bundle = load_skill_bundle(out, expect={"encoder_name": "r3m_resnet18", "encoder_sha256": file_sha256(weights),
                                            "embed_dim": 512, "num_skills": 3})
    # held-out metrics from whole validation episodes travel with the checkpoint
    val = bundle.config["validation"]
    assert 0.0 <= val["prior_accuracy"] <= 1.0 and val["prior_min_prob"] >= 0.01 / 3 - 1e-7
    assert bundle.config["validation_episodes"] and "skill prior ECE" in (run / "skill_model_report.md").read_text()
    mean, _ = bundle.argument_prior(bundle.make_obs(np.zeros(512), np.zeros(8)), 0)
    assert bundle.closed_loop and bundle.action_frame == "skill_start"  # the pipeline's defaults
    steps = list(bundle.rollout(0, mean, max_steps=30, proprio_fn=lambda: np.zeros(8, np.float32)))
    assert 1 <= len(steps) <= 30 and steps[0][0].shape == (8,)
    mtime = out.stat().st_mtime_ns

    # second run: everything is current and skipped; the checkpoint is untouched
    assert main(["all", *common, *tiny]) == 0
    second = capsys.readouterr().out
    for stage in ("embed", "cluster", "segment", "train"):
        assert f"[{stage}] up to date" in second
    assert out.stat().st_mtime_ns == mtime

    # a segmentation parameter change re-runs segment and train only
    assert main(["all", *common, *tiny, "--median-kernel", "3"]) == 0
    third = capsys.readouterr().out
    assert "[embed] up to date" in third and "[cluster] up to date" in third
    assert "[segment] running" in third and "[train] running" in third
    assert out.stat().st_mtime_ns != mtime

    # --force re-runs a single stage's chain
    assert main(["cluster", *common, *tiny, "--median-kernel", "3", "--force"]) == 0
    assert "[cluster] running" in capsys.readouterr().out

    # command feedback: only the skill model is retrained; the loaded decoder has the checkpoint's action bounds
    # (it turns its own outputs into the lead it reads) and needs the executor's lead every step
    assert main(["train", *common, *tiny, "--median-kernel", "3", "--action-frame", "measured",
                 "--command-feedback"]) == 0
    assert "[train] running" in capsys.readouterr().out
    fb = load_skill_bundle(out)
    assert fb.command_feedback and not bundle.command_feedback
    np.testing.assert_array_equal(fb.model.skill_decoder.action_low.numpy(), fb.action_low)
    with pytest.raises(ValueError, match="lead_fn"):
        next(fb.rollout(0, mean, proprio_fn=lambda: np.zeros(8, np.float32)))
    steps = list(fb.rollout(0, mean, max_steps=5, proprio_fn=lambda: np.zeros(8, np.float32),
                            lead_fn=lambda: np.zeros(7)))
    assert 1 <= len(steps) <= 5


def test_dagger_stage_on_kitchen_demos(tmp_path, capsys):
    """`extract dagger` end to end on a few real scripted kitchen demos: a base model from `extract all`, one
    round of on-policy collection + fine-tuning, the round's checkpoint and data in the run directory, and the
    output is whichever checkpoint decoded the held-out episodes best; a missing base is a clear error."""
    pytest.importorskip("mujoco")
    pytest.importorskip("gymnasium_robotics")
    import json

    from extract_skills.cli.generate_demos import main as generate

    demos, run = tmp_path / "demos", tmp_path / "run"
    base, out = run / "skill_model_base.pt", tmp_path / "extract_kitchen.pt"
    weights = tmp_path / "encoders" / "r3m_resnet18.pt"
    assert generate(["--out", str(demos), "--episodes", "3", "--seed", "5", "--image-size", "32",
                     "--max-subtasks", "1", "--no-progress"]) == 0
    common = ["--dataset", str(demos), "--run-dir", str(run), "--encoder-weights", str(weights)]
    assert main(["train-encoder", *common, "--tcn-steps", "2", "--tcn-image-size", "32",
                 "--tcn-batch-episodes", "2"]) == 0
    tiny = ["--num-skills", "2", "--train-steps", "20", "--batch-size", "8", "--hidden-dim", "16",
            "--embed-batch-size", "32", "--val-fraction", "0.34", "--action-frame", "measured", "--state-noise",
            "0.03", "--pose-features"]
    assert main(["all", *common, *tiny, "--out", str(base)]) == 0
    # the kitchen's joint 6 is a quarter turn off the Panda's: the dataset's env id sets the pose offset
    assert load_skill_bundle(base).model_config.pose_joint_offset == pytest.approx((0, 0, 0, 0, 0, np.pi / 2, 0))
    assert main(["dagger", *common, *tiny, "--out", str(out)]) == 2
    assert "--base" in capsys.readouterr().err
    dagger = ["dagger", *common, *tiny, "--base", str(base), "--out", str(out), "--dagger-rounds", "1",
              "--dagger-steps", "10"]
    assert main([*dagger, "--dagger-rollouts", "2"]) == 0
    printed = capsys.readouterr().out
    assert "[dagger] round 1:" in printed and "of 2 x" in printed and "training segments decoded on-policy" in printed
    records = json.loads((run / "dagger.json").read_text())
    assert [r["round"] for r in records] == [0, 1] and (run / "dagger_round1.pt").is_file()
    best = max(records, key=lambda r: r["heldout_chained"])  # ties keep the earlier round
    assert file_sha256(out) == file_sha256(best["checkpoint"])
    tuned = load_skill_bundle(run / "dagger_round1.pt")
    assert tuned.config["dagger"]["base_sha256"] == file_sha256(base) and tuned.config["dagger"]["round"] == 1
    assert tuned.config["dagger"]["rollouts"] == 2
    with pytest.raises(SystemExit, match="--dagger-rollouts 2"):  # a resumed round is not mixed with other data
        main([*dagger, "--dagger-rollouts", "1"])
    # the run's report (what make_models.sh ships) describes the chosen round, not the base
    assert f"DAgger round {best['round']} of 1" in (run / "skill_model_report.md").read_text()
