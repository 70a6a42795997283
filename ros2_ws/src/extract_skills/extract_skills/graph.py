"""The node graph, described once.

`launch/sim.launch.py`, `launch/real_robot.launch.py` and the in-process runner
(`extract_skills.nodes.run_graph`, for machines without `ros2 launch`) all read this module,
so node names, executables, parameter files and launch arguments cannot drift apart.
No ROS imports here: the launch files and the runner add those.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

MODES = ("sim", "real")

# Topic and service names shared by the nodes.
TOPICS = {
    "image": "/camera/image_raw",
    "joint_states": "/joint_states",
    "embedding": "/skill_embedding",
    "skill_command": "/skill_command",
    "joint_commands": "/joint_commands",
    "episode_event": "/episode_event",
    "subtask_status": "/subtask_status",
    "transitions": "/rl/transitions",
    "policy_weights": "/rl/policy_weights",
    "arm_fault": "/arm_fault",
    "diagnostics": "/diagnostics",  # diagnostic_msgs/DiagnosticArray, the ROS convention for health
}
ACTION_EXECUTE_SKILL = "/execute_skill"
# ResetEpisode reason with which the operator voids an episode: the policy drops its unfinished skill.
RERECORD = "rerecord"
SERVICES = {
    "reset_episode": "/reset_episode",
    "confirm_outcome": "/confirm_outcome",
    "sim_reset": "/sim/reset",
    "move_home": "/move_home",
    "clear_fault": "/clear_fault",
}


@dataclass(frozen=True)
class NodeSpec:
    name: str  # ROS node name; also its section in the parameter file
    executable: str  # console script installed under lib/extract_skills
    module: str  # python module holding the Node subclass and main()
    node_class: str
    modes: tuple[str, ...] = MODES
    # (launch argument, value) pairs that must all hold for the node to run; empty = always runs.
    only_if: tuple[tuple[str, str], ...] = ()
    # Restarted by the launch when it dies. Only nodes whose death cannot leave the arm unsafe: the decoder's
    # heartbeat watchdog stops a dead policy's skill and the supervisor truncates its episode. The decoder,
    # the supervisor and the sim are never restarted silently: their exit ends the launch.
    respawn: bool = False
    # s between the launch's SIGINT and its SIGTERM (launch's default: 5). The decoder stops the arm on the way
    # out (franky: the stop motion joins up to stop_timeout_s, 5 s, then up to as long again for a standstill):
    # a SIGTERM before that would cut the stop short. Docker's stop_grace_period covers it too.
    sigterm_timeout_s: float = 5.0


@dataclass(frozen=True)
class LaunchArg:
    name: str
    default: str
    description: str
    # (node name, parameter name) pairs this argument overrides; empty = consumed by the launch logic.
    targets: tuple[tuple[str, str], ...] = field(default_factory=tuple)


NODES: tuple[NodeSpec, ...] = (
    NodeSpec("kitchen_sim", "kitchen_sim_node", "extract_skills.nodes.kitchen_sim_node", "KitchenSimNode", ("sim",)),
    NodeSpec("camera_embedding", "camera_embedding_node", "extract_skills.nodes.camera_embedding_node",
             "CameraEmbeddingNode", respawn=True),
    NodeSpec("skill_policy", "skill_policy_node", "extract_skills.nodes.skill_policy_node", "SkillPolicyNode",
             respawn=True),
    NodeSpec("skill_decoder", "skill_decoder_server", "extract_skills.nodes.skill_decoder_server",
             "SkillDecoderServer", sigterm_timeout_s=15.0),
    NodeSpec("reward_reset_supervisor", "reward_reset_supervisor", "extract_skills.nodes.reward_reset_supervisor",
             "RewardResetSupervisor"),
    NodeSpec("skill_learner", "skill_learner_node", "extract_skills.nodes.skill_learner_node", "SkillLearnerNode",
             only_if=(("learn", "true"), ("learner", "remote")), respawn=True),
)

@dataclass(frozen=True)
class NodeInterfaces:
    """What a node may use on the ROS graph, in any mode or option (a superset): the access-control policy of
    its SROS2 enclave is generated from this (``extract_skills.security``), and a test checks it against what
    the running nodes really create."""

    publishes: tuple[str, ...] = ()
    subscribes: tuple[str, ...] = ()
    services: tuple[str, ...] = ()  # servers
    clients: tuple[str, ...] = ()  # service clients
    action_servers: tuple[str, ...] = ()
    action_clients: tuple[str, ...] = ()


HEARTBEAT = "/skill_policy/heartbeat"
INTERFACES: dict[str, NodeInterfaces] = {
    "kitchen_sim": NodeInterfaces(
        publishes=("/camera/image_raw", "/joint_states", "/subtask_status"), subscribes=("/joint_commands",),
        services=("/sim/reset",)),
    "camera_embedding": NodeInterfaces(publishes=("/skill_embedding",), subscribes=("/camera/image_raw",)),
    "skill_policy": NodeInterfaces(
        publishes=("/skill_command", HEARTBEAT, "/rl/transitions"),
        subscribes=("/skill_embedding", "/joint_states", "/episode_event", "/rl/policy_weights"),
        action_clients=("/execute_skill",)),
    "skill_decoder": NodeInterfaces(
        publishes=("/joint_commands", "/joint_states", "/arm_fault", "/diagnostics"),
        subscribes=("/joint_states", HEARTBEAT), services=("/clear_fault", "/move_home"),
        action_servers=("/execute_skill",)),
    "reward_reset_supervisor": NodeInterfaces(
        publishes=("/episode_event",),
        subscribes=("/subtask_status", "/skill_command", "/arm_fault", "/skill_embedding", HEARTBEAT),
        services=("/reset_episode", "/confirm_outcome"), clients=("/sim/reset", "/move_home")),
    "skill_learner": NodeInterfaces(publishes=("/rl/policy_weights",), subscribes=("/rl/transitions",)),
}
#: People's tools, not launched: their enclaves let an operator reward, reset, clear a fault and send a goal by hand
#: (`extract-operator --task ... --ros-args --enclave /extract_skills/operator_console`, or `ros2 ... --ros-args
#: --enclave ...`).
OPERATOR_INTERFACES: dict[str, NodeInterfaces] = {
    "operator_console": NodeInterfaces(
        subscribes=("/episode_event", "/arm_fault", "/diagnostics"),
        clients=("/confirm_outcome", "/reset_episode", "/clear_fault"), action_clients=("/execute_skill",)),
}


# Online fine-tuning switches, the same in both modes.
_LEARNING_ARGS = (
    LaunchArg("learn", "false", "Fine-tune the skill policy online from the supervisor's rewards (true/false)",
              (("skill_policy", "learn"),)),
    LaunchArg("learner", "local", "Where the learner trains: local (inside skill_policy) or remote (a skill_learner "
              "node; transitions and weights over ROS topics)", (("skill_policy", "learner"),)),
    LaunchArg("policy_checkpoint", "", "agent.pt of an online training run to act with (default: the offline priors)",
              (("skill_policy", "policy_checkpoint"), ("skill_learner", "policy_checkpoint"))),
    LaunchArg("run_dir", "runs/online", "Learner checkpoints, replay buffer and TensorBoard logs (resumed if present)",
              (("skill_policy", "run_dir"), ("skill_learner", "run_dir"))),
)

PARAM_FILES = {"sim": "sim.yaml", "real": "real_robot.yaml"}

LAUNCH_ARGS: dict[str, tuple[LaunchArg, ...]] = {
    "sim": (
        LaunchArg("models_dir", "", "Directory with the skill checkpoint and encoder weights (default: the shipped models/)",
                  (("camera_embedding", "models_dir"), ("skill_policy", "models_dir"), ("skill_decoder", "models_dir"),
                   ("skill_learner", "models_dir"))),
        LaunchArg("num_episodes", "3", "Episodes to run before the supervisor ends the run (0 = forever)",
                  (("reward_reset_supervisor", "num_episodes"),)),
        LaunchArg("task", "", "Comma-separated kitchen subtasks of the evaluation task (default: the first held-out task in config/sim.yaml)",
                  (("kitchen_sim", "task"), ("reward_reset_supervisor", "task"))),
        LaunchArg("seed", "0", "Random seed of the sim and the policy",
                  (("kitchen_sim", "seed"), ("skill_policy", "seed"))),
        LaunchArg("summary_json", "", "Write the episode summary (JSON) here after every episode (empty = no file)",
                  (("reward_reset_supervisor", "summary_json"),)),
        LaunchArg("lockstep", "true", "Sim steps once per decoder command (true) or free-runs at its control period "
                  "(false)", (("kitchen_sim", "lockstep"), ("skill_decoder", "sim_lockstep"))),
        *_LEARNING_ARGS,
    ),
    "real": (
        LaunchArg("robot_ip", "172.16.0.2", "IP address of the Franka control unit (FCI)",
                  (("skill_decoder", "robot_ip"),)),
        LaunchArg("models_dir", "", "Directory with the skill checkpoint and encoder weights (default: the shipped models/)",
                  (("camera_embedding", "models_dir"), ("skill_policy", "models_dir"), ("skill_decoder", "models_dir"),
                   ("skill_learner", "models_dir"))),
        LaunchArg("camera_topic", "/camera/image_raw", "sensor_msgs/Image topic of the scene camera",
                  (("camera_embedding", "image_topic"),)),
        LaunchArg("camera_info", "", "camera_info YAML to validate image size against (empty = no check)",
                  (("camera_embedding", "camera_info_file"),)),
        LaunchArg("use_fake_hardware", "false", "Drive the scripted fake arm instead of the robot (no motion)",
                  (("skill_decoder", "use_fake_hardware"),)),
        LaunchArg("realtime", "", "enforce (robot PC with an RT kernel: the default from config/real_robot.yaml) or "
                  "ignore (only for franky-sim on 127.0.0.1 and tests)", (("skill_decoder", "realtime"),)),
        LaunchArg("num_episodes", "0", "Episodes to run before stopping (0 = until interrupted)",
                  (("reward_reset_supervisor", "num_episodes"),)),
        *_LEARNING_ARGS,
    ),
}


def nodes_for(mode: str, values: Mapping[str, str] | None = None) -> tuple[NodeSpec, ...]:
    """Nodes of a mode; with launch-argument ``values`` (defaults filled in), only those whose
    ``only_if`` holds (the launch files express the same with a condition)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    nodes = tuple(n for n in NODES if mode in n.modes)
    if values is None:
        return nodes
    full = {a.name: a.default for a in LAUNCH_ARGS[mode]}
    full.update({k: v for k, v in values.items() if v != ""})
    return tuple(n for n in nodes if all(full.get(arg, "").lower() == want for arg, want in n.only_if))


