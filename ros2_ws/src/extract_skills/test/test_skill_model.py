"""Skill VAE: variable-length decoding through the progress head, masks, config validation."""
import numpy as np
import pytest
import torch

from extract_skills.core.skills.skill_model import (SkillModelConfig, SkillTrainingData, compute_action_bounds,
                                             denormalise_actions, normalise_actions, pad_segments,
                                             train_skill_model)

SHORT_LEN, LONG_LEN = 6, 20  # steps


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _synthetic(n_per_skill: int = 48, obs_dim: int = 10, seed: int = 0) -> SkillTrainingData:
    rng = np.random.default_rng(seed)
    actions, labels, obs = [], [], []
    for d, L in ((0, SHORT_LEN), (1, LONG_LEN)):
        for _ in range(n_per_skill):
            a = np.zeros((L, 8), np.float32)
            a[:, d] = 0.01 + 0.002 * rng.standard_normal(L)  # rad/step on joint d
            a[:, 7] = 1.0 - d  # gripper target
            actions.append(a)
            labels.append(d)
            o = rng.standard_normal(obs_dim).astype(np.float32)
            o[0] = 2.0 * d - 1.0  # the state tells which skill is used
            obs.append(o)
    return SkillTrainingData(actions, np.array(labels), np.stack(obs))


def test_rollouts_stop_at_skill_specific_lengths():
    data = _synthetic()
    low, high = compute_action_bounds(np.concatenate(data.actions))
    cfg = SkillModelConfig(num_skills=2, obs_dim=10, hidden_dim=32, max_segment_len=LONG_LEN,
                           batch_size=32, train_steps=500)
    model, hist = train_skill_model(data, cfg, low, high)
    assert hist["total"][-1] < hist["total"][0]
    lengths = {}
    for d, i in ((0, 0), (1, len(data.labels) - 1)):
        with torch.no_grad():  # the argument a policy regularised by the prior would pick
            z = model.argument_prior(torch.as_tensor(data.obs[i:i + 1]), torch.tensor([d]))[0][0]
        steps = list(model.skill_decoder.rollout(z, d, max_steps=3 * LONG_LEN, progress_threshold=0.9))
        lengths[d] = len(steps)
        acts = denormalise_actions(torch.stack([a for a, _ in steps]), torch.as_tensor(low),
                                   torch.as_tensor(high))
        assert torch.all(acts >= torch.as_tensor(low) - 1e-6) and torch.all(acts <= torch.as_tensor(high) + 1e-6)
        assert acts[:, d].mean() > 0.005  # the skill moves its own joint
    assert abs(lengths[0] - SHORT_LEN) <= 2, lengths
    assert abs(lengths[1] - LONG_LEN) <= 3, lengths
    # the skill prior learnt which skill the state asks for
    probs = torch.softmax(model.skill_prior(torch.as_tensor(data.obs)), -1).argmax(-1).numpy()
    assert (probs == data.labels).mean() > 0.9


def test_rollout_respects_max_steps_and_threshold():
    cfg = SkillModelConfig(num_skills=2, obs_dim=4, hidden_dim=16, train_steps=1)
    from extract_skills.core.skills.skill_model import SkillModel
    model = SkillModel(cfg).eval()
    steps = list(model.skill_decoder.rollout(torch.zeros(5), 0, max_steps=7, progress_threshold=1.0))
    assert len(steps) == 7  # sigmoid never reaches exactly 1.0 -> runs to the cap
    steps = list(model.skill_decoder.rollout(torch.zeros(5), 0, max_steps=7, progress_threshold=1e-9))
    assert len(steps) == 1


def test_padding_does_not_change_loss():
    """Padding values beyond a segment's length are masked out of every loss term."""
    data = _synthetic(n_per_skill=4)
    cfg = SkillModelConfig(num_skills=2, obs_dim=10, hidden_dim=16, max_segment_len=LONG_LEN)
    from extract_skills.core.skills.skill_model import SkillModel
    torch.manual_seed(0)
    model = SkillModel(cfg)
    padded, lengths = pad_segments(data.actions)
    low, high = compute_action_bounds(np.concatenate(data.actions))
    acts = normalise_actions(torch.from_numpy(padded), torch.as_tensor(low), torch.as_tensor(high))
    mask = torch.arange(acts.shape[1])[None, :, None] < torch.from_numpy(lengths)[:, None, None]
    a1 = acts * mask
    a2 = torch.where(mask, acts, torch.full_like(acts, 0.77))
    args = (torch.from_numpy(lengths), torch.as_tensor(data.labels), torch.as_tensor(data.obs))
    torch.manual_seed(1)
    l1 = model.loss(a1, *args)
    torch.manual_seed(1)
    l2 = model.loss(a2, *args)
    for k in ("recon", "progress", "kl"):
        assert torch.allclose(l1[k], l2[k], atol=1e-5), k


