"""Play seeded episodes with a dense, pruned, delta or pruned+delta agent, and count.

Episode ``i`` of an evaluation with seed ``s`` always uses environment seed ``s + i`` and
its own exploration RNG, so a dense and an optimized agent evaluated with the same seed
meet the same games (a paired comparison), however many episodes run side by side.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.counting import MultiplicationReport, count_forward, dense_counts, layer_names
from ..core.delta import DeltaNetwork
from .envs import check_actions, hns, is_atari, make_env
from ..core.nets import plain_copy
from ..core.pruning import check_sparsity, make_permanent, prune_network

__all__ = ["Policy", "make_policy", "evaluate", "EvalResult", "replay", "ReplayResult", "default_epsilon", "record_trajectory"]


def default_epsilon(env_name: str) -> float:
    """0.05 for Atari (Nature DQN's evaluation), 0 (greedy) for CartPole."""
    return 0.05 if is_atari(env_name) else 0.0


class Policy:
    """Q-values plus multiplication counts for a batch of independent streams.

    Built by :func:`make_policy`; ``variant`` is ``dense``, ``pruned``, ``delta`` or
    ``pruned+delta``.
    """

    def __init__(self, net: nn.Module, sparsity: float = 0.0, threshold: float | Sequence[float] | None = None,
                 scope: str = "layer", drift_free: bool = True) -> None:
        sparsity = check_sparsity(sparsity)
        self.sparsity, self.threshold = sparsity, threshold
        net = plain_copy(net)
        if sparsity > 0:
            prune_network(net, sparsity, scope=scope)
            make_permanent(net)
        self.net = net
        self.delta = None if threshold is None else DeltaNetwork(net, threshold, drift_free=drift_free)
        self.names = layer_names(net)
        self.dense_per_step = dense_counts(net)
        parts = (["pruned"] if sparsity > 0 else []) + (["delta"] if threshold is not None else [])
        self.variant = "+".join(parts) or "dense"

    @property
    def label(self) -> str:
        bits = []
        if self.sparsity > 0:
            bits.append(f"sparsity {self.sparsity:g}")
        if self.threshold is not None:
            bits.append(f"threshold {self.threshold if isinstance(self.threshold, (int, float)) else list(self.threshold)}")
        return self.variant + (f" ({', '.join(bits)})" if bits else "")

    def reset(self, rows: Sequence[int] | None = None) -> None:
        if self.delta is not None:
            self.delta.reset(rows)

    def __call__(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Q-values (batch, actions) and significant products (batch, layers)."""
        if self.delta is not None:
            q = self.delta(obs)
            return q, self.delta.last_counts
        return count_forward(self.net, obs)


def make_policy(net: nn.Module, sparsity: float = 0.0, threshold: float | Sequence[float] | None = None,
                scope: str = "layer") -> Policy:
    """A policy for one of the four variants; ``threshold=None`` means no delta."""
    return Policy(net, sparsity, threshold, scope)


@dataclass
class EvalResult:
    """Scores and multiplication counts of an evaluation."""

    env: str
    variant: str
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
        d: dict[str, Any] = {"env": self.env, "variant": self.variant, "seed": self.seed,
                             "epsilon": self.epsilon, "episodes": len(self.scores),
                             "scores": [float(s) for s in self.scores], "lengths": self.lengths,
                             "mean_score": self.mean_score, "std_score": self.std_score}
        if self.hns is not None:
            d["hns"] = self.hns
        rep = self.report.to_dict()
        d.update({k: rep[k] for k in ("steps", "layers", "total_dense", "total_significant", "reduction")})
        return d


def evaluate(net: nn.Module, env_name: str, episodes: int = 10, seed: int = 0,
             epsilon: float | None = None, sparsity: float = 0.0,
             threshold: float | Sequence[float] | None = None, parallel: int = 8,
             record: bool = False, progress: bool = False, max_steps: int | None = None,
             policy: Policy | None = None) -> EvalResult:
    """Play ``episodes`` seeded episodes and count the multiplications of every decision.

    ``epsilon`` defaults to :func:`default_epsilon`. ``record=True`` keeps every episode's
    observations and actions (for replays). ``max_steps`` caps an episode's length.
    Raises ValueError before any frame is played if the network's outputs are not the game's
    actions; a KeyboardInterrupt comes out saying how many episodes had finished.
    """
    check_actions(policy.net if policy is not None else net, env_name)
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    eps = default_epsilon(env_name) if epsilon is None else float(epsilon)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    pol = policy if policy is not None else Policy(net, sparsity, threshold)
    device = next(pol.net.parameters()).device
    n_slots = max(1, min(parallel, episodes))
    envs = [make_env(env_name) for _ in range(n_slots)]
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
    bar = tqdm(total=episodes, desc=f"{env_name} {pol.variant}", disable=not progress, unit="ep")

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

    for s in range(n_slots):
        start(s)
    try:
        while any(e >= 0 for e in slot_ep):
            batch = np.stack([o if slot_ep[i] >= 0 else np.zeros(shape, envs[0].observation_space.dtype)
                              for i, o in enumerate(obs_now)])
            with torch.no_grad():
                q, c = pol(torch.as_tensor(batch, device=device))
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
    except KeyboardInterrupt as e:  # say how far it got, so a caller can tell the user
        raise KeyboardInterrupt(f"after {finished} of {episodes} episodes") from e
    finally:
        bar.close()
        for e in envs:
            e.close()
    per_step = np.concatenate([np.stack(c) for c in counts])
    report = MultiplicationReport.from_counts(pol.names, pol.dense_per_step, per_step, label=pol.label)
    return EvalResult(env_name, pol.variant, seed, eps, scores, lengths, report,
                      actions=[np.array(a) for a in rec_act] if record else [],
                      observations=[np.stack(o) for o in rec_obs] if record else [])


@dataclass
class ReplayResult:
    """A recorded trajectory replayed through an optimized network."""

    actions: np.ndarray
    reference_actions: np.ndarray
    report: MultiplicationReport
    q_values: np.ndarray = field(repr=False)

    @property
    def agreement(self) -> float:
        """Fraction of steps where the optimized network picks the reference action."""
        return float(np.mean(self.actions == self.reference_actions))


def replay(net: nn.Module, observations: np.ndarray, sparsity: float = 0.0,
           threshold: float | Sequence[float] | None = None, batch: int = 256,
           reference: nn.Module | np.ndarray | None = None) -> ReplayResult:
    """Feed one recorded episode (steps, *obs_shape) through a variant; compare greedy actions
    with a reference. Open loop: a cheap proxy for closed-loop scores.

    ``reference`` is the network (or the array of actions) to agree with; by default ``net``
    itself, which is the dense agent unless ``net`` was already pruned or fine-tuned.
    """
    obs = torch.as_tensor(np.asarray(observations))
    if isinstance(reference, np.ndarray):
        if reference.shape != (len(obs),):
            raise ValueError(f"reference actions have shape {reference.shape}; expected ({len(obs)},)")
        ref = reference
    else:
        dense = plain_copy(net if reference is None else reference)
        with torch.no_grad():
            ref = torch.cat([dense(obs[i:i + batch]) for i in range(0, len(obs), batch)]).argmax(1).numpy()
    pol = Policy(net, sparsity, threshold)
    qs, cs = [], []
    # a delta network steps one decision at a time, a dense one takes whole batches
    step = 1 if pol.delta is not None else batch
    for i in range(0, len(obs), step):
        q, c = pol(obs[i:i + step])
        # numpy copies: thousands of tiny torch tensors kept across steps pin the allocator's
        # heap between each step's large temporaries (memory grew ~100 KB per decision)
        qs.append(q.numpy().copy())
        cs.append(c.numpy().copy())
    q = np.concatenate(qs)
    report = MultiplicationReport.from_counts(pol.names, pol.dense_per_step, np.concatenate(cs), label=pol.label)
    return ReplayResult(q.argmax(1), ref, report, q)


def record_trajectory(net: nn.Module, env_name: str, seed: int = 0, epsilon: float | None = None,
                      max_steps: int | None = None) -> dict[str, np.ndarray]:
    """Play one seeded episode and return its observations, actions and score."""
    res = evaluate(net, env_name, episodes=1, seed=seed, epsilon=epsilon, record=True, max_steps=max_steps)
    return {"observations": res.observations[0], "actions": res.actions[0],
            "score": np.array(res.scores[0]), "seed": np.array(seed)}
