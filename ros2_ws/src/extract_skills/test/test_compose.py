"""Structure of docker-compose.yml and docker/Dockerfile (no Docker engine here, so the file is parsed, not run).

Checks the realtime-arm conventions in RELIABILITY.md: host network, rtprio/memlock ulimits with
SYS_NICE instead of privileged, shared memory for Fast DDS, an own ROS_DOMAIN_ID, SIGINT with a grace
period, no automatic restart of the motion node, models and calibration mounted read-only.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[4]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
MIN_GRACE_S = 10.0  # s, time for the decoder to stop the arm and flush data


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _duration_s(value: str) -> float:
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(value)):
        total += float(amount) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total


def _command(service: dict) -> str:
    cmd = service["command"]
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def _volumes(service: dict) -> list[str]:
    return [v if isinstance(v, str) else f"{v['source']}:{v['target']}{':ro' if v.get('read_only') else ''}"
            for v in service.get("volumes", [])]


def test_services_build_from_the_dockerfile(compose):
    assert {"sim", "real"} <= set(compose["services"])
    for name in ("sim", "real"):
        build = compose["services"][name]["build"]
        assert (REPO / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE.resolve()
    assert "run_sim.sh" in _command(compose["services"]["sim"])
    assert "run_real.sh" in _command(compose["services"]["real"])


def test_real_service_realtime_settings(compose):
    real = compose["services"]["real"]
    assert real["network_mode"] == "host"
    assert real.get("privileged", False) is False
    assert "SYS_NICE" in real["cap_add"]
    # nothing else: every other capability dropped, no privilege gain (issue 14)
    assert real["cap_drop"] == ["ALL"] and set(real["cap_add"]) == {"SYS_NICE"}
    assert "no-new-privileges:true" in real["security_opt"]
    ulimits = real["ulimits"]
    rtprio = ulimits["rtprio"]
    assert (rtprio if isinstance(rtprio, int) else rtprio["hard"]) == 99
    memlock = ulimits["memlock"]
    assert (memlock if isinstance(memlock, int) else memlock["hard"]) == -1
    assert real.get("ipc") == "host" or any("/dev/shm" in v for v in _volumes(real)) or "shm_size" in real


def test_shutdown_and_restart_policy(compose):
    for name in ("sim", "real"):
        svc = compose["services"][name]
        assert svc["stop_signal"] == "SIGINT"
        assert _duration_s(svc["stop_grace_period"]) >= MIN_GRACE_S
    # Quoted "no": an unquoted no is YAML 1.1 boolean false, which Compose rejects.
    assert compose["services"]["real"]["restart"] == "no"
    assert compose["services"]["real"].get("profiles") == ["real"], "real robot must not start on a plain `up`"


def test_domains_and_robot_ip(compose):
    sim_env = compose["services"]["sim"]["environment"]
    real_env = compose["services"]["real"]["environment"]
    assert "ROS_DOMAIN_ID" in sim_env and "ROS_DOMAIN_ID" in real_env
    default = lambda v: re.search(r":-(\d+)\}", str(v)).group(1) if "${" in str(v) else str(v)  # noqa: E731
    assert default(sim_env["ROS_DOMAIN_ID"]) != default(real_env["ROS_DOMAIN_ID"])
    assert 0 <= int(default(real_env["ROS_DOMAIN_ID"])) <= 101
    assert "ROBOT_IP" in str(real_env["ROBOT_IP"])
    # the motion node's DDS discovery stays on the robot PC unless the operator opens it
    assert re.search(r":-(\w+)\}", str(real_env["ROS_AUTOMATIC_DISCOVERY_RANGE"])).group(1) == "LOCALHOST"
    assert "ROS_SECURITY_ENABLE" in real_env and "ROS_SECURITY_KEYSTORE" in real_env


def test_models_and_calibration_read_only(compose):
    for name in ("sim", "real"):
        vols = _volumes(compose["services"][name])
        assert "./models:/ws/models:ro" in vols
        assert "./calibration:/ws/calibration:ro" in vols


def test_dockerfile():
    text = DOCKERFILE.read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    assert base in ("debian:bookworm", "python:3.11-slim-bookworm") or base.startswith("debian:bookworm")
    assert "libosmesa6" in text
    assert re.search(r"^RUN .*scripts/setup\.sh", text, re.M | re.S)
    assert "COPY . /ws" in text
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and "ros2_ws/install" in ignore


def test_scripts_the_services_run_exist(compose):
    for name in ("sim", "real"):
        script = next(p for p in _command(compose["services"][name]).split() if p.endswith(".sh"))
        assert (REPO / script).is_file(), f"{name} service runs {script}, which does not exist"
    assert (REPO / "scripts" / "setup.sh").is_file()
