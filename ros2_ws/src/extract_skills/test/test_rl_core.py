"""Online RL core without ROS: the hybrid skill SAC's objective, its learning, and crash-safe persistence."""
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from extract_skills.core.rl.replay_buffer import FIELDS, MANIFEST, ReplayBuffer
from extract_skills.core.rl.skill_sac import HybridSkillSAC, SkillSACConfig
from extract_skills.core.rl.trainer import CHECKPOINT, Learner
from extract_skills.core.skills.skill_model import SkillModel, SkillModelConfig

OBS_DIM, K, Z = 12, 4, 5
PKG_ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(seed: int = 0) -> SkillModel:
    torch.manual_seed(seed)
    return SkillModel(SkillModelConfig(num_skills=K, obs_dim=OBS_DIM, latent_dim=Z, hidden_dim=32, train_steps=1))


def _agent(**kw) -> HybridSkillSAC:
    return HybridSkillSAC(_model(), argument_bound=2.0, cfg=SkillSACConfig(critic_hidden=64, **kw))


def _transition(rng: np.random.Generator, i: int = 0) -> dict:
    return dict(obs=rng.standard_normal(OBS_DIM), skill=i % K, z=rng.uniform(-2, 2, Z), reward=float(i % 3),
                next_obs=rng.standard_normal(OBS_DIM), terminated=i % 7 == 0, truncated=False, steps=10 + i % 5,
                log_prob=-1.5, intervention=False)


# ------------------------------------------------------------------------------------------------ objective
def test_both_kl_terms_are_zero_when_the_policy_equals_the_prior():
    agent = _agent()
    obs = torch.randn(64, OBS_DIM)
    div = agent.divergences(obs)
    assert div["kl_d"].abs().max() < 1e-6
    assert div["kl_z"].abs().max() < 1e-6
    with torch.no_grad():  # move the policy away from the prior: both divergences become positive
        for p in agent.policy.parameters():
            p.add_(0.1 * torch.randn_like(p))
    div = agent.divergences(obs)
    assert (div["kl_d"] > 1e-4).all() and (div["kl_z"] > 1e-4).all()


def test_hybrid_loss_gradient_reaches_both_heads_and_not_the_priors():
    agent = _agent()
    loss, _ = agent.actor_loss(torch.randn(32, OBS_DIM))
    loss.backward()
    for head in (agent.policy.skill_head, agent.policy.argument_head):
        grads = [p.grad for p in head.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in [*agent.prior_skill.parameters(), *agent.prior_argument.parameters()])


def test_act_keeps_z_within_the_argument_bound_and_refuses_bad_observations():
    agent = _agent()
    with torch.no_grad():  # push the argument mean far outside the bound
        agent.policy.argument_head.net[-1].bias[:Z] += 50.0
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        d, z, logp = agent.act(np.random.default_rng(0).standard_normal(OBS_DIM), generator=g)
        assert 0 <= d < K and np.all(np.abs(z) <= 2.0) and np.isfinite(logp)
    with pytest.raises(ValueError, match="finite"):
        agent.act(np.full(OBS_DIM, np.nan))
    with pytest.raises(ValueError, match=str(OBS_DIM)):
        agent.act(np.zeros(OBS_DIM + 1))


def test_learns_which_skill_and_argument_pay_on_a_contextual_bandit():
    """Reward 1 only for skill 2 with z[0] > 0.5 (one-step episodes): the policy must move both heads."""
    agent = _agent(batch_size=64, learning_starts=64, alpha_z=0.001, alpha_d=0.001, lr=1e-3)
    learner = Learner(agent, None, seed=0)
    rng = np.random.default_rng(1)
    probe = torch.as_tensor(rng.standard_normal((256, OBS_DIM)), dtype=torch.float32)

    def skill2_prob_and_mean() -> tuple[float, float]:
        with torch.no_grad():
            p = agent.policy.skill_probs(probe)[:, 2].mean()
            m, _ = agent.policy.arguments(probe)
        return float(p), float(m[:, 2, 0].mean())

    p0, m0 = skill2_prob_and_mean()
    for i in range(1500):
        obs = rng.standard_normal(OBS_DIM).astype(np.float32)
        d, z, logp = learner.act(obs)
        r = float(d == 2 and z[0] > 0.5)
        learner.observe(obs=obs, skill=d, z=z, reward=r, next_obs=obs, terminated=True, truncated=False, steps=1,
                        log_prob=logp, intervention=False)
    p1, m1 = skill2_prob_and_mean()
    assert p1 > max(0.6, p0 + 0.3), (p0, p1)
    assert m1 > 0.5 and m1 > m0 + 0.3, (m0, m1)