@pytest.mark.parametrize("field,value", [("latent_dim", 0), ("progress_threshold", 1.5), ("lr", 0.0)])
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=field.split("_")[0]):
        SkillModelConfig(**{field: value})


def test_free_running_decoder_reconstructs_held_out_segments():
    """Decoded from the posterior mean, feeding back its own outputs (as on the robot), the decoder ends
    held-out segments near where their labels end; the split keeps whole episodes apart."""
    from extract_skills.core.skills.skill_model import evaluate_skill_model, split_by_episode
    data = _synthetic(n_per_skill=60)
    # amplitude varies per segment: the argument has something to carry
    rng = np.random.default_rng(1)
    for a, d in zip(data.actions, data.labels):
        a[:, d] *= rng.uniform(0.5, 1.5)
    data.episodes = np.arange(len(data.labels)) // 4  # 4 segments per "episode"
    train, val = split_by_episode(data, 0.25, seed=0)
    assert not set(train.episodes) & set(val.episodes) and len(val.labels) >= 20
    low, high = compute_action_bounds(np.concatenate(data.actions))
    cfg = SkillModelConfig(num_skills=2, obs_dim=10, hidden_dim=32, max_segment_len=LONG_LEN,
                           batch_size=32, train_steps=600)
    model, hist = train_skill_model(train, cfg, low, high, val=val, eval_every=100)
    assert "val_recon" in hist and len(hist["val_recon"]) == 6
    m = evaluate_skill_model(model, val, low, high)
    # an untrained decoder scores 0.84 / 0.0024 rad here (commands on the skill's joint: 0.005-0.015 rad)
    assert m["recon_free"] < 0.05 and m["joint_command_error_rad"] < 0.001, m
    assert m["posterior_abs_mean_max"] <= cfg.mean_bound
    assert m["prior_accuracy"] > 0.9 and m["prior_ece"] < 0.15, m


def test_skill_prior_never_below_floor():
    """A KL to p(d|s) must stay finite: every probability >= floor / K, even for far-off observations."""
    from extract_skills.core.skills.skill_model import SkillModel
    cfg = SkillModelConfig(num_skills=8, obs_dim=6, hidden_dim=16, prior_floor=0.01)
    model = SkillModel(cfg).eval()
    with torch.no_grad():
        for layer in model.skill_prior.net:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.mul_(50.0)  # extremely confident logits
        model.skill_prior.temperature.fill_(0.1)
        obs = torch.randn(512, 6) * 100.0
        p = model.skill_prior.probs(obs)
    assert torch.all(p >= 0.01 / 8 - 1e-9) and torch.allclose(p.sum(-1), torch.ones(512))
    assert p.max() > 0.98  # the floor takes little from a confident prior


def test_closed_loop_decoder_reads_the_measured_state_every_step():
    from extract_skills.core.skills.skill_model import SkillModel
    cfg = SkillModelConfig(num_skills=2, obs_dim=4, hidden_dim=16, closed_loop=True)
    model = SkillModel(cfg).eval()
    with pytest.raises(ValueError, match="closed-loop"):
        next(model.skill_decoder.rollout(torch.zeros(5), 0, max_steps=3, progress_threshold=1.0))
    calls = []

    def proprio():
        calls.append(1)
        return np.full(8, 0.1 * len(calls), np.float32)

    steps = list(model.skill_decoder.rollout(torch.zeros(5), 0, max_steps=4, progress_threshold=1.0,
                                             proprio_fn=proprio))
    assert len(steps) == 4 and len(calls) == 4
    # the measured state changes what is decoded
    a = [s for s, _ in model.skill_decoder.rollout(torch.zeros(5), 0, 1, 1.0, lambda: np.zeros(8, np.float32))]
    b = [s for s, _ in model.skill_decoder.rollout(torch.zeros(5), 0, 1, 1.0, lambda: np.ones(8, np.float32))]
    assert not torch.allclose(a[0], b[0])


