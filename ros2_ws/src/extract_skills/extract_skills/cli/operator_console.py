"""Operator console for online learning on the real robot: rewards and resets from single key presses.

Like the teleop and data-collection consoles robot users know (one key per outcome, no Enter):

    1..9   the n-th subtask of the task succeeded        -> /confirm_outcome {subtask, succeeded: true}
    a      every remaining subtask succeeded             -> /confirm_outcome {subtask: "", succeeded: true}
    f      the episode failed (ends it, no bootstrap)    -> /confirm_outcome {subtask: "", succeeded: false}
    r      rerecord: abort this episode, drop its open skill, reset (workspace clear)
                                                         -> /reset_episode {operator_confirmed: true, reason: rerecord}
    h      workspace clear, start the next episode       -> /reset_episode {operator_confirmed: true}
    q      quit

The supervisor credits the rewards (EpisodeEvent REWARD with detail "operator: ..."), and the policy node
records them with the skill transition as an intervention.

    extract-operator --task "microwave,kettle,light switch,slide cabinet"
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from extract_skills.core.data.dataset import SUBTASK_NAMES
from extract_skills.graph import RERECORD

HELP = "keys: 1-9 subtask done | a all done | f failed | r rerecord | h next episode | q quit"


@dataclass(frozen=True)
class OperatorCommand:
    service: str  # "confirm" | "reset" | "quit" | "none"
    subtask: str = ""
    succeeded: bool = False
    reason: str = ""
    message: str = ""  # what the console prints


def interpret_key(key: str, task: list[str]) -> OperatorCommand:
    """One key press -> the service call it stands for (pure: tested without a terminal or ROS)."""
    if key.isdigit() and key != "0":
        i = int(key) - 1
        if i >= len(task):
            return OperatorCommand("none", message=f"the task has {len(task)} subtasks; {HELP}")
        return OperatorCommand("confirm", subtask=task[i], succeeded=True, message=f"{task[i]}: success")
    return {
        "a": OperatorCommand("confirm", succeeded=True, message="all remaining subtasks: success"),
        "f": OperatorCommand("confirm", succeeded=False, message="episode failed"),
        "r": OperatorCommand("reset", reason=RERECORD, message="rerecord: aborting and resetting"),
        "h": OperatorCommand("reset", reason="operator: next episode", message="next episode"),
        "q": OperatorCommand("quit", message="bye"),
    }.get(key.lower(), OperatorCommand("none", message=HELP))


def _read_key() -> str:
    """One key from the terminal without Enter (raw mode, restored afterwards)."""
    import termios
    import tty

    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        return sys.stdin.read(1)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, help="comma-separated subtasks, in the order the keys 1..9 name them")
    ap.add_argument("--timeout-s", type=float, default=10.0, help="wait for a service answer this long")
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args = argv[argv.index("--ros-args"):] if "--ros-args" in argv else []  # e.g. --enclave for SROS2
    ns = ap.parse_args(argv[:len(argv) - len(ros_args)])
    task = [t.strip() for t in ns.task.split(",") if t.strip()]
    unknown = [t for t in task if t not in SUBTASK_NAMES]
    if unknown or not task:
        print(f"unknown subtasks {unknown}; valid: {', '.join(SUBTASK_NAMES)}", file=sys.stderr)
        return 2
    if not sys.stdin.isatty():
        print("extract-operator reads single keys from a terminal; run it in one", file=sys.stderr)
        return 2

    import rclpy
    from extract_msgs.srv import ConfirmOutcome, ResetEpisode

    from extract_skills.graph import SERVICES

    rclpy.init(args=["extract-operator", *ros_args])
    node = rclpy.create_node("operator_console")
    confirm = node.create_client(ConfirmOutcome, SERVICES["confirm_outcome"])
    reset = node.create_client(ResetEpisode, SERVICES["reset_episode"])
    print("task: " + ", ".join(f"{i + 1} {t}" for i, t in enumerate(task)))
    print(HELP)
    try:
        while True:
            cmd = interpret_key(_read_key(), task)
            print(cmd.message)
            if cmd.service == "quit":
                return 0
            if cmd.service == "none":
                continue
            client, req = ((confirm, ConfirmOutcome.Request(subtask=cmd.subtask, succeeded=cmd.succeeded))
                           if cmd.service == "confirm" else
                           (reset, ResetEpisode.Request(operator_confirmed=True, reason=cmd.reason)))
            if not client.wait_for_service(timeout_sec=ns.timeout_s):
                print(f"  no supervisor answers {client.srv_name}: is the graph running in this ROS domain?")
                continue
            future = client.call_async(req)
            rclpy.spin_until_future_complete(node, future, timeout_sec=ns.timeout_s)
            res = future.result()
            if res is None:
                print("  no answer (timed out)")
            elif not res.success:
                print(f"  refused: {res.error}")
            else:
                print("  ok" + (f", reward {res.reward:.0f}" if cmd.service == "confirm" else f", episode {res.episode_id}"))
    except KeyboardInterrupt:
        return 0
    finally:
        node.destroy_node()
        rclpy.shutdown()


if __name__ == "__main__":
    sys.exit(main())
