"""Real Franka: camera embedding + skill policy + skill decoder (franky/libfranka) + supervisor.

    ros2 launch extract_skills real_robot.launch.py robot_ip:=172.16.0.2 camera_topic:=/camera/color/image_raw
"""
from extract_skills.launch_description import build_launch_description


def generate_launch_description():
    return build_launch_description("real")
