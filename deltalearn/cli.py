"""The ``deltalearn`` command: train, distill, evaluate, count, reproduce, bench and tune."""
from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from .core.nets import QNetwork

__all__ = ["main"]

# `deltalearn reproduce` writes into the package's shipped sets by default (in a repository checkout,
# deltalearn/data/reproduce and deltalearn/data/heldout), the files the chapters read
DEFAULT_REPRODUCE_OUT = Path(__file__).resolve().parent / "data" / "reproduce"
DEFAULT_HELDOUT_OUT = DEFAULT_REPRODUCE_OUT.parent / "heldout"


def _threshold(text: str) -> float | list[float]:
    from .core.delta import check_threshold

    parts = [p for p in text.split(",") if p.strip()]
    try:
        vals = [check_threshold(p) for p in parts]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not vals:
        raise argparse.ArgumentTypeError(f"threshold must be a number >= 0, got {text!r}")
    return vals[0] if len(vals) == 1 else vals


def _threshold_or_none(text: str) -> float | list[float] | None:
    return None if text.strip().lower() == "none" else _threshold(text)


def _workers(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return n


def _sparsity(text: str) -> float:
    from .core.pruning import check_sparsity

    try:
        return check_sparsity(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _parse_set(items: Sequence[str], config: type | None = None) -> dict[str, Any]:
    from .rl.dqn import DQNConfig

    names = {f.name for f in fields(config or DQNConfig)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or key not in names:
            raise SystemExit(f"--set expects KEY=VALUE with KEY one of: {', '.join(sorted(names))}; got {item!r}")
        try:
            out[key] = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            out[key] = val
    return out


def _set_threads(n: int) -> None:
    """Cap torch's threads: on a machine busy with training, two threads wait on each other."""
    if n < 0:
        raise ValueError(f"--threads must be >= 0 (0: torch's default), got {n}")
    if n:
        import torch

        torch.set_num_threads(n)


def _network(source: str | None, game: str, option: str = "--agent") -> tuple[QNetwork, dict[str, Any] | None]:
    """The network an option names (a shipped agent, or a ``.pt`` file; by default ``game``'s
    shipped agent) with its manifest record (``None`` for a file), checked to be made for
    ``game`` before anything plays."""
    from .store.agents import agent_names, agent_record, load_agent_or_file
    from .rl.envs import check_actions

    name = source or game
    net = load_agent_or_file(name)
    rec = agent_record(name) if name in agent_names() else None
    if rec is not None and rec.get("env", game) != game:
        raise ValueError(f"{option} {name} plays {rec['env']}, not {game}")
    check_actions(net, game, f"agent {name!r}" if rec is not None else f"the network in {name}")
    return net, rec


def cmd_train(a: argparse.Namespace) -> int:
    from .rl.dqn import DQNConfig, train
    from .rl.envs import is_atari
    from .rl.ship import ship_trained

    over = _parse_set(a.set or [])
    if a.steps is not None:
        over["total_steps"] = a.steps
    over["seed"] = a.seed
    cfg = DQNConfig.atari(a.env, **over) if is_atari(a.env) else DQNConfig.cartpole(env=a.env, **over)
    init = _network(a.init, cfg.env, "--init")[0] if a.init else None
    tag = f"-s{cfg.sparsity:g}" if cfg.sparsity > 0 else ("-finetune" if init is not None else "")
    a.run_dir = run_dir = a.run_dir or f"runs/{a.env}{tag}-seed{a.seed}"  # main's interrupt message names it
    res = train(cfg, run_dir, resume=not a.restart, progress=not a.no_progress, init=init)
    summary = ship_trained(res, run_dir, episodes=a.eval_episodes, seed=a.eval_seed, export=a.export,
                           name=a.export_name, init=a.init, progress=not a.no_progress)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_distill(a: argparse.Namespace) -> int:
    from .rl.distill import DistillConfig
    from .rl.ship import distill_and_ship

    cfg = DistillConfig.from_dict({**_parse_set(a.set or [], DistillConfig), "seed": a.seed})
    if a.stages:
        cfg.stages = tuple(a.stages)
    teacher = _network(a.agent, a.env)[0]
    a.run_dir = run_dir = a.run_dir or f"runs/{a.env}-distill-seed{a.seed}"  # main's interrupt message names it
    out = distill_and_ship(teacher, a.env, cfg, teacher_name=a.agent or a.env, run_dir=run_dir, keep=a.keep,
                           episodes=a.eval_episodes, seed=a.eval_seed, export=a.export, progress=not a.no_progress)
    print(json.dumps(out, indent=2))
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .rl.evaluation import evaluate
    from .store.agents import load_network_file
    from .study.heldout import evaluate_heldout

    if a.checkpoint and a.agent:
        raise ValueError("give --agent or --checkpoint, not both")
    if a.record and (not a.heldout or a.checkpoint):
        raise ValueError("--record stores a shipped agent's own held-out evaluation: it needs --heldout and a "
                         "shipped agent (no --checkpoint)")
    _set_threads(a.threads)
    if a.checkpoint:
        from .rl.envs import check_actions

        net, name = load_network_file(a.checkpoint), None
        check_actions(net, a.env, f"the network in {a.checkpoint}")
    else:
        net, name = _network(a.agent, a.env)[0], a.agent or a.env
    progress = not a.json and not a.no_progress
    if a.heldout:  # the reporting episodes, never used to choose anything
        res = evaluate_heldout(a.env, net, sparsity=a.sparsity, threshold=a.threshold, epsilon=a.epsilon,
                               name=name, record=a.record, progress=progress, backend=a.backend)
    else:
        res = evaluate(net, a.env, episodes=a.episodes, seed=a.seed, epsilon=a.epsilon, sparsity=a.sparsity,
                       threshold=a.threshold, progress=progress, backend=a.backend)
    if a.json:
        print(json.dumps(res.to_dict()))
    else:
        print(f"{a.env} {res.variant.name}: {res.mean_score:.2f} +/- {res.std_score:.2f} over {len(res.scores)} "
              f"episodes" + (f", HNS {res.hns:.3f}" if res.hns is not None else ""))
        print(res.report)
    return 0


def cmd_count(a: argparse.Namespace) -> int:
    from .core.counting import count_weights
    from .core.nets import mlp_qnet, nature_dqn
    from .core.pruning import make_permanent, prune_network

    import torch

    torch.manual_seed(a.seed)
    net = nature_dqn(a.actions) if a.model == "nature-dqn" else mlp_qnet(a.obs_dim, a.actions, tuple(a.hidden))
    if a.sparsity:
        make_permanent(prune_network(net, a.sparsity))
    rep = count_weights(net, label=f"{a.model}" + (f" pruned to {a.sparsity:g}" if a.sparsity else " dense"))
    if a.json:
        print(rep.to_json())
    else:
        print(rep)
    return 0


def cmd_reproduce(a: argparse.Namespace) -> int:
    from .study.reproduce import reproduce_games

    if a.out is None:  # the reporting episodes get their own folder
        a.out = str(DEFAULT_HELDOUT_OUT if a.heldout else DEFAULT_REPRODUCE_OUT)
    _set_threads(a.threads)
    reproduce_games(a.env, a.out, sparsity=a.sparsity, threshold=a.threshold, episodes=a.episodes, seed=a.seed,
                    parts=a.parts, heldout=a.heldout, pruned_checkpoint=a.pruned_checkpoint,
                    sweep_sparsities=a.sweep_sparsities, sweep_thresholds=a.sweep_thresholds,
                    sweep_episodes=a.sweep_episodes, trajectory_steps=a.trajectory_steps,
                    trajectory_dir=a.trajectory_dir, max_steps=a.max_steps, progress=not a.no_progress, workers=a.workers,
                    engine=a.engine, scheduler=a.scheduler, echo=print, backend=a.backend)
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from .study.bench import BENCH_FILE, bench, write_bench

    if a.all:
        clash = [o for o, v in (("--env", a.env), ("--agent", a.agent), ("--threshold", a.threshold),
                                ("--json", a.json)) if v] + (["--batch"] if a.batch != 1 else [])
        if clash:
            raise ValueError(f"--all times the fixed suite: drop {', '.join(clash)}")
        path = write_bench(a.out or BENCH_FILE, rounds=a.rounds, steps=a.steps, keep=a.keep,
                           progress=not a.no_progress, games=a.only)
        print(f"wrote {path}")
        return 0
    if a.out or a.only or a.keep:
        raise ValueError("--out, --only and --keep go with --all")
    if not a.env:
        raise ValueError("name a game with --env (or time the whole suite with --all)")
    res = bench(a.env, a.agent, a.threshold, batch=a.batch, rounds=a.rounds, steps=a.steps,
                progress=not a.no_progress)
    if a.json:
        print(json.dumps(res.to_dict()))
        return 0
    th = res.threshold if isinstance(res.threshold, float) else ",".join(f"{t:g}" for t in res.threshold)
    print(f"{res.agent} on {res.game}'s recorded episode, threshold {th}, batch {res.batch}: {res.steps} steps x "
          f"{res.rounds} rounds, 1 thread, median ms per decision")
    print(res.table())
    print(f"sparse vs dense-backed delta: greedy actions equal on {res.agreement:.2%} of {res.steps * res.batch} "
          f"decisions ({res.disagreements} differ{', all near-ties' if res.disagreements and res.near_ties else ''}"
          f"), max |dQ| {res.max_abs_dq:.1e}, counts {'agree' if res.counts_close else 'DIFFER'}; "
          f"{res.mults_per_decision:,.0f} multiplications per decision ({res.dense_mults_per_decision:,} dense)")
    return 0


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return v


def _steps_or_none(text: str) -> int | None:
    return None if text.strip().lower() == "none" else _positive(text)


def _tune_command(a: argparse.Namespace, over: dict[str, Any], held: int | None) -> str:
    """The full command behind a tuning record, every effective option spelled out, so it reproduces
    even if a default changes later."""
    import shlex

    from .study.tune import TuneConfig, game_defaults

    cfg = {**{f.name: getattr(TuneConfig(), f.name) for f in fields(TuneConfig)}, **game_defaults(a.game, a.scope),
           **over}
    parts = ["deltalearn", "tune", "--game", a.game, "--scope", a.scope]
    if a.sparsities:
        parts += ["--sparsities", *(f"{s:g}" for s in a.sparsities)]
    for opt, key in (("--episodes", "episodes"), ("--max-steps", "max_steps"), ("--seed", "seed"),
                     ("--budget", "budget"), ("--min-agreement", "min_agreement"),
                     ("--confirmations", "confirmations"), ("--backend", "backend")):
        parts += [opt, "none" if cfg[key] is None else f"{cfg[key]:g}" if isinstance(cfg[key], float) else str(cfg[key])]
    parts += ["--heldout-episodes", str(held if held is not None else cfg["heldout_episodes"])]
    if a.agent_directory:
        parts += ["--agent-directory", a.agent_directory]
    return shlex.join(parts)


def _confirm_tuned(a: argparse.Namespace) -> int:
    """``deltalearn tune --confirm``: the committed record's setting and the dense agent on fresh seeds."""
    import shlex

    from .study.tune import confirm_tuned, write_confirm

    tuning = [opt for opt, key in (("--sparsities", "sparsities"), ("--episodes", "episodes"), ("--seed", "seed"),
                                   ("--budget", "budget"), ("--min-agreement", "min_agreement"),
                                   ("--confirmations", "confirmations"), ("--backend", "backend"),
                                   ("--heldout-episodes", "heldout_episodes"), ("--agent-directory", "agent_directory"),
                                   ("--max-steps", "max_steps")) if getattr(a, key, None) is not None]
    if tuning:
        raise ValueError(f"--confirm plays the committed record's own setting; tuning option(s) "
                         f"{', '.join(tuning)} do not apply")
    parts = ["deltalearn", "tune", "--game", a.game, "--scope", a.scope, "--confirm", "--confirm-seed",
             str(a.confirm_seed), "--confirm-episodes", str(a.confirm_episodes)]
    if a.records:
        parts += ["--records", a.records]
    if a.play_dense:
        parts += ["--play-dense"]
    try:
        rec = confirm_tuned(a.game, a.scope, seed=a.confirm_seed, episodes=a.confirm_episodes,
                            progress=not a.no_progress, root=a.records or "tuned", share_dense=not a.play_dense)
    except FileNotFoundError as e:  # no record to confirm: one clear line like any other bad value
        raise ValueError(str(e)) from e
    rec["command"] = shlex.join(parts)
    path = write_confirm(rec, a.out)
    if a.json:
        print(json.dumps(rec))
        return 0
    p = rec["paired"]
    print(f"{a.game} ({a.scope}) confirmed on seeds {rec['seed']}-{rec['seed'] + rec['episodes'] - 1}: "
          f"{rec['reduction']:.1f}x, dense {rec['dense_mean']:.4g}, tuned {rec['tuned_mean']:.4g}, paired "
          f"{p['mean_difference']:+.3g} (95% CI {p['ci_low']:+.3g} to {p['ci_high']:+.3g}, floor {rec['floor']:.3g}): "
          f"{rec['verdict']}; {rec['cpu_minutes']:.1f} CPU min")
    print(f"wrote {path}")
    return 0


def cmd_tune(a: argparse.Namespace) -> int:
    from .study.tune import game_defaults, tune_game, write_tuned

    game_defaults(a.game, a.scope)  # an unknown game or scope fails here, before anything loads
    _set_threads(a.threads)
    if a.confirm:
        return _confirm_tuned(a)
    if a.confirm_seed != 5000 or a.confirm_episodes != 60 or a.records or a.play_dense:
        raise ValueError("--confirm-seed, --confirm-episodes, --records and --play-dense go with --confirm")
    over: dict[str, Any] = {k: v for k, v in (("episodes", a.episodes), ("seed", a.seed), ("budget", a.budget),
                                               ("min_agreement", a.min_agreement), ("confirmations", a.confirmations),
                                               ("backend", a.backend), ("agent_directory", a.agent_directory))
                            if v is not None}
    if hasattr(a, "max_steps"):  # given (a number or none); else the game's default
        over["max_steps"] = a.max_steps
    if a.sparsities:
        over["sparsities"] = tuple(a.sparsities)
    command = _tune_command(a, over, a.heldout_episodes)
    rec = tune_game(a.game, a.scope, heldout_episodes=a.heldout_episodes, command=command,
                    progress=not a.no_progress, **over)
    path = write_tuned(rec, a.out)
    if a.json:
        print(json.dumps(rec))
        return 0
    t, h = rec["tuning"], rec["heldout"]
    th = ", ".join(f"{x:.4g}" for x in t["thresholds"])
    print(f"{a.game} ({a.scope}): {t['agent']} ({t['kind']}), thresholds {th}")
    print(f"  tuning seeds {rec['config']['seed']}+ ({rec['config']['episodes']} episodes): {t['reduction']:.1f}x, "
          f"{rec['tune_cpu_minutes']:.1f} CPU min")
    print(f"  held-out ({h['episodes']} episodes): {h['reduction']:.1f}x, dense {h['dense_mean']:.4g}, tuned "
          f"{h['tuned_mean']:.4g}, paired {h['paired']['mean_difference']:+.3g} (95% CI {h['paired']['ci_low']:+.3g} "
          f"to {h['paired']['ci_high']:+.3g}): {h['verdict']}; {rec['heldout_cpu_minutes']:.1f} CPU min")
    print(f"wrote {path}")
    return 0


def cmd_agents(a: argparse.Namespace) -> int:
    from .store.agents import agent_table

    rows = agent_table()
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0

    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    def scores(label: str, key: str, episodes: str) -> tuple[str, list[str], str]:
        # the usual episode count goes in the header, "score (10 ep)"; a row with another says so
        counts = [r[episodes] for r in rows if r[key] is not None]
        usual = max(set(counts), key=counts.count) if counts else None
        return (label if usual is None else f"{label} ({usual} ep)",
                [num(r[key], ".1f") + (f" ({r[episodes]} ep)" if r[key] is not None and r[episodes] != usual else "")
                 for r in rows], ">")

    cols: list[tuple[str, list[str], str]] = [
        ("name", [r["name"] for r in rows], "<"), ("game", [str(r["game"]) for r in rows], "<"),
        ("actions", [num(r["actions"], "d") for r in rows], ">"), scores("score", "score", "episodes")]
    if any(r["heldout_score"] is not None for r in rows):  # a column only once some agent has one
        cols.append(scores("held-out", "heldout_score", "heldout_episodes"))
    cols.append(("sparsity", [num(r["sparsity"], "g") for r in rows], ">"))
    widths = [max(len(h), *(len(c) for c in cells)) for h, cells, _ in cols]
    for i in range(len(rows) + 1):
        line = "  ".join(format(h if i == 0 else cells[i - 1], f"{al}{w}") for (h, cells, al), w in zip(cols, widths))
        print(line.rstrip())
    return 0


def _add_train(sub: Any) -> None:
    from .rl.envs import ENV_NAMES

    t = sub.add_parser("train", help="train a Double DQN agent (resumes from RUN_DIR)",
                       description="Train a Double DQN agent. Checkpoints go to --run-dir; running the same "
                       "command again resumes from the last checkpoint.")
    t.add_argument("--env", "--game", dest="env", required=True, choices=ENV_NAMES, metavar="ENV",
                   help="CartPole-v1 or an Atari game: " + ", ".join(ENV_NAMES[1:]))
    t.add_argument("--steps", type=int, default=None, help="agent steps to train (default: the preset's)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--run-dir", default=None, help="checkpoint folder (default runs/ENV-seedS)")
    t.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    t.add_argument("--init", metavar="AGENT", default=None,
                   help="start from a shipped agent (a name from `deltalearn agents`) or a .pt network file: with "
                   "--set sparsity=S this prunes while fine-tuning (default run dir runs/ENV-sS-seedN)")
    t.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override DQNConfig fields, e.g. lr=1e-4")
    t.add_argument("--eval-episodes", type=int, default=10, help="final evaluation episodes")
    t.add_argument("--eval-seed", type=int, default=0)
    t.add_argument("--export", metavar="DIR", default=None, help="write the best network as a shipped agent into DIR")
    t.add_argument("--export-name", default=None, help="agent name in the manifest (default: ENV)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)


def _add_distill(sub: Any) -> None:
    from .rl.envs import ENV_NAMES

    d = sub.add_parser("distill", help="prune a shipped agent gradually, recovering it by distillation",
                       description="Prune a shipped agent stage by stage (per-layer magnitude pruning) and after "
                       "each stage distill the dense agent's action preferences into it on the states it visits. "
                       "Resumable (RUN_DIR/distill.pt); --export ships the stages as <ENV>-pruned-<S>.")
    d.add_argument("--env", "--game", dest="env", required=True, choices=ENV_NAMES, metavar="ENV",
                   help="CartPole-v1 or an Atari game")
    d.add_argument("--agent", default=None, help="the teacher: a shipped agent (a name from `deltalearn agents`) or "
                   "a .pt network file (default: the game's shipped agent)")
    d.add_argument("--stages", type=_sparsity, nargs="+", default=None, help="sparsities in increasing order")
    d.add_argument("--keep", type=_sparsity, nargs="+", default=None, help="stages to evaluate and export (default all)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override DistillConfig fields, e.g. updates=800")
    d.add_argument("--run-dir", default=None, help="default runs/ENV-distill-seedS")
    d.add_argument("--eval-episodes", type=int, default=10)
    d.add_argument("--eval-seed", type=int, default=0)
    d.add_argument("--export", metavar="DIR", default=None, help="write the kept stages as shipped agents into DIR")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=cmd_distill)


def _add_evaluate(sub: Any) -> None:
    from .rl.envs import ENV_NAMES
    from .rl.evaluation import BACKENDS

    e = sub.add_parser("evaluate", help="play seeded episodes and count multiplications",
                       description="Play N seeded episodes with a shipped agent (or --checkpoint) as dense, "
                       "pruned (--sparsity), delta (--threshold) or pruned+delta network.")
    e.add_argument("--env", "--game", dest="env", required=True, choices=ENV_NAMES, metavar="ENV",
                   help="CartPole-v1 or an Atari game: " + ", ".join(ENV_NAMES[1:]))
    e.add_argument("--episodes", type=int, default=10)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--sparsity", type=_sparsity, default=0.0, help="prune to this per-layer sparsity in [0, 1)")
    e.add_argument("--threshold", type=_threshold, default=None,
                   help="delta threshold >= 0, or one per weight layer separated by commas")
    e.add_argument("--epsilon", type=float, default=None, help="default 0.05 for Atari, 0 for CartPole")
    e.add_argument("--agent", default=None, help="a shipped agent by name, e.g. Breakout-pruned-0.79 (`deltalearn "
                   "agents` lists them), or a .pt network file (default: the game's dense agent)")
    e.add_argument("--checkpoint", default=None, help="a network file instead of the shipped agent")
    e.add_argument("--heldout", action="store_true",
                   help="play the held-out episodes (30 from seed 1000) that the book's tables report on")
    e.add_argument("--record", action="store_true",
                   help="with --heldout: store the result as the shipped agent's heldout_evaluation in its manifest")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.add_argument("--no-progress", action="store_true")
    e.add_argument("--threads", type=int, default=0,
                   help="torch threads (default 0: torch's default); 1 is faster beside a training run")
    e.add_argument("--backend", choices=BACKENDS, default="dense",
                   help="how a delta network (--threshold) runs: dense torch layers (default, the reference) or "
                   "the sparse engine (faster on the CPU, same decisions and counts)")
    e.set_defaults(func=cmd_evaluate)


def _add_count(sub: Any) -> None:
    from .core.nets import MODELS

    c = sub.add_parser("count", help="multiplications per decision of a network",
                       description="Dense multiplications per layer for one decision; with --sparsity, the "
                       "significant ones left after magnitude pruning (random weights, every input non-zero).")
    c.add_argument("--model", choices=MODELS, default="nature-dqn")
    c.add_argument("--actions", type=int, default=4)
    c.add_argument("--obs-dim", type=int, default=4, help="MLP input size")
    c.add_argument("--hidden", type=int, nargs="+", default=[256, 256], help="MLP hidden widths")
    c.add_argument("--sparsity", type=_sparsity, default=0.0)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_count)


def _add_reproduce(sub: Any) -> None:
    from .rl.envs import ENV_NAMES
    from .rl.evaluation import BACKENDS
    from .study.reproduce import REPRODUCE_BACKEND
    from .study.workers import ENGINES

    r = sub.add_parser("reproduce", help="write the paper's tables and sweeps for shipped agents",
                       description="For each game: the four variants (dense, pruned, delta, pruned+delta) on "
                       "paired seeded episodes, and a sparsity x threshold sweep, written as JSON/CSV.")
    r.add_argument("--env", "--game", dest="env", nargs="*", choices=ENV_NAMES, metavar="ENV",
                   help="default: each of the paper's six games with a shipped agent")
    r.add_argument("--sparsity", type=_sparsity, default=None, help="default: the paper's setting for the game, or ours for a game it names none for")
    r.add_argument("--threshold", type=_threshold, default=None)
    r.add_argument("--pruned-checkpoint", default=None, help="a fine-tuned pruned network for the pruned variants")
    r.add_argument("--episodes", type=int, default=None, help="table episodes (default 10; --heldout plays 30)")
    r.add_argument("--seed", type=int, default=None, help="first episode's seed (default 0; --heldout: 1000)")
    r.add_argument("--sweep-sparsities", type=_sparsity, nargs="+", default=None,
                   help="default: 0, 0.5, the table's sparsity, 0.9")
    r.add_argument("--sweep-thresholds", type=_threshold_or_none, nargs="+",
                   default=None, help="'none' means no delta network; a comma-separated list is one threshold "
                   "per layer (default: none 0 0.001 0.003 0.01 0.03 0.1, and for Robotank and BattleZone also "
                   "first-layer thresholds 0.01, 0.03, 0.1 with 0.001 deeper)")
    r.add_argument("--sweep-episodes", type=int, default=0, help="closed-loop episodes per sweep cell (0: replay only)")
    r.add_argument("--max-steps", type=int, default=None,
                   help="cap every played episode at this many decisions (a quick check, not a result)")
    r.add_argument("--trajectory-steps", type=int, default=3000,
                   help="cap on the recorded episode the sweep replays (recorded when the agent changes)")
    r.add_argument("--trajectory-dir", default=None, help="where recorded episodes live (default: the package's)")
    r.add_argument("--parts", nargs="+", choices=("table", "sweep"), default=None,
                   help="what to compute (default both; --heldout: the table): two runs with one part each can "
                   "share two cores")
    r.add_argument("--heldout", action="store_true",
                   help="report on the held-out episodes: tables only, 30 episodes from seed 1000 (settings are "
                   "chosen on seeds 0-9), written to the package's heldout set unless --out says otherwise")
    r.add_argument("--out", default=None, help="output folder (default: the package's shipped set, "
                   "deltalearn/data/reproduce, or deltalearn/data/heldout with --heldout)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--threads", type=int, default=0,
                   help="torch threads (default 0: torch's default); 1 is faster beside a training run")
    r.add_argument("--workers", type=_workers, default=1, metavar="N",
                   help="run the games (or, for one game, its sweep's cells) in N local processes, one torch "
                   "thread each; the files equal a serial run's with --threads 1 (default 1: no processes)")
    r.add_argument("--engine", choices=ENGINES, default=None,
                   help="where the tasks run: serial, processes (with --workers) or dask (with --scheduler); "
                   "default: dask given a scheduler, processes given --workers > 1, else serial")
    r.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="a running Dask scheduler, e.g. tcp://scheduler-host:8786 (needs pip install "
                   "'deltalearn[cluster]'); --out must be a folder its workers share")
    r.add_argument("--backend", choices=BACKENDS, default=REPRODUCE_BACKEND,
                   help=f"how the delta networks run: dense torch layers or the sparse engine; the files are the "
                   f"same either way (default {REPRODUCE_BACKEND})")
    r.set_defaults(func=cmd_reproduce)


def cmd_classroom(a: argparse.Namespace) -> int:
    try:
        import nbgrader  # noqa: F401  (the classroom commands are built on it)
    except ImportError:
        raise SystemExit("deltalearn classroom needs nbgrader: pip install 'deltalearn[classroom]'") from None
    from .classroom import grade_submissions, write_student_version

    if a.action == "student":
        written = write_student_version(a.book, a.out_dir)
        print(f"wrote {len(written)} student notebooks to {a.out_dir}")
        return 0
    rows = grade_submissions(a.book, a.submissions_dir, a.out, limit=a.timeout, setup_limit=a.setup_timeout)
    for r in rows:
        print(f"{r['student']}: {r['total']:g}" + (f"  ({r['notes']})" if r["notes"] else ""))
    print(f"wrote {a.out}")
    return 0


def _add_classroom(sub: Any) -> None:
    c = sub.add_parser("classroom", help="the student version of the book, and grading submitted chapters",
                       description="student: chapters with stubs and visible checks, without solutions, their "
                       "outputs or hidden tests. grade: run every exercise's check and hidden tests on each "
                       "student's notebooks (one folder per student) and write one CSV row per student.")
    actions = c.add_subparsers(dest="action", required=True)
    s = actions.add_parser("student", help="write the student notebooks")
    s.add_argument("out_dir", metavar="OUT_DIR")
    g = actions.add_parser("grade", help="grade SUBMISSIONS_DIR/<student>/<chapter>.ipynb into a CSV")
    g.add_argument("submissions_dir", metavar="SUBMISSIONS_DIR")
    g.add_argument("--out", default="grades.csv", help="the CSV to write (default grades.csv)")
    g.add_argument("--timeout", type=float, default=60.0,
                   help="seconds one cell of a student's exercise may run; past it the exercise scores 0")
    g.add_argument("--setup-timeout", type=float, default=900.0,
                   help="seconds one of the chapter's own cells may run (training, loading agents)")
    for p in (s, g):
        p.add_argument("--book", default="book", help="the folder of the book's chapter notebooks (default book)")
    c.set_defaults(func=cmd_classroom)


def _positive(text: str) -> int:
    return _workers(text)


def _add_bench(sub: Any) -> None:
    b = sub.add_parser("bench", help="time dense torch against the delta network's dense and sparse backends",
                       description="Replay a game's recorded episode through the best dense torch forward "
                       "(default layout, and channels_last + inference_mode), the dense-backed delta network and "
                       "the sparse engine with and without counting, interleaved in rounds on one thread; print "
                       "the median ms per decision and the ratio to the best dense forward.")
    b.add_argument("--env", "--game", dest="env", default=None, metavar="ENV",
                   help="a game with a recorded episode: Breakout, SpaceInvaders, Robotank, BattleZone, Enduro, "
                   "Freeway or CartPole-v1")
    b.add_argument("--agent", default=None,
                   help="a shipped agent of the game (default: the agent of its table setting, e.g. "
                   "Breakout-pruned-0.79)")
    b.add_argument("--threshold", type=_threshold, default=None,
                   help="delta threshold, or one per weight layer separated by commas (default: the table "
                   "setting's, 0.001)")
    b.add_argument("--batch", type=_positive, default=1,
                   help="streams side by side, as a vector env's: stream j replays the episode started j/B of "
                   "the way in, wrapping around (default 1)")
    b.add_argument("--rounds", type=_positive, default=7, help="interleaved rounds; the median is reported (default 7)")
    b.add_argument("--steps", type=_positive, default=None,
                   help="steps of the episode per round (default: the whole episode)")
    b.add_argument("--json", action="store_true",
                   help="print the result as JSON, with the sparse engine's greedy-action agreement, near-tie "
                   "check and max |dQ| against the dense-backed delta network")
    b.add_argument("--all", action="store_true",
                   help="time the committed suite (every game at its table setting, Breakout at batch 4, "
                   "Breakout and SpaceInvaders at thresholds 0-0.03) into --out")
    b.add_argument("--out", default=None, help="with --all: the file to write (default: the package's "
                   "deltalearn/data/bench/bench.json)")
    b.add_argument("--only", nargs="+", default=None, metavar="GAME",
                   help="with --all: only the suite's runs of these games")
    b.add_argument("--keep", action="store_true",
                   help="with --all: keep the file's other runs (re-time a few pieces only)")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=cmd_bench)