def package_root() -> Path:
    """Source tree of the package (config/ lives beside the python package)."""
    return Path(__file__).resolve().parents[1]


def default_models_dir() -> Path:
    """The repository's shipped models/ (env EXTRACT_MODELS_DIR overrides)."""
    import os

    env = os.environ.get("EXTRACT_MODELS_DIR")
    if env:
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        if (parent / "models").is_dir() and (parent / "ros2_ws").is_dir():
            return parent / "models"
    return Path.cwd() / "models"


def param_file(mode: str, share_dir: Path | None = None) -> Path:
    """Parameter file of a mode, from the installed share dir when given, else from the source tree."""
    base = share_dir if share_dir is not None else package_root()
    return base / "config" / PARAM_FILES[mode]


def launch_defaults(mode: str, params_path: Path | None = None) -> dict[str, str]:
    """Declared default of every launch argument. An argument whose default is "" takes the value its first
    target has in the mode's parameter file: under `ros2 launch` a "" default would otherwise override the
    YAML (the sim's task came up empty)."""
    import yaml

    data = yaml.safe_load((params_path or param_file(mode)).read_text()) or {}
    out = {}
    for arg in LAUNCH_ARGS[mode]:
        value = arg.default
        if value == "" and arg.targets:
            node, param = arg.targets[0]
            yaml_value = ((data.get(node) or {}).get("ros__parameters") or {}).get(param, "")
            value = str(yaml_value).lower() if isinstance(yaml_value, bool) else str(yaml_value)
        out[arg.name] = value
    return out


def overrides_for(mode: str, values: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Map launch-argument values onto per-node parameter overrides (empty strings are skipped)."""
    known = {a.name: a for a in LAUNCH_ARGS[mode]}
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"unknown argument(s) {sorted(unknown)} for mode {mode}; valid: {sorted(known)}")
    out: dict[str, dict[str, str]] = {}
    for name, value in values.items():
        if value == "":
            continue
        for node, param in known[name].targets:
            out.setdefault(node, {})[param] = value
    return out
