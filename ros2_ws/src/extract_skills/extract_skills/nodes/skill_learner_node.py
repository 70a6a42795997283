"""Skill learner node: the learner half of an actor/learner split, over DDS.

Subscribes the acting policy node's skill transitions (``/rl/transitions``), trains the hybrid skill SAC
(replay buffer, checkpoints and TensorBoard under ``run_dir``, resumed after a restart) and publishes the
policy weights (``/rl/policy_weights``, reliable + transient-local: a restarted actor gets the newest at once)
every ``publish_every`` gradient steps. Run it on the GPU workstation while the robot PC acts:

    ros2 run extract_skills skill_learner_node --ros-args -p run_dir:=runs/online
"""
from __future__ import annotations

import array
import threading
from pathlib import Path

from extract_msgs.msg import PolicyWeights, SkillTransition
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node

from extract_skills.core.rl.actor import encode_policy_state
from extract_skills.core.rl.skill_sac import HybridSkillSAC
from extract_skills.core.rl.trainer import Learner, load_policy
from extract_skills.core.skills.deployment import load_deployment_bundle
from extract_skills.core.skills.encoders import file_sha256
from extract_skills.graph import TOPICS
from extract_skills.nodes.common import (SAC_DEFAULTS, WEIGHTS_QOS, declare, models_dir, run_node, sac_config,
                                         subscribe, transition_from_msg)

DEFAULTS = {
    "models_dir": "",
    "checkpoint": "extract_kitchen.pt",
    "seed": 0,
    "policy_checkpoint": "",  # agent.pt to start the policy from when run_dir holds no checkpoint yet
    "run_dir": "runs/online",  # checkpoints, replay buffer, TensorBoard
    "publish_every": 50,  # gradient steps between published weights
    "checkpoint_every": 200,  # transitions between checkpoints
    **SAC_DEFAULTS,
}


class SkillLearnerNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("skill_learner", **kwargs)
        self.p = declare(self, DEFAULTS, {
            "publish_every": lambda v: None if v >= 1 else "must be >= 1",
            "checkpoint_every": lambda v: None if v >= 1 else "must be >= 1",
        })
        ckpt = models_dir(self.p["models_dir"]) / self.p["checkpoint"]
        bundle = load_deployment_bundle(ckpt)
        self.skill_sha256 = file_sha256(ckpt)
        self.agent = HybridSkillSAC(bundle.model, bundle.argument_bound, sac_config(self.p))
        self.run_dir = Path(self.p["run_dir"])
        self.learner = Learner(self.agent, self.run_dir, seed=self.p["seed"], skill_checkpoint_sha256=self.skill_sha256)
        if self.learner.resume() is None and self.p["policy_checkpoint"]:
            load_policy(self.p["policy_checkpoint"], self.agent, self.skill_sha256)
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(str(self.run_dir / "tb"))
        self._lock = threading.Lock()
        self.counters = {"received": 0, "refused": 0, "published": 0}
        self._published_at = -1
        self._since_checkpoint = 0
        self.pub = self.create_publisher(PolicyWeights, TOPICS["policy_weights"], WEIGHTS_QOS)
        # one callback at a time: updates and checkpoints never interleave
        subscribe(self, SkillTransition, TOPICS["transitions"], self._on_transition, 100,
                                 callback_group=MutuallyExclusiveCallbackGroup())
        self.publish_weights()  # the actor starts from what this learner holds (resumed or the priors)
        self.get_logger().info(f"learner ready: {len(self.learner.buffer)} transitions, {self.agent.updates} updates")

    def publish_weights(self) -> None:
        data, sha = encode_policy_state(self.agent.policy_state())
        msg = PolicyWeights(version=self.agent.updates, skill_checkpoint_sha256=self.skill_sha256, sha256=sha)
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.data = array.array("B", data)  # a typed array: rclpy checks a plain sequence element by element
        self.pub.publish(msg)
        self._published_at = self.agent.updates
        self.counters["published"] += 1

    def _on_transition(self, msg: SkillTransition) -> None:
        with self._lock:
            try:
                n = self.learner.observe(**transition_from_msg(msg))
            except (ValueError, RuntimeError) as e:
                self.counters["refused"] += 1
                self.get_logger().error(f"refused transition of episode {msg.episode_id}: {e}")
                return
            self.counters["received"] += 1
            c = self.learner.counters
            c.env_steps += int(msg.steps)
            if msg.terminated or msg.truncated:
                c.episodes += 1
            if n:
                for k, v in self.learner.last_info.items():
                    self._tb.add_scalar(f"train/{k}", v, self.agent.updates)
            if self.agent.updates - self._published_at >= self.p["publish_every"]:
                self.publish_weights()
            self._since_checkpoint += 1
            if self._since_checkpoint >= self.p["checkpoint_every"]:
                if self.learner.try_checkpoint() is not None:
                    self._since_checkpoint = 0

    def close(self) -> None:
        with self._lock:
            self.learner.try_checkpoint()
            self._tb.close()


def main(args=None) -> None:
    run_node(SkillLearnerNode, args)


if __name__ == "__main__":
    main()
