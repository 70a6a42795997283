"""Shared pytest set-up: import the package from source, pick a private ROS domain, headless GL."""
import os
import sys
from pathlib import Path

PKG_ROOT = Path(__file__).resolve().parents[1]
if str(PKG_ROOT) not in sys.path:
    sys.path.insert(0, str(PKG_ROOT))

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
# Tests send goals, heartbeats and joint states: they must never share a DDS domain with a robot. The
# domain is forced (not defaulted from the caller's shell, which may be a robot's), private per session so
# parallel runs never see each other, and discovery stays on this host. Linux DDS port maths keeps 0-101
# safe; the deployment domains (ROS's default 0, compose real 37 and sim 41, scripts/run_sim.sh 42) are
# never used, and an explicit EXTRACT_TEST_DOMAIN_ID naming one of them is refused.
DEPLOYMENT_DOMAINS = frozenset({0, 37, 41, 42})
TEST_DOMAINS = tuple(d for d in range(50, 100) if d not in DEPLOYMENT_DOMAINS)
_wanted = os.environ.get("EXTRACT_TEST_DOMAIN_ID")
if _wanted is not None and int(_wanted) in DEPLOYMENT_DOMAINS:
    raise RuntimeError(f"EXTRACT_TEST_DOMAIN_ID={_wanted} is a deployment domain; tests refuse to run there")
os.environ["ROS_DOMAIN_ID"] = _wanted if _wanted is not None else str(TEST_DOMAINS[os.getpid() % len(TEST_DOMAINS)])
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.pop("ROS_STATIC_PEERS", None)


import pytest  # noqa: E402

# triton's native library segfaults when it loads after mujoco's OSMesa (see kitchen._preload_triton). A test module
# that imports gymnasium_robotics (hence mujoco) at collection, run without an earlier torch-using module, crashed
# at its first KitchenSim: load triton before any test module is imported.
from extract_skills.core.sim.kitchen import _preload_triton  # noqa: E402

_preload_triton()


@pytest.fixture()
def one_torch_thread():
    """Tiny networks: one torch thread avoids oversubscribing the 2 cores when other jobs share them."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# The re-run policy's hooks (pytest finds them by name in this module).
from support.rerun_policy import (  # noqa: E402,F401
    pytest_collection_modifyitems, pytest_runtest_logreport, pytest_sessionfinish)
