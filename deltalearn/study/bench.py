"""Wall-clock time per decision: dense torch against the delta network's two backends.

Counting multiplications says how much work a decision *could* skip; :func:`bench` says how much
time it does. It replays a game's recorded episode (:func:`~deltalearn.store.load_trajectory`)
through the best dense torch forward, the dense-backed delta network and the sparse engine
(``DeltaNetwork(..., backend="sparse")``, with and without counting), on one thread, interleaving
the variants in rounds so that load on a shared machine hits them all alike, and reports the median
milliseconds per decision. It also checks that the sparse engine decides as the dense-backed
reference does. :func:`write_bench` times a fixed suite (every game at its table setting, a batch
of four, a threshold sweep) into the committed file that :func:`load_bench` reads, with the machine
and the commit that were measured.
"""
from __future__ import annotations

import copy
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core.counting import counts_close, dense_counts, layer_names
from ..core.delta import DeltaNetwork, check_threshold
from ..core.sparse_delta import CROSSOVER_FILE
from ..store.agents import agent_names, agent_record, load_agent
from ..store.checkpoint import atomic_write
from ..store.trajectories import DATA_DIR, load_trajectory, trajectory_names
from .pruned_agents import agent_at
from .settings import SIX_GAMES, table_setting

__all__ = ["BENCH_FILE", "VARIANTS", "BenchResult", "bench", "bench_suite", "write_bench", "load_bench", "load_crossover"]

BENCH_FILE = DATA_DIR / "bench" / "bench.json"
"""The committed benchmark file: :func:`write_bench` writes it, :func:`load_bench` reads it."""

VARIANTS: dict[str, str] = {
    "dense": "dense torch",
    "dense_best": "dense torch, inference_mode + channels_last",
    "delta_dense": "dense-backed delta, count=False",
    "sparse": "sparse delta, count=False",
    "sparse_count": "sparse delta, count=True",
}
"""What :func:`bench` times, by key: the keys of :attr:`BenchResult.ms`, with a label each."""

NEAR_TIE = 1e-3
"""A disagreement is a near-tie when the reference's Q-values of the two actions differ by at most this."""


