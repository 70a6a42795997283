"""Episode <-> rosbag2 (MCAP) conversion, so sim demos and real-robot recordings share one pipeline.

Bag layout (written by :func:`export_episode`, read by :func:`bag_to_episode`):

* ``/camera/image_raw``  ``sensor_msgs/msg/Image`` (``rgb8``; ``bgr8`` is accepted when reading)
* ``/joint_states``      ``sensor_msgs/msg/JointState`` with 7 arm joints (rad) and 2 finger joints (m),
  names ``panda_joint1..7``, ``panda_finger_joint1..2`` (any ``<prefix>_joint<i>`` / ``<prefix>_finger_joint<i>``
  is accepted when reading, e.g. ``fr3_``)
* ``/joint_commands``    ``sensor_msgs/msg/JointState``, what the arm controller was told: joint position
  targets (rad) and finger targets (m, opening x 0.04 each), the same message the skill decoder publishes
  to the sim. Command t is stamped just after image t; reading takes, for each step, the last command
  stamped in [image t, image t+1) (the previous one is held when a step has none).
* custom metadata ``extract_meta`` (JSON) and ``extract_subtasks_done`` (JSON list of flag rows) when
  exported from a sim episode.

Reading pairs every image with the latest joint state at or before its stamp (the first image may
use the first joint state). For bags without ``extract_*`` metadata (a real robot), the subtask flags
are all ``False`` and the env actions are *derived* from consecutive joint positions, in the kitchen's
action convention ``(q[t+1] - q[t]) / (ACTION_SCALE * dt)`` clipped to [-1, 1].

The skill-action labels come from the command topic. A bag without it (joint states only) still
converts, but its labels fall back to realised motion, which under-drives a position-controlled arm: a
warning says so and ``meta["action_labels"]`` records ``"realised_motion"``.

Storage: MCAP via the pure-Python ``rosbags`` package (no ROS installation needed).
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from extract_skills.core.data.dataset import FINGER_SUM_OPEN, SUBTASK_NAMES, EpisodeData, gripper_opening

LOG = logging.getLogger(__name__)

IMAGE_TOPIC = "/camera/image_raw"
JOINT_TOPIC = "/joint_states"
COMMAND_TOPIC = "/joint_commands"
COMMAND_DELAY_NS = 1_000_000  # a command is sent after the observation it answers
FINGER_MAX = FINGER_SUM_OPEN / 2  # m per finger at gripper opening 1.0
JOINT_NAMES: tuple[str, ...] = tuple(f"panda_joint{i}" for i in range(1, 8)) + (
    "panda_finger_joint1",
    "panda_finger_joint2",
)
ACTION_SCALE = 2.0  # same as core.kitchen.ACTION_SCALE (kept here so this module needs no MuJoCo)
_ARM_RE = re.compile(r"(?<!finger_)joint([1-7])$")
_FINGER_RE = re.compile(r"finger_joint([12])$")


def _typestore() -> Any:
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def _stamp(ts: Any, t_ns: int) -> Any:
    Time = ts.types["builtin_interfaces/msg/Time"]
    return Time(sec=int(t_ns // 1_000_000_000), nanosec=int(t_ns % 1_000_000_000))


def export_episode(
    episode: EpisodeData,
    bag_path: str | os.PathLike,
    start_time_ns: int = 1_700_000_000_000_000_000,
    frame_id: str = "kitchen_camera",
) -> Path:
    """Write ``episode`` as a rosbag2 MCAP bag directory at ``bag_path`` (must not exist)."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = _typestore()
    Image = ts.types["sensor_msgs/msg/Image"]
    JointState = ts.types["sensor_msgs/msg/JointState"]
    Header = ts.types["std_msgs/msg/Header"]
    bag_path = Path(bag_path)
    with Writer(bag_path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        img_conn = writer.add_connection(IMAGE_TOPIC, Image.__msgtype__, typestore=ts)
        js_conn = writer.add_connection(JOINT_TOPIC, JointState.__msgtype__, typestore=ts)
        cmd_conn = (writer.add_connection(COMMAND_TOPIC, JointState.__msgtype__, typestore=ts)
                    if episode.commands is not None else None)
        writer.set_custom_data("extract_meta", json.dumps(episode.meta, sort_keys=True))
        writer.set_custom_data("extract_subtasks_done", json.dumps(episode.subtasks_done.astype(int).tolist()))
        writer.set_custom_data("extract_env_actions", json.dumps(episode.env_actions.tolist()))
        for t in range(episode.qpos.shape[0]):
            t_ns = start_time_ns + int(round(episode.stamps[t] * 1e9))
            js = JointState(
                header=Header(stamp=_stamp(ts, t_ns), frame_id="panda_link0"),
                name=list(JOINT_NAMES),
                position=episode.qpos[t].astype(np.float64),
                velocity=episode.qvel[t].astype(np.float64),
                effort=np.zeros(0, dtype=np.float64),
            )
            writer.write(js_conn, t_ns, ts.serialize_cdr(js, JointState.__msgtype__))
            img = episode.images[t]
            h, w = img.shape[:2]
            im = Image(
                header=Header(stamp=_stamp(ts, t_ns), frame_id=frame_id),
                height=h,
                width=w,
                encoding="rgb8",
                is_bigendian=0,
                step=w * 3,
                data=np.ascontiguousarray(img).reshape(-1),
            )
            writer.write(img_conn, t_ns, ts.serialize_cdr(im, Image.__msgtype__))
            if cmd_conn is not None and t < episode.num_steps:
                c = episode.commands[t].astype(np.float64)
                finger = c[7] * FINGER_MAX
                cmd = JointState(
                    header=Header(stamp=_stamp(ts, t_ns + COMMAND_DELAY_NS), frame_id="panda_link0"),
                    name=list(JOINT_NAMES),
                    position=np.concatenate([c[:7], [finger, finger]]),
                    velocity=np.zeros(0, dtype=np.float64),
                    effort=np.zeros(0, dtype=np.float64),
                )
                writer.write(cmd_conn, t_ns + COMMAND_DELAY_NS, ts.serialize_cdr(cmd, JointState.__msgtype__))
    LOG.info("exported %d observations to %s", episode.qpos.shape[0], bag_path)
    return bag_path


def _joint_order(names: list[str]) -> tuple[list[int], list[int]]:
    """Indices of the 7 arm joints (in order) and of the finger joints within a JointState."""
    arm: dict[int, int] = {}
    fingers: dict[int, int] = {}
    for i, n in enumerate(names):
        if m := _FINGER_RE.search(n):
            fingers[int(m.group(1))] = i
        elif m := _ARM_RE.search(n):
            arm[int(m.group(1))] = i
    if sorted(arm) != list(range(1, 8)):
        raise ValueError(f"JointState names {names} do not contain 7 arm joints *_joint1..7")
    return [arm[k] for k in range(1, 8)], [fingers[k] for k in sorted(fingers)]


def _joint_msg(msg: Any) -> tuple[np.ndarray, np.ndarray]:
    """(9,) positions and (9,) velocities (7 arm joints + 2 fingers) of a JointState, arm joints in order."""
    arm_idx, finger_idx = _joint_order(list(msg.name))
    pos = np.asarray(msg.position, dtype=np.float64)
    vel = np.asarray(msg.velocity, dtype=np.float64)
    if vel.shape != pos.shape:
        vel = np.zeros_like(pos)
    if len(finger_idx) == 0:
        fq, fv = np.zeros(2), np.zeros(2)
    else:
        fi = (finger_idx * 2)[:2]  # one finger reported: mirror it
        fq, fv = pos[fi], vel[fi]
    return np.concatenate([pos[arm_idx], fq]), np.concatenate([vel[arm_idx], fv])


def _commands_per_step(image_stamps: list[int], commands: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """(N, 8) ``[q_target (7), gripper target]``: per step the last command in [image t, image t+1)."""
    cmd_stamps = np.array([c[0] for c in commands])
    out = np.zeros((len(image_stamps) - 1, 8), dtype=np.float64)
    held: np.ndarray | None = None
    for t in range(len(image_stamps) - 1):
        k = int(np.searchsorted(cmd_stamps, image_stamps[t + 1], side="left")) - 1
        if k >= 0 and cmd_stamps[k] >= image_stamps[t]:
            pos = commands[k][1]
            held = np.concatenate([pos[:7], [gripper_opening(pos)]])
        if held is None:  # no command yet: the controller was holding the measured posture
            raise ValueError(f"no {COMMAND_TOPIC} message before image {t + 1}; trim the bag to start at the "
                             "first command")
        out[t] = held
    return out


def _image_to_rgb(msg: Any) -> np.ndarray:
    data = np.asarray(msg.data, dtype=np.uint8)
    if msg.encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"unsupported image encoding {msg.encoding!r} (rgb8 or bgr8)")
    img = data.reshape(msg.height, msg.step)[:, : msg.width * 3].reshape(msg.height, msg.width, 3)
    return img[:, :, ::-1].copy() if msg.encoding == "bgr8" else img.copy()


def bag_to_episode(
    bag_path: str | os.PathLike,
    image_topic: str = IMAGE_TOPIC,
    joint_topic: str = JOINT_TOPIC,
    image_size: int | None = None,
    command_topic: str = COMMAND_TOPIC,
) -> EpisodeData:
    """Convert a bag of Image + JointState (+ command JointState) into :class:`EpisodeData`."""
    from rosbags.rosbag2 import Reader

    ts = _typestore()
    images: list[tuple[int, np.ndarray]] = []
    joints: list[tuple[int, np.ndarray, np.ndarray]] = []
    commands: list[tuple[int, np.ndarray]] = []
    with Reader(bag_path) as reader:
        # rosbag2 custom_data (metadata.yaml), absent in bags recorded on a robot.
        custom = getattr(getattr(reader.storage, "metadata", None), "custom", None) or {}
        conns = [c for c in reader.connections if c.topic in (image_topic, joint_topic, command_topic)]
        for conn, _t, raw in reader.messages(connections=conns):
            msg = ts.deserialize_cdr(raw, conn.msgtype)
            t_ns = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
            if conn.topic == image_topic:
                images.append((t_ns, _image_to_rgb(msg)))
            elif conn.topic == joint_topic:
                joints.append((t_ns, *_joint_msg(msg)))
            else:
                commands.append((t_ns, _joint_msg(msg)[0]))
    if not images or not joints:
        raise ValueError(f"{bag_path}: need both {image_topic} ({len(images)} msgs) and {joint_topic} ({len(joints)} msgs)")
    images.sort(key=lambda x: x[0])
    joints.sort(key=lambda x: x[0])
    j_stamps = np.array([j[0] for j in joints])
    qpos, qvel, imgs, stamps = [], [], [], []
    for t_ns, img in images:
        k = max(int(np.searchsorted(j_stamps, t_ns, side="right")) - 1, 0)
        qpos.append(joints[k][1])
        qvel.append(joints[k][2])
        if image_size is not None and img.shape[:2] != (image_size, image_size):
            import cv2

            img = cv2.resize(img, (image_size, image_size), interpolation=cv2.INTER_AREA)
        imgs.append(img)
        stamps.append(t_ns)
    stamps_s = (np.array(stamps, dtype=np.int64) - stamps[0]) / 1e9
    qpos_a = np.stack(qpos)
    n1 = qpos_a.shape[0]
    meta: dict[str, Any] = {}
    flags = np.zeros((n1, len(SUBTASK_NAMES)), dtype=bool)
    actions = None
    if "extract_meta" in custom:
        meta = json.loads(custom["extract_meta"])
    if "extract_subtasks_done" in custom:
        f = np.asarray(json.loads(custom["extract_subtasks_done"]), dtype=bool)
        if f.shape == flags.shape:
            flags = f
    if "extract_env_actions" in custom:
        a = np.asarray(json.loads(custom["extract_env_actions"]), dtype=np.float64)
        if a.shape == (n1 - 1, 9):
            actions = a
    if actions is None:
        dt = np.maximum(np.diff(stamps_s), 1e-6)[:, None]
        actions = np.clip(np.diff(qpos_a, axis=0) / (ACTION_SCALE * dt), -1.0, 1.0).astype(np.float32)
        meta.setdefault("actions", "derived_from_joint_states")
    meta.setdefault("source", "rosbag2")
    meta["bag"] = str(bag_path)
    cmds = None
    if commands:
        commands.sort(key=lambda x: x[0])
        cmds = _commands_per_step(stamps, commands)
        meta["action_labels"] = "commands"
    else:
        LOG.warning("%s has no %s messages (joint states only): skill-action labels fall back to realised "
                    "motion, which under-drives a position-controlled arm; record the command topic",
                    bag_path, command_topic)
        meta["action_labels"] = "realised_motion"
    return EpisodeData(
        images=np.stack(imgs),
        qpos=qpos_a,
        qvel=np.stack(qvel),
        subtasks_done=flags,
        env_actions=actions,
        stamps=stamps_s,
        meta=meta,
        commands=cmds,
    )
