"""The paper's tables and sweeps, computed from shipped agents and written as JSON/CSV.

``reproduce_table`` evaluates the four variants of one agent (dense, pruned, delta,
pruned+delta) on the same seeded episodes: a paired comparison of scores, with the
multiplications of every decision counted per layer. ``reproduce_sweep`` maps reduction
factor against score over a grid of sparsities and thresholds. ``reproduce_game`` does both
for one game from its shipped agents (the paper's setting or ours, :func:`agent_at`'s agent at
each sparsity) and writes them; ``reproduce_games`` does several and writes their summary. The
games and a sweep's cells are independent tasks that can run in local processes or on a Dask
cluster (:mod:`.workers`). The chapters render the written files, so the book builds in seconds;
``deltalearn reproduce`` (one call of ``reproduce_games``) rewrites them.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..store.agents import agent_names
from ..store.checkpoint import atomic_write
from ..core.counting import count_weights
from ..rl.envs import check_actions
from ..rl.evaluation import check_backend, evaluate, replay, reusing_envs
from ..core.nets import QNetwork, plain_copy
from ..core.delta import check_threshold
from ..core.pruning import check_sparsity, prune_network
from .results import six_game_summary
from .workers import iter_tasks, resolve_engine
from .._status import status_line
from .settings import (HELDOUT_EPISODES, HELDOUT_SEED, OUR_SETTINGS, PAPER_SETTINGS, SIX_GAMES, Threshold,
                       sweep_thresholds, table_setting)

__all__ = ["reproduce_table", "reproduce_sweep", "reproduce_game", "reproduce_games", "default_games",
           "ReproducedGame", "Reproduction", "write_results", "REPRODUCE_BACKEND"]

REPRODUCE_BACKEND = "dense"
"""The delta-network backend a reproduction uses unless told otherwise (``backend=``, ``--backend``).
The backends sum in different orders, so a near-tie between two Q-values can break differently and
change one episode (README, "Does it run faster?"): the committed tables keep the reference's."""


def _variants(sparsity: float, threshold: Threshold) -> list[tuple[str, float, float | None]]:
    return [("dense", 0.0, None), ("pruned", sparsity, None), ("delta", 0.0, threshold),
            ("pruned+delta", sparsity, threshold)]


def reproduce_table(net: QNetwork, env: str, sparsity: float, threshold: float | list[float], episodes: int = 10,
                    seed: int = 0, pruned_net: QNetwork | None = None, progress: bool = True,
                    max_steps: int | None = None, one_shot: bool = True,
                    partial: str | os.PathLike | None = None, backend: str = REPRODUCE_BACKEND) -> dict[str, Any]:
    """Scores and per-layer multiplications of the four variants on the same episodes.

    ``pruned_net`` is a fine-tuned pruned network to use for the pruned variants (already at
    ``sparsity``); without it the dense net is pruned one-shot. With it (and ``one_shot``), a
    fifth row, ``pruned one-shot``, shows the score the dense net keeps when pruned without
    fine-tuning. ``partial`` names a JSON file that keeps each finished variant, so a long
    table (30 episodes of Robotank take an hour) killed midway resumes where it stopped.
    ``backend`` runs the delta variants (``"dense"`` or ``"sparse"``, :data:`~deltalearn.rl.BACKENDS`).
    """
    check_sparsity(sparsity)
    check_backend(backend)
    check_actions(net, env)
    if pruned_net is not None:
        check_actions(pruned_net, env, "the pruned network")
    variants = _variants(sparsity, threshold)
    if pruned_net is not None and one_shot:  # what fine-tuning bought: the dense net pruned in one shot
        variants.append(("pruned one-shot", sparsity, None))
    key = {"env": env, "sparsity": sparsity, "threshold": threshold, "episodes": episodes, "seed": seed,
           "max_steps": max_steps, "fine_tuned": pruned_net is not None}
    rows: dict[str, Any] = {}
    if partial is not None and Path(partial).exists():
        saved = json.loads(Path(partial).read_text())
        if saved.get("key") == key:  # only rows of exactly this table; anything else starts afresh
            rows = saved["variants"]
    with reusing_envs():  # the variants play the same games: one set of environments for all
        for name, s, t in tqdm(variants, desc=f"{env} variants", disable=not progress):
            if name in rows:
                continue
            base = pruned_net if (s > 0 and pruned_net is not None and name != "pruned one-shot") else net
            res = evaluate(base, env, episodes=episodes, seed=seed, sparsity=0.0 if base is pruned_net else s,
                           threshold=t, max_steps=max_steps, backend=backend)
            d = res.to_dict()
            d["variant"], d["sparsity"], d["threshold"] = name, s, t
            rows[name] = d
            if partial is not None:
                write_results(Path(partial).parent, Path(partial).stem, {"key": key, "variants": rows})
            if not progress:
                status_line(f"{env} {name}", f"score {res.mean_score:.1f}", f"{res.report.reduction:.1f}x fewer")
    pruned = pruned_net if pruned_net is not None else prune_network(plain_copy(net), sparsity)
    out = {"env": env, "sparsity": sparsity, "threshold": threshold, "episodes": episodes, "seed": seed,
           "fine_tuned": pruned_net is not None, "variants": {n: rows[n] for n, _, _ in variants},
           "pruned_weights_reduction": count_weights(pruned).reduction}
    if max_steps is not None:
        out["max_steps"] = max_steps
    if partial is not None and Path(partial).exists():
        os.unlink(partial)
    return out


