"""Where the sparse scatter stops paying: per weight layer, time one delta step against the share of
inputs that changed, for the scatter (crossover 1) and for the dense fallback (crossover 0).

One thread, batch 1, the shipped agent's layers at their recorded input shapes; random inputs of
which a share ``f`` moved by more than the threshold. Interleaved, median of ``--reps``.

    PYTHONPATH=$PWD python book/data/sparse_crossover.py --agent Breakout-pruned-0.79
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import deltalearn as dl
from deltalearn.core.sparse_delta import _Layer

FRACTIONS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agent", default="Breakout-pruned-0.79")
    p.add_argument("--reps", type=int, default=200)
    a = p.parse_args()
    torch.set_num_threads(1)
    net = dl.load_agent(a.agent).eval()
    chain = dl.core.trace_chain(net)
    shapes = chain.input_shapes(torch.zeros(1, *net.input_shape, dtype=torch.uint8))
    rng = np.random.default_rng(0)
    th = np.float32(0.001)
    print(f"{a.agent}: us per step of one layer at batch 1 (scatter / dense fallback)")
    print("| layer | " + " | ".join(f"{f:g}" for f in FRACTIONS) + " | crossover |")
    print("|---" * (len(FRACTIONS) + 2) + "|")
    for name, m, shape in zip(chain.names, chain.weights, shapes):
        w = m.weight.detach().clone()
        b = None if m.bias is None else m.bias.detach().clone()
        cells, cross = [], None
        for f in FRACTIONS:
            layers = {c: _Layer(m, w, b, shape, 1, c) for c in (1.0, 0.0)}
            x0 = torch.rand(1, *shape)
            if len(shape) == 3:
                x0 = x0.contiguous(memory_format=torch.channels_last)  # as the engine's own outputs are
            times = {c: [] for c in layers}
            fresh = np.zeros(1, dtype=bool)
            for layer in layers.values():
                layer.step(x0, np.ones(1, dtype=bool), True, th, True)
            x = x0
            for _ in range(a.reps):
                move = torch.from_numpy((rng.random(x.shape) < f).astype(np.float32)) * 0.01
                x = (x + move).contiguous(memory_format=torch.channels_last) if len(shape) == 3 else x + move
                for c, layer in layers.items():
                    t0 = time.perf_counter()
                    layer.step(x, fresh, False, th, True)
                    times[c].append(time.perf_counter() - t0)
            sparse, dense = (statistics.median(times[c]) * 1e6 for c in (1.0, 0.0))
            cells.append(f"{sparse:.0f} / {dense:.0f}")
            if cross is None and sparse > dense:
                cross = f
        print(f"| {name} | " + " | ".join(cells) + f" | {cross if cross is not None else '> 1'} |")


if __name__ == "__main__":
    main()
