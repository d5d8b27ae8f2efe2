"""Where the sparse scatter stops paying: per weight layer, the time of one delta step against the
share of the layer's inputs sent, for the scatter and for the dense fallback (a torch conv2d /
linear of the rebuilt delta), written to ``deltalearn/data/bench/crossover.json``.

One thread, batch 1, the agent's layers inside the engine's fused path (each layer run alone by
the same compiled kernel the engine uses). At each share ``f`` a random ``f`` of the layer's
inputs move by more than the threshold each step: uniformly scattered changes, the scatter's worst
case. The two variants alternate step by step; each figure is the median over ``--reps`` steps.

    PYTHONPATH=$PWD python book/scripts/sparse_crossover.py --agent Breakout-pruned-0.79 --reps 300

Schema of the JSON (all times in microseconds per step of one layer at batch 1)::

    {"agent", "threshold", "reps", "fractions": [f, ...],
     "layers": [{"name", "kind", "inputs", "outputs", "dense_layer_us",
                 "scatter_us": [per fraction], "dense_fallback_us": [per fraction],
                 "crossover": midway between the last share where the scatter wins and the next,
                              from which on it loses at every share (null: it never loses)}],
     "dense_forward_us": the whole dense torch forward, "machine": {"processor", "cpu_model", "cpus"},
     "date", "commit", "versions": {"numba", "torch", "numpy", "python"}}
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numba
import numpy as np
import torch

import deltalearn as dl
from deltalearn.core import _sparse_kernels as K
from deltalearn.study.bench import _cpu as cpu_model  # the bench file names the CPU the same way

FRACTIONS = (0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)
OUT = Path(__file__).resolve().parents[2] / "deltalearn" / "data" / "bench" / "crossover.json"


def engine(net, obs, threshold, crossover):
    d = dl.DeltaNetwork(net, threshold, backend="sparse", crossover=crossover)
    d(obs)
    return d._engine.fused


def layer_step(f, l: int, x: np.ndarray) -> None:
    """Run layer ``l`` alone through the engine's compiled step (and its dense fallback if chosen)."""
    meta = f.meta[:l + 1]
    stop = K.fused_step(x, f.scale, f.has_scale, meta, f.th, f.cross, f.W, f.taps, f.POS, f.FAN, f.BIAS, f.Z, f.XR,
                        np.zeros(1, dtype=bool), True, l, f.over, f.idx, f.val, f.n_sent, f.dz, f.touched, f.counts, f.pover,
                        f.u8 and l == 0, f.prev, f.dirty)
    if stop == l:
        f._dense_delta(l)


def crossover(scatter: list[float], fallback: list[float]) -> float | None:
    """Where the scatter stops paying for good: midway between the last share at which it wins and
    the share after it, when it loses at every larger share (``None``: it wins at every share)."""
    lose = [s > d for s, d in zip(scatter, fallback)]
    if not lose[-1]:
        return None
    k = len(lose) - 1
    while k > 0 and lose[k - 1]:
        k -= 1
    return FRACTIONS[0] / 2 if k == 0 else round((FRACTIONS[k - 1] + FRACTIONS[k]) / 2, 4)


def measure(net, threshold: float, reps: int, rng) -> list[dict]:
    obs = torch.zeros(1, *net.input_shape, dtype=torch.uint8)
    variants = {"scatter": engine(net, obs, threshold, 1.0), "dense_fallback": engine(net, obs, threshold, 0.0)}
    for f in variants.values():
        f.cross[:] = 1.0 if f is variants["scatter"] else -1.0  # -1: fall back even when nothing is sent
    chain = dl.core.trace_chain(net)
    shapes = chain.input_shapes(obs)
    rows = []
    for l, (name, m, shape) in enumerate(zip(chain.names, chain.weights, shapes)):
        mt = variants["scatter"].meta[l]
        n, p0 = int(mt[K.N]), int(variants["scatter"].meta[l - 1, K.Z_OFF]) if l else 0
        xin = torch.rand(1, *shape)
        with torch.no_grad():
            t = [time.perf_counter(), m(xin), time.perf_counter()]
            dense_layer = []
            for _ in range(50):
                t0 = time.perf_counter()
                m(xin)
                dense_layer.append(time.perf_counter() - t0)
        row = {"name": name, "kind": "conv" if isinstance(m, torch.nn.Conv2d) else "linear", "inputs": n,
               "outputs": int(mt[K.ZSIZE]), "dense_layer_us": round(statistics.median(dense_layer) * 1e6, 2),
               "scatter_us": [], "dense_fallback_us": []}
        for frac in FRACTIONS:
            x = rng.integers(0, 200, size=(1, n)).astype(np.uint8) if l == 0 else rng.random((1, n), np.float32)
            for f in variants.values():
                f.XR[0, int(mt[K.X_OFF]):int(mt[K.X_OFF]) + n] = x[0] * (f.scale if f.has_scale else 1)
                if l == 0 and f.u8:  # the frame the references stand for, exactly: nothing left to re-send
                    f.prev[0], f.dirty[0] = x[0], 0
            times = {k: [] for k in variants}
            for _ in range(reps):
                move = rng.random(n) < frac
                if l == 0:
                    x = x + move.astype(np.uint8)
                else:
                    x = x + np.float32(0.01) * move.astype(np.float32)
                for k, f in variants.items():
                    if l:
                        f.Z[0, p0:p0 + n] = x[0]
                    t0 = time.perf_counter()
                    layer_step(f, l, x)
                    times[k].append(time.perf_counter() - t0)
            for k in variants:
                row[f"{k}_us"].append(round(statistics.median(times[k]) * 1e6, 2))
        row["crossover"] = crossover(row["scatter_us"], row["dense_fallback_us"])
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agent", default="Breakout-pruned-0.79")
    p.add_argument("--threshold", type=float, default=0.001)
    p.add_argument("--reps", type=int, default=300)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args()
    torch.set_num_threads(1)
    net = dl.load_agent(a.agent).eval()
    rows = measure(net, a.threshold, a.reps, np.random.default_rng(0))
    obs = torch.as_tensor(dl.load_trajectory(a.agent.split("-pruned")[0])["observations"][:50])
    with torch.no_grad():
        for x in obs:
            net(x[None])
        dense = []
        for x in obs:
            t0 = time.perf_counter()
            net(x[None])
            dense.append(time.perf_counter() - t0)
    root = Path(__file__).resolve().parents[2]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    out = {"agent": a.agent, "threshold": a.threshold, "reps": a.reps, "batch": 1, "threads": 1,
           "fractions": list(FRACTIONS), "layers": rows,
           "dense_forward_us": round(statistics.median(dense) * 1e6, 2),
           "machine": {"processor": platform.processor(), "cpu_model": cpu_model(), "cpus": os.cpu_count(),
                       "load_average": [round(v, 2) for v in os.getloadavg()]},
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "commit": commit,
           "versions": {"numba": numba.__version__, "torch": torch.__version__, "numpy": np.__version__,
                        "python": platform.python_version()}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{a.agent}: us per step of one layer, scatter / dense fallback, by share sent -> {a.out}")
    print("| layer | " + " | ".join(f"{f:g}" for f in FRACTIONS) + " | crossover |")
    print("|---" * (len(FRACTIONS) + 2) + "|")
    for r in rows:
        cells = " | ".join(f"{s:.0f} / {d:.0f}" for s, d in zip(r["scatter_us"], r["dense_fallback_us"]))
        print(f"| {r['name']} | {cells} | {r['crossover']} |")


if __name__ == "__main__":
    main()
