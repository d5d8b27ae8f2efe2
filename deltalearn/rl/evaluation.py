"""Play seeded episodes with a dense, pruned, delta or pruned+delta agent, and count.

Episode ``i`` of an evaluation with seed ``s`` always uses environment seed ``s + i`` and
its own exploration RNG, so a dense and an optimized agent evaluated with the same seed
meet the same games (a paired comparison), however many episodes run side by side.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.chain import trace_chain
from ..core.counting import MultiplicationReport, input_fanouts
from ..core.nets import plain_copy
from ..core.variants import Policy, Variant, as_variant
from .envs import check_actions, example_observation, hns, is_atari, make_env

__all__ = ["evaluate", "EvalResult", "replay", "ReplayResult", "default_epsilon", "record_trajectory", "BACKENDS",
           "check_backend", "reusing_envs"]

BACKENDS: tuple[str, ...] = ("dense", "sparse")
"""How a delta network's updates run: ``dense`` (torch conv2d/linear on the whole delta, the reference)
or ``sparse`` (compiled kernels whose work grows with the changes sent); both give the same decisions
and counts (chapter "Does it run faster?")."""


def check_backend(backend: str) -> str:
    """Validate a delta-network backend name (one of :data:`BACKENDS`)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    return backend


class _FanoutCounted:
    """A network without a delta network, run as :func:`~deltalearn.core.counting.forward_with_counts`
    runs it, with the same significant products counted another way.

    A layer's significant products are the sum, over its non-zero inputs, of the non-zero weights
    each input meets over all outputs (its fan-out). The fan-outs are fixed per network, so counting
    is one dot product per layer instead of a second convolution on 0/1 masks, which cost about as
    much as the layer itself. Both sums are exact integers (float64 below 2**53), so the counts are
    equal, and the forward is the same chain of the same layers, so the Q-values are bit-identical.
    """

    def __init__(self, net: nn.Module, example: torch.Tensor) -> None:
        self.chain = trace_chain(net)
        self.fanouts = [input_fanouts(m, shape).flatten().to(torch.float64) for m, shape in
                        zip(self.chain.weights, self.chain.input_shapes(torch.as_tensor(example)))]

    def __call__(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Q-values (batch, actions) and significant products int64 (batch, layers)."""
        counts: list[torch.Tensor] = []

        def count(k: int, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
            counts.append((x != 0).flatten(1).to(torch.float64) @ self.fanouts[k])
            return m(x)

        with torch.no_grad():
            out = self.chain.run(torch.as_tensor(obs), count)
        return out, torch.stack(counts, dim=1).round().to(torch.int64)



def _stepper(pol: Policy, example: torch.Tensor) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """What a decision calls: the policy itself with a delta network, else its counted dense forward."""
    return pol if pol.delta is not None else _FanoutCounted(pol.net, example)


_POOL: dict[str, list[Any]] | None = None
"""Idle environments by game while :func:`reusing_envs` is active; ``None`` outside it."""


@contextmanager
def reusing_envs() -> Iterator[None]:
    """Within this block, an evaluation hands its environments to the next evaluation of the same game.

    Building an Atari environment costs about 0.1 s, and a table plays five evaluations of eight.
    Reusing one changes nothing that is played: every episode starts with ``reset(seed=...)``, which
    reseeds the environment and reloads the game (an evaluation already reuses its environments from
    one episode to the next). An evaluation cut short closes its own. Every kept one is closed when
    the block ends; blocks nest (the outermost one keeps the environments).
    """
    global _POOL
    if _POOL is not None:
        yield
        return
    _POOL = {}
    try:
        yield
    finally:
        pool, _POOL = _POOL, None
        for envs in pool.values():
            _close(envs)


def _borrow_envs(env: str, n: int) -> list[Any]:
    """``n`` environments of ``env``: idle ones first (inside :func:`reusing_envs`), new ones for the rest."""
    idle = [] if _POOL is None else _POOL.get(env, [])
    out = [idle.pop() for _ in range(min(n, len(idle)))]
    return out + [make_env(env) for _ in range(n - len(out))]


def _give_back(env: str, envs: list[Any]) -> None:
    """A finished evaluation's environments: kept for the next inside :func:`reusing_envs`, else closed."""
    if _POOL is None:
        _close(envs)
    else:
        _POOL.setdefault(env, []).extend(envs)


def _close(envs: list[Any]) -> None:
    for e in envs:
        e.close()


def default_epsilon(env: str) -> float:
    """0.05 for Atari (Nature DQN's evaluation), 0 (greedy) for CartPole."""
    return 0.05 if is_atari(env) else 0.0


@dataclass
class EvalResult:
    """Scores and multiplication counts of an evaluation."""

    env: str
    variant: Variant
    """What was played: ``variant.name`` is ``dense``, ``pruned``, ``delta`` or ``pruned+delta``."""
    seed: int
    epsilon: float
    scores: list[float]
    lengths: list[int]
    report: MultiplicationReport
    actions: list[np.ndarray] = field(default_factory=list, repr=False)
    observations: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def mean_score(self) -> float:
        return float(np.mean(self.scores))

    @property
    def std_score(self) -> float:
        return float(np.std(self.scores))

    @property
    def hns(self) -> float | None:
        return hns(self.env, self.mean_score) if is_atari(self.env) else None

    def record(self, lengths: bool = False) -> dict[str, Any]:
        """What an agent's manifest keeps of an evaluation: its seeds, scores and their summary
        (with ``lengths``, each episode's number of decisions too)."""
        d = self.to_dict()
        keys = ("episodes", "seed", "epsilon", "scores") + (("lengths",) if lengths else ()) + (
            "mean_score", "std_score") + (("hns",) if "hns" in d else ())
        return {k: d[k] for k in keys}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"env": self.env, "variant": self.variant.name, "seed": self.seed,
                             "epsilon": self.epsilon, "episodes": len(self.scores),
                             "scores": [float(s) for s in self.scores], "lengths": self.lengths,
                             "mean_score": self.mean_score, "std_score": self.std_score}
        if self.hns is not None:
            d["hns"] = self.hns
        rep = self.report.to_dict()
        d.update({k: rep[k] for k in ("steps", "layers", "total_dense", "total_significant", "reduction")})
        return d


