"""Sample efficiency on a held-out kitchen task (issue 13): EXTRACT vs SPiRL-style vs flat SAC vs BC.

Every method sees the same observation (R3M-format embedding of the camera frame + joints + gripper), the same
task (a held-out task order never in the demos), the same start states, the same low-level env-step budget and
the same seeds; each is scored by subtasks completed (physics detectors), as the mean over ``--eval-episodes``
evaluation episodes with fixed seeds, at every ``--eval-every`` env steps.

* ``extract``: hybrid skill SAC on the shipped skill model (``--checkpoint``), initialised from its priors.
* ``spirl``: the same agent with one skill (continuous z only) on a skill model trained on <= 10-step windows of
  the same data (``--spirl-checkpoint``; see benchmarks/RESULTS.md for the command), every skill run 10 steps.
* ``sac``: flat SAC on low-level actions, one decision (render + embed) per control step.
* ``bc``: an MLP regressing the demos' commands (``--run-dir``: the extract run's embeddings); no env
  interaction, so its curve is flat.

Resumable: every (method, seed) writes ``<out-dir>/<method>_s<seed>.json`` when done and is skipped on a rerun;
EXTRACT / SPiRL runs also checkpoint (agent + replay buffer) under ``<out-dir>/<method>_s<seed>/``.

    python benchmarks/sample_efficiency.py                      # the full table: --jobs 2 worker processes of
                                                                # one thread, longest runs first (RESULTS.md: timing)
    python benchmarks/sample_efficiency.py --quick              # CI smoke: tiny budgets, one process
    python benchmarks/sample_efficiency.py --methods sac --seeds 1 &   # or by hand, one process per core, same out dir;
    python benchmarks/sample_efficiency.py --aggregate-only            # then the table, JSON and plot
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ros2_ws" / "src" / "extract_skills"))

METHODS = ("extract", "spirl", "sac", "bc")
BY_COST = ("sac", "extract", "spirl", "bc")  # longest runs first, so parallel workers finish together


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "extract_kitchen.pt")
    ap.add_argument("--spirl-checkpoint", type=Path, default=ROOT / "models" / "spirl_kitchen.pt")
    ap.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "kitchen_long", help="extract run (BC data)")
    ap.add_argument("--task-index", type=int, default=0, help="which held-out task (0: microwave, kettle, light "
                    "switch, slide cabinet)")
    ap.add_argument("--env-steps", type=int, default=20000, help="low-level steps of training per run")
    ap.add_argument("--eval-every", type=int, default=5000)
    ap.add_argument("--utd", type=float, default=4.0, help="gradient steps per skill transition of the skill agents "
                    "(official ~1 at ~100x this budget; the same for EXTRACT and SPiRL-style)")
    ap.add_argument("--utd-unit", choices=("transition", "env_step"), default="transition",
                    help="what --utd and --learning-starts count: skill transitions, or low-level env steps (the "
                         "same updates per env step for skills of any length)")
    ap.add_argument("--learning-starts", type=int, default=None,
                    help="first gradient step after this many transitions / env steps (default: the agent's 256)")
    ap.add_argument("--alpha-z", type=float, default=None,
                    help="weight of the skill agents' argument KL to p(z|s,d) (default: the agent's, 0.1)")
    ap.add_argument("--alpha-d", type=float, default=None,
                    help="weight of the skill agents' skill-choice KL to p(d|s) (default: the agent's, 0.1)")
    ap.add_argument("--eval-episodes", type=int, default=5)
    ap.add_argument("--episode-steps", type=int, default=400, help="low-level steps per episode")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "sample_efficiency")
    ap.add_argument("--json", type=Path, default=None,
                    help="default: benchmarks/results/sample_efficiency.json (task 0), sample_efficiency_task<T>.json")
    ap.add_argument("--plot", type=Path, default=None, help="default: the JSON's path with .png")
    ap.add_argument("--ship-policy", type=Path, default=None,
                    help="copy the EXTRACT seed-0 agent checkpoint here (the main job's policy)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=None,
                    help="worker processes sharing the runs (each --threads); 1: run them in this process "
                         "(default: 2 where there are 2 cores, 1 with --quick)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a --jobs child: runs, no aggregate
    ap.add_argument("--quick", action="store_true", help="tiny budgets for a CI smoke run")
    ap.add_argument("--aggregate-only", action="store_true", help="only rebuild the JSON/plot/table from results")
    a = ap.parse_args(argv)
    # per task: a run on task 1 or 2 must not overwrite task 0's shipped figures (it did, by default)
    if a.json is None:
        a.json = ROOT / "benchmarks" / "results" / (
            "sample_efficiency.json" if a.task_index == 0 else f"sample_efficiency_task{a.task_index}.json")
    if a.plot is None:
        a.plot = a.json.with_suffix(".png")
    if a.quick:
        a.env_steps, a.eval_every, a.eval_episodes, a.episode_steps, a.seeds = 120, 60, 1, 60, [0]
        a.jobs = 1 if a.jobs is None else a.jobs
    if a.jobs is None:
        a.jobs = min(2, os.cpu_count() or 1)
    return a


def _env(args, checkpoint: Path, flat: bool = False, spirl: bool = False):
    from extract_skills.core.rl.skill_env import SkillEnv, SkillEnvConfig, StepEnv
    from extract_skills.core.sim.kitchen import KitchenConfig, KitchenSim
    from extract_skills.core.sim.scripted_demos import heldout_task_sequences
    from extract_skills.core.skills.deployment import load_deployment_bundle, load_deployment_encoder

    bundle = load_deployment_bundle(checkpoint)
    encoder = load_deployment_encoder(checkpoint, bundle)
    task = heldout_task_sequences(max(3, args.task_index + 1))[args.task_index]
    sim = KitchenSim(KitchenConfig(image_every_step=False))
    cfg = SkillEnvConfig(task=tuple(task), episode_steps=args.episode_steps)
    if flat:
        return StepEnv(sim, bundle, encoder, cfg), bundle
    return SkillEnv(sim, bundle, encoder, cfg, fixed_skill_steps=10 if spirl else None), bundle


def agent_config(args, **extra):
    """The skill agents' SAC config from the benchmark's options (final_eval.py rebuilds the same one)."""
    from extract_skills.core.rl.skill_sac import SkillSACConfig
    opts = {k: v for k, v in (("learning_starts", args.learning_starts), ("alpha_z", args.alpha_z),
                              ("alpha_d", args.alpha_d)) if v is not None}
    return SkillSACConfig(utd=args.utd, utd_unit=args.utd_unit, **opts, **extra)


def run_skill_agent(args, method: str, seed: int) -> dict:
    import torch

    from extract_skills.core.rl.skill_sac import HybridSkillSAC
    from extract_skills.core.rl.trainer import Learner, TrainConfig, train
    from extract_skills.core.skills.encoders import file_sha256

    ckpt = args.checkpoint if method == "extract" else args.spirl_checkpoint
    env, bundle = _env(args, ckpt, spirl=method == "spirl")
    quick = dict(batch_size=16, learning_starts=16) if args.quick else {}
    torch.manual_seed(seed)  # network initialisation
    agent = HybridSkillSAC(bundle.model, bundle.argument_bound, agent_config(args, **quick))
    run_dir = args.out_dir / f"{method}_s{seed}"
    learner = Learner(agent, run_dir, seed=seed, skill_checkpoint_sha256=file_sha256(ckpt))
    t0 = time.time()

    def progress(log, info) -> None:
        if log.episode % 5 == 0:
            print(f"  [{method} s{seed}] episode {log.episode}: {log.env_steps} env steps, return {log.ret:.0f}, "
                  f"{log.skills} skills, {time.time() - t0:.0f} s", flush=True)

    curve = train(env, learner, TrainConfig(total_env_steps=args.env_steps, seed=seed, eval_every=args.eval_every,
                                            eval_episodes=args.eval_episodes), progress)
    return {"steps": [int(s) for s, _ in curve], "mean_subtasks": [float(v) for _, v in curve],
            "updates": agent.updates, "episodes": learner.counters.episodes}


def _flat_eval(env, act, episodes: int, seed: int) -> float:
    rets = []
    for i in range(episodes):
        obs = env.reset(seed=10_000_000 + seed * 1000 + i)  # same evaluation seeds as the skill agents
        ret = 0.0
        while True:
            s = env.step(act(obs))
            ret += s.reward
            obs = s.obs
            if s.terminated or s.truncated:
                break
        rets.append(ret)
    return float(np.mean(rets))


def run_flat_sac(args, seed: int) -> dict:
    import torch

    from extract_skills.core.rl.baselines import FlatSAC, FlatSACConfig

    from extract_skills.core.data.atomic_io import atomic_torch_save

    env, bundle = _env(args, args.checkpoint, flat=True)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = FlatSACConfig(batch_size=16, learning_starts=16) if args.quick else FlatSACConfig()
    agent = FlatSAC(bundle.obs_dim, cfg)
    steps, curve, episode, t0 = 0, [], 0, time.time()
    evaluate = lambda: _flat_eval(env, lambda o: agent.to_env(agent.act(o, rng)), args.eval_episodes, seed)
    # A flat run takes hours here (a render and an embedding per step): it checkpoints at episode ends, atomically,
    # and a rerun with the same out dir continues from the last one (agent, buffer, counters, curve, RNG states).
    ckpt = args.out_dir / f"sac_s{seed}" / "checkpoint.pt"
    if ckpt.is_file():
        st = torch.load(ckpt, map_location="cpu", weights_only=False)  # our own file: numpy RNG state inside
        if (st["env_steps_budget"], st["task_index"]) != (args.env_steps, args.task_index):
            raise SystemExit(f"{ckpt} is from another budget or task ({st['env_steps_budget']} steps, task "
                             f"{st['task_index']}); use another --out-dir")
        agent.load_checkpoint(st["agent"])
        steps, curve, episode, next_eval = st["steps"], [tuple(c) for c in st["curve"]], st["episode"], st["next_eval"]
        rng.bit_generator.state = st["numpy_rng"]
        torch.set_rng_state(st["torch_rng"])
        t0 -= st["seconds"]  # the run's time includes its earlier processes
        print(f"  [sac s{seed}] resumed from {ckpt}: {steps} env steps, episode {episode}", flush=True)
    else:
        curve.append((0, evaluate()))
        next_eval = args.eval_every
    while steps < args.env_steps:
        obs = env.reset(seed=seed * 100_000 + episode)
        ret = 0.0
        while True:
            y = agent.act(obs, rng)
            s = env.step(agent.to_env(y))
            agent.store(obs, y, s.reward, s.obs, float(s.terminated))
            steps += 1
            ret += s.reward
            if agent.n >= cfg.learning_starts:
                agent.update(rng)
            obs = s.obs
            if s.terminated or s.truncated or steps >= args.env_steps:
                break
        episode += 1
        if episode % 5 == 0:
            print(f"  [sac s{seed}] episode {episode}: {steps} env steps, return {ret:.0f}, {time.time() - t0:.0f} s",
                  flush=True)
        while steps >= next_eval and next_eval <= args.env_steps:
            curve.append((next_eval, evaluate()))
            next_eval += args.eval_every
        if episode % 2 == 0 or steps >= args.env_steps:
            atomic_torch_save({"agent": agent.checkpoint(), "steps": steps, "curve": curve, "episode": episode,
                               "next_eval": next_eval, "numpy_rng": rng.bit_generator.state,
                               "torch_rng": torch.get_rng_state(), "seconds": time.time() - t0, "env_steps_budget": args.env_steps,
                               "task_index": args.task_index}, ckpt)
    return {"steps": [s for s, _ in curve], "mean_subtasks": [v for _, v in curve], "episodes": episode,
            "seconds": round(time.time() - t0, 1)}


def _make_bc_demos(env, n: int, seed: int) -> dict:
    """Scripted demos on the benchmark's own kitchen, embedded with the checkpoint's encoder (what
    ``extract embed`` stores), for BC when no extract run directory is at hand."""
    from extract_skills.core.sim.scripted_demos import (DemoConfig, ScriptedDemo, heldout_task_sequences,
                                                        sample_task_sequence)

    from extract_skills.core.sim.kitchen import KitchenConfig, KitchenSim

    print(f"  [bc] no extract run: generating {n} scripted demos and embedding them", flush=True)
    cfg = DemoConfig(min_subtasks=1, max_subtasks=1 if n == 1 else 4)
    sim = KitchenSim(KitchenConfig())  # demos record a frame every step
    try:
        gen, rng = ScriptedDemo(sim, cfg), np.random.default_rng(10_000 + seed)
        eps = [gen.run_episode(sample_task_sequence(rng, cfg, heldout_task_sequences()), 20_000 + seed * 100 + i)[0]
               for i in range(n)]
    finally:
        sim.close()
    return {"emb": [env.encoder.embed_frames(e.images) for e in eps], "proprio": [e.proprio() for e in eps],
            "actions": [e.skill_actions() for e in eps]}


def run_bc(args, seed: int) -> dict:
    from extract_skills.cli.extract_pipeline import _load_embeddings
    from extract_skills.core.rl.baselines import train_bc

    env, bundle = _env(args, args.checkpoint, flat=True)
    if (args.run_dir / "embeddings.npz").is_file():
        data = _load_embeddings(args.run_dir, thumbs=False)
    else:  # a fresh clone has no extract run: make a few demos (never a held-out task) and embed them
        data = _make_bc_demos(env, n=1 if args.quick else 20, seed=seed)
    obs = [np.stack([bundle.make_obs(e, p) for e, p in zip(emb[:len(a)], prop[:len(a)])])
           for emb, prop, a in zip(data["emb"], data["proprio"], data["actions"])]
    policy = train_bc(obs, data["actions"], steps=100 if args.quick else 4000, seed=seed)
    value = _flat_eval(env, policy.act, args.eval_episodes, seed)
    grid = list(range(0, args.env_steps + 1, args.eval_every))
    return {"steps": grid, "mean_subtasks": [value] * len(grid), "demo_steps": int(sum(len(a) for a in data["actions"]))}


def aggregate(args) -> dict:
    methods = {}
    for m in args.methods:
        runs = [json.loads((args.out_dir / f"{m}_s{s}.json").read_text()) for s in args.seeds
                if (args.out_dir / f"{m}_s{s}.json").is_file()]
        if not runs:
            continue
        n = min(len(r["steps"]) for r in runs)
        vals = np.array([r["mean_subtasks"][:n] for r in runs])
        methods[m] = {"steps": runs[0]["steps"][:n], "mean_subtasks": vals.mean(0).round(4).tolist(),
                      "std_subtasks": vals.std(0).round(4).tolist(), "per_seed": vals.round(4).tolist(),
                      "seeds": [s for s in args.seeds if (args.out_dir / f"{m}_s{s}.json").is_file()]}
    ratio, note = None, ""
    if "extract" in methods and "spirl" in methods:
        target = methods["spirl"]["mean_subtasks"][-1]
        budget = methods["spirl"]["steps"][-1]
        if target <= 0:
            note = "SPiRL-style completed no subtask at its final evaluation: no target to reach"
        else:
            hit = [s for s, v in zip(methods["extract"]["steps"], methods["extract"]["mean_subtasks"]) if v >= target]
            if hit and hit[0] == 0:  # a ratio against 0 steps means nothing: say what happened
                note = (f"EXTRACT's priors alone (0 env steps) already complete SPiRL-style's final {target:.2f} "
                        f"subtasks (SPiRL: {budget} env steps): no ratio")
            elif hit:
                ratio = budget / hit[0]
                note = f"EXTRACT reached SPiRL-style's final {target:.2f} subtasks at {hit[0]} env steps (SPiRL: {budget})"
            else:
                note = f"EXTRACT never reached SPiRL-style's final {target:.2f} subtasks within {budget} env steps"
    from extract_skills.core.sim.scripted_demos import heldout_task_sequences

    return {"task": list(heldout_task_sequences(max(3, args.task_index + 1))[args.task_index]),
            "env_steps": args.env_steps, "eval_episodes": args.eval_episodes, "episode_steps": args.episode_steps,
            "methods": methods, "ratio_vs_spirl": ratio, "ratio_note": note}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m, r in result["methods"].items():
        x, y, sd = np.array(r["steps"]), np.array(r["mean_subtasks"]), np.array(r["std_subtasks"])
        ax.plot(x, y, marker="o", label=f"{m} ({len(r['seeds'])} seeds)")
        ax.fill_between(x, y - sd, y + sd, alpha=0.2)
    ax.set_xlabel("env steps (0.08 s control steps)")
    ax.set_ylabel(f"subtasks completed (of {len(result['task'])})")
    ax.set_title("held-out task: " + ", ".join(result["task"]), fontsize=9)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def table(result: dict) -> str:
    lines = ["| method | seeds | start (mean subtasks) | final (mean +- std) |", "|---|---:|---:|---:|"]
    for m, r in result["methods"].items():
        lines.append(f"| {m} | {len(r['seeds'])} | {r['mean_subtasks'][0]:.2f} | "
                     f"{r['mean_subtasks'][-1]:.2f} +- {r['std_subtasks'][-1]:.2f} |")
    ratio = result["ratio_vs_spirl"]
    lines.append("")
    lines.append(f"Ratio vs SPiRL-style (env steps): {'n/a' if ratio is None else f'{ratio:.1f}x'} ({result['ratio_note']})")
    return "\n".join(lines)


def run_all(args) -> None:
    """Every (method, seed) not yet done and not claimed by another process, longest methods first."""
    for m in sorted(args.methods, key=BY_COST.index):
        for s in args.seeds:
            out = args.out_dir / f"{m}_s{s}.json"
            if out.is_file():
                print(f"[{m} s{s}] done before, skipping")
                continue
            # several processes may share the out dir (--jobs, or one per core with --seeds N): claim the run
            claim = args.out_dir / f"{m}_s{s}.running"
            try:
                os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                print(f"[{m} s{s}] another process runs it (delete {claim} if that process died; a flat SAC "
                      f"run then resumes from its checkpoint), skipping")
                continue
            t0 = time.time()
            print(f"[{m} s{s}] running", flush=True)
            res = (run_skill_agent(args, m, s) if m in ("extract", "spirl") else
                   run_flat_sac(args, s) if m == "sac" else run_bc(args, s))
            res.setdefault("seconds", round(time.time() - t0, 1))
            out.write_text(json.dumps(res, indent=1))
            claim.unlink()
            print(f"[{m} s{s}] {res['mean_subtasks']} in {res['seconds']} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    if hasattr(sys.stdout, "reconfigure"):
        # --jobs workers share stdout; unbuffered (PYTHONUNBUFFERED, as under CI) print() writes a line's text and its
        # newline separately, so two workers' lines could splice. Line buffering makes every line one write.
        sys.stdout.reconfigure(line_buffering=True, write_through=False)
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    if not args.aggregate_only and args.jobs > 1 and not args.worker:
        # the same command as workers (the last --jobs wins in argparse); their prints carry [method sN]
        workers = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *raw, "--worker", "--jobs", "1"])
                   for _ in range(args.jobs)]
        failed = sum(w.wait() != 0 for w in workers)
        if failed:
            print(f"{failed} worker(s) failed: the runs they held are not done (rerun to resume)", file=sys.stderr)
            return 1
    elif not args.aggregate_only:
        run_all(args)
    if args.worker:
        return 0
    result = aggregate(args)
    result["wall_clock_s"] = round(time.time() - t_all, 1)
    result["seconds_per_run"] = {f"{m}_s{s}": json.loads((args.out_dir / f"{m}_s{s}.json").read_text()).get("seconds")
                                 for m in args.methods for s in args.seeds if (args.out_dir / f"{m}_s{s}.json").is_file()}
    if not args.quick:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        plot(result, args.plot)
    if args.ship_policy is not None and "extract" in args.methods:
        src = args.out_dir / f"extract_s{args.seeds[0]}" / "agent.pt"
        args.ship_policy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, args.ship_policy)
        print(f"shipped {src} -> {args.ship_policy}")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