@dataclass(frozen=True)
class _SweepContext:
    """What every cell of one sweep reads: sent to each worker once."""

    net: QNetwork
    env: str
    observations: np.ndarray
    dense_actions: np.ndarray
    pruned_nets: dict[float, QNetwork]
    episodes: int
    seed: int
    max_steps: int | None
    backend: str = REPRODUCE_BACKEND


def _sweep_cell(ctx: _SweepContext, cell: tuple[float, Any]) -> dict[str, Any]:
    """One grid cell of :func:`reproduce_sweep`: a module-level function, so a worker can run it."""
    s, t = cell
    th = None if t is None else (float(t) if np.isscalar(t) else [float(x) for x in t])
    tuned = s > 0 and s in ctx.pruned_nets
    base, s_apply = (ctx.pruned_nets[s], 0.0) if tuned else (ctx.net, s)
    rep = replay(base, ctx.observations, sparsity=s_apply, threshold=th, reference=ctx.dense_actions,
                 backend=ctx.backend)
    row: dict[str, Any] = {"sparsity": s, "threshold": th, "fine_tuned": tuned,
                           "reduction": rep.report.reduction,
                           "significant_per_decision": rep.report.total_significant / rep.report.steps,
                           "dense_per_decision": rep.report.total_dense / rep.report.steps,
                           "agreement": rep.agreement,
                           "steps": rep.report.steps,
                           **{f"significant_{l.name}": l.significant for l in rep.report.layers}}
    if ctx.episodes > 0:
        ev = evaluate(base, ctx.env, episodes=ctx.episodes, seed=ctx.seed, sparsity=s_apply, threshold=th,
                      max_steps=ctx.max_steps, backend=ctx.backend)
        row.update(episodes=ctx.episodes, mean_score=ev.mean_score, std_score=ev.std_score,
                   closed_loop_reduction=ev.report.reduction)
    return row


