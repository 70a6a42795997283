"""The suite's re-run policy as pytest hooks (test/conftest.py imports them).

A re-run hides a race, so there are none by default (scripts/test.sh passes no --reruns). A test may be
re-run only if it carries ``@pytest.mark.flaky(reruns=1)`` by name, and never a safety or fault test:
those are refused at collection. A run that needed more than one re-run fails.
"""
import pytest

SAFETY_WORDS = ("safety", "fault", "stop", "cancel", "estop", "reflex", "watchdog", "stale", "limit", "unsafe")
MAX_RERUNS_PER_RUN = 1
_reruns: list[str] = []


def pytest_collection_modifyitems(config, items):
    refused = [item.nodeid for item in items if item.get_closest_marker("flaky") is not None
               and any(w in item.nodeid.lower() for w in SAFETY_WORDS)]
    if refused:
        raise pytest.UsageError("safety and fault tests may not be re-run; remove @pytest.mark.flaky from: "
                                + ", ".join(refused))


def pytest_runtest_logreport(report):
    if report.outcome == "rerun":
        _reruns.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if len(_reruns) > MAX_RERUNS_PER_RUN:
        print(f"\nre-run policy: {len(_reruns)} re-runs in this run (at most {MAX_RERUNS_PER_RUN}): {_reruns}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
