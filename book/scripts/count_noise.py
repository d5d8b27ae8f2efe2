"""Measure how far significant-multiplication counts move with the order of float sums,
and how far a real change moves them: the data behind ``dl.core.COUNT_RTOL`` and ``dl.core.COUNT_FLOOR``.

Run from the repository root (the default cells take about half an hour on 2 busy CPU cores):

    python book/scripts/count_noise.py --jobs 3                  # every game, every configuration
    python book/scripts/count_noise.py --games Breakout          # one game: a few minutes
    python book/scripts/count_noise.py --summary-only            # no replays: the summary again

It writes, into the package's data folder (``deltalearn/data/``), ``count_noise.json`` (every
replayed count, and the summary) and ``count_noise.md`` (the summary tables, quoted in chapter 3 and in ``deltalearn/counting.py``).
A run with ``--games`` replaces those games in the files and keeps the others. The committed files
come from ``--jobs 3``, then ``--games SpaceInvaders Breakout Robotank --full --jobs 3``.

**Noise.** Each game's recorded episode (``dl.load_trajectory(game)``) is replayed at some cells
of its committed sweep (``deltalearn/data/reproduce/<game>_sweep.json``; see :func:`cells`), exactly as
``dl.study.reproduce_sweep`` made them. CartPole's recorded episode is replayed at every cell of
chapter 6's grid (``deltalearn/data/grid.csv``, made by ``make_grid.py``). Each configuration runs in
its own child process whose environment is set before torch loads:

* ``native``: torch's defaults on this CPU (oneDNN on);
* ``onednn-off``: ``DELTALEARN_ONEDNN=0`` (torch's own convolution kernels);
* ``avx2``: oneDNN, MKL and ATen limited to AVX2 instructions, which stands in for another
  CPU. (On our AVX-512 machines this configuration replays the committed Atari sweeps exactly,
  the two others do not: the sweeps were made with AVX2 kernels.)

Every layer's count is compared with the committed one; the noise of a layer is the largest
``|replayed - committed|`` over cells and configurations, absolute and relative.

**Real changes**, from the committed files alone: for every pair of neighbouring cells (the next
threshold at the same sparsity, the next first-layer threshold, the next sparsity at the same
threshold) the largest relative difference over the layers, i.e. what a per-layer comparison
can see. The smallest of these is the smallest real change a check has to catch.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# the files live in the package's data folder, where the chapters read them (dl.study.book_data);
# found without importing deltalearn, which the workers import under their own configuration
HERE = Path(importlib.util.find_spec("deltalearn").submodule_search_locations[0]) / "data"
SWEEPS = HERE / "reproduce"
GRID_CSV = HERE / "grid.csv"
PRUNED_DIR = HERE / "pruned"
OUT_JSON = HERE / "count_noise.json"
OUT_MD = HERE / "count_noise.md"
CONFIGS: dict[str, dict[str, str]] = {
    "native": {},
    "onednn-off": {"DELTALEARN_ONEDNN": "0"},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}
CARTPOLE = "CartPole-v1"
# shortest recorded episode first
GAMES = [CARTPOLE, "SpaceInvaders", "Breakout", "BattleZone", "Freeway", "Robotank", "Enduro"]


def layers_of(row: dict) -> list[str]:
    return [k[len("significant_"):] for k in row if k.startswith("significant_") and k != "significant_per_decision"]


def committed(game: str) -> list[dict]:
    """The committed cells of ``game``: ``kind`` (one-shot / fine-tuned / dense), ``sparsity``,
    ``threshold`` (None, a number or a list), ``significant_<layer>``."""
    if game == CARTPOLE:
        with open(GRID_CSV) as f:
            return [{"kind": r["kind"], "sparsity": float(r["sparsity"]),
                     "threshold": None if r["threshold"] == "none" else float(r["threshold"]),
                     **{f"significant_{n}": int(r[n]) for n in ("fc1", "fc2", "fc3")}} for r in csv.DictReader(f)]
    rows = json.loads((SWEEPS / f"{game}_sweep.json").read_text())
    return [{"kind": "fine-tuned" if r["fine_tuned"] else ("dense" if r["sparsity"] == 0 else "one-shot"),
             "sparsity": r["sparsity"], "threshold": r["threshold"],
             **{k: v for k, v in r.items() if k.startswith("significant_") and k != "significant_per_decision"}}
            for r in rows]


def cells(game: str, table_sparsity: float | None, full: bool = False) -> list[dict]:
    """Committed cells to replay.

    Atari, by default: no delta network, thresholds 0.001 (the table's) and 0.03 (small counts in
    the last layers) at the table sparsity; no delta network and 0.001 on the dense agent; for
    first-person games also the first-layer threshold 0.03. With ``full``, also every other
    threshold at the table sparsity and 0.01 on the dense agent. CartPole: every grid cell.
    """
    rows = committed(game)
    if game == CARTPOLE:
        return rows
    keep = [(table_sparsity, None), (table_sparsity, 0.001), (table_sparsity, 0.03),
            (table_sparsity, [0.03, 0.001, 0.001, 0.001, 0.001]), (0.0, None), (0.0, 0.001)]
    if full:
        keep += [(table_sparsity, r["threshold"]) for r in rows] + [(0.0, 0.01)]
    return [r for r in rows if (r["sparsity"], r["threshold"]) in keep]


def worker(games: list[str], out: Path, full: bool = False) -> None:
    """Replay the cells of ``games`` in this process; write their counts to ``out`` after each
    game, so that a long run can be followed."""
    import numpy as np
    import torch

    import deltalearn as dl

    torch.set_num_threads(1)
    result = {"onednn": bool(torch.backends.mkldnn.enabled), "torch": torch.__version__,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "games": {}}
    for game in games:
        obs = dl.load_trajectory(game)["observations"]
        dense = dl.load_agent(game)
        dense_actions = np.asarray(dl.replay(dense, obs).actions)
        s_table = None if game == CARTPOLE else dl.study.table_setting(game)[0]
        rows = []
        for cell in cells(game, s_table, full):
            s, t, kind = cell["sparsity"], cell["threshold"], cell["kind"]
            if s == 0:
                base, s_apply = dense, 0.0
            elif kind == "fine-tuned" or game == CARTPOLE:  # chapter 6's networks come from PRUNED_DIR
                agent = dl.agent_at(game, s, directory=PRUNED_DIR if game == CARTPOLE else None,
                                    one_shot=kind != "fine-tuned")
                if agent.fine_tuned != (kind == "fine-tuned"):
                    raise ValueError(f"{game} at sparsity {s:g}: the committed cell is {kind}, but {agent.source}")
                base, s_apply = agent.net, 0.0
            else:
                base, s_apply = dense, s
            start = time.perf_counter()
            rep = dl.replay(base, obs, sparsity=s_apply, threshold=t, reference=dense_actions)
            rows.append({"kind": kind, "sparsity": s, "threshold": t, "steps": rep.report.steps,
                         "agreement": rep.agreement, "seconds": round(time.perf_counter() - start, 2),
                         **{f"significant_{l.name}": l.significant for l in rep.report.layers},
                         **{f"dense_{l.name}": l.dense for l in rep.report.layers}})
            print(f"{game} {kind} {s} {t}: {[l.significant for l in rep.report.layers]}", file=sys.stderr, flush=True)
        result["games"][game] = rows
        out.write_text(json.dumps(result))


def run_config(name: str, games: list[str], full: bool = False) -> dict:
    """Run :func:`worker` in a child process with configuration ``name``'s environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("DELTALEARN_ONEDNN", *CONFIGS["avx2"])}
    env.update(CONFIGS[name])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "counts.json"
        subprocess.run([sys.executable, __file__, "--worker", "--out", str(out), "--games", *games,
                        *(["--full"] if full else [])], env=env, check=True)
        return json.loads(out.read_text())