def evaluate(net: nn.Module, env: str, episodes: int = 10, seed: int = 0, variant: Variant | None = None, *,
             sparsity: float | None = None, threshold: float | Sequence[float] | None = None,
             epsilon: float | None = None, parallel: int = 8, record: bool = False, progress: bool = False,
             max_steps: int | None = None, backend: str = "dense") -> EvalResult:
    """Play ``episodes`` seeded episodes of ``net`` as ``variant`` and count every decision's multiplications.

    ``variant`` (a :class:`~deltalearn.core.variants.Variant`, dense by default) says what runs;
    ``sparsity=`` and ``threshold=`` are shorthand for ``Variant(sparsity, threshold)``, and giving
    both forms is an error. ``net`` is any supported Q-network (it is copied, never changed).
    ``epsilon`` defaults to :func:`default_epsilon`. ``record=True`` keeps every episode's
    observations and actions (for replays). ``max_steps`` caps an episode's length. ``backend``
    runs a delta variant's updates with dense torch layers (``"dense"``, the reference) or the sparse
    engine (``"sparse"``, faster on the CPU, same decisions and counts): see :data:`BACKENDS`.
    Raises ValueError before any frame is played if the network's outputs are not the game's
    actions; a KeyboardInterrupt comes out saying how many episodes had finished.
    """
    variant = as_variant(variant, sparsity=sparsity, threshold=threshold, where="evaluate")
    check_backend(backend)
    check_actions(net, env)
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    eps = default_epsilon(env) if epsilon is None else float(epsilon)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    example = torch.as_tensor(example_observation(env))[None]
    pol = Policy(net, variant, example_input=example, backend=backend)
    run = _stepper(pol, example)
    device = next(pol.net.parameters()).device
    n_slots = max(1, min(parallel, episodes))
    envs = _borrow_envs(env, n_slots)
    slot_ep = [-1] * n_slots
    obs_now: list[np.ndarray | None] = [None] * n_slots
    rngs: list[np.random.Generator | None] = [None] * n_slots
    scores = [0.0] * episodes
    lengths = [0] * episodes
    counts: list[list[np.ndarray]] = [[] for _ in range(episodes)]
    rec_obs: list[list[np.ndarray]] = [[] for _ in range(episodes)]
    rec_act: list[list[int]] = [[] for _ in range(episodes)]
    next_ep = finished = 0
    shape = envs[0].observation_space.shape
    pol.reset()
    bar = tqdm(total=episodes, desc=f"{env} {variant.name}", disable=not progress, unit="ep")

    def start(slot: int) -> None:
        nonlocal next_ep
        if next_ep >= episodes:
            slot_ep[slot] = -1
            return
        ep = next_ep
        next_ep += 1
        slot_ep[slot] = ep
        o, _ = envs[slot].reset(seed=seed + ep)
        obs_now[slot] = np.asarray(o)
        rngs[slot] = np.random.default_rng([seed, ep, 7])
        pol.reset([slot])

    played = False
    try:
        for s in range(n_slots):
            start(s)
        while any(e >= 0 for e in slot_ep):
            batch = np.stack([o if slot_ep[i] >= 0 else np.zeros(shape, envs[0].observation_space.dtype)
                              for i, o in enumerate(obs_now)])
            with torch.no_grad():
                q, c = run(torch.as_tensor(batch, device=device))
            greedy = q.argmax(dim=1).cpu().numpy()
            c = c.cpu().numpy().copy()  # a copy, not a view of a torch tensor: see replay()
            for i in range(n_slots):
                ep = slot_ep[i]
                if ep < 0:
                    continue
                rng = rngs[i]
                a = int(rng.integers(envs[i].action_space.n)) if rng.random() < eps else int(greedy[i])
                if record:
                    rec_obs[ep].append(obs_now[i])
                    rec_act[ep].append(a)
                counts[ep].append(c[i])
                o, r, term, trunc, _ = envs[i].step(a)
                scores[ep] += float(r)
                lengths[ep] += 1
                obs_now[i] = np.asarray(o)
                if term or trunc or (max_steps is not None and lengths[ep] >= max_steps):
                    finished += 1
                    bar.update(1)
                    start(i)
        played = True
    except KeyboardInterrupt as e:  # say how far it got, so a caller can tell the user
        raise KeyboardInterrupt(f"after {finished} of {episodes} episodes") from e
    finally:
        bar.close()
        if played:
            _give_back(env, envs)
        else:  # an evaluation cut short may leave an env mid-step: only a finished one's are kept
            _close(envs)
    per_step = np.concatenate([np.stack(c) for c in counts])
    report = MultiplicationReport.from_counts(pol.names, pol.dense_per_step, per_step, label=pol.label)
    return EvalResult(env, variant, seed, eps, scores, lengths, report,
                      actions=[np.array(a) for a in rec_act] if record else [],
                      observations=[np.stack(o) for o in rec_obs] if record else [])


