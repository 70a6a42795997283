"""The SROS2 policy is generated from the graph description; the description must cover what the running nodes
really use, or Enforce mode would deny it on the robot. Checked against live rclpy graphs (sim and real)."""
import xml.etree.ElementTree as ET

import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("extract_msgs", reason="extract_msgs not built: run scripts/setup.sh")
from rclpy.executors import MultiThreadedExecutor  # noqa: E402

from extract_skills.graph import INTERFACES, OPERATOR_INTERFACES, nodes_for  # noqa: E402
from extract_skills.security import enclave, policy_xml  # noqa: E402
from support.ros_graph import RclpyContext, spin_until  # noqa: E402
from support.tiny_models import make_tiny_models  # noqa: E402

COMMON = {"/rosout", "/parameter_events"}


def _live(probe, name: str) -> dict[str, set[str]]:
    """The node's endpoints, with action endpoints folded into their action's name."""
    def names(fn):
        return {t for t, _ in fn(name, "/")}

    pubs = names(probe.get_publisher_names_and_types_by_node)
    subs = names(probe.get_subscriber_names_and_types_by_node)
    srvs = names(probe.get_service_names_and_types_by_node)
    clis = names(probe.get_client_names_and_types_by_node)
    act = lambda ts: {t.split("/_action/")[0] for t in ts if "/_action/" in t}  # noqa: E731
    plain = lambda ts: {t for t in ts if "/_action/" not in t} - COMMON  # noqa: E731
    return {"publishes": plain(pubs), "subscribes": plain(subs),
            "services": {s for s in plain(srvs) if not s.startswith(f"/{name}/")},  # own parameter services
            "clients": plain(clis), "action_servers": act(srvs), "action_clients": act(clis)}


@pytest.mark.parametrize("mode,extra", [("sim", {}), ("real", {"use_fake_hardware": "true"})])
def test_declared_interfaces_cover_what_the_nodes_use(tmp_path, mode, extra):
    from extract_skills.nodes.run_graph import build_nodes, node_parameters

    make_tiny_models(tmp_path)
    params = node_parameters(mode, {"models_dir": str(tmp_path), "learn": "true", "learner": "remote",
                                    "run_dir": str(tmp_path / "run"), **extra})
    with RclpyContext() as ctx:
        nodes = build_nodes(mode, params, context=ctx)
        probe = rclpy.create_node("policy_probe", context=ctx)
        ex = MultiThreadedExecutor(context=ctx)
        for n in (*nodes, probe):
            ex.add_node(n)
        try:
            want = {spec.name for spec in nodes_for(mode, {"learn": "true", "learner": "remote"})}
            assert {n.get_name() for n in nodes} == want
            # wait until discovery shows every node's action endpoints (the last ones to appear)
            assert spin_until(ex, lambda: _live(probe, "skill_decoder")["action_servers"]
                              and _live(probe, "skill_policy")["action_clients"], 20.0)
            for n in nodes:
                live, declared = _live(probe, n.get_name()), INTERFACES[n.get_name()]
                for kind, used in live.items():
                    missing = used - set(getattr(declared, kind))
                    assert not missing, f"{n.get_name()} {kind} {sorted(missing)} not in graph.INTERFACES"
        finally:
            for n in nodes:
                n.close() if hasattr(n, "close") else None


def test_policy_has_one_enclave_per_node_with_exactly_its_permissions():
    root = ET.fromstring(policy_xml())
    assert root.tag == "policy" and root.get("version") == "0.2.0"
    enclaves = {e.get("path"): e for e in root.iter("enclave")}
    names = {spec.name for mode in ("sim", "real") for spec in nodes_for(mode)} | set(OPERATOR_INTERFACES)
    assert set(enclaves) == {enclave(n) for n in names}
    for name in names:
        prof = enclaves[enclave(name)].find("profiles/profile")
        assert prof.get("node") == name and prof.get("ns") == "/"
        allowed = lambda group, kind, tag: {el.text for g in prof.findall(group) if g.get(kind) == "ALLOW"  # noqa: E731
                                            for el in g.findall(tag)}
        itf = {**INTERFACES, **OPERATOR_INTERFACES}[name]
        assert allowed("topics", "publish", "topic") == {t.lstrip("/") for t in itf.publishes} | {"rosout", "parameter_events"}
        assert allowed("topics", "subscribe", "topic") == {t.lstrip("/") for t in itf.subscribes} | {"parameter_events"}
        assert allowed("actions", "execute", "action") == {a.lstrip("/") for a in itf.action_servers}
        assert allowed("actions", "call", "action") == {a.lstrip("/") for a in itf.action_clients}
        assert allowed("services", "request", "service") == {s.lstrip("/") for s in itf.clients}
    # only the decoder may command the arm; only the policy and the operator's console may send goals
    movers = [p.get("node") for p in root.iter("profile")
              if any(t.text == "joint_commands" for g in p.findall("topics") if g.get("publish") for t in g)]
    assert sorted(movers) == ["skill_decoder"]
    callers = [p.get("node") for p in root.iter("profile") if p.find("actions[@call='ALLOW']") is not None]
    assert sorted(callers) == ["operator_console", "skill_policy"]
