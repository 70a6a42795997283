"""Tests never share a ROS domain with a robot (the domain and discovery range conftest forces)."""
import os

from conftest import DEPLOYMENT_DOMAINS


def test_tests_run_in_a_private_localhost_domain():
    assert int(os.environ["ROS_DOMAIN_ID"]) not in DEPLOYMENT_DOMAINS
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert "ROS_STATIC_PEERS" not in os.environ


def test_child_processes_inherit_the_isolation():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import os; print(os.environ['ROS_DOMAIN_ID'], "
                          "os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'])"], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [os.environ["ROS_DOMAIN_ID"], "LOCALHOST"]


def test_a_deployment_domain_is_refused(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    test_dir = Path(__file__).resolve().parent
    env = {**os.environ, "EXTRACT_TEST_DOMAIN_ID": "37"}
    out = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(test_dir)!r}); import conftest"],
                         capture_output=True, text=True, env=env)
    assert out.returncode != 0 and "deployment domain" in out.stderr
