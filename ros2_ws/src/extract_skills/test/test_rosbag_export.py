"""Episode <-> rosbag2 MCAP round trip, and a robot-style bag (no extract metadata) into EpisodeData."""
import numpy as np
import pytest

pytest.importorskip("rosbags")

from extract_skills.core.data.dataset import EpisodeData  # noqa: E402
from extract_skills.core.data.rosbag_export import ACTION_SCALE, bag_to_episode, export_episode  # noqa: E402


def make_episode(n: int = 6, size: int = 12) -> EpisodeData:
    rng = np.random.default_rng(7)
    qpos = np.cumsum(rng.normal(scale=0.02, size=(n + 1, 9)), axis=0)
    qpos[:, 7:] = rng.uniform(0, 0.04, size=(n + 1, 2))
    flags = np.zeros((n + 1, 7), bool)
    flags[3:, 0] = True
    return EpisodeData(
        images=rng.integers(0, 255, size=(n + 1, size, size + 4, 3), dtype=np.uint8),
        qpos=qpos,
        qvel=rng.normal(size=(n + 1, 9)),
        subtasks_done=flags,
        env_actions=rng.uniform(-1, 1, size=(n, 9)).astype(np.float32),
        stamps=np.arange(n + 1) * 0.08,
        meta={"task_sequence": ["microwave"], "seed": 1, "success": True, "source": "scripted_sim"},
        commands=np.concatenate([qpos[:-1, :7] + rng.normal(scale=0.05, size=(n, 7)),
                                 rng.integers(0, 2, size=(n, 1))], axis=1),
    )


def test_mcap_round_trip(tmp_path):
    ep = make_episode()
    bag = export_episode(ep, tmp_path / "bag")
    assert list(bag.glob("*.mcap")), "expected MCAP storage"
    back = bag_to_episode(bag)
    np.testing.assert_array_equal(back.images, ep.images)
    np.testing.assert_array_equal(back.qpos, ep.qpos)
    np.testing.assert_array_equal(back.qvel, ep.qvel)
    np.testing.assert_array_equal(back.subtasks_done, ep.subtasks_done)
    np.testing.assert_array_equal(back.env_actions, ep.env_actions)
    np.testing.assert_allclose(back.stamps, ep.stamps, atol=1e-9)
    np.testing.assert_allclose(back.commands, ep.commands, atol=1e-6)
    np.testing.assert_allclose(back.skill_actions(), ep.skill_actions(), atol=1e-6)
    assert back.meta["action_labels"] == "commands"
    assert back.meta["task_sequence"] == ["microwave"] and back.meta["success"] is True
    with pytest.raises(Exception):
        export_episode(ep, bag)  # never overwrites a bag


