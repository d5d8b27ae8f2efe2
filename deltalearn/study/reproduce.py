"""The paper's tables and sweeps, computed from shipped agents and written as JSON/CSV.

``reproduce_table`` evaluates the four variants of one agent (dense, pruned, delta,
pruned+delta) on the same seeded episodes: a paired comparison of scores, with the
multiplications of every decision counted per layer. ``reproduce_sweep`` maps reduction
factor against score over a grid of sparsities and thresholds. The chapters render the
written files, so the book builds in seconds; ``deltalearn reproduce`` rewrites them.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..store.agents import agent_names, load_agent
from ..store.checkpoint import atomic_write
from ..core.counting import count_weights
from ..rl.envs import check_actions
from ..rl.evaluation import evaluate, replay
from ..core.nets import QNetwork, plain_copy
from ..core.pruning import check_sparsity, prune_network
from .stats import paired_comparison
from .._status import status_line

__all__ = ["PAPER_SETTINGS", "PAPER_RANGES", "SIX_GAMES", "FIGURE_GAMES", "FIRST_PERSON_GAMES", "OUR_SETTINGS",
           "SWEEP_THRESHOLDS", "TUNING_SEED", "TUNING_EPISODES", "HELDOUT_SEED", "HELDOUT_EPISODES", "INPUT_THRESHOLDS", "sweep_thresholds", "table_setting",
           "reproduce_table", "reproduce_sweep", "summary_row", "layer_shares", "six_game_summary", "write_results"]

Threshold = float | list[float] | None

SIX_GAMES: tuple[str, ...] = ("Breakout", "SpaceInvaders", "Robotank", "BattleZone", "Enduro", "Freeway")
"""The paper's six games: the first two in its tables, the other four in a figure of results."""

FIGURE_GAMES: tuple[str, ...] = SIX_GAMES[2:]
"""The games the paper shows only as a figure: it names no setting for them, so we choose one."""

FIRST_PERSON_GAMES: tuple[str, ...] = ("Robotank", "BattleZone")
"""First-person 3D games: about 15% of the input pixels change per decision, against 0.5-4% in the
others, so their delta networks' first layer recomputes far more (chapter 7)."""

SWEEP_THRESHOLDS: tuple[Threshold, ...] = (None, 0.0, 1e-3, 3e-3, 1e-2, 3e-2, 0.1)
"""The uniform thresholds every sweep covers (``None``: no delta network)."""

INPUT_THRESHOLDS: tuple[float, ...] = (0.01, 0.03, 0.1)
"""First-layer thresholds of the per-layer study: the pixels' threshold is raised (a pixel is in
[0, 1], so 0.1 ignores changes of under 26 grey levels) while the deeper layers keep 0.001."""


def sweep_thresholds(game: str, layers: int = 5) -> list[Threshold]:
    """The thresholds ``deltalearn reproduce`` sweeps for ``game`` by default.

    Every game gets :data:`SWEEP_THRESHOLDS`. A first-person game also gets per-layer
    thresholds that coarsen only the first layer's input (:data:`INPUT_THRESHOLDS`, the
    other ``layers - 1`` weight layers at 0.001), to test whether a coarser threshold on the
    raw pixels recovers what the busier screen costs (on Robotank it does not: chapter 9).
    """
    out: list[Threshold] = list(SWEEP_THRESHOLDS)
    if game in FIRST_PERSON_GAMES:
        out += [[t] + [1e-3] * (layers - 1) for t in INPUT_THRESHOLDS]
    return out


PAPER_SETTINGS: dict[str, tuple[float, float]] = {"Breakout": (0.79, 0.001), "SpaceInvaders": (0.74, 0.001)}
"""(sparsity, threshold) named in the paper's tables."""

OUR_SETTINGS: dict[str, tuple[float, float]] = {"Robotank": (0.9, 0.001), "BattleZone": (0.9, 0.001),
                                                "Enduro": (0.79, 0.001), "Freeway": (0.9, 0.001)}
"""(sparsity, threshold) we chose for a figure game (ours, not the paper's). Sparsity: the sparsest
distilled agent (0.5, 0.79 or 0.9) whose 10-episode score stays within the paired standard error of
the dense agent's; threshold: the paper's 0.001 unless the game's sweep shows it costs the score."""

TUNING_SEED, TUNING_EPISODES = 0, 10
"""Episodes on which settings are chosen (environment seeds 0-9): the agents' manifest records, the
sweeps, and the rule behind :data:`OUR_SETTINGS` all use these."""