def same_cell(a: dict, b: dict) -> bool:
    return a["kind"] == b["kind"] and a["sparsity"] == b["sparsity"] and a["threshold"] == b["threshold"]


def rel(a: int, b: int) -> float:
    return abs(a - b) / max(abs(a), abs(b)) if (a or b) else 0.0


def threshold_key(t) -> tuple:
    """Order of the thresholds: none, then uniform ones, then first-layer ones."""
    if t is None:
        return (0, 0.0)
    if isinstance(t, list):
        return (2, t[0])
    return (1, t)


def real_changes(games: list[str]) -> list[dict]:
    """Neighbouring committed cells and their largest per-layer relative change."""
    out = []
    for game in games:
        rows = committed(game)
        layers = layers_of(rows[0])
        pairs = []
        for kind in sorted({r["kind"] for r in rows}):
            mine = [r for r in rows if r["kind"] == kind]
            for s in sorted({r["sparsity"] for r in mine}):
                at = sorted((r for r in mine if r["sparsity"] == s), key=lambda r: threshold_key(r["threshold"]))
                uniform = [r for r in at if not isinstance(r["threshold"], list)]
                first = [r for r in at if isinstance(r["threshold"], list)]
                pairs += list(zip(uniform, uniform[1:]))
                if first:  # from the uniform 0.001 to first-layer 0.01, then 0.03, then 0.1
                    pairs += list(zip([r for r in uniform if r["threshold"] == 0.001] + first, first))
        # the next sparsity at the same threshold (the dense agent counts as sparsity 0 of every kind)
        sparsities = sorted({r["sparsity"] for r in rows})
        for s0, s1 in zip(sparsities, sparsities[1:]):
            for r1 in (r for r in rows if r["sparsity"] == s1):
                for r0 in (r for r in rows if r["sparsity"] == s0 and r["threshold"] == r1["threshold"]):
                    if r0["kind"] in (r1["kind"], "dense") or s0 == 0:
                        pairs.append((r0, r1))
        for a, b in pairs:
            per_layer = {n: rel(a[f"significant_{n}"], b[f"significant_{n}"]) for n in layers}
            out.append({"game": game, "from": [a["kind"], a["sparsity"], a["threshold"]],
                        "to": [b["kind"], b["sparsity"], b["threshold"]],
                        "per_layer": per_layer, "largest": max(per_layer.values()),
                        "counts": [[a[f"significant_{n}"] for n in layers], [b[f"significant_{n}"] for n in layers]]})
    return out