@pytest.mark.parametrize("with_commands", [True, False])
def test_robot_style_bag_derives_actions(tmp_path, caplog, with_commands):
    """A bag as a real Franka would record it: fr3_ names, bgr8 images, faster joint states and commands,
    no metadata; without the command topic the labels fall back to realised motion, with a warning."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    Image = ts.types["sensor_msgs/msg/Image"]
    JointState = ts.types["sensor_msgs/msg/JointState"]
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    rng = np.random.default_rng(3)
    names = [f"fr3_joint{i}" for i in range(7, 0, -1)] + ["fr3_finger_joint1"]  # shuffled order, one finger
    t0 = 1_000_000_000_000
    js_dt, img_dt, n_js, n_img = 10_000_000, 100_000_000, 51, 5  # 100 Hz joints, 10 Hz camera
    q_by_time = {}
    with Writer(tmp_path / "robot", version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c_img = w.add_connection("/camera/image_raw", Image.__msgtype__, typestore=ts)
        c_js = w.add_connection("/joint_states", JointState.__msgtype__, typestore=ts)
        c_cmd = w.add_connection("/joint_commands", JointState.__msgtype__, typestore=ts)
        for k in range(n_js):
            if with_commands:  # 100 Hz commands: target 0.05 rad ahead on every joint, gripper closing
                t = t0 + k * js_dt + 1_000_000
                cmd = np.concatenate([np.linspace(0.1, 0.7, 7)[::-1] + 0.01 * k + 0.05, [0.01]])
                msg = JointState(header=Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id=""),
                                 name=names, position=cmd, velocity=np.zeros(0), effort=np.zeros(0))
                w.write(c_cmd, t, ts.serialize_cdr(msg, JointState.__msgtype__))
            t = t0 + k * js_dt
            q = np.concatenate([np.linspace(0.1, 0.7, 7)[::-1] + 0.01 * k, [0.03]])
            q_by_time[t] = q
            msg = JointState(
                header=Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id=""),
                name=names, position=q, velocity=np.zeros(8), effort=np.zeros(0),
            )
            w.write(c_js, t, ts.serialize_cdr(msg, JointState.__msgtype__))
        for k in range(n_img):
            t = t0 + k * img_dt + 3_000_000  # 3 ms after a joint state
            bgr = np.full((6, 8, 3), (10 * k, 100, 200), np.uint8)
            msg = Image(
                header=Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id="cam"),
                height=6, width=8, encoding="bgr8", is_bigendian=0, step=24, data=bgr.reshape(-1),
            )
            w.write(c_img, t, ts.serialize_cdr(msg, Image.__msgtype__))
    with caplog.at_level("WARNING"):
        ep = bag_to_episode(tmp_path / "robot")
    assert ep.num_steps == n_img - 1
    assert tuple(ep.images[2, 0, 0]) == (200, 100, 20)  # converted to RGB
    # Joint order restored (joint1..7) from the latest state at or before each image.
    np.testing.assert_allclose(ep.qpos[0, :7], np.linspace(0.1, 0.7, 7))
    np.testing.assert_allclose(ep.qpos[1, :7], q_by_time[t0 + 10 * js_dt][:7][::-1])
    np.testing.assert_allclose(ep.qpos[:, 7], 0.03)
    np.testing.assert_allclose(ep.qpos[:, 8], 0.03)  # single finger mirrored
    np.testing.assert_allclose(ep.stamps, np.arange(n_img) * 0.1, atol=1e-9)
    assert not ep.subtasks_done.any() and ep.meta["actions"] == "derived_from_joint_states"
    np.testing.assert_allclose(ep.env_actions[:, :7], 0.1 / (ACTION_SCALE * 0.1), atol=1e-5)
    if with_commands:
        # Step t's label is the last command before image t+1 (image at tick 10 t + 10 plus 3 ms, command
        # at tick 10 t + 10 plus 1 ms), relative to the joints at image t (tick 10 t): 10 ticks x 0.01 + 0.05.
        assert ep.meta["action_labels"] == "commands" and "no /joint_commands" not in caplog.text
        np.testing.assert_allclose(ep.skill_actions()[:, :7], 0.10 + 0.05, atol=1e-5)
        np.testing.assert_allclose(ep.skill_actions()[:, 7], 0.25, atol=1e-6)
    else:
        assert ep.meta["action_labels"] == "realised_motion" and "no /joint_commands" in caplog.text
        np.testing.assert_allclose(ep.skill_actions()[:, :7], 0.1, atol=1e-6)
        np.testing.assert_allclose(ep.skill_actions()[:, 7], 0.75, atol=1e-6)


def test_bags_to_dataset_cli(tmp_path):
    from extract_skills.cli.bags_to_dataset import main
    from extract_skills.core.data.dataset import iter_dataset, read_dataset_info

    eps = [make_episode(n=5 + i) for i in range(2)]
    bags = [export_episode(ep, tmp_path / f"bag{i}") for i, ep in enumerate(eps)]
    assert main([*map(str, bags), "--out", str(tmp_path / "ds")]) == 0
    got = [ep for _, ep in iter_dataset(tmp_path / "ds")]
    assert [g.num_steps for g in got] == [e.num_steps for e in eps]
    np.testing.assert_array_equal(got[1].images, eps[1].images)
    assert read_dataset_info(tmp_path / "ds")["source"] == "rosbag2"
