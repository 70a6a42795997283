#!/usr/bin/env python3
"""Soak test of the sim stack, a process per node (as `ros2 launch` runs it), with a fault every few seconds.

Faults, in rotation:
  camera_drop   the camera process is frozen (SIGSTOP) for 2 s, then resumed
  cancel        the running policy goal is cancelled through the action's cancel service
  preempt       an operator goal (no heartbeat source) preempts the policy's goal
  junk          50 malformed messages on /joint_states, /skill_embedding, /skill_command and the heartbeat
  decoder_kill  SIGKILL of the decoder process, restarted 1 s later (a person or a supervisor would)
A reflex cannot be injected here: the kitchen arm (TopicArm) has no reflexes; the fault-injecting FakeArm runs
only with arm:=fake (tests cover it).

Measured from the outside (a ROS node in this process plus /proc):
  episodes      SUCCESS/FAILURE/TRUNCATED events
  node deaths   processes that exited without being killed by the soak
  ticks dropped per goal, consecutive action feedback more than 1.5 control periods apart (one per missing step),
                as this process receives it; and as the decoder sent it (its /diagnostics: the same rule on its
                own clock, with the loop phase the late intervals spent their time in), which no slow observer
                can inflate
  CPU           each process's CPU time over the measured window (/proc/<pid>/stat), as a share of one core
  memory        RSS of each process after the warm-up vs at the end
  skill gap     last feedback of one goal -> first feedback of the next (< 2 s apart), split by whether an
                episode event (end, reset, start) came in between: those are not a decision's latency
  frame -> goal camera image arrival here -> arrival of the SkillCommand carrying that image's stamp (the goal is
                sent right after the command is published); a decision whose frame came before an episode event
                (the policy waited for the supervisor's START) is reported apart, as the skill gaps are, and only
                the first goal decided on a frame counts (after a skill refused at its first step the policy decides
                again on the same frame: those are counted apart)
The raw samples are written to <log-dir>/samples.json.

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--fault-every 5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ros2_ws/src/extract_skills"
sys.path.insert(0, str(PKG))
PERIOD_S = 0.08
NODES = {  # node name -> module
    "kitchen_sim": "extract_skills.nodes.kitchen_sim_node",
    "camera_embedding": "extract_skills.nodes.camera_embedding_node",
    "skill_policy": "extract_skills.nodes.skill_policy_node",
    "skill_decoder": "extract_skills.nodes.skill_decoder_server",
    "reward_reset_supervisor": "extract_skills.nodes.reward_reset_supervisor",
}
FAULTS = ("camera_drop", "cancel", "preempt", "junk", "decoder_kill")
MODULES: dict[str, str] = {}  # --module overrides (A/B runs against another version of a node)
NICE: dict[str, int] = {}  # --nice: scheduling priority of a node's process (negative needs CAP_SYS_NICE)


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (nan once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def start(name: str, log_dir: Path, extra: list[str]) -> subprocess.Popen:
    args = [sys.executable, "-m", MODULES.get(name, NODES[name]), "--ros-args", "-r", f"__node:={name}",
            "--params-file", str(PKG / "config/sim.yaml"), *extra]
    log = open(log_dir / f"{name}.log", "a")
    nice = NICE.get(name, 0)
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            preexec_fn=(lambda: os.nice(nice)) if nice else None)


def pct(a, q) -> float:
    return float(np.percentile(np.asarray(a), q)) if len(a) else float("nan")


def p50_max(a) -> str:
    return f"{pct(a, 50):.0f} / {np.max(a) if len(a) else float('nan'):.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--fault-every", type=float, default=5.0, help="s between faults")
    ap.add_argument("--faults", nargs="+", choices=FAULTS, default=list(FAULTS), help="fault kinds, in rotation")
    ap.add_argument("--warmup-s", type=float, default=60.0, help="no faults and no memory baseline before this")
    ap.add_argument("--domain", type=int, default=77, help="private ROS domain of the soak")
    ap.add_argument("--log-dir", type=Path, default=ROOT / "runs" / "soak")
    ap.add_argument("--module", action="append", default=[], metavar="NODE=MODULE",
                    help="run NODE from another python module (an A/B run against an older version of it)")
    ap.add_argument("--nice", action="append", default=[], metavar="NODE=N",
                    help="start NODE's process at niceness N (e.g. -10: is a missed tick a wait for a core?)")
    ns = ap.parse_args(argv)
    for spec in ns.nice:
        name, _, value = spec.partition("=")
        if name not in NODES or not value.lstrip("-").isdigit():
            ap.error(f"--nice {spec!r}: expected NODE=N with NODE one of {list(NODES)}")
        NICE[name] = int(value)
    for spec in ns.module:
        name, _, module = spec.partition("=")
        if name not in NODES or not module:
            ap.error(f"--module {spec!r}: expected NODE=MODULE with NODE one of {list(NODES)}")
        MODULES[name] = module
    os.environ["ROS_DOMAIN_ID"] = str(ns.domain)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    ns.log_dir.mkdir(parents=True, exist_ok=True)
    for old in ns.log_dir.glob("*.log"):  # this run's logs only (a restarted node appends to its own)
        old.unlink()

    import rclpy
    from action_msgs.msg import GoalInfo
    from action_msgs.srv import CancelGoal
    from extract_msgs.action import ExecuteSkill
    from extract_msgs.msg import EpisodeEvent, SkillCommand, SkillEmbedding
    from rclpy.action import ActionClient
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Header

    from extract_skills.core.control.skill_executor import LoopTiming, missed_ticks
    from extract_skills.graph import TOPICS
    from extract_skills.nodes.common import node_executor, stamp_to_s
    from extract_skills.nodes.skill_policy_node import HEARTBEAT_TOPIC

    extra = {"reward_reset_supervisor": ["-p", "num_episodes:=0"], "skill_policy": ["-p", "seed:=0"]}
    procs = {n: start(n, ns.log_dir, extra.get(n, [])) for n in NODES}
    killed_pids: set[int] = set()

    rclpy.init()
    node = rclpy.create_node("soak")
    ex = node_executor()  # as the nodes: a multi-threaded one would delay this observer's own arrivals
    ex.add_node(node)
    stats = {"episodes": 0, "gaps": [], "gaps_across_events": [], "frame_to_goal": [], "frame_to_embedding": [],
             "frame_to_goal_across_events": [], "frame_reused": [],
             "embedding_to_goal": [], "ticks_dropped": 0, "feedback": 0, "faults": {},
             "ends": {}, "stream_gaps": {"image": [], "joint_state": [], "embedding": []}, "trips": []}
    last_seen: dict[str, float] = {}
    last_fault = {"kind": "", "t": 0.0}

    def seen(stream: str) -> None:
        """Gaps over 2 s in a stream, with the last fault injected before the gap ended and how long before."""
        now = time.monotonic()
        t = last_seen.get(stream)
        if t is not None and now - t > 2.0:
            stats["stream_gaps"][stream].append((round(now - t, 1), last_fault["kind"], round(now - last_fault["t"], 1)))
        last_seen[stream] = now
    last_fb: dict[bytes, tuple[float, int]] = {}  # goal id -> (arrival, step)
    first_commands: set[bytes] = set()  # a goal's first command: the interval before it is a skill gap, not a tick
    state = {"goal": None, "prev_goal_end": None, "current": None, "last_event_t": 0.0}

    def on_feedback(msg) -> None:
        now = time.monotonic()
        gid = bytes(msg.goal_id.uuid)
        stats["feedback"] += 1
        if gid in last_fb:
            t, step = last_fb[gid]
            stats["ticks_dropped"] += missed_ticks(now - t, PERIOD_S)
        else:  # first command of a new goal
            first_commands.add(np.asarray(msg.feedback.commanded_joint_positions[:7], float).tobytes())
            prev = state["current"]
            if prev is not None and prev in last_fb and now - last_fb[prev][0] < 2.0:
                across = state["last_event_t"] > last_fb[prev][0]  # an episode ended/reset/started in between
                stats["gaps_across_events" if across else "gaps"].append(now - last_fb[prev][0])
            state["current"] = gid
            state["goal"] = msg.goal_id
        last_fb[gid] = (now, msg.feedback.step)

    def arrived(store: dict, stamp) -> None:
        """Arrival time here of a message with this header stamp (bounded: the last 500)."""
        store[(stamp.sec, stamp.nanosec)] = time.monotonic()
        if len(store) > 500:
            store.pop(next(iter(store)))

    frames: dict[tuple[int, int], float] = {}  # image stamp -> arrival here (the sim stamps in its own time)

    def on_image(msg: Image) -> None:
        seen("image")
        arrived(frames, msg.header.stamp)

    embedded: dict[tuple[int, int], float] = {}  # embedding stamp (its image's) -> arrival here

    def on_embedding(msg: SkillEmbedding) -> None:
        seen("embedding")
        arrived(embedded, msg.header.stamp)

    decided: set[tuple[int, int]] = set()  # frame stamps a goal was already decided on

    def on_command(msg: SkillCommand) -> None:
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        t, t_emb = frames.get(key), embedded.get(key)
        if t is not None and msg.policy != SkillCommand.POLICY_OPERATOR:
            now = time.monotonic()
            if key in decided:  # a skill that moved nothing (refused at its first step): the same frame again
                stats["frame_reused"].append(now - t)
                return
            decided.add(key)
            if len(decided) > 500:
                decided.discard(min(decided))
            if state["last_event_t"] > t:  # an episode started (or ended) after the frame: the policy waited for it
                stats["frame_to_goal_across_events"].append(now - t)
                return
            stats["frame_to_goal"].append(now - t)  # the command carries its frame's stamp
            if t_emb is not None:  # split: camera node (embedding) and policy (decision)
                stats["frame_to_embedding"].append(t_emb - t)
                stats["embedding_to_goal"].append(now - t_emb)

    # The decoder's own counters (cumulative per process); a killed decoder's last published values are kept.
    decoder = {"acc": {}, "last": {}}
    DEC_KEYS = ("commands_sent", "ticks_dropped", *(f"late_{ph}_s" for ph in LoopTiming.PHASES))  # decoder's keys

    def on_diag(msg: DiagnosticArray) -> None:
        for st in msg.status:
            if "skill_decoder" not in st.name:
                continue
            kv = {k.key: k.value for k in st.values}
            try:
                vals = {k: float(kv[k]) for k in DEC_KEYS}
            except (KeyError, ValueError):
                continue
            last = decoder["last"]
            if last and vals["commands_sent"] < last["commands_sent"]:  # a restarted decoder counts from 0
                decoder["acc"] = {k: decoder["acc"].get(k, 0.0) + last[k] for k in DEC_KEYS}
            decoder["last"] = vals

    def decoder_totals() -> dict[str, float]:
        return {k: decoder["acc"].get(k, 0.0) + decoder["last"].get(k, 0.0) for k in DEC_KEYS}

    def on_event(msg: EpisodeEvent) -> None:
        state["last_event_t"] = time.monotonic()
        if msg.event in (EpisodeEvent.SUCCESS, EpisodeEvent.FAILURE, EpisodeEvent.TRUNCATED):
            stats["episodes"] += 1
            why = re.sub(r"\d+(\.\d+)?", "N", msg.detail)  # one row per reason, not per number in it
            stats["ends"][why] = stats["ends"].get(why, 0) + 1

    # Command -> next command, split at the sim's state of that step, all from header stamps (the decoder stamps a
    # command when it sends it, the sim a state when it publishes it; one wall clock), so this process's own
    # delays do not enter: "sim" = the command's trip to the sim, waiting for its physics thread and the step;
    # "decoder" = the state's trip back, the decoder's next output and its sleep to the next tick.
    trip = {"cmd": None, "state": None}

    def on_joint_command(msg: JointState) -> None:
        t = stamp_to_s(msg.header.stamp)
        prev, st = trip["cmd"], trip["state"]
        if prev is not None and st is not None and prev < st < t and t - prev < 2.0:
            stats["trips"].append((t - prev, st - prev, t - st, np.asarray(msg.position[:7], float).tobytes()))
        trip.update(cmd=t, state=None)

    def on_joint_state(msg: JointState) -> None:
        seen("joint_state")
        t = stamp_to_s(msg.header.stamp)
        if msg.header.stamp.sec and trip["cmd"] is not None and trip["state"] is None and t > trip["cmd"]:
            trip["state"] = t  # the first state after the command: its step (lockstep); junk carries stamp 0

    node.create_subscription(ExecuteSkill.Impl.FeedbackMessage, "/execute_skill/_action/feedback", on_feedback, 100)
    node.create_subscription(SkillCommand, TOPICS["skill_command"], on_command, 50)
    node.create_subscription(Image, TOPICS["image"], on_image, qos_profile_sensor_data)
    # deep, as the decoder's: the junk fault's burst evicted the sim's real state from a 10-deep queue here too
    node.create_subscription(JointState, TOPICS["joint_states"], on_joint_state, 200)
    node.create_subscription(JointState, TOPICS["joint_commands"], on_joint_command, 10)
    node.create_subscription(SkillEmbedding, TOPICS["embedding"], on_embedding, 10)
    node.create_subscription(EpisodeEvent, TOPICS["episode_event"], on_event, 50)
    node.create_subscription(DiagnosticArray, TOPICS["diagnostics"], on_diag, 50)
    cancel = node.create_client(CancelGoal, "/execute_skill/_action/cancel_goal")
    client = ActionClient(node, ExecuteSkill, "/execute_skill")
    junk_pubs = {"js": node.create_publisher(JointState, TOPICS["joint_states"], 10),
                 "emb": node.create_publisher(SkillEmbedding, TOPICS["embedding"], 10),
                 "cmd": node.create_publisher(SkillCommand, TOPICS["skill_command"], 10),
                 "hb": node.create_publisher(Header, HEARTBEAT_TOPIC, 10)}
    rng = np.random.default_rng(0)

    def inject(kind: str) -> None:
        if kind == "camera_drop":
            p = procs["camera_embedding"]
            p.send_signal(signal.SIGSTOP)
            t_end = time.monotonic() + 2.0
            while time.monotonic() < t_end:
                ex.spin_once(timeout_sec=0.05)
            p.send_signal(signal.SIGCONT)
        elif kind == "cancel" and state["goal"] is not None and cancel.service_is_ready():
            cancel.call_async(CancelGoal.Request(goal_info=GoalInfo(goal_id=state["goal"])))
        elif kind == "preempt" and client.server_is_ready():
            client.send_goal_async(ExecuteSkill.Goal(skill_id=0, argument=[0.0] * 5, step_limit=5, dynamics_factor=0.1))
        elif kind == "junk":
            for _ in range(50):
                n = int(rng.integers(0, 12))
                junk_pubs["js"].publish(JointState(name=["fr3_joint1"] * n, position=list(rng.normal(size=n) * 1e3)))
                junk_pubs["emb"].publish(SkillEmbedding(embedding=[float("nan")] * int(rng.integers(0, 600))))
                junk_pubs["cmd"].publish(SkillCommand(skill_id=int(rng.integers(0, 2**32)), policy=int(rng.integers(0, 256))))
                junk_pubs["hb"].publish(Header(frame_id="impostor"))
        elif kind == "decoder_kill":
            p = procs["skill_decoder"]
            killed_pids.add(p.pid)
            p.send_signal(signal.SIGKILL)
            p.wait()
            t_end = time.monotonic() + 1.0
            while time.monotonic() < t_end:
                ex.spin_once(timeout_sec=0.05)
            procs["skill_decoder"] = start("skill_decoder", ns.log_dir, [])
        stats["faults"][kind] = stats["faults"].get(kind, 0) + 1
        last_fault.update(kind=kind, t=time.monotonic())
        print(f"fault {kind} injected at {time.time():.3f} (wall clock, as the nodes' log lines)", file=sys.stderr)

    t0 = time.monotonic()
    t_end = t0 + ns.warmup_s + 60.0 * ns.minutes
    cpu0: dict[str, tuple[int, float]] = {}  # name -> (pid, CPU s) at the end of the warm-up
    t_cpu0, dec0, own_cpu0 = t0, {}, 0.0
    rss0: dict[int, float] = {}
    rss_mid: dict[int, float] = {}  # halfway through the measured window: does growth level off?
    t_mid = t0 + ns.warmup_s + 30.0 * ns.minutes
    next_fault, k = t0 + ns.warmup_s, 0
    deaths: list[str] = []
    try:
        while time.monotonic() < t_end:
            ex.spin_once(timeout_sec=0.05)
            now = time.monotonic()
            if not rss0 and now - t0 >= ns.warmup_s:
                rss0 = {p.pid: rss_mb(p.pid) for p in procs.values()}
                cpu0 = {name: (p.pid, cpu_s(p.pid)) for name, p in procs.items()}
                t_cpu0, dec0, own_cpu0 = time.monotonic(), decoder_totals(), time.process_time()
                # measure after warm-up: every list of samples and the counters start again
                stats.update({k: [] for k, v in stats.items() if isinstance(v, list)},
                             ticks_dropped=0, feedback=0, episodes=0)
            if rss0 and not rss_mid and now >= t_mid:
                rss_mid = {p.pid: rss_mb(p.pid) for p in procs.values()}
            if now >= next_fault:
                inject(ns.faults[k % len(ns.faults)])
                k += 1
                next_fault = now + ns.fault_every
            for name, p in procs.items():
                if p.poll() is not None and p.pid not in killed_pids and name not in deaths:
                    deaths.append(name)
        rss1 = {p.pid: rss_mb(p.pid) for p in procs.values()}
        window_s = time.monotonic() - t_cpu0
        # a process restarted in the window (the decoder) has no baseline: not measured
        cpu = {name: (cpu_s(p.pid) - cpu0[name][1]) / window_s * 100.0 for name, p in procs.items()
               if name in cpu0 and cpu0[name][0] == p.pid}
        cpu["soak (this process)"] = (time.process_time() - own_cpu0) / window_s * 100.0 if own_cpu0 else float("nan")
        dec = {k: v - dec0.get(k, 0.0) for k, v in decoder_totals().items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        node.destroy_node()
        rclpy.shutdown()

    growth = {name: (rss1[p.pid] / rss0[p.pid] - 1.0) * 100.0 for name, p in procs.items() if p.pid in rss0}
    halves = {name: ((rss_mid[p.pid] / rss0[p.pid] - 1.0) * 100.0, (rss1[p.pid] / rss_mid[p.pid] - 1.0) * 100.0)
              for name, p in procs.items() if p.pid in rss0 and p.pid in rss_mid}
    gaps, f2g = np.asarray(stats["gaps"]) * 1e3, np.asarray(stats["frame_to_goal"]) * 1e3
    (ns.log_dir / "samples.json").write_text(json.dumps(
        {k: np.asarray(v).round(6).tolist() for k, v in stats.items() if isinstance(v, list) and k != "trips"}))
    print(f"\nSoak: {ns.minutes:g} min after a {ns.warmup_s:g} s warm-up, a fault every {ns.fault_every:g} s "
          f"({platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')})"
          + (f"; niceness {', '.join(f'{k} {v}' for k, v in NICE.items())}" if NICE else "") + "\n")
    print("| measure | value |\n|---|---:|")
    print(f"| episodes completed | {stats['episodes']} |")
    print(f"| episode ends by reason | {'; '.join(f'{k}: {v}' for k, v in sorted(stats['ends'].items()))} |")
    for stream, sg in stats["stream_gaps"].items():
        print(f"| {stream} gaps over 2 s (s; last fault before the gap ended, s before its end) | {len(sg)}: "
              f"{', '.join(f'{g} ({k}, {dt})' for g, k, dt in sg[:12])}{' ...' if len(sg) > 12 else ''} |")
    print(f"| faults injected | {', '.join(f'{k} {v}' for k, v in stats['faults'].items())} |")
    print(f"| node deaths (not killed by the soak) | {len(deaths)}{' (' + ', '.join(deaths) + ')' if deaths else ''} |")
    print(f"| command ticks dropped, feedback as received here (of {stats['feedback']}) | {stats['ticks_dropped']} |")
    late = ", ".join(f"{ph} {dec[f'late_{ph}_s']:.1f}" for ph in LoopTiming.PHASES)
    print(f"| command ticks dropped, as the decoder sent them (of {dec.get('commands_sent', 0):.0f}; a killed "
          f"decoder's last second is lost) | {dec.get('ticks_dropped', 0):.0f} |")
    print(f"| decoder: time of the late intervals by loop phase (s) | {late} |")
    print("| CPU over the window (% of one core; the machine has " + f"{os.cpu_count()} cores) | "
          + ", ".join(f"{n} {c:.0f}" for n, c in cpu.items()) + f"; total {np.nansum(list(cpu.values())):.0f} |")
    print("| memory growth after warm-up, per process | "
          + ", ".join(f"{n} {g:+.1f}%" for n, g in growth.items()) + " (decoder: its last instance, if restarted: not measured) |")
    print("| memory growth, first half / second half of the window | "
          + ", ".join(f"{n} {a:+.1f}% / {b:+.1f}%" for n, (a, b) in halves.items()) + " |")
    print("| RSS after warm-up -> end (MB) | "
          + ", ".join(f"{n} {rss0[p.pid]:.0f} -> {rss1[p.pid]:.0f}" for n, p in procs.items() if p.pid in rss0) + " |")
    print(f"| skill-to-skill gap p50 / p99 (ms, n={len(gaps)}) | {pct(gaps, 50):.0f} / {pct(gaps, 99):.0f} |")
    across = np.asarray(stats["gaps_across_events"]) * 1e3
    print(f"| gaps with an episode event in between, p50 / max (ms, n={len(across)}; not in the row above) | "
          f"{p50_max(across)} |")
    print(f"| frame -> goal p50 / p99 (ms, n={len(f2g)}) | {pct(f2g, 50):.0f} / {pct(f2g, 99):.0f} |")
    across = np.asarray(stats["frame_to_goal_across_events"]) * 1e3
    print(f"| frame -> goal with an episode event after the frame, p50 / max (ms, n={len(across)}; not in the row "
          f"above or below) | {p50_max(across)} |")
    print(f"| goals decided again on a frame already decided on (the skill before moved nothing; not in the rows "
          f"above or below) | {len(stats['frame_reused'])} |")
    every = np.concatenate([f2g, across, np.asarray(stats["frame_reused"]) * 1e3])
    print(f"| frame -> goal over every goal, as counted until session 10, p50 / p99 (ms, n={len(every)}) | "
          f"{pct(every, 50):.0f} / {pct(every, 99):.0f} |")
    for key, what in (("frame_to_embedding", "... of which frame -> its embedding (camera node)"),
                      ("embedding_to_goal", "... and embedding -> goal (policy)")):
        v = np.asarray(stats[key]) * 1e3
        print(f"| {what} p50 / p99 (ms, n={len(v)}) | {pct(v, 50):.0f} / {pct(v, 99):.0f} |")
    # within a goal only (by the commanded joints, which the feedback repeats exactly)
    trips = np.asarray([t[:3] for t in stats["trips"] if t[3] not in first_commands]).reshape(-1, 3) * 1e3
    late = trips[[missed_ticks(t / 1e3, PERIOD_S) > 0 for t in trips[:, 0]]]
    for rows, what in ((trips, "all"), (late, "late (> 1.5 periods)")):
        print(f"| command -> next command, {what}: n; p50 / p99 of the interval, ... to the sim's state, ... state -> "
              f"next command (ms) | {len(rows)}; " + ", ".join(f"{pct(rows[:, i], 50):.0f} / {pct(rows[:, i], 99):.0f}"
                                                     for i in range(3)) + " |")
    if len(late):
        print(f"| late intervals: share of their time before / after the sim's state | "
              f"{late[:, 1].sum() / late[:, 0].sum():.0%} / {late[:, 2].sum() / late[:, 0].sum():.0%} |")
    return 0 if not deaths else 1


if __name__ == "__main__":
    sys.exit(main())