def replayed_cells(replays: dict[str, dict]):
    """Each replayed cell with its committed counterpart: (configuration, game, replayed, committed)."""
    for config, res in replays.items():
        for game, rows in res["games"].items():
            ref_rows = committed(game)
            for row in rows:
                yield config, game, row, next(r for r in ref_rows if same_cell(r, row))


def deviations(replays: dict[str, dict]) -> list[dict]:
    """Per replayed cell, configuration and layer: the deviation from the committed count."""
    out = []
    for config, game, row, ref in replayed_cells(replays):
        for n in layers_of(ref):
            a, b = row[f"significant_{n}"], ref[f"significant_{n}"]
            out.append({"config": config, "game": game, "kind": row["kind"], "sparsity": row["sparsity"],
                        "threshold": row["threshold"], "layer": n, "replayed": a, "committed": b,
                        "dense": row[f"dense_{n}"], "steps": row["steps"], "abs": abs(a - b),
                        "rel": rel(a, b)})
    return out


def tolerance(a: list[int], b: list[int]) -> list[float]:
    """Per layer, the difference ``dl.counts_close`` allows between ``a`` and ``b``."""
    import deltalearn as dl

    slack = dl.core.COUNT_FLOOR * max(sum(a), sum(b))
    return [dl.core.COUNT_RTOL * max(x, y) + slack for x, y in zip(a, b)]