HELDOUT_SEED, HELDOUT_EPISODES = 1000, 30
"""Episodes the headline tables are reported on (environment seeds 1000-1029): no setting, agent or
threshold was chosen on them, so a score difference measured there is not tuned to them."""

PAPER_RANGES = {"pruning": (2, 8), "delta": (10, 50), "both": (20, 150)}
"""Reduction ranges the paper reports (arXiv version): the paper's figures, not ours."""


def table_setting(game: str) -> tuple[float, float]:
    """The (sparsity, threshold) of ``game``'s table: the paper's where it names one, else ours."""
    if game in PAPER_SETTINGS:
        return PAPER_SETTINGS[game]
    if game in OUR_SETTINGS:
        return OUR_SETTINGS[game]
    raise ValueError(f"no table setting for {game!r}: the paper names one for {', '.join(PAPER_SETTINGS)}, "
                     f"we chose one for {', '.join(OUR_SETTINGS) or 'no other game'}; "
                     "give the sparsity and threshold explicitly")


def _variants(sparsity: float, threshold: Threshold) -> list[tuple[str, float, float | None]]:
    return [("dense", 0.0, None), ("pruned", sparsity, None), ("delta", 0.0, threshold),
            ("pruned+delta", sparsity, threshold)]


def reproduce_table(net: QNetwork, env: str, sparsity: float, threshold: float | list[float], episodes: int = 10,
                    seed: int = 0, pruned_net: QNetwork | None = None, progress: bool = True,
                    max_steps: int | None = None, one_shot: bool = True,
                    partial: str | os.PathLike | None = None) -> dict[str, Any]:
    """Scores and per-layer multiplications of the four variants on the same episodes.

    ``pruned_net`` is a fine-tuned pruned network to use for the pruned variants (already at
    ``sparsity``); without it the dense net is pruned one-shot. With it (and ``one_shot``), a
    fifth row, ``pruned one-shot``, shows the score the dense net keeps when pruned without
    fine-tuning. ``partial`` names a JSON file that keeps each finished variant, so a long
    table (30 episodes of Robotank take an hour) killed midway resumes where it stopped.
    """
    check_sparsity(sparsity)
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
    for name, s, t in tqdm(variants, desc=f"{env} variants", disable=not progress):
        if name in rows:
            continue
        base = pruned_net if (s > 0 and pruned_net is not None and name != "pruned one-shot") else net
        res = evaluate(base, env, episodes=episodes, seed=seed, sparsity=0.0 if base is pruned_net else s,
                       threshold=t, max_steps=max_steps)
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


def reproduce_sweep(net: QNetwork, env: str, observations: np.ndarray, sparsities: Sequence[float],
                    thresholds: Sequence[float | Sequence[float] | None], episodes: int = 0, seed: int = 0,
                    progress: bool = True, max_steps: int | None = None,
                    pruned_nets: dict[float, QNetwork] | None = None) -> list[dict[str, Any]]:
    """Reduction factor and action agreement (replay of ``observations``) for every grid cell;
    with ``episodes > 0`` also the closed-loop score over that many seeded episodes.

    A threshold is ``None`` (no delta network), one number for every layer, or a list with
    one number per weight layer. ``pruned_nets`` maps a sparsity to a fine-tuned network
    already at that sparsity; other sparsities prune ``net`` one-shot. Agreement is always
    with the dense ``net``'s actions.
    """
    pruned_nets = pruned_nets or {}
    if episodes > 0:  # closed-loop cells play the game: fail before the replays, not after
        for n in [net, *pruned_nets.values()]:
            check_actions(n, env)
    dense_actions = replay(net, observations).actions
    out = []
    grid = [(s, t) for s in sparsities for t in thresholds]
    for s, t in tqdm(grid, desc=f"{env} sweep", disable=not progress):
        th = None if t is None else (float(t) if np.isscalar(t) else [float(x) for x in t])
        tuned = s > 0 and s in pruned_nets
        base, s_apply = (pruned_nets[s], 0.0) if tuned else (net, s)
        rep = replay(base, observations, sparsity=s_apply, threshold=th, reference=dense_actions)
        row: dict[str, Any] = {"sparsity": s, "threshold": th, "fine_tuned": tuned,
                               "reduction": rep.report.reduction,
                               "significant_per_decision": rep.report.total_significant / rep.report.steps,
                               "dense_per_decision": rep.report.total_dense / rep.report.steps,
                               "agreement": rep.agreement,
                               "steps": rep.report.steps,
                               **{f"significant_{l.name}": l.significant for l in rep.report.layers}}
        if episodes > 0:
            ev = evaluate(base, env, episodes=episodes, seed=seed, sparsity=s_apply, threshold=th,
                          max_steps=max_steps)
            row.update(episodes=episodes, mean_score=ev.mean_score, std_score=ev.std_score,
                       closed_loop_reduction=ev.report.reduction)
        out.append(row)
        if not progress:
            status_line(f"{env} sparsity {s:g} threshold {th}", f"{rep.report.reduction:.1f}x fewer",
                        f"agreement {rep.agreement:.2f}", *([f"score {row['mean_score']:.1f}"] if episodes > 0 else []))
    return out