def test_state_noise_keeps_the_commanded_target_and_needs_the_measured_frame():
    """Noise on the decoder's measured joints comes with labels corrected to the same absolute command:
    q~ + label~ == q + label for every arm joint (gripper untouched)."""
    from extract_skills.core.skills.skill_model import _noisy_states, denormalise_actions

    torch.manual_seed(0)
    cfg = SkillModelConfig(closed_loop=True, action_frame="measured", state_noise=0.02)
    low, high = torch.full((8,), -0.5), torch.full((8,), 0.5)
    acts = torch.rand(4, 6, 8) * 0.8 - 0.4  # normalised, away from the clamp
    states = torch.randn(4, 6, 8)
    noisy, targets = _noisy_states(acts, states, cfg, low, high)
    before = states[..., :7] + denormalise_actions(acts, low, high)[..., :7]
    after = noisy[..., :7] + denormalise_actions(targets, low, high)[..., :7]
    assert torch.allclose(before, after, atol=1e-5)
    assert (noisy[..., :7] - states[..., :7]).abs().max() > 0 and torch.equal(noisy[..., 7], states[..., 7])
    assert torch.allclose(targets[..., 7], acts[..., 7], atol=1e-6)
    with pytest.raises(ValueError, match="state_noise"):
        SkillModelConfig(closed_loop=True, action_frame="skill_start", state_noise=0.02)


def test_command_feedback_decoder_sees_its_own_last_target_in_training_as_at_execution():
    """With command feedback the decoder reads, every step, the lead of the skill's last joint target over the
    measured joints. Training (forward over recorded states) computes it from the decoder's own previous output,
    exactly as the executor measures it at run time: both paths decode the same actions."""
    from extract_skills.core.skills.skill_model import SkillModel
    with pytest.raises(ValueError, match="command_feedback"):
        SkillModelConfig(command_feedback=True)  # open loop: no measured joints to lead
    with pytest.raises(ValueError, match="command_feedback"):
        SkillModelConfig(closed_loop=True, action_frame="skill_start", command_feedback=True)
    torch.manual_seed(0)
    cfg = SkillModelConfig(num_skills=2, obs_dim=4, hidden_dim=16, closed_loop=True, command_feedback=True)
    dec = SkillModel(cfg).eval().skill_decoder
    low, high = np.full(8, -0.3, np.float32), np.full(8, 0.5, np.float32)
    dec.set_action_bounds(low, high)
    plain = SkillModel(SkillModelConfig(num_skills=2, obs_dim=4, hidden_dim=16, closed_loop=True)).skill_decoder
    assert dec.lstm.input_size == plain.lstm.input_size + 7
    assert "action_low" not in dec.state_dict()  # the checkpoint's bounds are set on load
    with pytest.raises(ValueError, match="lead_fn"):
        next(dec.rollout(torch.zeros(5), 0, 3, 1.0, proprio_fn=lambda: np.zeros(8)))
    a = [s for s, _ in dec.rollout(torch.zeros(5), 0, 1, 1.0, lambda: np.zeros(8), lambda: np.zeros(7))]
    b = [s for s, _ in dec.rollout(torch.zeros(5), 0, 1, 1.0, lambda: np.zeros(8), lambda: np.full(7, 0.1))]
    assert not torch.allclose(a[0], b[0])  # the lead changes what is decoded

    states = torch.randn(1, 6, 8) * 0.2
    z = torch.randn(1, 5)
    with torch.no_grad():
        trained, _ = dec(z, torch.ones(1, dtype=torch.long), 6, states)
    k = {"t": 0, "prev": None}

    def proprio():
        k["t"] += 1
        return states[0, k["t"] - 1].numpy()

    def lead():  # what SkillExecutor.command_lead gives: last target (q then + raw action) - q now
        if k["prev"] is None:
            return np.zeros(7)
        t = k["t"] - 1
        raw = low + (k["prev"].numpy() + 1.0) * 0.5 * (high - low)
        return states[0, t - 1, :7].numpy() + raw[:7] - states[0, t, :7].numpy()
    run = []
    for act, _ in dec.rollout(z[0], 1, 6, 2.0, proprio, lead):
        k["prev"] = act
        run.append(act)
    assert torch.allclose(torch.stack(run), trained[0], atol=1e-5)