def margins(replays: dict[str, dict], changes: list[dict]) -> dict:
    """How far inside ``dl.counts_close``'s tolerance the noise is, how far outside the real changes."""
    noise = []
    for config, game, row, ref in replayed_cells(replays):
        names = layers_of(ref)
        a, b = [row[f"significant_{n}"] for n in names], [ref[f"significant_{n}"] for n in names]
        for n, x, y, tol in zip(names, a, b, tolerance(a, b)):
            if x != y:
                noise.append((tol / abs(x - y), config, game, row["sparsity"], row["threshold"], n))
    real = [(max(abs(x - y) / tol for x, y, tol in zip(*c["counts"], tolerance(*c["counts"]))),
             c["game"], c["from"], c["to"]) for c in changes]
    worst_noise, worst_real = min(noise), min(real)
    import deltalearn as dl

    return {"rtol": dl.core.COUNT_RTOL, "floor": dl.core.COUNT_FLOOR,
            "noise_inside": worst_noise[0], "noise_worst": list(worst_noise[1:]),
            "real_outside": worst_real[0], "real_worst": list(worst_real[1:])}


def summarise(replays: dict[str, dict]) -> dict:
    devs = deviations(replays)
    games = [g for g in GAMES if any(g in r["games"] for r in replays.values())]
    changes = real_changes(games)
    per_layer: dict = {}
    for game in games:
        per_layer[game] = {}
        for n in dict.fromkeys(d["layer"] for d in devs if d["game"] == game):
            d = [x for x in devs if x["game"] == game and x["layer"] == n]
            worst = max(d, key=lambda x: (x["rel"], x["abs"]))
            per_layer[game][n] = {
                "max_rel": worst["rel"], "max_abs": max(x["abs"] for x in d),
                "worst": {k: worst[k] for k in ("config", "kind", "sparsity", "threshold", "replayed", "committed")},
                "smallest_count": min(x["committed"] for x in d),
                "max_rel_by_config": {c: max(x["rel"] for x in d if x["config"] == c) for c in replays},
            }
    atari = [x for x in devs if x["game"] != CARTPOLE]
    big = [x for x in devs if x["committed"] >= 1e6]
    return {
        "configs": {c: {k: v for k, v in r.items() if k != "games"} for c, r in replays.items()},
        "cells_replayed": {g: len(replays[next(iter(replays))]["games"].get(g, [])) for g in games},
        "noise_per_layer": per_layer,
        "max_rel": max(x["rel"] for x in devs),
        "max_rel_counts_above_1e6": max(x["rel"] for x in big),
        "max_abs": max(x["abs"] for x in devs),
        "max_abs_per_decision": max(x["abs"] / x["steps"] for x in devs),
        "max_abs_by_layer_kind": {"conv": max([x["abs"] for x in atari if x["layer"].startswith("conv")] or [0]),
                                  "fc": max([x["abs"] for x in devs if x["layer"].startswith("fc")] or [0])},
        "exact_layers": sorted({f"{x['game']} {x['layer']}" for x in devs}
                               - {f"{x['game']} {x['layer']}" for x in devs if x["abs"]}),
        "identical_to_committed": {c: all(x["abs"] == 0 for x in devs if x["config"] == c and x["game"] != CARTPOLE)
                                   for c in replays},
        "smallest_real_change": min(changes, key=lambda c: c["largest"]),
        "smallest_real_change_atari": min((c for c in changes if c["game"] != CARTPOLE), key=lambda c: c["largest"]),
        "counts_close_margins": margins(replays, changes),
        "smallest_real_change_per_layer": {
            n: min(c["per_layer"][n] for c in changes if c["per_layer"].get(n))
            for n in dict.fromkeys(k for c in changes for k in c["per_layer"])},
    }