def _add_tune(sub: Any) -> None:
    from .study.tune import GAME_DEFAULTS

    t = sub.add_parser("tune", help="tune per-layer delta thresholds (and sparsity), confirmed on held-out seeds",
                       description="Search uniform, input-scaled and greedy per-layer thresholds open loop on the "
                       "game's recorded episode, confirm the cheapest in closed loop on tuning seeds (from --seed) "
                       "paired with the dense agent, then play the chosen setting on the held-out seeds 1000+ "
                       "and write one JSON record. Per-game defaults: " + "; ".join(
                           f"{g}: {', '.join(f'{k}={v}' for k, v in d.items())}" for g, d in GAME_DEFAULTS.items()))
    t.add_argument("--game", "--env", dest="game", required=True, help="the game (e.g. Robotank, or CartPole-v1)")
    t.add_argument("--scope", choices=("both", "delta"), default="both",
                   help="delta: the dense agent's delta network alone; both: every shipped sparsity (default)")
    t.add_argument("--sparsities", nargs="+", type=_sparsity, default=None,
                   help="the sparsities to search (default: the scope's: 0, and with --scope both each shipped one)")
    t.add_argument("--episodes", type=_positive, default=None, help="paired tuning episodes per play (default 30)")
    t.add_argument("--max-steps", type=_steps_or_none, default=argparse.SUPPRESS,
                   help="step cap of a tuning episode, or none (default: the game's, none for short games)")
    t.add_argument("--seed", type=int, default=None, help="first tuning seed (default 2000; not 1000-1029)")
    t.add_argument("--budget", type=_positive, default=None, help="open-loop replays per agent (default 60)")
    t.add_argument("--min-agreement", type=_fraction, default=None, help="least open-loop agreement (default 0.98)")
    t.add_argument("--confirmations", type=_positive, default=None, help="most closed-loop plays (default 8)")
    t.add_argument("--backend", choices=("sparse", "dense"), default=None, help="delta backend (default sparse)")
    t.add_argument("--heldout-episodes", type=_positive, default=None,
                   help="held-out episodes from seed 1000 (default 30, or the game's)")
    t.add_argument("--agent-directory", default=None,
                   help="where the agents are (default: the shipped ones; CartPole-v1: book_data:pruned)")
    t.add_argument("--confirm", action="store_true",
                   help="do not tune: confirm the committed record's setting on fresh seeds, paired with the dense "
                   "agent played on the same seeds, and write deltalearn/data/tuned/confirm/<game>-<scope>.json")
    t.add_argument("--confirm-seed", type=int, default=5000,
                   help="with --confirm: the first fresh seed (default 5000; not 1000-1099 or the tuning seeds)")
    t.add_argument("--confirm-episodes", type=_positive, default=60,
                   help="with --confirm: paired episodes (default 60)")
    t.add_argument("--records", default=None,
                   help="with --confirm: the folder of tuning records (default the shipped deltalearn/data/tuned)")
    t.add_argument("--play-dense", action="store_true",
                   help="with --confirm: play the dense agent even when the game's other scope's confirmation has "
                   "played it on the same seeds (by default its scores are taken, after replaying its first episode)")
    t.add_argument("--out", default=None, help="the JSON file to write (default deltalearn/data/tuned/<game>-<scope>.json, "
                   "with --confirm deltalearn/data/tuned/confirm/<game>-<scope>.json)")
    t.add_argument("--json", action="store_true", help="print the record as JSON")
    t.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0: torch's default)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_tune)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deltalearn", description="Pruning + delta networks for DQN agents: "
                                "train agents, evaluate them with fewer multiplications, count multiplications, time them.")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_distill, _add_evaluate, _add_count, _add_reproduce, _add_bench, _add_tune,
                _add_classroom):
        add(sub)

    g = sub.add_parser("agents", help="list the shipped agents with their scores and sparsity",
                       description="One row per shipped agent: name, game, actions (network outputs), mean score "
                       "of its recorded evaluation, held-out score where one is recorded, per-layer sparsity.")
    g.add_argument("--json", action="store_true", help="print the rows as JSON")
    g.set_defaults(func=cmd_agents)
    return p


