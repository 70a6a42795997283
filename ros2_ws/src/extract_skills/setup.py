from glob import glob

from setuptools import find_packages, setup

package_name = "extract_skills"

# Node executables (names used by the graph description, the launch files and the in-process runner).
NODES = {
    "camera_embedding_node": "extract_skills.nodes.camera_embedding_node:main",
    "skill_policy_node": "extract_skills.nodes.skill_policy_node:main",
    "skill_decoder_server": "extract_skills.nodes.skill_decoder_server:main",
    "reward_reset_supervisor": "extract_skills.nodes.reward_reset_supervisor:main",
    "skill_learner_node": "extract_skills.nodes.skill_learner_node:main",
    "kitchen_sim_node": "extract_skills.nodes.kitchen_sim_node:main",
    "run_graph": "extract_skills.nodes.run_graph:main",
}
CLIS = {
    "extract": "extract_skills.cli.extract_pipeline:main",
    "extract-generate-demos": "extract_skills.cli.generate_demos:main",
    "extract-contact-sheet": "extract_skills.cli.contact_sheet:main",
    "extract-bags-to-dataset": "extract_skills.cli.bags_to_dataset:main",
    "extract-calibrate-intrinsics": "extract_skills.cli.calibrate_intrinsics:main",
    "extract-calibrate-handeye": "extract_skills.cli.calibrate_handeye:main",
    "extract-operator": "extract_skills.cli.operator_console:main",
    "extract-sros2-policy": "extract_skills.security:main",
}

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="EXTRACT maintainers",
    maintainer_email="maintainers@extract-skills.dev",
    description="EXTRACT skill extraction, learning and execution on a Franka",
    license="Apache-2.0",
    # colcon runs pytest only when the package declares it; otherwise unittest finds 0 tests.
    extras_require={"test": ["pytest"]},
    entry_points={
        "console_scripts": [f"{k} = {v}" for k, v in {**NODES, **CLIS}.items()],
    },
)
