"""The suite's re-run policy (support/rerun_policy.py), exercised on a throw-away suite in a subprocess."""
import subprocess
import sys
from pathlib import Path

SUPPORT = Path(__file__).resolve().parent / "support"

# Each test fails on its first attempt and passes on its second (a counter file per test).
FLAKY_ONCE = '''
import pytest
from pathlib import Path

@pytest.mark.flaky(reruns=1)
def test_{name}(tmp_path_factory):
    marker = Path(__file__).with_name("{name}.tried")
    if not marker.exists():
        marker.write_text("1")
        raise AssertionError("first attempt fails")
'''


def _run(tmp_path: Path, names: list[str]) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(SUPPORT)!r})\n"
        "from rerun_policy import pytest_collection_modifyitems, pytest_runtest_logreport, pytest_sessionfinish\n")
    for name in names:
        (tmp_path / f"test_{name}.py").write_text(FLAKY_ONCE.format(name=name))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_one_rerun_of_a_marked_test_passes(tmp_path):
    r = _run(tmp_path, ["camera_frames"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 rerun" in r.stdout


def test_more_than_one_rerun_in_a_run_fails_the_run(tmp_path):
    r = _run(tmp_path, ["camera_frames", "policy_decisions"])
    assert r.returncode == 1, r.stdout + r.stderr
    assert "2 re-runs in this run" in r.stdout


def test_a_safety_or_fault_test_marked_flaky_is_refused(tmp_path):
    r = _run(tmp_path, ["watchdog_stops_arm"])
    assert r.returncode == 4, r.stdout + r.stderr  # pytest's usage error
    assert "may not be re-run" in r.stdout + r.stderr