def markdown(summary: dict) -> str:
    configs = ", ".join(f"`{c}`" for c in summary["configs"])
    lines = ["# Count noise: replayed counts against the committed ones", "",
             "Written by `python book/scripts/count_noise.py`. Per layer: the largest relative deviation "
             "|replayed - committed| / committed over the replayed cells and the configurations "
             f"{configs}, and in brackets the largest absolute deviation in products. Atari: "
             "committed sweeps `deltalearn/data/reproduce/<game>_sweep.json`; CartPole: `deltalearn/data/grid.csv`.", "",
             "| game | cells | layer: relative (absolute) |", "|---|---:|---|"]
    for game, layers in summary["noise_per_layer"].items():
        lines.append(f"| {game} | {summary['cells_replayed'][game]} | "
                     + ", ".join(f"{n} {v['max_rel']:.1e} ({v['max_abs']:,})" for n, v in layers.items()) + " |")
    c = summary["smallest_real_change"]
    lines += ["",
              f"* Largest relative deviation: {summary['max_rel']:.1e}; on counts of a million products "
              f"or more: {summary['max_rel_counts_above_1e6']:.1e}.",
              f"* Largest absolute deviation: {summary['max_abs']:,} products "
              f"({summary['max_abs_per_decision']:.2f} per decision at most).",
              "* Layers that never moved: " + ", ".join(summary["exact_layers"]) + ".",
              "* Atari replays identical to the committed sweeps: "
              + ", ".join(f"`{k}` {v}" for k, v in summary["identical_to_committed"].items()) + ".",
              f"* Smallest real change (neighbouring committed cells, the layer that changes most): "
              f"{c['largest']:.1e} ({c['game']}, {c['from']} -> {c['to']}).",
              f"* In the Atari sweeps: {summary['smallest_real_change_atari']['largest']:.1e} "
              f"({summary['smallest_real_change_atari']['game']}, {summary['smallest_real_change_atari']['from']} -> "
              f"{summary['smallest_real_change_atari']['to']}).",
              "* Smallest non-zero change of each layer between neighbouring cells (another layer may change "
              "more): "
              + ", ".join(f"{n} {v:.1e}" for n, v in summary["smallest_real_change_per_layer"].items()) + ".", ""]
    m = summary["counts_close_margins"]
    lines += [f"With `dl.counts_close` (COUNT_RTOL {m['rtol']:g} per layer, COUNT_FLOOR {m['floor']:g} of all "
              f"products): every measured deviation is at least {m['noise_inside']:.1f} times inside its tolerance "
              f"(closest: {m['noise_worst']}), and every pair of neighbouring committed cells differs in some layer by "
              f"at least {m['real_outside']:.1f} times its tolerance (closest: {m['real_worst']}).", ""]
    for name, cfg in summary["configs"].items():
        lines.append(f"`{name}`: oneDNN {'on' if cfg['onednn'] else 'off'}, torch {cfg['torch']}, "
                     f"CPU capability {cfg['cpu_capability']}.  ")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--games", nargs="+", default=GAMES)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--full", action="store_true", help="replay every threshold at the table sparsity")
    ap.add_argument("--jobs", type=int, default=1, help="configurations run at once (default 1)")
    ap.add_argument("--summary-only", action="store_true",
                    help="no replays: recompute the summary from the replays in count_noise.json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.games, args.out, args.full)
        return
    fresh = {}
    if not args.summary_only:
        with ThreadPoolExecutor(args.jobs) as pool:  # each configuration is its own process
            fresh = dict(zip(args.configs, pool.map(lambda c: run_config(c, args.games, args.full), args.configs)))
    replays = json.loads(OUT_JSON.read_text())["replays"] if OUT_JSON.exists() else {}
    for config, res in fresh.items():  # replace the games just run, keep the others
        old = replays.get(config, {"games": {}})
        replays[config] = {**res, "games": {**old["games"], **res["games"]}}
    summary = summarise(replays)
    OUT_JSON.write_text(json.dumps({"summary": summary, "replays": replays}, indent=1) + "\n")
    OUT_MD.write_text(markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
