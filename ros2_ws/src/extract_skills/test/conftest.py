"""Shared pytest set-up: import the package from source, pick a private ROS domain, headless GL."""
import os
import sys
from pathlib import Path

PKG_ROOT = Path(__file__).resolve().parents[1]
if str(PKG_ROOT) not in sys.path:
    sys.path.insert(0, str(PKG_ROOT))

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
# A private DDS domain per test session so parallel runs on one machine never see each other.
# Linux DDS port maths keeps domains 0-101 safe; 42 is left to the main job (scripts/run_sim.sh).
_domain = 1 + os.getpid() % 100
os.environ.setdefault("ROS_DOMAIN_ID", str(_domain if _domain != 42 else 43))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