def summary_row(table: dict[str, Any], pruned_weights: float | None = None) -> dict[str, Any]:
    """One game's line of the six-game summary, from a :func:`reproduce_table` result.

    Reductions are given against two baselines, per decision: ``pruning``, ``delta`` and
    ``both`` against all the dense network's products (the paper's "unoptimized network"),
    and ``*_vs_significant`` against the dense network's own significant products (its ReLU
    zeros already skipped), which is what the optimisation itself saves. ``pruned_weights``
    is the pruned network's weights-only reduction (``count_weights(net).reduction``), the
    count the paper's pruning range appears to use. The score comparison is paired (the
    variants played the same seeded episodes), with a 95% t interval.
    """
    v = table["variants"]
    dense, opt = v["dense"], v["pruned+delta"]
    per_decision = {k: v[k]["total_significant"] / v[k]["steps"] for k in ("dense", "pruned", "delta", "pruned+delta")}
    cmp = paired_comparison(dense["scores"], opt["scores"]) if len(dense["scores"]) > 1 else None
    return {
        "game": table["env"], "episodes": len(dense["scores"]), "seed": table.get("seed", 0),
        "dense_per_decision": dense["total_dense"] / dense["steps"],
        "dense_significant_per_decision": per_decision["dense"],
        "sparsity": table["sparsity"], "threshold": table["threshold"],
        "pruning_weights": pruned_weights, "pruning": v["pruned"]["reduction"],
        "delta": v["delta"]["reduction"], "both": opt["reduction"],
        **{f"{name}_vs_significant": per_decision["dense"] / per_decision[k]
           for name, k in (("pruning", "pruned"), ("delta", "delta"), ("both", "pruned+delta"))},
        "dense_mean": dense["mean_score"], "dense_std": dense["std_score"], "dense_hns": dense.get("hns"),
        "optimized_mean": opt["mean_score"], "optimized_std": opt["std_score"], "optimized_hns": opt.get("hns"),
        "paired_difference": float(np.mean(np.subtract(opt["scores"], dense["scores"]))),
        "paired_se": cmp.paired_se if cmp else float("nan"),
        "unpaired_se": cmp.unpaired_se if cmp else float("nan"),
        "ci95_low": cmp.ci_low if cmp else float("nan"), "ci95_high": cmp.ci_high if cmp else float("nan"),
        "verdict": cmp.verdict if cmp else "too few episodes",
        "largest_unseen_loss": cmp.largest_unseen_loss if cmp else float("nan"),
    }


def layer_shares(table: dict[str, Any], variant: str = "delta", reference: str = "dense") -> dict[str, float]:
    """Per layer, one variant's significant products per decision as a share of another's.

    Per decision, not per total: the variants play the same seeds, but a different policy can make
    its episodes longer or shorter, and totals would mix that into the share.
    """
    v = table["variants"]
    a, b = v[variant], v[reference]
    return {la["name"]: (la["significant"] / a["steps"]) / (lb["significant"] / b["steps"])
            if lb["significant"] else float("nan")
            for la, lb in zip(a["layers"], b["layers"])}


def six_game_summary(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """:func:`summary_row` for each of :data:`SIX_GAMES` whose table is in ``directory``, in order.

    A table written before tables recorded ``pruned_weights_reduction`` gets it from the
    shipped pruned agent it names (or, failing that, from the dense agent pruned one-shot).
    """
    rows = []
    for game in SIX_GAMES:
        path = Path(directory) / f"{game}_table.json"
        if not path.exists():
            continue
        table = json.loads(path.read_text())
        weights = table.get("pruned_weights_reduction")
        if weights is None:
            name = table.get("pruned_from")
            net = (load_agent(name) if name in agent_names()
                   else prune_network(plain_copy(load_agent(game)), table["sparsity"]))
            weights = count_weights(net).reduction
        rows.append(summary_row(table, weights))
    return rows


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