@dataclass
class BenchResult:
    """One :func:`bench` run: median ms per decision per variant, and how the sparse engine agrees."""

    game: str
    agent: str
    """The shipped agent's name (or ``<game> pruned one-shot to <s>`` when none ships at that sparsity)."""
    threshold: float | list[float]
    batch: int
    steps: int
    """Steps of the episode replayed per round; each step makes ``batch`` decisions."""
    rounds: int
    ms: dict[str, float]
    """Median over rounds of milliseconds per decision, by :data:`VARIANTS` key."""
    agreement: float
    """Share of decisions where the sparse engine's greedy action equals the dense-backed delta network's."""
    disagreements: int
    near_ties: bool
    """Whether every disagreement is a near-tie (:data:`NEAR_TIE`) in the reference's Q-values."""
    max_abs_dq: float
    """Largest |Q_sparse - Q_dense-backed| over every decision and action."""
    counts_close: bool
    """Whether the sparse engine's per-layer counts over the run pass :func:`~deltalearn.counts_close`
    against the dense-backed path's."""
    mults_per_decision: float
    """Significant products per decision (the sparse engine's counts)."""
    dense_mults_per_decision: int
    """Products per decision of the dense network."""
    layers: list[str]
    sent_fraction: list[float]
    """Per weight layer, the share of its inputs sent as non-zero changes (the dense-backed path's masks,
    over all decisions; the first is a dense pass, in which an input that is zero sends nothing)."""
    load_average: float = float("nan")
    """The machine's one-minute load average when the run ended (a shared machine's noise)."""
    round_ms: dict[str, list[float]] = field(default_factory=dict, repr=False)
    """Every round's ms per decision, by variant."""

    @property
    def best_dense_ms(self) -> float:
        """The faster of the two dense torch forwards."""
        return min(self.ms["dense"], self.ms["dense_best"])

    @property
    def speedup(self) -> dict[str, float]:
        """Per variant, the best dense forward's time over its time (above 1: faster than dense)."""
        return {k: self.best_dense_ms / v for k, v in self.ms.items()}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values, with ``best_dense_ms`` and ``speedup`` included."""
        d = asdict(self)
        d["best_dense_ms"] = self.best_dense_ms
        d["speedup"] = self.speedup
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchResult":
        """The inverse of :meth:`to_dict` (derived and unknown keys are dropped)."""
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})

    def table(self) -> str:
        """A markdown table of the medians and their ratio to the best dense forward."""
        lines = ["| variant | ms per decision | vs best dense |", "|---|---|---|"]
        lines += [f"| {VARIANTS[k]} | {v:.3f} | {self.speedup[k]:.2f}x |" for k, v in self.ms.items()]
        return "\n".join(lines)


def _resolve(game: str, agent: str | None, threshold: Any) -> tuple[torch.nn.Module, str, float | list[float]]:
    """The network, its name and the threshold a bench runs, with every input checked."""
    games = trajectory_names()
    if game not in games:
        raise ValueError(f"no recorded episode for game {game!r}; games with one: {', '.join(games)}")
    if agent is None or threshold is None:
        try:
            s, t = table_setting(game)
        except ValueError:
            if threshold is None:
                raise ValueError(f"{game} has no table setting: give a threshold (e.g. 0.001)") from None
            s, t = 0.0, threshold
    if agent is None:
        at = agent_at(game, s)
        net, agent = at.net, at.name or f"{game} pruned one-shot to {s:g}"
    else:
        names = agent_names()
        mine = [n for n in names if agent_record(n).get("env", n) == game]
        if agent not in mine:
            raise ValueError(f"agent {agent!r} is not a shipped agent of {game}; {game}'s agents: "
                             f"{', '.join(mine) or 'none'}")
        net = load_agent(agent)
    th = t if threshold is None else threshold
    if isinstance(th, (list, tuple)):
        th = [check_threshold(x) for x in th]
        if len(th) != len(layer_names(net)):
            raise ValueError(f"got {len(th)} thresholds for {len(layer_names(net))} weight layers "
                             f"({', '.join(layer_names(net))})")
    else:
        th = check_threshold(th)
    return net.eval(), agent, th


def _streams(obs: torch.Tensor, batch: int, steps: int | None) -> list[torch.Tensor]:
    """Per step, a batch of ``batch`` streams: stream j starts j*L/batch steps into the episode of
    length L and wraps around to its start, so each stream replays the whole episode."""
    n = len(obs)
    if not isinstance(batch, (int, np.integer)) or isinstance(batch, bool) or not 1 <= batch <= n:
        raise ValueError(f"batch must be a whole number from 1 to the episode's {n} steps, got {batch!r}")
    if steps is None:
        steps = n
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or not 1 <= steps <= n:
        raise ValueError(f"steps must be a whole number from 1 to the episode's {n} steps (or None: all), "
                         f"got {steps!r}")
    if batch == 1:
        return [obs[t:t + 1] for t in range(steps)]
    offsets = torch.arange(batch) * (n // batch)
    return [obs[(t + offsets) % n] for t in range(steps)]


def _runners(net: torch.nn.Module, threshold: Any, steps: list[torch.Tensor]) -> dict[str, Callable[[], None]]:
    """One closure per variant that replays every step once; delta networks are built here, not timed."""
    image = steps[0].ndim == 4
    net_cl = copy.deepcopy(net).eval()  # its own copy: the layout change must not reach ``net``
    if image:
        net_cl = net_cl.to(memory_format=torch.channels_last)
    deltas = {k: DeltaNetwork(net, threshold, backend=b) for k, b in
              (("delta_dense", "dense"), ("sparse", "sparse"), ("sparse_count", "sparse"))}

    def dense() -> None:
        with torch.no_grad():
            for x in steps:
                net(x)

    def dense_best() -> None:
        with torch.inference_mode():
            for x in steps:
                net_cl(x.contiguous(memory_format=torch.channels_last) if image else x)

    def delta(key: str, count: bool) -> Callable[[], None]:
        d = deltas[key]

        def run() -> None:
            d.reset()
            for x in steps:
                d(x, count=count)
        return run

    return {"dense": dense, "dense_best": dense_best, "delta_dense": delta("delta_dense", False),
            "sparse": delta("sparse", False),
            "sparse_count": delta("sparse_count", True)}


def _check(net: torch.nn.Module, threshold: Any, steps: list[torch.Tensor]) -> dict[str, Any]:
    """The sparse engine against the dense-backed delta network on the same steps, with counts."""
    ref = DeltaNetwork(net, threshold, backend="dense")
    sp = DeltaNetwork(net, threshold, backend="sparse")
    q_ref, q_sp, c_ref, c_sp = [], [], [], []
    sent = np.zeros(len(ref.names))
    inputs = np.zeros(len(ref.names))
    for x in steps:
        q_ref.append(ref(x).numpy().copy())
        q_sp.append(sp(x).numpy().copy())
        c_ref.append(ref.last_counts.numpy().copy())
        c_sp.append(sp.last_counts.numpy().copy())
        for k, m in enumerate(ref.last_sent):
            sent[k] += float(m.sum())
            inputs[k] += m.numel()
    qr, qs = np.concatenate(q_ref), np.concatenate(q_sp)
    ar, as_ = qr.argmax(1), qs.argmax(1)
    rows = np.flatnonzero(ar != as_)
    gaps = qr[rows, ar[rows]] - qr[rows, as_[rows]]
    cr, cs = np.concatenate(c_ref).sum(0), np.concatenate(c_sp).sum(0)
    return {"agreement": float(np.mean(ar == as_)), "disagreements": int(len(rows)),
            "near_ties": bool(np.all(gaps <= NEAR_TIE)), "max_abs_dq": float(np.abs(qr - qs).max()),
            "counts_close": bool(counts_close([int(v) for v in cs], [int(v) for v in cr])),
            "mults_per_decision": float(cs.sum() / len(qs)),
            "dense_mults_per_decision": int(sum(dense_counts(net, steps[0][:1]))),
            "layers": list(ref.names), "sent_fraction": [float(v) for v in sent / inputs]}


def _one_thread() -> Callable[[], None]:
    """Run torch on one thread; returns what puts torch's setting back.

    The sparse engine's numba kernels are serial (no ``parallel=True``), so numba needs no setting,
    and none is made: launching numba's thread pool (``numba.set_num_threads``) leaves threads that
    slowed every torch op here 15x. Should a kernel go parallel, ``NUMBA_NUM_THREADS=1`` (set here
    when numba is not yet imported) keeps it on one thread.
    """
    import sys

    if "numba" not in sys.modules:
        os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    return lambda: torch.set_num_threads(before)


def bench(game: str, agent: str | None = None, threshold: float | Sequence[float] | None = None, batch: int = 1,
          rounds: int = 7, steps: int | None = None, progress: bool = False) -> BenchResult:
    """Time one agent's decisions on ``game``'s recorded episode: dense torch against the delta backends.

    ``agent`` (a shipped agent of ``game``) and ``threshold`` default to the game's table setting
    (:func:`~deltalearn.study.table_setting`; a game without one needs a threshold). ``batch``
    streams run side by side, as in a vector env: stream j is the episode started j/batch of the
    way in, wrapping around. ``steps`` replays that many steps (default: the whole episode) per
    round; each of ``rounds`` rounds times every :data:`VARIANTS` entry once, in a rotating order,
    on one thread. The medians are in ms per decision (a step of ``batch`` streams makes ``batch``
    decisions). Then one more pass compares the sparse engine with the dense-backed delta network
    (greedy actions, Q-values, counts). ``progress`` shows a bar over the rounds on stderr.
    """
    if not isinstance(rounds, (int, np.integer)) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"rounds must be a whole number >= 1, got {rounds!r}")
    net, name, th = _resolve(game, agent, threshold)
    obs = torch.as_tensor(load_trajectory(game)["observations"])
    xs = _streams(obs, batch, steps)
    restore = _one_thread()
    try:
        runners = _runners(net, th, xs)
        for run in runners.values():  # warm up: compiled kernels, caches, the allocator
            run()
        keys = list(runners)
        times: dict[str, list[float]] = {k: [] for k in keys}
        # no collection inside a timed run; the collector's pass over numba's many objects took seconds,
        # so they are frozen out of it first
        gc.collect()
        gc.freeze()
        for r in tqdm(range(rounds), desc=f"bench {game} batch {batch}", unit="round", disable=not progress):
            for k in keys[r % len(keys):] + keys[: r % len(keys)]:  # rotate: no variant always follows another
                gc.disable()
                try:
                    t0 = time.perf_counter()
                    runners[k]()
                    times[k].append((time.perf_counter() - t0) * 1e3 / (len(xs) * batch))
                finally:
                    gc.enable()
        check = _check(net, th, xs)
    finally:
        gc.unfreeze()
        restore()
    return BenchResult(game, name, th, int(batch), len(xs), int(rounds),
                       {k: statistics.median(v) for k, v in times.items()}, **check,
                       load_average=os.getloadavg()[0], round_ms=times)


# --- the committed benchmark file ----------------------------------------------------------------

SWEEP_GAMES: tuple[str, ...] = ("Breakout", "SpaceInvaders")
SWEEP_BENCH_THRESHOLDS: tuple[float, ...] = (0.0, 0.001, 0.003, 0.01, 0.03)


def bench_suite() -> list[dict[str, Any]]:
    """The runs of the committed file, as :func:`bench` keyword arguments: every one of the paper's
    six games at its table setting (batch 1), Breakout at batch 4, and Breakout and SpaceInvaders
    at thresholds 0 to 0.03 (each game's table agent), so time can be read against work."""
    out = [{"game": g, "batch": 1} for g in SIX_GAMES if g in trajectory_names()]
    out.append({"game": "Breakout", "batch": 4})
    for g in SWEEP_GAMES:
        out += [{"game": g, "batch": 1, "threshold": t} for t in SWEEP_BENCH_THRESHOLDS if t != table_setting(g)[1]]
    return out


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _provenance() -> dict[str, Any]:
    """What was measured where: the machine, the date, the commit, the versions.

    Taken before the first run, with the sparse engine imported then, so the commit and the flag of
    uncommitted engine changes describe the code that ran (a file edited later is not re-imported).
    """
    import numba

    from ..core import sparse_delta  # noqa: F401 - imported now, so the code measured is the code of now

    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--", str(Path(__file__).resolve().parents[1] / "core"))
    return {"cpu": _cpu(), "cores": os.cpu_count(), "threads": 1,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit, "engine_uncommitted_changes": bool(dirty),
            "torch": torch.__version__, "numba": numba.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _key(d: dict[str, Any]) -> tuple:
    th = d["threshold"]
    return d["game"], d["agent"], tuple(th) if isinstance(th, list) else float(th), int(d["batch"])


def write_bench(path: str | os.PathLike | None = None, runs: Sequence[dict[str, Any]] | None = None, *,
                rounds: int = 7, steps: int | None = None, keep: bool = False,
                games: Sequence[str] | None = None, progress: bool = True) -> Path:
    """Time ``runs`` (default :func:`bench_suite`) and write them to ``path`` (default
    :data:`BENCH_FILE`) with the machine, date, commit and versions of each run.

    The file is rewritten after every run, atomically, so an interrupted regeneration leaves a
    valid file. ``keep=True`` keeps the runs already in the file that this call does not repeat
    (to re-time a few pieces only); ``games`` keeps only the runs of those games. Each run records
    its own date and commit.
    """
    path = Path(path) if path is not None else BENCH_FILE
    runs = list(bench_suite() if runs is None else runs)
    if games is not None:
        unknown = sorted(set(games) - {r["game"] for r in runs})
        if unknown:
            raise ValueError(f"no run of {', '.join(unknown)} in the suite; its games: "
                             f"{', '.join(dict.fromkeys(r['game'] for r in runs))}")
        runs = [r for r in runs if r["game"] in games]
    done: dict[tuple, dict[str, Any]] = {}
    if keep and path.exists():
        done = {_key(d): d for d in json.loads(path.read_text())["runs"]}
    prov = _provenance()
    bar = tqdm(runs, desc="bench suite", unit="run", disable=not progress)
    for kw in bar:
        bar.set_postfix_str(f"{kw['game']} batch {kw.get('batch', 1)} threshold {kw.get('threshold', 'table')}")
        res = bench(rounds=rounds, steps=steps, **kw)
        d = {**res.to_dict(), **{k: prov[k] for k in ("commit", "engine_uncommitted_changes")},
             "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        done[_key(d)] = d
        data = {**prov, "runs": list(done.values())}
        text = json.dumps(data, indent=1) + "\n"
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def load_bench(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The committed benchmark file (or the one at ``path``) as one row per run.

    Columns: ``game``, ``agent``, ``threshold`` (a float, or a tuple per layer), ``batch``,
    ``steps``, ``rounds``; ``ms_<variant>`` and ``speedup_<variant>`` for each :data:`VARIANTS`
    key (speed-up = the best dense forward's time over the variant's); ``best_dense_ms``;
    ``agreement``, ``disagreements``, ``near_ties``, ``max_abs_dq``, ``counts_close``;
    ``mults_per_decision``, ``dense_mults_per_decision``, ``reduction`` (their ratio);
    ``sent_<layer>`` per weight layer; ``load_average``, ``date``, ``commit``,
    ``engine_uncommitted_changes`` (the commit's engine was edited when measured). ``attrs`` holds the
    file's machine and versions (``cpu``, ``cores``, ``threads``, ``torch``, ``numba``, ...).
    """
    path = Path(path) if path is not None else BENCH_FILE
    if not path.is_file():
        raise ValueError(f"no benchmark file at {path}: `deltalearn bench --all --out {path}` writes one")
    data = json.loads(path.read_text())
    rows = []
    for d in data["runs"]:
        th = d["threshold"]
        row = {"game": d["game"], "agent": d["agent"], "threshold": tuple(th) if isinstance(th, list) else th,
               "batch": d["batch"], "steps": d["steps"], "rounds": d["rounds"]}
        row.update({f"ms_{k}": v for k, v in d["ms"].items()})
        row.update({f"speedup_{k}": v for k, v in d["speedup"].items()})
        row["best_dense_ms"] = d["best_dense_ms"]
        row.update({k: d[k] for k in ("agreement", "disagreements", "near_ties", "max_abs_dq", "counts_close",
                                      "mults_per_decision", "dense_mults_per_decision")})
        row["reduction"] = d["dense_mults_per_decision"] / max(d["mults_per_decision"], 1e-12)
        row.update({f"sent_{n}": s for n, s in zip(d["layers"], d["sent_fraction"])})
        row.update({k: d.get(k) for k in ("load_average", "date", "commit", "engine_uncommitted_changes")})
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs.update({k: v for k, v in data.items() if k != "runs"})
    return df


def load_crossover(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The committed crossover measurement (``book/scripts/sparse_crossover.py``) as one row per layer.

    Index: the layer's name. Columns: ``kind``, ``inputs``, ``outputs``, ``dense_layer_us`` (the plain
    torch layer), ``scatter_us`` and ``dense_fallback_us`` (lists, one time per share sent, in us per
    step), ``crossover`` (the share from which the scatter loses; NaN = never). ``attrs`` holds the
    shares (``fractions``), ``agent``, ``threshold``, ``dense_forward_us``, ``machine``, ``date``,
    ``commit`` and ``versions``, so a chapter can label its plot with where it was measured.
    """
    path = Path(path) if path is not None else CROSSOVER_FILE
    if not path.is_file():
        raise ValueError(f"no crossover file at {path}: book/scripts/sparse_crossover.py --out {path} writes one")
    data = json.loads(path.read_text())
    df = pd.DataFrame(data["layers"]).set_index("name")
    df["crossover"] = df["crossover"].astype(float)
    df.attrs = {k: v for k, v in data.items() if k != "layers"}
    return df
