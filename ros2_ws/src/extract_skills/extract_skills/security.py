"""SROS2 access control for the graph: one enclave per node, each allowed exactly what it uses.

:func:`policy_xml` writes an SROS2 policy (format 0.2.0, what ``ros2 security generate_artifacts -p`` reads) from
the graph description's :data:`extract_skills.graph.INTERFACES`; ``scripts/sros2_setup.sh`` turns it into a
keystore with signed permissions per enclave, and the launch files start every node in its enclave
(``--enclave /extract_skills/<node>``). With ``ROS_SECURITY_ENABLE=true`` and ``ROS_SECURITY_STRATEGY=Enforce``,
a host without the keystore's certificates can neither send goals nor spoof heartbeats or joint states.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

from extract_skills.graph import INTERFACES, OPERATOR_INTERFACES, NodeInterfaces, nodes_for

ENCLAVE_ROOT = "/extract_skills"
POLICY_VERSION = "0.2.0"
# Every rclpy node publishes its log and parameter events and serves its own parameter services.
COMMON_PUBLISH = ("rosout", "parameter_events")
PARAMETER_SERVICES = ("describe_parameters", "get_parameter_types", "get_parameters", "list_parameters",
                      "set_parameters", "set_parameters_atomically", "get_type_description")


def enclave(node: str) -> str:
    return f"{ENCLAVE_ROOT}/{node}"


def _names(parent: ET.Element, group: str, kind: str, tag: str, names) -> None:
    names = sorted({n.lstrip("/") for n in names})  # relative to the profile's namespace "/"
    if names:
        el = ET.SubElement(parent, group, {kind: "ALLOW"})
        for n in names:
            ET.SubElement(el, tag).text = n


def _profile(parent: ET.Element, node: str, itf: NodeInterfaces) -> None:
    prof = ET.SubElement(parent, "profile", {"ns": "/", "node": node})
    _names(prof, "topics", "publish", "topic", (*itf.publishes, *COMMON_PUBLISH))
    _names(prof, "topics", "subscribe", "topic", (*itf.subscribes, "parameter_events"))
    _names(prof, "services", "reply", "service", (*itf.services, *(f"~/{s}" for s in PARAMETER_SERVICES)))
    _names(prof, "services", "request", "service", itf.clients)
    _names(prof, "actions", "execute", "action", itf.action_servers)
    _names(prof, "actions", "call", "action", itf.action_clients)


def policy_xml(modes=("sim", "real")) -> str:
    """The SROS2 policy for every node of ``modes`` and the operator's tools (one enclave per node name)."""
    root = ET.Element("policy", {"version": POLICY_VERSION})
    enclaves = ET.SubElement(root, "enclaves")
    nodes = {spec.name: INTERFACES[spec.name] for mode in modes for spec in nodes_for(mode)}
    for name, itf in sorted({**nodes, **OPERATOR_INTERFACES}.items()):
        profiles = ET.SubElement(ET.SubElement(enclaves, "enclave", {"path": enclave(name)}), "profiles")
        _profile(profiles, name, itf)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse
    from pathlib import Path

    ap = argparse.ArgumentParser(description="Write the graph's SROS2 access-control policy (one enclave per node).")
    ap.add_argument("--out", type=Path, required=True, help="policy XML to write")
    ap.add_argument("--mode", choices=("sim", "real", "both"), default="both")
    a = ap.parse_args(argv)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(policy_xml(("sim", "real") if a.mode == "both" else (a.mode,)))
    print(f"wrote {a.out}: enclaves under {ENCLAVE_ROOT}/")
    return 0
