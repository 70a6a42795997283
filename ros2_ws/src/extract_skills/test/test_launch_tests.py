"""Runs the launch_testing tests in test/launch_tests/ with ROS 2's `launch_test` runner (what ament's
`add_launch_test` calls), one process per file, where `launch`, `launch_ros` and `launch_testing` are installed.

They are not on any registry this project can install from (README), so here they skip; the same behaviours are
covered without launch by tests that start the nodes as processes (test_nodes_graph.py and others). The runner
is used rather than launch_testing's pytest plugin: the plugin of the fetched sources breaks pytest 9.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LAUNCH_TESTS = sorted((Path(__file__).parent / "launch_tests").glob("launch_test_*.py"))


@pytest.mark.parametrize("path", LAUNCH_TESTS, ids=[p.stem for p in LAUNCH_TESTS])
def test_launch_file(path, tmp_path):
    pytest.importorskip("launch.actions", reason="ROS 2 launch is not installed here (not on PyPI); see README")
    pytest.importorskip("launch_ros.actions", reason="launch_ros is not installed here (not on PyPI)")
    pytest.importorskip("launch_testing.launch_test", reason="launch_testing is not installed here (not on PyPI)")
    try:
        from ament_index_python.packages import get_package_share_directory

        get_package_share_directory("extract_skills")
    except LookupError as exc:  # the launch files are found through the installed workspace
        pytest.skip(f"extract_skills share dir not found (source the workspace): {exc}")
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # conftest's private ROS domain and localhost discovery carry over
    xml = tmp_path / "result.xml"
    proc = subprocess.run([sys.executable, "-m", "launch_testing.launch_test", str(path), "--junit-xml", str(xml)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
