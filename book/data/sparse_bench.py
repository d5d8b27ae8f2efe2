"""Time the sparse delta engine against the best dense torch forward (issue 14, first measurement).

One thread, batch ``--batch`` (default 1), the first ``--steps`` steps of the game's recorded episode. Each round replays
those steps through every variant in turn (interleaved, so machine noise hits all of them alike);
the figure per variant is the median over rounds of its ms per decision (a step of batch B makes
B decisions). Also prints the greedy-action agreement and max |dQ| of the sparse engine against the
dense-backed delta network over the same steps.

    PYTHONPATH=$PWD python book/data/sparse_bench.py --agent Breakout-pruned-0.79 --threshold 0.001
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import deltalearn as dl


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agent", default="Breakout-pruned-0.79")
    p.add_argument("--threshold", type=float, default=0.001)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dense-delta", action="store_true", help="also time the dense-backed delta network")
    a = p.parse_args()
    torch.set_num_threads(1)
    net = dl.load_agent(a.agent).eval()
    game = a.agent.split("-pruned")[0]
    obs = torch.as_tensor(dl.load_trajectory(game)["observations"][: a.steps + a.batch - 1])
    # batch B: row j of step t is the recorded step t + j (B streams of one episode, shifted)
    steps = [torch.stack([obs[t + j] for j in range(a.batch)]) for t in range(a.steps)]
    net_cl = dl.load_agent(a.agent).eval().to(memory_format=torch.channels_last)

    def dense() -> None:
        with torch.no_grad():
            for x in steps:
                net(x)

    def dense_cl() -> None:
        with torch.inference_mode():
            for x in steps:
                net_cl(x.contiguous(memory_format=torch.channels_last))

    def delta(backend: str, count: bool):
        def run() -> None:
            d = dl.DeltaNetwork(net, a.threshold, backend=backend)
            for x in steps:
                d(x, count=count)
        return run

    variants = {"dense torch": dense, "dense torch, inference_mode + channels_last": dense_cl,
                "sparse delta, count=False": delta("sparse", False),
                "sparse delta, count=True": delta("sparse", True)}
    if a.dense_delta:
        variants["dense-backed delta, count=False"] = delta("dense", False)
    for run in variants.values():  # warm up: compile, caches, allocator
        run()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(a.rounds):
        for name, run in variants.items():
            t0 = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - t0) * 1e3 / (a.steps * a.batch))  # per decision
    med = {k: statistics.median(v) for k, v in times.items()}
    ref, sparse = dl.DeltaNetwork(net, a.threshold), dl.DeltaNetwork(net, a.threshold, backend="sparse")
    agree, worst = 0, 0.0
    for x in steps:
        q_ref, q = ref(x, count=False), sparse(x, count=False)
        agree += int((q_ref.argmax(1) == q.argmax(1)).sum())
        worst = max(worst, float((q_ref - q).abs().max()))
    best = min(med["dense torch"], med["dense torch, inference_mode + channels_last"])
    print(f"{a.agent} threshold {a.threshold} batch {a.batch}, {a.steps} steps x {a.rounds} rounds, 1 thread")
    print("| variant | ms per decision | speed-up vs best dense |\n|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.3f} | {best / v:.2f}x |")
    print(f"sparse vs dense-backed delta: greedy actions equal on {agree} of {a.steps * a.batch} decisions, "
          f"max |dQ| {worst:.1e}")


if __name__ == "__main__":
    main()
