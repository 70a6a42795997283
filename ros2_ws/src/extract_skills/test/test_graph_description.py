"""The graph description is the single source for launch files and the in-process runner."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from extract_skills.graph import LAUNCH_ARGS, NODES, nodes_for, overrides_for, param_file

PKG = Path(__file__).resolve().parents[1]


def test_every_node_has_an_entry_point_and_a_class():
    setup = (PKG / "setup.py").read_text()
    for spec in NODES:
        assert f'"{spec.executable}": "{spec.module}:main"' in setup, spec.executable
        src = (PKG / (spec.module.replace(".", "/") + ".py")).read_text()
        tree = ast.parse(src)
        assert spec.node_class in {n.name for n in tree.body if isinstance(n, ast.ClassDef)}


def _declared(module: str) -> set[str]:
    """Keys of a node module's DEFAULTS dict, read from the source (``**NAME`` entries from nodes/common.py)."""
    mod = ast.parse((PKG / (module.replace(".", "/") + ".py")).read_text())
    defaults = next(n for n in mod.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "DEFAULTS")
    keys = {k.value for k in defaults.value.keys if k is not None}
    common = ast.parse((PKG / "extract_skills/nodes/common.py").read_text())
    for k, v in zip(defaults.value.keys, defaults.value.values):
        if k is None:  # **SAC_DEFAULTS
            d = next(n for n in common.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == v.id)
            keys |= {kk.value for kk in d.value.keys}
    return keys


@pytest.mark.parametrize("mode", ["sim", "real"])
def test_param_file_sections_match_nodes_and_declared_parameters(mode):
    data = yaml.safe_load(param_file(mode).read_text())
    names = {n.name for n in nodes_for(mode)}
    assert set(data) == names, "parameter file sections must be exactly the mode's nodes"
    for spec in nodes_for(mode):
        declared = _declared(spec.module)
        unknown = set(data[spec.name]["ros__parameters"]) - declared
        assert not unknown, f"{spec.name}: parameters in {param_file(mode).name} not declared in code: {unknown}"
    # every launch argument targets a declared parameter of a node in this mode
    for arg in LAUNCH_ARGS[mode]:
        for node, param in arg.targets:
            assert node in names
            assert param in _declared(next(s for s in NODES if s.name == node).module), (arg.name, node, param)


def test_overrides_reject_unknown_arguments():
    assert overrides_for("real", {"robot_ip": "10.0.0.2"}) == {"skill_decoder": {"robot_ip": "10.0.0.2"}}
    with pytest.raises(ValueError, match="robot_ipp"):
        overrides_for("real", {"robot_ipp": "x"})
    with pytest.raises(ValueError, match="valid modes"):
        nodes_for("moon")


def test_runner_reads_the_same_description():
    from extract_skills.nodes.run_graph import node_parameters

    params = node_parameters("sim", {"num_episodes": "1", "task": "kettle"})
    assert params["reward_reset_supervisor"]["num_episodes"] == 1  # typed like launch_ros does
    assert params["kitchen_sim"]["task"] == "kettle" and params["reward_reset_supervisor"]["task"] == "kettle"
    assert set(params) == {n.name for n in nodes_for("sim")} - {"skill_learner"}  # learner only on request
    remote = node_parameters("sim", {"learn": "true", "learner": "remote", "run_dir": "/tmp/x"})
    assert "skill_learner" in remote and remote["skill_policy"]["learn"] is True
    assert remote["skill_learner"]["run_dir"] == remote["skill_policy"]["run_dir"] == "/tmp/x"
    assert "skill_learner" not in node_parameters("real", {"learn": "true", "learner": "local"})


@pytest.mark.parametrize("launch_file,mode", [("sim.launch.py", "sim"), ("real_robot.launch.py", "real")])
def test_launch_files_build_with_real_launch_api(launch_file, mode):
    # "launch.actions", not "launch": the package's own launch/ folder is importable as a namespace package.
    pytest.importorskip("launch.actions", reason="ROS 2 launch is not installed here (not on PyPI); see README")
    launch_ros = pytest.importorskip("launch_ros.actions", reason="launch_ros is not installed here (not on PyPI)")
    import importlib.util

    from launch.actions import DeclareLaunchArgument

    spec = importlib.util.spec_from_file_location("lf", PKG / "launch" / launch_file)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
        ld = mod.generate_launch_description()
    except LookupError as exc:  # PackageNotFoundError: the workspace is not sourced
        pytest.skip(f"extract_skills share dir not found: {exc}")
    args = {a.name: a for a in ld.entities if isinstance(a, DeclareLaunchArgument)}
    assert set(args) == {a.name for a in LAUNCH_ARGS[mode]}
    assert all(a.description for a in args.values())
    nodes = [e for e in ld.entities if isinstance(e, launch_ros.Node)]
    assert len(nodes) == len(nodes_for(mode))


def test_the_decoder_gets_time_to_stop_the_arm_before_sigterm():
    """Under `ros2 launch` Ctrl-C, the decoder's stop path (franky: up to 5 s join + 5 s standstill) must finish
    before launch escalates to SIGTERM; docker's grace period must cover that too."""
    import yaml

    from extract_skills.arms.franky_arm import FrankyArmConfig

    dec = next(n for n in nodes_for("real") if n.name == "skill_decoder")
    worst_stop = 2.0 * FrankyArmConfig(robot_ip="x").stop_timeout_s
    assert dec.sigterm_timeout_s > worst_stop
    compose = yaml.safe_load((PKG.parents[2] / "docker-compose.yml").read_text())
    grace = [int(str(svc["stop_grace_period"]).rstrip("s")) for svc in compose["services"].values()
             if "stop_grace_period" in svc]
    assert grace and min(grace) > dec.sigterm_timeout_s


def test_empty_launch_defaults_take_the_parameter_files_values():
    from extract_skills.graph import launch_defaults

    sim = launch_defaults("sim")
    yaml_task = yaml.safe_load(param_file("sim").read_text())["kitchen_sim"]["ros__parameters"]["task"]
    assert sim["task"] == yaml_task and sim["task"]  # not "": ros2 launch would override the YAML with it
    assert sim["num_episodes"] == "3" and sim["learn"] == "false"
    real = launch_defaults("real")
    assert real["robot_ip"] == "172.16.0.2"