@dataclass
class ReplayResult:
    """A recorded trajectory replayed through an optimized network."""

    actions: np.ndarray
    reference_actions: np.ndarray
    report: MultiplicationReport
    q_values: np.ndarray = field(repr=False)
    variant: Variant = field(default_factory=Variant)
    """What was replayed (dense unless told otherwise)."""

    @property
    def agreement(self) -> float:
        """Fraction of steps where the optimized network picks the reference action."""
        return float(np.mean(self.actions == self.reference_actions))


def replay(net: nn.Module, observations: np.ndarray, variant: Variant | None = None, *,
           sparsity: float | None = None, threshold: float | Sequence[float] | None = None,
           batch: int = 256, reference: nn.Module | np.ndarray | None = None, backend: str = "dense") -> ReplayResult:
    """Feed one recorded episode (steps, *obs_shape) through ``net`` as ``variant``; compare its
    greedy actions with a reference. Open loop: a cheap proxy for closed-loop scores.

    ``variant`` and the ``sparsity=``/``threshold=`` shorthand work as in :func:`evaluate`.
    ``reference`` is the network (or the array of actions) to agree with; by default ``net``
    itself, which is the dense agent unless ``net`` was already pruned or fine-tuned. ``backend``
    is the delta network's, as in :func:`evaluate`.
    """
    variant = as_variant(variant, sparsity=sparsity, threshold=threshold, where="replay")
    check_backend(backend)
    obs = torch.as_tensor(np.asarray(observations))
    if obs.ndim < 2 or len(obs) == 0:
        raise ValueError(f"observations must be one episode of shape (steps, *obs_shape) with steps >= 1, "
                         f"got shape {tuple(obs.shape)}")
    if isinstance(reference, np.ndarray):
        if reference.shape != (len(obs),):
            raise ValueError(f"reference actions have shape {reference.shape}; expected ({len(obs)},)")
        ref = reference
    else:
        dense = plain_copy(net if reference is None else reference)
        with torch.no_grad():
            ref = torch.cat([dense(obs[i:i + batch]) for i in range(0, len(obs), batch)]).argmax(1).numpy()
    pol = Policy(net, variant, example_input=obs[:1], backend=backend)
    run = _stepper(pol, obs[:1])
    qs, cs = [], []
    # a delta network steps one decision at a time, a dense one takes whole batches
    step = 1 if pol.delta is not None else batch
    for i in range(0, len(obs), step):
        q, c = run(obs[i:i + step])
        # numpy copies: thousands of tiny torch tensors kept across steps pin the allocator's
        # heap between each step's large temporaries (memory grew ~100 KB per decision)
        qs.append(q.numpy().copy())
        cs.append(c.numpy().copy())
    q = np.concatenate(qs)
    report = MultiplicationReport.from_counts(pol.names, pol.dense_per_step, np.concatenate(cs), label=pol.label)
    return ReplayResult(q.argmax(1), ref, report, q, variant)


def record_trajectory(net: nn.Module, env: str, seed: int = 0, epsilon: float | None = None,
                      max_steps: int | None = None) -> dict[str, np.ndarray]:
    """Play one seeded episode of the dense ``net`` and return its observations, actions and score."""
    res = evaluate(net, env, episodes=1, seed=seed, epsilon=epsilon, record=True, max_steps=max_steps)
    return {"observations": res.observations[0], "actions": res.actions[0],
            "score": np.array(res.scores[0]), "seed": np.array(seed)}