def reproduce_sweep(net: QNetwork, env: str, observations: np.ndarray, sparsities: Sequence[float],
                    thresholds: Sequence[float | Sequence[float] | None], episodes: int = 0, seed: int = 0,
                    progress: bool = True, max_steps: int | None = None,
                    pruned_nets: dict[float, QNetwork] | None = None, *, workers: int = 1,
                    engine: str | None = None, scheduler: Any = None,
                    backend: str = REPRODUCE_BACKEND) -> list[dict[str, Any]]:
    """Reduction factor and action agreement (replay of ``observations``) for every grid cell;
    with ``episodes > 0`` also the closed-loop score over that many seeded episodes.

    A threshold is ``None`` (no delta network), one number for every layer, or a list with
    one number per weight layer. ``pruned_nets`` maps a sparsity to a fine-tuned network
    already at that sparsity; other sparsities prune ``net`` one-shot. Agreement is always
    with the dense ``net``'s actions. The cells are independent: ``workers``, ``engine`` and
    ``scheduler`` run them in local processes or on a Dask cluster (:func:`map_tasks`), with
    the rows in grid order as in a serial run. ``backend`` runs the delta cells (``"dense"`` or
    ``"sparse"``).
    """
    resolve_engine(workers, engine, scheduler)  # a bad option fails before any replay
    check_backend(backend)
    pruned_nets = pruned_nets or {}
    if episodes > 0:  # closed-loop cells play the game: fail before the replays, not after
        for n in [net, *pruned_nets.values()]:
            check_actions(n, env)
    ctx = _SweepContext(net, env, observations, replay(net, observations).actions, pruned_nets, episodes, seed,
                        max_steps, backend)
    grid = [(s, t) for s in sparsities for t in thresholds]
    out = []
    with reusing_envs():  # closed-loop cells run here one after another share their environments
        rows = iter_tasks(_sweep_cell, grid, shared=ctx, workers=workers, engine=engine, scheduler=scheduler)
        for row in tqdm(rows, total=len(grid), desc=f"{env} sweep", disable=not progress):
            out.append(row)
            if not progress:
                status_line(f"{env} sparsity {row['sparsity']:g} threshold {row['threshold']}",
                            f"{row['reduction']:.1f}x fewer", f"agreement {row['agreement']:.2f}",
                            *([f"score {row['mean_score']:.1f}"] if episodes > 0 else []))
    return out


def _cell(v: Any) -> Any:
    # per-layer thresholds as "0.01/0.001/..." so that each CSV cell stays one value
    return "/".join(f"{x:g}" for x in v) if isinstance(v, (list, tuple)) else v


def _csv(rows: list[dict[str, Any]]) -> str:
    rows = [{k: _cell(v) for k, v in r.items()} for r in rows]
    buf = io.StringIO()
    keys = list(dict.fromkeys(k for r in rows for k in r))
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_results(directory: str | os.PathLike, name: str, data: Any) -> list[Path]:
    """Write ``name.json`` (and ``name.csv`` for a list of flat rows) atomically."""
    d = Path(directory)
    paths = [d / f"{name}.json"]
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    atomic_write(paths[0], lambda tmp: Path(tmp).write_text(text))
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        paths.append(d / f"{name}.csv")
        atomic_write(paths[1], lambda tmp: Path(tmp).write_text(_csv(data)))
    return paths


# --- one game, several games ------------------------------------------------------------------

@dataclass
class ReproducedGame:
    """What :func:`reproduce_game` computed for one game, and the files it wrote."""

    env: str
    sparsity: float
    """The table's sparsity (the paper's or ours by default)."""
    threshold: Threshold
    """The table's threshold."""
    table: dict[str, Any] | None = None
    """The :func:`reproduce_table` result as written, ``None`` when the table was not a part."""
    sweep: list[dict[str, Any]] | None = None
    """The :func:`reproduce_sweep` rows as written, ``None`` when the sweep was not a part."""
    written: list[Path] = field(default_factory=list)
    """Every file written, in order (a re-recorded trajectory included)."""
    lines: list[str] = field(default_factory=list)
    """One line per written result, as the command prints them."""


@dataclass
class Reproduction:
    """What :func:`reproduce_games` computed: each game's result, then the summary of the folder."""

    games: list[ReproducedGame]
    summary: list[dict[str, Any]] | None
    """:func:`six_game_summary` of the output folder, ``None`` when no table was a part."""
    written: list[Path]
    lines: list[str]