def test_auto_alpha_moves_towards_the_target_divergences():
    agent = _agent(auto_alpha=True, target_kl_z=1e-6, target_kl_d=1e-6, lr=1e-2)
    learner = Learner(agent, None, seed=0)
    rng = np.random.default_rng(0)
    for i in range(agent.cfg.batch_size + 50):
        learner.observe(**_transition(rng, i))
    az, ad = agent.alphas
    # the policy drifts off the prior (KL > target), so both weights must grow from their start values
    assert az > agent.cfg.alpha_z and ad > agent.cfg.alpha_d


# ------------------------------------------------------------------------------------------------ replay buffer
def test_replay_buffer_round_trips_through_disk_and_keeps_the_newest(tmp_path):
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(25, OBS_DIM, Z, tmp_path)
    added = [_transition(rng, i) for i in range(40)]
    for i, t in enumerate(added):
        buf.add(**t)
        if i % 10 == 9:
            buf.flush()
    back = ReplayBuffer.open(tmp_path, 25, OBS_DIM, Z)
    assert len(back) == 25 and back.total >= 25
    # the newest 25 transitions, in ring order
    newest = np.stack([t["obs"] for t in added[-25:]]).astype(np.float32)
    got = np.stack([back.data["obs"][(back.total - 25 + j) % 25] for j in range(25)])
    np.testing.assert_array_equal(got, newest)
    # chunks that fell out of the ring were deleted once the manifest stopped naming them
    named = {c["name"] for c in json.loads((tmp_path / MANIFEST).read_text())["chunks"]}
    assert {p.name for p in tmp_path.glob("chunk_*.npz")} == named and len(named) == 3


