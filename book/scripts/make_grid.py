"""Precompute the pruning x delta grid of chapter 6 (06_interactive.ipynb).

Run from the repository root (a few minutes on 2 CPU cores):

    python book/scripts/make_grid.py

It writes, into the package's data folder (``deltalearn/data/``, read by ``dl.study.book_data``):

* ``pruned/``: the CartPole agent pruned gradually to sparsity 0.3, 0.5, 0.7, 0.8 and 0.9 by the
  library's :func:`deltalearn.rl.prune_and_distill` (magnitude pruning per layer, each stage
  recovered by distillation towards the dense agent; :data:`DISTILL` is the configuration),
  exported with ``dl.store.export_agent`` so that ``dl.load_agent(name, directory=...)`` checks
  their sha256. Each manifest record names the library function and its full ``DistillConfig``.
  (Chapter 4 keeps its own short copy of the recipe, for teaching; these agents do not come from it.)
* ``grid.csv``: for one-shot and fine-tuned networks at each sparsity and each delta threshold
  (``none`` = no delta network), the mean return of 5 seeded episodes (closed-loop play, seeds
  1000-1004, which choose nothing here) and, on the recorded 500-step episode, the agreement with
  the dense agent and the exact significant products per layer. "The network at sparsity s" is
  always ``dl.study.agent_at``'s: the shipped distilled agent (fine-tuned), or with
  ``one_shot=True`` the dense agent pruned in one shot.

The chapter reads these files (``dl.study.load_grid``, ``dl.study.book_data("pruned")``) and re-checks one grid cell live. ``book/scripts/count_noise.py``
replays every grid cell too: re-run ``python book/scripts/count_noise.py --games CartPole-v1``
after regenerating the grid.
"""
from __future__ import annotations

import csv
import time

import torch

import deltalearn as dl

# the files live in the package's data folder, where the chapters read them (dl.study.book_data)
HERE = dl.study.book_data()
PRUNED_DIR = HERE / "pruned"
GRID_CSV = HERE / "grid.csv"
ENV = "CartPole-v1"
SPARSITIES = [0.0, 0.3, 0.5, 0.7, 0.8, 0.9]
THRESHOLDS = [None, 0.0, 0.001, 0.003, 0.01, 0.03, 0.1]
EVAL_SEED, EVAL_EPISODES = 1000, 5
FIELDS = ["kind", "sparsity", "threshold", "mean_return", "min_return", "agreement",
          "fc1", "fc2", "fc3", "significant", "dense", "reduction"]
# Chapter 4's recipe, sized for a 256x256 MLP that balances a pole: short episodes, few states, a
# larger learning rate and batch than the Atari defaults. The pool (40,000) holds every state
# collected (at most 16 x 4 x 300), so nothing is dropped.
DISTILL = dl.rl.DistillConfig(stages=tuple(SPARSITIES[1:]), rounds=3, updates=200, temperature=0.05,
                              lr=1e-3, batch_size=128, mse_weight=0.01, episodes=4, epsilon=0.1,
                              max_steps=300, seed=0, threads=1)


def make_pruned() -> None:
    """Distil the shipped dense agent at every sparsity of DISTILL and export each stage's network."""
    teacher = dl.load_agent(ENV)
    t = time.time()
    snapshots, history = dl.rl.prune_and_distill(teacher, ENV, DISTILL, progress=False)
    print(f"distilled {len(snapshots)} stages in {time.time() - t:.0f} s", flush=True)
    for s, net in snapshots.items():
        dl.store.export_agent(net, dl.store.pruned_agent_name(ENV, s), {
            "env": ENV, "teacher": ENV, "teacher_sha256": dl.agent_record(ENV)["sha256"],
            "made_with": "deltalearn.rl.prune_and_distill",
            "config": {"sparsity": s, "distill": DISTILL.to_dict()},
            "stage": next(h for h in history if h["sparsity"] == s), "seed": DISTILL.seed,
            "made_by": "book/scripts/make_grid.py"}, directory=PRUNED_DIR)


def networks() -> dict[str, dict[float, torch.nn.Module]]:
    """{kind: {sparsity: network}} for one-shot and fine-tuned pruning, by ``dl.study.agent_at``."""
    nets: dict[str, dict[float, torch.nn.Module]] = {}
    for kind in ("one-shot", "fine-tuned"):
        nets[kind] = {}
        for s in SPARSITIES:
            a = dl.study.agent_at(ENV, s, directory=PRUNED_DIR, one_shot=kind == "one-shot")
            if kind == "fine-tuned" and s > 0 and not a.fine_tuned:
                raise RuntimeError(f"no distilled agent for sparsity {s} in {PRUNED_DIR}: got {a.source}")
            nets[kind][s] = a.net
    return nets


def grid_cell(net, observations, threshold, dense_actions):
    """One row of the grid (without kind and sparsity).

    ``agreement`` compares with ``dense_actions``, the greedy actions of the unpruned agent
    (``ReplayResult.agreement`` would compare with ``net`` itself, here already pruned).
    """
    ev = dl.evaluate(net, ENV, episodes=EVAL_EPISODES, seed=EVAL_SEED, threshold=threshold)
    rp = dl.replay(net, observations, threshold=threshold)
    layers = [l.significant for l in rp.report.layers]
    return {"threshold": "none" if threshold is None else f"{threshold:g}",
            "mean_return": ev.mean_score, "min_return": min(ev.scores), "agreement": float((rp.actions == dense_actions).mean()),
            "fc1": layers[0], "fc2": layers[1], "fc3": layers[2],
            "significant": rp.report.total_significant, "dense": rp.report.total_dense,
            "reduction": rp.report.reduction}


def main() -> None:
    torch.set_num_threads(1)
    observations = dl.load_trajectory(ENV)["observations"]
    PRUNED_DIR.mkdir(exist_ok=True)
    make_pruned()
    nets = networks()
    with torch.no_grad():
        dense_actions = nets["one-shot"][0.0](torch.as_tensor(observations)).argmax(1).numpy()
    rows = []
    t = time.time()
    for kind, by_sparsity in nets.items():
        for s, net in by_sparsity.items():
            for th in THRESHOLDS:
                rows.append({"kind": kind, "sparsity": s, **grid_cell(net, observations, th, dense_actions)})
            print(f"{kind} {s}: {[round(r['mean_return']) for r in rows[-len(THRESHOLDS):]]} "
                  f"({time.time() - t:.0f} s)", flush=True)
    tmp = GRID_CSV.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(GRID_CSV)
    print(f"wrote {GRID_CSV}")


if __name__ == "__main__":
    main()