@dataclass(frozen=True)
class _GamePlan:
    """One game's reproduction, resolved and checked before anything plays; a task for a worker."""

    env: str
    out: str | os.PathLike
    sparsity: float
    threshold: Threshold
    episodes: int
    seed: int
    parts: tuple[str, ...]
    one_shot: bool
    pruned: tuple[QNetwork, str] | None
    sweep_sparsities: tuple[float, ...] | None
    sweep_thresholds: tuple[Threshold, ...] | None
    sweep_episodes: int
    trajectory_steps: int | None
    trajectory_dir: str | os.PathLike | None
    max_steps: int | None
    progress: bool
    partial: bool
    backend: str = REPRODUCE_BACKEND


PARTS: tuple[str, ...] = ("table", "sweep")


def default_games() -> list[str]:
    """The paper's games that have a shipped agent and a table setting, in the paper's order."""
    names = agent_names()
    return [g for g in SIX_GAMES if g in names and g in {*PAPER_SETTINGS, *OUR_SETTINGS}]


def _plan(env: str, out: str | os.PathLike, *, sparsity: float | None = None, threshold: Threshold = None,
          episodes: int | None = None, seed: int | None = None, parts: Sequence[str] | None = None,
          heldout: bool = False, pruned: tuple[QNetwork, str] | None = None,
          sweep_sparsities: Sequence[float] | None = None, sweep_thresholds: Sequence[Threshold] | None = None,
          sweep_episodes: int = 0, trajectory_steps: int | None = 3000,
          trajectory_dir: str | os.PathLike | None = None, max_steps: int | None = None,
          progress: bool = True, backend: str = REPRODUCE_BACKEND) -> _GamePlan:
    """The settings of one game's run, with every default resolved and every value checked."""
    if heldout:  # the reporting episodes: tables only, no one-shot row
        clash = {k: v for k, v in (("episodes", episodes), ("seed", seed), ("parts", parts))
                 if v is not None and not (k == "parts" and tuple(v) == ("table",))}
        if clash:
            raise ValueError(f"heldout plays the {HELDOUT_EPISODES} held-out episodes from seed {HELDOUT_SEED}, "
                             f"table only: drop {', '.join(f'{k}={v!r}' for k, v in clash.items())}")
        episodes, seed, parts = HELDOUT_EPISODES, HELDOUT_SEED, ("table",)
    check_backend(backend)
    parts = tuple(PARTS if parts is None else parts)
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise ValueError(f"parts must be some of {', '.join(PARTS)}, got {list(parts)}")
    if sparsity is None or threshold is None:
        s, t = table_setting(env)
    s = check_sparsity(sparsity) if sparsity is not None else s
    t = threshold if threshold is not None else t
    for x in [t] if np.isscalar(t) else t:  # a bad threshold fails here, not after the dense variant played
        check_threshold(x)
    if pruned is not None and "table" in parts:
        check_actions(pruned[0], env, f"the network in {pruned[1]}")
    return _GamePlan(env, out, s, t, 10 if episodes is None else episodes, 0 if seed is None else seed, parts,
                     not heldout, pruned, None if sweep_sparsities is None else tuple(sweep_sparsities),
                     None if sweep_thresholds is None else tuple(sweep_thresholds), sweep_episodes,
                     trajectory_steps, trajectory_dir, max_steps, progress, True, backend)


def _sweep_observations(plan: _GamePlan, dense: QNetwork, result: ReproducedGame) -> np.ndarray:
    """The recorded episode of *this* agent that the sweep replays: the shipped one, or one recorded now
    (and saved, so its counts can be re-checked) when the shipped one is of another agent."""
    from ..rl.evaluation import record_trajectory
    from ..store.agents import agent_record
    from ..store.trajectories import load_trajectory, save_trajectory, trajectory_names

    env, where = plan.env, plan.trajectory_dir
    traj = load_trajectory(env, where) if env in trajectory_names(where) else None
    sha = agent_record(env)["sha256"]
    if traj is None or str(traj.get("agent_sha256", sha)) != sha:
        traj = record_trajectory(dense, env, seed=plan.seed, max_steps=plan.trajectory_steps)
        traj["agent_sha256"] = np.array(sha)
        result.written.append(save_trajectory(traj, env, where))
    return traj["observations"]