def test_replay_buffer_skips_corrupt_and_uncommitted_chunks_with_a_warning(tmp_path, caplog):
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(100, OBS_DIM, Z, tmp_path)
    for i in range(30):
        buf.add(**_transition(rng, i))
        if i % 10 == 9:
            buf.flush()
    chunks = sorted(tmp_path.glob("chunk_*.npz"))
    raw = bytearray(chunks[1].read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte
    chunks[1].write_bytes(bytes(raw))
    (tmp_path / "chunk_00000099.npz").write_bytes(b"torn")  # a chunk the manifest never committed
    with caplog.at_level(logging.WARNING):
        back = ReplayBuffer.open(tmp_path, 100, OBS_DIM, Z)
    assert len(back) == 20
    text = caplog.text
    assert "chunk_00000001.npz does not match its sha256" in text and "chunk_00000099.npz is not in the manifest" in text
    with pytest.raises(ValueError, match="obs_dim"):
        ReplayBuffer.open(tmp_path, 100, OBS_DIM + 1, Z)


def test_learner_refuses_transitions_the_agent_could_not_have_produced():
    learner = Learner(_agent(), None)
    t = _transition(np.random.default_rng(0))
    with pytest.raises(ValueError, match="skill id 4"):
        learner.observe(**{**t, "skill": K})
    with pytest.raises(ValueError, match="argument bound"):
        learner.observe(**{**t, "z": np.full(Z, 3.0)})
    assert len(learner.buffer) == 0


def test_replay_buffer_refuses_malformed_transitions(tmp_path):
    buf = ReplayBuffer(10, OBS_DIM, Z, tmp_path)
    t = _transition(np.random.default_rng(0))
    with pytest.raises(ValueError, match="z must have shape"):
        buf.add(**{**t, "z": np.zeros(Z + 1)})
    with pytest.raises(ValueError, match="reward is not finite"):
        buf.add(**{**t, "reward": float("nan")})
    with pytest.raises(ValueError, match="missing"):
        buf.add(**{k: v for k, v in t.items() if k != "steps"})
    assert len(buf) == 0


_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from extract_skills.core.rl.replay_buffer import ReplayBuffer
    out, obs_dim, z = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    buf = ReplayBuffer(100000, obs_dim, z, out)
    rng = np.random.default_rng(0)
    i = 0
    while True:
        for _ in range(50):
            buf.add(obs=rng.standard_normal(obs_dim), skill=i % 4, z=np.zeros(z), reward=1.0,
                    next_obs=rng.standard_normal(obs_dim), terminated=False, truncated=False, steps=10,
                    log_prob=0.0, intervention=False)
            i += 1
        buf.flush()
        print(buf.flushed, flush=True)
""")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{PKG_ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


@pytest.mark.parametrize("kill_after", [3, 9])
def test_sigkill_while_flushing_loses_only_unflushed_transitions(tmp_path, kill_after):
    # large observations make each chunk write take long enough for the kill to land inside a write
    obs_dim = 20000
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), str(obs_dim), str(Z)],
                            stdout=subprocess.PIPE, text=True, env=_env())
    committed = 0
    try:
        for _ in range(kill_after):
            line = proc.stdout.readline()
            assert line, "writer died before it was killed"
            committed = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    # flushes reported before the kill that we had not read yet are still in the pipe
    committed = max([committed, *(int(x) for x in proc.stdout.read().split())])
    back = ReplayBuffer.open(tmp_path, 100000, obs_dim, Z)
    # every flush it reported is there; at most the one chunk in flight beyond it
    assert committed <= len(back) <= committed + 50
    assert len(back) % 50 == 0


def test_updates_per_env_step_give_long_and_short_skills_the_same_gradient_steps():
    """utd_unit="env_step": learning starts after N low-level steps and each transition pays utd per env step it
    took, so 30-step skills get 3x the updates of 10-step ones per transition and the same per env step."""
    rng = np.random.default_rng(0)
    per_step = {}
    for length in (10, 30):
        a = Learner(_agent(batch_size=8, learning_starts=300, utd=0.1, utd_unit="env_step"), None, seed=0)
        ran = []
        for i in range(3000 // length):
            t = _transition(rng, i)
            t["steps"] = length
            ran.append(a.observe(**t))
        first = next(i for i, n in enumerate(ran) if n)
        assert (first + 1) * length >= 300 and first * length < 300  # starts once 300 env steps were seen
        per_step[length] = a.agent.updates / 3000
        assert a.counters.observed_env_steps == 3000
    assert per_step[10] == pytest.approx(per_step[30], rel=0.02) and per_step[10] == pytest.approx(0.09, rel=0.05)
    with pytest.raises(ValueError, match="utd_unit"):
        SkillSACConfig(utd_unit="episode")


# ------------------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_resume_restores_agent_buffer_counters_and_rngs(tmp_path):
    rng = np.random.default_rng(0)
    a = Learner(_agent(batch_size=32, learning_starts=32), tmp_path, seed=3)
    for i in range(60):
        a.observe(**_transition(rng, i))
    a.counters.episodes, a.counters.env_steps = 4, 1234
    a.checkpoint({"curve": [(0, 0.0)]})
    b = Learner(_agent(batch_size=32, learning_starts=32), tmp_path, seed=99)
    extra = b.resume()
    assert extra == {"curve": [(0, 0.0)]}
    assert (b.counters.episodes, b.counters.env_steps, b.agent.updates) == (4, 1234, a.agent.updates)
    assert len(b.buffer) == 60
    for k, v in a.agent.state_dict().items():
        torch.testing.assert_close(b.agent.state_dict()[k], v)
    obs = rng.standard_normal(OBS_DIM)
    assert a.act(obs)[0] == b.act(obs)[0]  # same RNG stream after resume
    t = _transition(rng, 60)
    state = torch.get_rng_state()  # both learners live in this process and share torch's global RNG
    ia = a.observe(**t)
    torch.set_rng_state(state)
    ib = b.observe(**t)
    assert ia == ib and abs(a.last_info["critic_loss"] - b.last_info["critic_loss"]) < 1e-6
    with pytest.raises(ValueError, match="other hyperparameters"):
        Learner(_agent(batch_size=64, learning_starts=32), tmp_path).resume()


def test_a_run_directory_from_before_a_new_hyperparameter_still_resumes():
    """A checkpoint written before a config field existed (utd_unit, session 5) resumes under that field's default
    (the old behaviour), and is refused when this run sets the field otherwise."""
    state = _agent().training_state()
    del state["config"]["utd_unit"]
    _agent().load_training_state(state)
    with pytest.raises(ValueError, match="utd_unit"):
        _agent(utd_unit="env_step").load_training_state(state)


_CHECKPOINTER = textwrap.dedent("""
    import sys
    import numpy as np, torch
    from extract_skills.core.rl.skill_sac import HybridSkillSAC, SkillSACConfig
    from extract_skills.core.rl.trainer import Learner
    from extract_skills.core.skills.skill_model import SkillModel, SkillModelConfig
    torch.manual_seed(0)
    m = SkillModel(SkillModelConfig(num_skills=4, obs_dim=12, latent_dim=5, hidden_dim=256, train_steps=1))
    learner = Learner(HybridSkillSAC(m, 2.0, SkillSACConfig(critic_hidden=1024)), sys.argv[1])
    rng = np.random.default_rng(0)
    n = 0
    while True:
        learner.observe(obs=rng.standard_normal(12), skill=n % 4, z=np.zeros(5), reward=0.0,
                        next_obs=rng.standard_normal(12), terminated=False, truncated=False, steps=5,
                        log_prob=0.0, intervention=False)
        n += 1
        learner.counters.episodes = n
        learner.checkpoint()
        print(n, flush=True)
""")


def test_sigkill_during_checkpoint_writes_resumes_from_the_last_complete_one(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _CHECKPOINTER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env=_env())
    last = 0
    try:
        for _ in range(6):
            line = proc.stdout.readline()
            assert line, "checkpointer died before it was killed"
            last = int(line)
        time.sleep(0.05)  # let the next write start, then kill it mid-write (or between writes)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    last = max([last, *(int(x) for x in proc.stdout.read().split())])  # completed checkpoints still in the pipe
    torch.manual_seed(0)
    m = SkillModel(SkillModelConfig(num_skills=4, obs_dim=12, latent_dim=5, hidden_dim=256, train_steps=1))
    learner = Learner(HybridSkillSAC(m, 2.0, SkillSACConfig(critic_hidden=1024)), tmp_path)
    learner.resume()
    assert (tmp_path / CHECKPOINT).is_file()
    assert last <= learner.counters.episodes <= last + 1
    assert learner.counters.episodes <= len(learner.buffer) <= learner.counters.episodes + 1
    assert set(FIELDS) == set(learner.buffer.data)


# ------------------------------------------------------------------------------------------------ actor side
def test_transition_assembler_credits_rewards_to_the_running_skill_and_closes_on_episode_end():
    from extract_skills.core.rl.actor import TransitionAssembler

    a = TransitionAssembler()
    o = [np.full(OBS_DIM, i, np.float32) for i in range(5)]
    assert a.decide(1, o[0], 2, np.zeros(Z), -1.0) is None  # nothing open yet
    assert a.reward(1, 1.0, intervention=True)
    a.skill_finished(12)
    t = a.decide(1, o[1], 3, np.ones(Z), -2.0, policy_version=7)
    assert t["skill"] == 2 and t["reward"] == 1.0 and t["steps"] == 12 and t["intervention"]
    np.testing.assert_array_equal(t["next_obs"], o[1])
    assert not t["terminated"] and not t["truncated"]
    assert not a.reward(2, 1.0) and a.dropped_rewards == 1  # another episode's reward is never credited here
    t = a.end_episode(1, o[2], terminated=True)
    assert t["skill"] == 3 and t["terminated"] and t["policy_version"] == 7
    assert a.end_episode(1, o[2], terminated=True) is None and a.open is None
    a.decide(2, o[3], 0, np.zeros(Z), 0.0)
    t = a.end_episode(2, None, terminated=False)  # truncated without a fresh frame: the decision obs stands in
    assert t["truncated"] and not t["terminated"]
    np.testing.assert_array_equal(t["next_obs"], o[3])
    a.decide(3, o[4], 0, np.zeros(Z), 0.0)
    assert a.discard(3) and a.end_episode(3, o[4], terminated=False) is None  # rerecorded: nothing learnt


def test_policy_weights_are_refused_when_corrupt_misshapen_or_not_finite():
    from extract_skills.core.rl.actor import PolicyWeightsError, decode_policy_state, encode_policy_state

    agent = _agent()
    state = agent.policy_state()
    data, sha = encode_policy_state(state)
    back = decode_policy_state(data, sha, state)
    assert all(torch.equal(back[k], v) for k, v in state.items())
    with pytest.raises(PolicyWeightsError, match="sha256"):
        decode_policy_state(data[:-1] + bytes([data[-1] ^ 1]), sha, state)
    other = HybridSkillSAC(SkillModel(SkillModelConfig(num_skills=K + 1, obs_dim=OBS_DIM, latent_dim=Z, hidden_dim=32,
                                                       train_steps=1)), 2.0).policy_state()
    d2, s2 = encode_policy_state(other)
    with pytest.raises(PolicyWeightsError, match="wrong shape"):
        decode_policy_state(d2, s2, state)
    bad = {k: v.clone() for k, v in state.items()}
    next(v for v in bad.values() if v.is_floating_point()).view(-1)[0] = float("nan")
    d3, s3 = encode_policy_state(bad)
    with pytest.raises(PolicyWeightsError, match="not finite"):
        decode_policy_state(d3, s3, state)
    with pytest.raises(PolicyWeightsError, match="unreadable"):
        decode_policy_state(b"junk", __import__("hashlib").sha256(b"junk").hexdigest(), state)


def test_operator_keys_map_to_service_calls():
    from extract_skills.cli.operator_console import interpret_key
    from extract_skills.graph import RERECORD

    task = ["microwave", "kettle", "light switch"]
    assert interpret_key("3", task).subtask == "light switch" and interpret_key("3", task).succeeded
    assert interpret_key("4", task).service == "none" and interpret_key("0", task).service == "none"
    assert interpret_key("a", task).service == "confirm" and interpret_key("a", task).subtask == ""
    f = interpret_key("f", task)
    assert f.service == "confirm" and not f.succeeded and f.subtask == ""
    assert interpret_key("r", task).reason == RERECORD and interpret_key("R", task).service == "reset"
    assert interpret_key("x", task).service == "none" and interpret_key("q", task).service == "quit"


# ------------------------------------------------------------------------------------------------ disk full
_DISK_FULL = textwrap.dedent("""
    import json, os, resource, signal, sys
    import numpy as np, torch
    sys.path.insert(0, sys.argv[2])
    from test_rl_core import _agent, _transition
    from extract_skills.core.rl.trainer import Learner
    run_dir = sys.argv[1]
    rng = np.random.default_rng(0)
    a = Learner(_agent(batch_size=16, learning_starts=16), run_dir, seed=1)
    for i in range(40):
        a.observe(**_transition(rng, i))
    assert a.try_checkpoint() is not None               # a complete checkpoint, 40 transitions
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)        # a write past the limit fails with EFBIG instead
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))  # the disk is 'full': no file may exceed 1 KiB
    for i in range(40, 70):
        a.observe(**_transition(rng, i))
    failed = a.try_checkpoint() is None
    out = {"failed": failed, "pending": a.buffer.pending, "failures": a.write_failures,
           "tmp_left": [f for f in os.listdir(run_dir) + os.listdir(os.path.join(run_dir, "replay"))
                        if f.endswith(".tmp")]}
    for i in range(70, 80):                              # learning goes on meanwhile
        a.observe(**_transition(rng, i))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again
    out["recovered"] = a.try_checkpoint() is not None
    out["updates"] = a.agent.updates
    print(json.dumps(out))