def test_relabelled_targets_train_the_decoder_from_the_states_it_visited():
    """On-policy (DAgger) segments: the encoder reads the demo's actions, the decoder must reproduce ``targets``
    from ``states``. Here the targets are a feedback law of the state (-0.5 q on joint 0) the actions do not
    contain; after training the decoder follows the law on held-out states."""
    from extract_skills.core.skills.skill_model import concat_training_data

    rng = np.random.default_rng(0)
    L, n = 8, 96

    def part(relabelled: bool) -> SkillTrainingData:
        acts, states, targets = [], [], []
        for _ in range(n):
            a = np.zeros((L, 8), np.float32)
            a[:, 7] = 1.0
            s = rng.normal(0.0, 0.2, (L, 8)).astype(np.float32)
            t = a.copy()
            t[:, 0] = -0.5 * s[:, 0]
            acts.append(a)
            states.append(s)
            targets.append(t)
        return SkillTrainingData(acts, np.zeros(n, np.int64), np.zeros((n, 4), np.float32), np.arange(n),
                                 states, targets if relabelled else None)

    plain, onp = part(False), part(True)
    both = concat_training_data([plain, onp])
    assert both.targets is not None and len(both.targets) == 2 * n
    assert all(t is a for t, a in zip(both.targets[:n], plain.actions))  # plain parts reproduce their actions
    with pytest.raises(ValueError, match="targets"):
        SkillTrainingData(onp.actions, onp.labels, onp.obs, targets=onp.targets)  # targets need states
    low, high = np.full(8, -0.5, np.float32), np.full(8, 1.05, np.float32)
    cfg = SkillModelConfig(num_skills=1, obs_dim=4, hidden_dim=32, max_segment_len=L, closed_loop=True,
                           action_frame="measured", batch_size=32, train_steps=1000)
    model, _ = train_skill_model(onp, cfg, low, high)
    test = part(True)
    st = torch.from_numpy(np.stack(test.states))
    with torch.no_grad():
        pred, _ = model.skill_decoder(torch.zeros(n, cfg.latent_dim), torch.zeros(n, dtype=torch.long), L, st)
    dq0 = denormalise_actions(pred, torch.as_tensor(low), torch.as_tensor(high))[..., 0].numpy()
    want = np.stack(test.targets)[..., 0]
    # measured: 0.28 of the law's size after 1000 steps (0.77 after 400; the untrained decoder ~1)
    assert np.abs(dq0 - want).mean() < 0.45 * np.abs(want).mean(), "the decoder did not learn the relabelled law"


def test_decoder_only_fine_tuning_keeps_the_posterior_and_priors():
    """DAgger's decoder-only rounds: the encoder and both priors (weights and fitted temperature) stay bit for bit the
    base model's, so an RL policy started from those priors sees the same argument space; the decoder moves."""
    data = _synthetic(n_per_skill=16)
    data.episodes = np.arange(len(data.labels)) // 4
    data.states = [np.zeros((len(a), 8), np.float32) for a in data.actions]
    low, high = compute_action_bounds(np.concatenate(data.actions))
    cfg = SkillModelConfig(num_skills=2, obs_dim=10, hidden_dim=16, max_segment_len=LONG_LEN, closed_loop=True,
                           action_frame="measured", batch_size=16, train_steps=30)
    from extract_skills.core.skills.skill_model import split_by_episode
    train, val = split_by_episode(data, 0.25, seed=0)
    base, _ = train_skill_model(train, cfg, low, high, val=val, eval_every=10)
    with pytest.raises(ValueError, match="init"):
        train_skill_model(train, cfg, low, high, decoder_only=True)
    tuned, _ = train_skill_model(train, cfg, low, high, val=val, eval_every=10, init=base, decoder_only=True)
    for name in ("skill_encoder", "skill_prior", "argument_prior"):
        for (k, a), b in zip(getattr(base, name).state_dict().items(), getattr(tuned, name).state_dict().values()):
            assert torch.equal(a, b), f"{name}.{k} changed"
    assert any(not torch.equal(a, b) for a, b in zip(base.skill_decoder.state_dict().values(),
                                                     tuned.skill_decoder.state_dict().values()))


def test_encoder_states_make_the_posterior_read_where_the_arm_is():
    """q(z | a, s, d): the same relative commands from different measured states give different posteriors
    (without states they cannot), states are required, and training + the prior refit run with them."""
    from extract_skills.core.skills.skill_model import SkillModel, split_by_episode

    with pytest.raises(ValueError, match="closed_loop"):
        SkillModelConfig(encoder_states=True, closed_loop=False)
    cfg = SkillModelConfig(num_skills=2, obs_dim=10, hidden_dim=16, max_segment_len=LONG_LEN, closed_loop=True,
                           encoder_states=True, batch_size=16, train_steps=30)
    enc = SkillModel(cfg).eval().skill_encoder
    acts, d, lens = torch.zeros(2, 6, 8), torch.zeros(2, dtype=torch.long), torch.tensor([6, 6])
    states = torch.stack([torch.zeros(6, 8), torch.full((6, 8), 0.5)])
    with torch.no_grad():
        mean, _ = enc(acts, d, lens, states)
        with pytest.raises(ValueError, match="reads states"):
            enc(acts, d, lens)
    assert not torch.allclose(mean[0], mean[1])
    data = _synthetic(n_per_skill=16)
    data.episodes = np.arange(len(data.labels)) // 4
    rng = np.random.default_rng(0)
    data.states = [rng.normal(size=(len(a), 8)).astype(np.float32) for a in data.actions]
    low, high = compute_action_bounds(np.concatenate(data.actions))
    train, val = split_by_episode(data, 0.25, seed=0)
    model, hist = train_skill_model(train, cfg, low, high, val=val, eval_every=10)
    assert hist["prior_refit"] and np.isfinite(hist["val_recon"][-1])