def _run_plan(plan: _GamePlan, workers: int = 1, engine: str | None = None, scheduler: Any = None,
              echo: Callable[[str], None] | None = None) -> ReproducedGame:
    """Compute and write one game's parts; ``workers``/``engine`` run its sweep's cells."""
    from ..core.counting import layer_names
    from .pruned_agents import agent_at

    env, out, s = plan.env, plan.out, plan.sparsity
    result = ReproducedGame(env, s, plan.threshold)

    def said(line: str) -> None:
        result.lines.append(line)
        if echo is not None:
            echo(line)

    dense = agent_at(env, 0.0).net
    grid = list(plan.sweep_sparsities or sorted({0.0, 0.5, s, 0.9}))
    # the fine-tuned pruned agents `deltalearn distill` shipped, by sparsity; other sparsities prune one-shot
    at = {x: agent_at(env, x) for x in {s, *grid} if x > 0}
    tuned = {x: a.net for x, a in at.items() if a.fine_tuned}
    if "table" in plan.parts:
        pruned, pruned_from = plan.pruned or ((at[s].net, at[s].name) if s in tuned else (None, None))
        partial = Path(out) / f"{env}_table.partial.json" if plan.partial else None
        table = reproduce_table(dense, env, s, plan.threshold, episodes=plan.episodes, seed=plan.seed,
                                pruned_net=pruned, progress=plan.progress, one_shot=plan.one_shot,
                                max_steps=plan.max_steps, partial=partial, backend=plan.backend)
        table["pruned_from"] = pruned_from
        result.table = table
        result.written += write_results(out, f"{env}_table", table)
        said(f"{env}: wrote {out}/{env}_table.json")
    if "sweep" in plan.parts:
        obs = _sweep_observations(plan, dense, result)
        thresholds = list(plan.sweep_thresholds or sweep_thresholds(env, len(layer_names(dense))))
        result.sweep = reproduce_sweep(dense, env, obs, grid, thresholds, episodes=plan.sweep_episodes,
                                       seed=plan.seed, progress=plan.progress, max_steps=plan.max_steps,
                                       pruned_nets=tuned, workers=workers, engine=engine, scheduler=scheduler,
                                       backend=plan.backend)
        paths = write_results(out, f"{env}_sweep", result.sweep)
        result.written += paths
        said(f"{env}: wrote {', '.join(str(p) for p in paths)}")
    return result


def reproduce_game(env: str, out: str | os.PathLike, *, sparsity: float | None = None, threshold: Threshold = None,
                   episodes: int | None = None, seed: int | None = None, parts: Sequence[str] | None = None,
                   heldout: bool = False, pruned_checkpoint: str | os.PathLike | None = None,
                   sweep_sparsities: Sequence[float] | None = None,
                   sweep_thresholds: Sequence[Threshold] | None = None, sweep_episodes: int = 0,
                   trajectory_steps: int | None = 3000, trajectory_dir: str | os.PathLike | None = None,
                   max_steps: int | None = None, progress: bool = True, workers: int = 1,
                   engine: str | None = None, scheduler: Any = None,
                   echo: Callable[[str], None] | None = None, backend: str = REPRODUCE_BACKEND) -> ReproducedGame:
    """Reproduce one game's table and sweep from its shipped agents and write them into ``out``.

    The table (``{env}_table.json``) plays the four variants on ``episodes`` seeded episodes
    (10 from seed 0 by default) at ``sparsity``/``threshold`` (by default the paper's setting
    for the game, or ours: :func:`table_setting`). The agent at a sparsity is
    :func:`~deltalearn.study.agent_at`'s: a shipped distilled agent where one exists (the table
    then also shows the dense agent pruned one-shot), unless ``pruned_checkpoint`` names a
    network file to use instead. The sweep (``{env}_sweep.json`` and ``.csv``) replays the
    game's recorded episode over ``sweep_sparsities`` (default 0, 0.5, the table's, 0.9) x
    ``sweep_thresholds`` (default :func:`sweep_thresholds`), re-recording the episode into
    ``trajectory_dir`` when the shipped one is of another agent. ``parts`` picks ``table``
    and/or ``sweep``; ``heldout=True`` plays the 30 held-out episodes, table only, without the
    one-shot row. ``workers``, ``engine`` and ``scheduler`` run the sweep's cells in parallel
    (:func:`map_tasks`); ``echo`` gets one line per file written, as it is written. ``backend``
    runs the delta networks (``"dense"`` or ``"sparse"``; default :data:`REPRODUCE_BACKEND`): the
    files are the same either way.
    """
    resolve_engine(workers, engine, scheduler)
    pruned = _load_pruned(pruned_checkpoint)
    plan = _plan(env, out, sparsity=sparsity, threshold=threshold, episodes=episodes, seed=seed, parts=parts,
                 heldout=heldout, pruned=pruned, sweep_sparsities=sweep_sparsities,
                 sweep_thresholds=sweep_thresholds, sweep_episodes=sweep_episodes,
                 trajectory_steps=trajectory_steps, trajectory_dir=trajectory_dir, max_steps=max_steps,
                 progress=progress, backend=backend)
    return _run_plan(plan, workers, engine, scheduler, echo)