""")


def test_disk_full_pauses_writes_keeps_transitions_and_catches_up(tmp_path):
    """RELIABILITY row 25: a checkpoint or buffer write that fails (the disk refuses: here a file-size limit,
    EFBIG, in a child process) is logged, training goes on with the transitions in memory, the last complete
    checkpoint stays intact, no temp file is left, and the next checkpoint writes everything."""
    import json

    r = subprocess.run([sys.executable, "-c", _DISK_FULL, str(tmp_path), str(Path(__file__).parent)],
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["failed"] and out["failures"] == 1 and out["pending"] == 30, out
    assert out["tmp_left"] == [], out
    assert "checkpoint to" in r.stderr and "failed" in r.stderr  # logged with the reason
    assert out["recovered"] and out["updates"] > 0, out
    back = Learner(_agent(batch_size=16, learning_starts=16), tmp_path, seed=2)
    assert back.resume() is not None
    assert len(back.buffer) == 80  # nothing lost: the 40 transitions added while the disk was full are there


def test_episode_tracker_rewards_each_subtask_once_and_the_summary_counts_only_counted_episodes():
    from extract_skills.core.rl.episode import EpisodeTracker, format_summary

    t = EpisodeTracker(("microwave", "kettle"))
    assert t.update({"kettle": True, "light switch": True}) == ["kettle"]  # not in the task: no reward
    assert t.update({"kettle": True}) == [] and t.episode_return == 1.0 and not t.all_done
    assert t.update({"microwave": True, "kettle": True}) == ["microwave"] and t.all_done
    with pytest.raises(ValueError, match="twice"):
        EpisodeTracker(("kettle", "kettle"))
    table = format_summary([
        {"episode": 1, "outcome": "success", "counted": True, "return": 2.0, "skills": 5, "seconds": 30.0,
         "completed": ["kettle", "microwave"]},
        {"episode": 2, "outcome": "truncated", "counted": False, "return": 0.0, "skills": 1, "seconds": 3.0,
         "completed": []},
        {"episode": 3, "outcome": "truncated", "counted": True, "return": 1.0, "skills": 12, "seconds": 90.0,
         "completed": ["kettle"]},
    ])
    lines = table.splitlines()
    assert len(lines) == 5 and "kettle, microwave" in lines[1] and lines[2].endswith("(not counted)")
    assert lines[-1] == "mean return over 2 counted episode(s): 1.50"


def test_flat_sac_checkpoint_resumes_the_same_run(tmp_path):
    """The flat SAC baseline runs for hours here and checkpoints: a run stopped, saved, loaded into a fresh agent
    and continued with the same RNG states makes exactly the updates the uninterrupted run makes."""
    from extract_skills.core.data.atomic_io import atomic_torch_save
    from extract_skills.core.rl.baselines import FlatSAC, FlatSACConfig

    cfg = FlatSACConfig(batch_size=8, learning_starts=8, hidden=32, buffer_capacity=40)

    def run(agent, rng, steps):
        for _ in range(steps):
            o = rng.standard_normal(OBS_DIM).astype(np.float32)
            agent.store(o, agent.act(o, rng), float(rng.random()), o + 0.1, 0.0)
            if agent.n >= cfg.learning_starts:
                agent.update(rng)

    torch.manual_seed(0)
    a, rng_a = FlatSAC(OBS_DIM, cfg), np.random.default_rng(0)
    run(a, rng_a, 30)
    atomic_torch_save({"agent": a.checkpoint(), "torch_rng": torch.get_rng_state()}, tmp_path / "ck.pt")
    run(a, rng_a, 25)  # past the buffer's capacity: the ring wraps after the save

    st = torch.load(tmp_path / "ck.pt", weights_only=True)
    torch.manual_seed(123)  # another initialisation, overwritten by the load
    b, rng_b = FlatSAC(OBS_DIM, cfg), np.random.default_rng(0)
    run(FlatSAC(OBS_DIM, cfg), rng_b, 30)  # the same RNG draws as the first 30 steps
    b.load_checkpoint(st["agent"])
    torch.set_rng_state(st["torch_rng"])
    run(b, rng_b, 25)
    assert b.n == a.n == 55
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert np.array_equal(a.obs, b.obs) and np.array_equal(a.rew, b.rew)

    with pytest.raises(ValueError, match="buffer of shape"):
        FlatSAC(OBS_DIM + 1, cfg).load_checkpoint(st["agent"])