def _written_since(directory: str | None, started: float) -> list[str]:
    """Files in ``directory`` (not below it) that this run wrote: modified since it started."""
    d = Path(directory) if directory else None
    if d is None or not d.is_dir():
        return []
    return sorted(str(f) for f in d.iterdir()
                  if f.is_file() and not f.name.startswith(".") and f.stat().st_mtime >= started)


def _interrupted(a: argparse.Namespace, e: KeyboardInterrupt, started: float) -> str:
    """What a command had done when Ctrl-C (or SIGTERM, in training) stopped it, and what it kept."""
    from .store.checkpoint import CheckpointError, load_checkpoint

    how, cause = "interrupted", e  # training turns SIGTERM into KeyboardInterrupt("signal 15")
    while cause is not None:
        if str(cause).startswith("signal "):
            how = f"stopped by {cause}"
        cause = cause.__cause__
    if a.command == "evaluate":  # evaluate's KeyboardInterrupt says "after 3 of 10 episodes"
        return f"{how}{' ' + str(e) if str(e).startswith('after ') else ''}; nothing was written"
    if a.command == "train":
        run = getattr(a, "run_dir", None)
        if run is None or not (Path(run) / "checkpoint.pt").exists():
            return f"{how} before the first checkpoint; nothing was saved" + (f" in {run}" if run else "")
        try:
            step = f" at step {json.loads((Path(run) / 'history.json').read_text())['step']:,}"
        except (OSError, ValueError, KeyError):
            step = ""
        again = "run it again without --restart to resume" if a.restart else "the same command resumes"
        return f"{how}; the checkpoint{step} is saved in {run}: {again}"
    if a.command == "distill":
        run = getattr(a, "run_dir", None)
        ckpt = Path(run) / "distill.pt" if run else None
        try:
            done = [float(s) for s in load_checkpoint(ckpt)["done"]] if ckpt and ckpt.exists() else []
        except (CheckpointError, KeyError):
            done = []
        exported = _written_since(a.export, started)
        out = f"; exported {', '.join(exported)}" if exported else ""
        if not done:
            return f"{how} before the first stage finished; nothing was kept{out}"
        return (f"{how}; finished stages {', '.join(f'{s:g}' for s in done)} are kept in {ckpt}{out}: "
                "the same command resumes after them")
    if a.command == "reproduce":
        written = [f for f in _written_since(a.out, started) if not f.endswith(".partial.json")]
        parts = [f"wrote {', '.join(written)}" if written else f"nothing new was written to {a.out}"]
        for f in sorted(Path(a.out).glob("*_table.partial.json")) if Path(a.out).is_dir() else []:
            try:
                names = list(json.loads(f.read_text())["variants"])
            except (OSError, ValueError, KeyError):
                continue
            parts.append(f"finished table variants ({', '.join(names)}) are kept in {f}: the same command "
                         "resumes them")
        return f"{how}; " + "; ".join(parts)
    return f"{how}; nothing was written"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.time()
    try:
        return int(args.func(args))
    except ValueError as e:  # bad input found past argparse: one clear line, no traceback
        print(f"deltalearn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM in training: what was cut short, what was kept
        print(f"deltalearn {args.command}: {_interrupted(args, e, started)}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
