"""Sim stack: MuJoCo Franka Kitchen + camera embedding + skill policy + skill decoder + supervisor.

    ros2 launch extract_skills sim.launch.py num_episodes:=3
"""
from extract_skills.launch_description import build_launch_description


def generate_launch_description():
    return build_launch_description("sim")
