"""Convert recorded rosbag2 demos (one bag per demonstration: sensor_msgs/Image + JointState, and the
command topic) into the project's dataset format, so real-robot demos feed the same `extract` pipeline.

    extract-bags-to-dataset data/demos/*/ --out data/real_demos --image-topic /camera/image_raw \
        --command-topic /joint_commands

The skill-action labels are the recorded commands. A bag with joint states only still converts, with a
warning per bag and a count at the end: its labels are realised motion, which under-drives the arm.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from extract_skills.core.data.dataset import write_dataset_info, write_episode
from extract_skills.core.data.rosbag_export import COMMAND_TOPIC, IMAGE_TOPIC, JOINT_TOPIC, bag_to_episode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bags", nargs="+", type=Path, help="rosbag2 directories, one demonstration each")
    ap.add_argument("--out", type=Path, required=True, help="dataset directory to write")
    ap.add_argument("--image-topic", default=IMAGE_TOPIC)
    ap.add_argument("--joint-topic", default=JOINT_TOPIC)
    ap.add_argument("--command-topic", default=COMMAND_TOPIC,
                    help="sensor_msgs/JointState joint + finger position targets sent to the arm controller")
    ap.add_argument("--image-size", type=int, default=None, help="resize images to this square size (px)")
    ns = ap.parse_args(argv)
    size = None
    fallback = []
    for i, bag in enumerate(sorted(ns.bags)):
        ep = bag_to_episode(bag, ns.image_topic, ns.joint_topic, ns.image_size, command_topic=ns.command_topic)
        path = write_episode(ns.out, i, ep)
        size = ep.images.shape[1]
        if ep.commands is None:
            fallback.append(str(bag))
        print(f"{bag} -> {path} ({ep.num_steps} steps, labels: {ep.action_labels})")
    if fallback:
        print(f"WARNING: {len(fallback)} of {len(ns.bags)} bags have no {ns.command_topic}: their skill-action "
              f"labels are realised motion, not commands ({', '.join(fallback)})", file=sys.stderr)
    write_dataset_info(ns.out, {"source": "rosbag2", "image_size": size, "bags": [str(b) for b in sorted(ns.bags)]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