def _load_pruned(path: str | os.PathLike | None) -> tuple[QNetwork, str] | None:
    from ..store.agents import load_network_file

    return None if path is None else (load_network_file(path), str(path))


def _game_task(plan: _GamePlan) -> ReproducedGame:
    return _run_plan(plan)


def reproduce_games(envs: Sequence[str] | None, out: str | os.PathLike, *,
                    pruned_checkpoint: str | os.PathLike | None = None, workers: int = 1, engine: str | None = None,
                    scheduler: Any = None, echo: Callable[[str], None] | None = None,
                    **options: Any) -> Reproduction:
    """:func:`reproduce_game` for each of ``envs`` (default :func:`default_games`), then the summary.

    ``options`` are :func:`reproduce_game`'s. Every game's settings are resolved and checked
    before any game plays. With several games and ``workers > 1`` (or a Dask ``scheduler``) the
    games are the tasks, each written by its worker (so ``out`` must be a folder the workers
    share: a ``LocalCluster`` shares this machine's); with one game its sweep's cells are. When
    a table was a part, the summary of every table in ``out`` (:func:`six_game_summary`) is
    written as ``summary.json``/``.csv``; a sweep-only run leaves it as it was.
    """
    engine = resolve_engine(workers, engine, scheduler)
    envs = list(envs) if envs else default_games()
    if not envs:
        raise ValueError(f"no shipped agent for any of {', '.join(SIX_GAMES)}; name a game")
    pruned = _load_pruned(pruned_checkpoint)  # once for every game: it must fit each before any plays
    plans = [_plan(env, out, pruned=pruned, **options) for env in envs]
    games: list[ReproducedGame] = []
    if engine == "serial" or len(plans) == 1:
        games = [_run_plan(p, workers, engine, scheduler, echo) for p in plans]
    else:
        # a worker reports through its result, not a progress bar; a Dask worker may be on another disk,
        # where a resumable partial table would only be litter
        plans = [replace(p, progress=False, partial=engine != "dask") for p in plans]
        for game in iter_tasks(_game_task, plans, workers=workers, engine=engine, scheduler=scheduler):
            games.append(game)
            for line in game.lines:
                if echo is not None:
                    echo(line)
    run = Reproduction(games, None, [p for g in games for p in g.written], [l for g in games for l in g.lines])
    if "table" not in plans[0].parts:  # the summary reads the tables: a sweep-only run leaves it as it was
        return run
    run.summary = six_game_summary(out)
    paths = write_results(out, "summary", run.summary)
    run.written += paths
    line = f"summary of {', '.join(r['game'] for r in run.summary)}: wrote {', '.join(str(p) for p in paths)}"
    run.lines.append(line)
    if echo is not None:
        echo(line)
    return run
