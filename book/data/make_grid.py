"""Precompute the pruning x delta grid of chapter 6 (06_interactive.ipynb).

Run from the repository root (a few minutes on 2 CPU cores):

    python book/data/make_grid.py

It writes, next to this file:

* ``pruned/``: the CartPole agent pruned gradually to sparsity 0.3, 0.5, 0.7, 0.8 and 0.9 with
  distillation after each step (the recipe and code of chapter 4), saved with
  ``dl.export_agent`` so that ``dl.load_agent(name, directory=...)`` checks their sha256;
* ``grid.csv``: for one-shot and fine-tuned networks at each sparsity and each delta threshold
  (``none`` = no delta network), the mean return of 5 seeded episodes (closed-loop play) and,
  on the recorded 500-step episode, the agreement with the dense agent and the exact
  significant products per layer.

The chapter reads these files and re-checks one grid cell live.
"""
from __future__ import annotations

import copy
import csv
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import deltalearn as dl

HERE = Path(__file__).resolve().parent
PRUNED_DIR = HERE / "pruned"
GRID_CSV = HERE / "grid.csv"
SPARSITIES = [0.0, 0.3, 0.5, 0.7, 0.8, 0.9]
THRESHOLDS = [None, 0.0, 0.001, 0.003, 0.01, 0.03, 0.1]
EVAL_SEED, EVAL_EPISODES = 1000, 5
FIELDS = ["kind", "sparsity", "threshold", "mean_return", "min_return", "agreement",
          "fc1", "fc2", "fc3", "significant", "dense", "reduction"]


def snapshot(net):
    """A plain (mask-free) copy of a possibly pruned network (chapter 4)."""
    plain = dl.build_network(net.spec)
    dl.copy_weights(net, plain)
    return plain.eval()


def distill(student, teacher, obs, rounds=3, updates=200, temperature=0.05, lr=1e-3, seed=0):
    """Chapter 4's fine-tuning: pull the student's action preferences towards the teacher's."""
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    states = [obs]
    for r in range(rounds):
        play = dl.evaluate(snapshot(student), "CartPole-v1", episodes=4, seed=2000 + 10 * seed + r,
                           epsilon=0.1, record=True, max_steps=300)
        states += [torch.as_tensor(o) for o in play.observations]
        X = torch.cat(states)
        with torch.no_grad():
            target = teacher(X)
        for _ in range(updates):
            i = torch.randint(len(X), (128,), generator=gen)
            q = student(X[i])
            loss = F.kl_div(F.log_softmax(q / temperature, dim=1), F.log_softmax(target[i] / temperature, dim=1),
                            log_target=True, reduction="batchmean") + 0.01 * F.mse_loss(q, target[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return student


def pruned_name(sparsity: float) -> str:
    return f"CartPole-v1-pruned-{sparsity:g}"


def make_pruned(agent, obs) -> None:
    torch.manual_seed(0)
    student = copy.deepcopy(agent)
    for s in SPARSITIES[1:]:
        t = time.time()
        dl.prune_network(student, s)
        distill(student, agent, obs, seed=int(s * 10))
        net = snapshot(student)
        dl.export_agent(net, pruned_name(s), {
            "sparsity": s, "scope": "layer",
            "recipe": "gradual magnitude pruning 0.3-0.5-0.7-0.8-0.9, each step followed by "
                      "distill(rounds=3, updates=200, temperature=0.05, lr=1e-3) as in chapter 4",
            "made_by": "book/data/make_grid.py"}, directory=PRUNED_DIR)
        print(f"sparsity {s}: distilled in {time.time() - t:.0f} s", flush=True)


def networks(agent):
    """{kind: {sparsity: network}} for one-shot and fine-tuned pruning."""
    one_shot = {s: dl.make_permanent(dl.prune_network(copy.deepcopy(agent), s)) if s else agent
                for s in SPARSITIES}
    tuned = {s: dl.load_agent(pruned_name(s), directory=PRUNED_DIR) if s else agent for s in SPARSITIES}
    return {"one-shot": one_shot, "fine-tuned": tuned}


def grid_cell(net, observations, threshold, dense_actions):
    """One row of the grid (without kind and sparsity).

    ``agreement`` compares with ``dense_actions``, the greedy actions of the unpruned agent
    (``ReplayResult.agreement`` would compare with ``net`` itself, here already pruned).
    """
    ev = dl.evaluate(net, "CartPole-v1", episodes=EVAL_EPISODES, seed=EVAL_SEED, threshold=threshold)
    rp = dl.replay(net, observations, threshold=threshold)
    layers = [l.significant for l in rp.report.layers]
    return {"threshold": "none" if threshold is None else f"{threshold:g}",
            "mean_return": ev.mean_score, "min_return": min(ev.scores), "agreement": float((rp.actions == dense_actions).mean()),
            "fc1": layers[0], "fc2": layers[1], "fc3": layers[2],
            "significant": rp.report.total_significant, "dense": rp.report.total_dense,
            "reduction": rp.report.reduction}


def main() -> None:
    torch.set_num_threads(1)
    agent = dl.load_agent("CartPole-v1")
    observations = dl.load_trajectory("CartPole-v1")["observations"]
    PRUNED_DIR.mkdir(exist_ok=True)
    make_pruned(agent, torch.as_tensor(observations))
    nets = networks(agent)
    with torch.no_grad():
        dense_actions = agent(torch.as_tensor(observations)).argmax(1).numpy()
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
