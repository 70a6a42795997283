"""Camera embedding node: sensor_msgs/Image in, SkillEmbedding out (stamped with the image's stamp).

The encoder is the one the skill checkpoint was trained with (name + weights hash are checked).
Images are queued by the subscription and embedded by a worker thread (woken per image, not
polled: a fast polling timer starved rclpy's executor on 2 cores); when it falls behind it embeds
the backlog as one batch. Stale frames (monotonic arrival age) and frozen frames
(repeated stamp or identical pixels) are refused and reported, never embedded.
"""
from __future__ import annotations

import collections
import hashlib
import threading
import time
from pathlib import Path

import numpy as np
from extract_msgs.msg import SkillEmbedding
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from extract_skills.core.skills.deployment import load_deployment_encoder
from extract_skills.graph import TOPICS
from extract_skills.nodes.common import declare, image_to_rgb, models_dir, run_node, subscribe

DEFAULTS = {
    "image_topic": TOPICS["image"],
    "models_dir": "",
    "checkpoint": "extract_kitchen.pt",
    "camera_info_file": "",  # camera_info YAML; image size must match it
    "max_frame_age_s": 0.5,  # s, older frames (arrival, monotonic) are dropped as stale
    "frozen_frame_limit": 3,  # identical frames in a row before the stream counts as frozen
    "max_batch": 8,  # frames embedded in one batch when behind
    "num_threads": 0,  # torch intra-op threads; 0 = torch default
}


class CameraEmbeddingNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("camera_embedding", **kwargs)
        self.p = declare(self, DEFAULTS, {
            "max_frame_age_s": lambda v: None if v > 0 else "must be > 0 s",
            "frozen_frame_limit": lambda v: None if v >= 1 else "must be >= 1",
            "max_batch": lambda v: None if v >= 1 else "must be >= 1",
        })
        if self.p["num_threads"] > 0:
            import torch

            torch.set_num_threads(self.p["num_threads"])
        ckpt = models_dir(self.p["models_dir"]) / self.p["checkpoint"]
        self.encoder = load_deployment_encoder(ckpt)
        self.expected_size = None
        if self.p["camera_info_file"]:
            from extract_skills.calibration.validate import load_camera_info

            info = load_camera_info(Path(self.p["camera_info_file"]))
            self.expected_size = (int(info.width), int(info.height))
        self._queue: collections.deque = collections.deque(maxlen=64)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stop = False
        self.busy = False  # the worker holds a batch (observability, tests)
        self._last_stamp = None
        self._last_hash = None
        self._repeats = 0
        self.seq = 0
        self.counters = collections.Counter()
        self.pub = self.create_publisher(SkillEmbedding, TOPICS["embedding"], 10)
        # Sensor-data QoS (best effort, the newest frames), as ROS camera pipelines read: it matches reliable and
        # best-effort drivers, a frame lost is replaced by the next one, and no acknowledgement waits on this process.
        subscribe(self, Image, self.p["image_topic"], self._on_image, qos_profile_sensor_data)
        self._worker = threading.Thread(target=self._work_loop, name="camera_embedding", daemon=True)
        self._worker.start()
        self.get_logger().info(f"embedding {self.p['image_topic']} with {self.encoder.identity.name} "
                               f"({self.encoder.identity.sha256[:12]})")

    def _on_image(self, msg: Image) -> None:
        self.seq += 1
        if self.expected_size and (msg.width, msg.height) != self.expected_size:
            self.counters["size_mismatch"] += 1
            self.get_logger().error(
                f"image {msg.width}x{msg.height} does not match camera_info {self.expected_size[0]}x"
                f"{self.expected_size[1]}: refusing frames", throttle_duration_sec=2.0)
            return
        try:
            rgb = image_to_rgb(msg)
        except ValueError as exc:
            self.counters["bad_image"] += 1
            self.get_logger().error(f"refusing image: {exc}", throttle_duration_sec=2.0)
            return
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        digest = hashlib.blake2b(rgb.tobytes(), digest_size=16).digest()
        # A camera that keeps sending the same stamp or the same pixels is frozen: no new information.
        if stamp == self._last_stamp or digest == self._last_hash:
            self._repeats += 1
        else:
            self._repeats = 0
        self._last_stamp, self._last_hash = stamp, digest
        if self._repeats >= self.p["frozen_frame_limit"]:
            self.counters["frozen"] += 1
            self.get_logger().warning(f"camera frozen ({self._repeats} repeated frames): refusing",
                                      throttle_duration_sec=2.0)
            return
        with self._wake:
            self._queue.append((time.monotonic(), msg.header, rgb, self.seq))
            self._wake.notify()

    def _work_loop(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stop:
                    self._wake.wait(0.5)
                if self._stop:
                    return
                items = [self._queue.popleft() for _ in range(min(len(self._queue), self.p["max_batch"]))]
                self.busy = True
            try:
                self._embed(items)
            except Exception as exc:  # noqa: BLE001 - keep serving; every failure is reported
                self.counters["embed_error"] += 1
                self.get_logger().error(f"embedding failed: {exc!r}", throttle_duration_sec=2.0)
            finally:
                with self._wake:
                    self.busy = False

    def _embed(self, items: list) -> None:
        now = time.monotonic()
        fresh = [it for it in items if now - it[0] <= self.p["max_frame_age_s"]]
        if len(fresh) < len(items):
            self.counters["stale"] += len(items) - len(fresh)
            self.get_logger().warning(f"dropped {len(items) - len(fresh)} stale frame(s)", throttle_duration_sec=2.0)
        if not fresh:
            return
        emb = self.encoder.embed_frames(np.stack([it[2] for it in fresh]), batch_size=len(fresh))
        done = time.monotonic()
        for (t_arrive, header, _, seq), e in zip(fresh, emb):
            msg = SkillEmbedding()
            msg.header = header
            msg.encoder_name = self.encoder.identity.name
            msg.encoder_hash = self.encoder.identity.sha256
            msg.embedding = e.astype(np.float32).tolist()
            msg.image_seq = seq
            msg.latency = float(done - t_arrive)
            self.pub.publish(msg)
        self.counters["embedded"] += len(fresh)


    def close(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._worker.join(5.0)


def main(args=None) -> None:
    run_node(CameraEmbeddingNode, args)


if __name__ == "__main__":
    main()
