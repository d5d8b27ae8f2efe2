"""Tune a delta network's per-layer thresholds (and the agent's sparsity) for the fewest multiplications.

The paper uses one threshold for every layer. A layer's input scale differs from layer to layer
(in Robotank the pixels vary 13x more than the fc inputs), so one threshold is held back by the
layer with the smallest inputs. :func:`tune` searches three families of settings on one recorded
episode, open loop (cheap): uniform thresholds, thresholds scaled to each layer's input
(``theta_k = c * std_k``), and a greedy per-layer pass that raises one layer's threshold at a time
while the action agreement stays at or above ``min_agreement``. It then plays the cheapest
candidates in closed loop on tuning seeds, paired with the dense agent, and returns the cheapest
one with no detectable loss: the 95% interval of the paired difference does not lie below 0 and
its lower end is above ``-max_loss`` of the dense mean. Held-out seeds are never used here.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.chain import trace_chain
from ..rl.envs import ENV_NAMES
from ..rl.evaluation import check_backend, default_epsilon, evaluate, replay
from ..store.agents import agent_names
from ..store.trajectories import load_trajectory
from .pruned_agents import agent_at
from .settings import HELDOUT_EPISODES, HELDOUT_SEED
from ..store.trajectories import DATA_DIR
from .shipped import book_data
from .stats import PairedDifference, paired_difference
from .bench import _cpu, _git
from ..store.checkpoint import atomic_write

__all__ = ["TuneConfig", "TuneResult", "tune", "input_scales", "search_open_loop", "TUNE_SCOPES", "GAME_DEFAULTS",
           "game_defaults", "scope_sparsities", "confirm_heldout", "tuned_verdict", "tune_game", "write_tuned",
           "load_tuned", "TUNED_COLUMNS", "confirm_tuned", "write_confirm"]


@dataclass(frozen=True)
class TuneConfig:
    """What :func:`tune` searches and how hard it looks."""

    budget: int = 60
    """Most settings replayed open loop per agent (uniform, scaled and greedy steps together); the
    greedy pass stops when it is spent. Must be >= 1."""
    min_agreement: float = 0.98
    """Least open-loop action agreement (with the agent's own threshold-0 actions on the recorded
    episode) a candidate needs to be kept; in (0, 1]."""
    seed: int = 2000
    """First tuning seed: the closed-loop episodes use environment seeds ``seed, seed + 1, ...``
    (kept apart from the held-out seeds 1000-1029)."""
    episodes: int = 30
    """Paired closed-loop episodes per confirmation (>= 2, a paired interval needs two). Fewer than
    about 30 leave Breakout's interval wider than the allowed loss, so nothing passes."""
    max_steps: int | None = None
    """Step cap of a closed-loop episode (``None``: the game's own end)."""
    multipliers: tuple[float, ...] = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
    """The ``c`` of the scaled candidates ``theta_k = c * std_k``."""
    uniform: tuple[float, ...] = (0.0, 0.001, 0.003, 0.01, 0.03, 0.1)
    """The uniform candidates: one threshold for every layer, as in the paper."""
    greedy_factor: float = 2.0
    """How much the greedy pass first multiplies one layer's threshold per step (> 1); when no layer
    can take that step, the step shrinks to its square root, down to 5%."""
    sparsities: tuple[float, ...] = (0.0,)
    """The agents considered when tuning a game by name: ``agent_at(env, s)`` for each ``s``."""
    max_loss: float = 0.15
    """Largest score loss, as a share of the dense mean, the lower end of the interval may reach."""
    confirmations: int = 8
    """Most closed-loop plays in all, cheapest open-loop candidates first (an agent that loses is also
    played at threshold 0 once, to drop it when it loses on its own)."""
    backend: str = "sparse"
    """The delta network's backend for replays and evaluations (``"dense"`` or ``"sparse"``)."""
    agent_directory: str | None = None
    """Where :func:`~deltalearn.study.agent_at` looks for agents (the shipped ones by default)."""

    def check(self) -> "TuneConfig":
        """Raise ValueError naming the first bad field; return self."""
        if not 0 < self.min_agreement <= 1:
            raise ValueError(f"min_agreement must be in (0, 1], got {self.min_agreement!r}")
        if self.budget < 1:
            raise ValueError(f"budget must be >= 1 open-loop replay, got {self.budget!r}")
        if self.episodes < 2:
            raise ValueError(f"episodes must be >= 2 (a paired interval needs two), got {self.episodes!r}")
        if self.confirmations < 1:
            raise ValueError(f"confirmations must be >= 1, got {self.confirmations!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps!r}")
        if self.greedy_factor <= 1:
            raise ValueError(f"greedy_factor must be > 1, got {self.greedy_factor!r}")
        if not 0 <= self.max_loss < 1:
            raise ValueError(f"max_loss must be in [0, 1), got {self.max_loss!r}")
        for name in ("multipliers", "uniform"):
            vals = getattr(self, name)
            if any(not math.isfinite(v) or v < 0 for v in vals):
                raise ValueError(f"{name} must be finite numbers >= 0, got {vals!r}")
        if not self.sparsities or any(not 0 <= s < 1 for s in self.sparsities) or len(set(self.sparsities)) < len(
                self.sparsities):
            raise ValueError(f"sparsities must be one or more distinct numbers in [0, 1), got {self.sparsities!r}")
        check_backend(self.backend)
        if self.seed < HELDOUT_SEED + HELDOUT_EPISODES and self.seed + self.episodes > HELDOUT_SEED:
            raise ValueError(f"tuning seeds {self.seed}..{self.seed + self.episodes - 1} overlap the held-out "
                             f"seeds {HELDOUT_SEED}..{HELDOUT_SEED + HELDOUT_EPISODES - 1}")
        return self


@dataclass
class TuneResult:
    """The setting :func:`tune` chose, how it was found and what it cost to find."""

    env: str
    layers: list[str]
    """The weight layers' names, in the order of :attr:`thresholds`."""
    thresholds: list[float]
    """The chosen threshold per weight layer."""
    sparsity: float
    """The chosen agent's sparsity (0: the dense agent)."""
    agent: str | None
    """The chosen agent's name (``None`` for a network passed in or pruned one-shot)."""
    kind: str
    """Which family the chosen setting came from: ``uniform``, ``scaled``, ``greedy`` or ``fallback``."""
    reduction: float
    """Dense / significant multiplications in the closed-loop tuning episodes."""
    open_loop_reduction: float
    """The same on the recorded episode."""
    agreement: float
    """Open-loop action agreement on the recorded episode."""
    paired: PairedDifference | None
    """Chosen minus dense scores on the tuning seeds (``None`` only for the fallback with nothing played)."""
    confirmed: bool
    """False when no candidate passed in closed loop and the dense agent at threshold 0 was returned."""
    scales: dict[float, list[float]]
    """Per sparsity, the std of each weight layer's input over the recorded episode."""
    candidates: list[dict[str, Any]]
    """Every setting tried: one row each (see :attr:`table`)."""
    cpu_seconds: float
    """CPU time the search took (this process)."""
    config: TuneConfig = field(default_factory=TuneConfig)

    @property
    def table(self) -> pd.DataFrame:
        """The candidates tried, one row each: sparsity, kind, thresholds, agreement, significant
        multiplications per decision, reduction, and the closed-loop verdict where one was played."""
        return pd.DataFrame(self.candidates)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (a result file to commit)."""
        d = {k: getattr(self, k) for k in ("env", "layers", "thresholds", "sparsity", "agent", "kind", "reduction",
                                           "open_loop_reduction", "agreement", "confirmed", "candidates",
                                           "cpu_seconds")}
        d["paired"] = None if self.paired is None else self.paired.to_dict()
        d["scales"] = {str(s): v for s, v in self.scales.items()}
        d["config"] = asdict(self.config)
        return d


def input_scales(net: nn.Module, observations: np.ndarray | torch.Tensor, batch: int = 256) -> list[float]:
    """Per weight layer, the standard deviation of its input over ``observations`` (all elements
    of all steps pooled): the scale a threshold is compared with in that layer."""
    chain = trace_chain(net)
    n = len(chain.names)
    s1, s2, cnt = [0.0] * n, [0.0] * n, [0] * n
    obs = torch.as_tensor(np.asarray(observations))

    def record(k: int, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        xd = x.double()
        s1[k] += float(xd.sum())
        s2[k] += float((xd * xd).sum())
        cnt[k] += xd.numel()
        return m(x)

    with torch.no_grad():
        for i in range(0, len(obs), batch):
            chain.run(obs[i:i + batch], record)
    # the population std from pooled sums, in float64 so a long episode loses nothing
    return [math.sqrt(max(0.0, s2[k] / cnt[k] - (s1[k] / cnt[k]) ** 2)) for k in range(n)]


def _agents(net_or_env: nn.Module | str, env: str | None, cfg: TuneConfig) -> tuple[str, list[tuple], nn.Module]:
    """The environment, the (network, sparsity, name) agents to search and the dense reference."""
    if isinstance(net_or_env, str):
        if env is not None and env != net_or_env:
            raise ValueError(f"tune({net_or_env!r}, {env!r}): give the game once, or a network and its game")
        env = net_or_env
    elif not isinstance(net_or_env, nn.Module):
        raise TypeError(f"tune needs a Q-network or a game name, got {type(net_or_env).__name__}")
    elif env is None:
        raise ValueError("tune(net) needs the game the network plays, e.g. tune(net, 'CartPole-v1')")
    if env not in ENV_NAMES:
        raise ValueError(f"unknown environment {env!r}; known: {', '.join(ENV_NAMES)}")
    if isinstance(net_or_env, nn.Module):
        return env, [(net_or_env, 0.0, None)], net_or_env
    found = [agent_at(env, s, cfg.agent_directory) for s in cfg.sparsities]
    dense = next((a.net for a in found if a.sparsity == 0), None) or agent_at(env, 0.0, cfg.agent_directory).net
    return env, [(a.net, a.sparsity, a.name) for a in found], dense


class _Search:
    """The open-loop search of one agent: every replay is a row, the budget counts them."""

    def __init__(self, net: nn.Module, sparsity: float, obs: np.ndarray, cfg: TuneConfig, tick: Callable[[], None]):
        self.net, self.sparsity, self.obs, self.cfg, self.tick = net, sparsity, obs, cfg, tick
        self.reference = replay(net, obs).actions  # the agent's own greedy actions, threshold 0
        self.rows: list[dict[str, Any]] = []
        self.seen: dict[tuple[float, ...], dict[str, Any]] = {}

    @property
    def spent(self) -> bool:
        return len(self.rows) >= self.cfg.budget

    def try_(self, kind: str, ths: Sequence[float]) -> dict[str, Any] | None:
        """Replay ``ths`` (once per distinct setting); its row, or None when the budget is spent."""
        key = tuple(round(float(t), 12) for t in ths)
        if key in self.seen:
            return self.seen[key]
        if self.spent:
            return None
        r = replay(self.net, self.obs, threshold=list(key), reference=self.reference, backend=self.cfg.backend)
        row = {"sparsity": self.sparsity, "kind": kind, "thresholds": list(key), "agreement": r.agreement,
               "significant": r.report.total_significant / r.report.steps, "reduction": r.report.reduction,
               "passes": r.agreement >= self.cfg.min_agreement, "closed_loop": None}
        self.rows.append(row)
        self.seen[key] = row
        self.tick()
        return row

    def run(self, scales: list[float]) -> None:
        """Uniform candidates, scaled candidates, then the greedy pass from the cheapest that passed."""
        n = len(scales)
        for t in self.cfg.uniform:
            self.try_("uniform", [t] * n)
        for c in self.cfg.multipliers:
            self.try_("scaled", [c * s for s in scales])
        passing = [r for r in self.rows if r["passes"]]
        if not passing:
            return
        best = min(passing, key=lambda r: r["significant"])
        # a layer at 0 starts from its smallest scaled step, so the pass can open it at all
        first = [min((c for c in self.cfg.multipliers if c > 0), default=1e-3) * s or 1e-3 for s in scales]
        # when no layer can take a full step, finer steps (the square root of the factor) use the
        # rest of the budget, down to steps of 5%
        factor = self.cfg.greedy_factor
        while factor > 1.05 and not self.spent:
            improved = False
            for k in range(n):
                ths = list(best["thresholds"])
                ths[k] = ths[k] * factor if ths[k] > 0 else first[k]
                row = self.try_("greedy", ths)
                if row is None:
                    break
                if row["passes"] and row["significant"] < best["significant"]:
                    best, improved = row, True
            if not improved:
                factor = math.sqrt(factor)


def search_open_loop(net: nn.Module, observations: np.ndarray, config: TuneConfig | None = None, *,
                     sparsity: float = 0.0, progress: bool = False, **overrides: Any) -> pd.DataFrame:
    """The open-loop half of :func:`tune` for one network: uniform, scaled and greedy candidates
    replayed on ``observations``, one row each (as in :attr:`TuneResult.table`, nothing played in
    closed loop). Cheap enough to compare the three families on an Atari episode."""
    cfg = replace(config or TuneConfig(), **overrides).check()
    obs = np.asarray(observations)
    with tqdm(total=cfg.budget, desc="open loop", disable=not progress) as bar:
        search = _Search(net, sparsity, obs, cfg, lambda: bar.update(1))
        search.run(input_scales(net, obs))
    return pd.DataFrame(search.rows)


def _confirm(env: str, agents: dict[float, nn.Module], dense: nn.Module, dense_scores: list[float],
             rows: list[dict[str, Any]], cfg: TuneConfig,
             tick: Callable[[], None]) -> tuple[dict[str, Any] | None, Any, PairedDifference | None]:
    """Play the cheapest open-loop candidates in closed loop until one shows no detectable loss.

    When a candidate loses, its agent is played at threshold 0 (once): an agent that loses on its
    own (pruned too far) is dropped with all its candidates, so the plays go to the other agents.
    """
    floor = -cfg.max_loss * abs(float(np.mean(dense_scores)))
    order = sorted((r for r in rows if r["passes"]), key=lambda r: (r["significant"], r["sparsity"]))
    left = cfg.confirmations
    # the dense agent alone is the reference itself: it cannot lose, so no play is spent on it
    alone: dict[float, bool] = {s: True for s, net in agents.items() if net is dense}
    played: dict[int, tuple] = {}

    def play(row: dict[str, Any]) -> bool:
        nonlocal left
        left -= 1
        res = evaluate(agents[row["sparsity"]], env, episodes=cfg.episodes, seed=cfg.seed,
                       threshold=row["thresholds"], max_steps=cfg.max_steps, backend=cfg.backend)
        tick()
        pd_ = paired_difference(dense_scores, res.scores)
        ok = pd_.ci_high >= 0 and pd_.ci_low > floor
        row.update(closed_loop="pass" if ok else "fail", closed_loop_mean=res.mean_score,
                   closed_loop_reduction=res.report.reduction, ci_low=pd_.ci_low, ci_high=pd_.ci_high)
        played[id(row)] = (res, pd_)
        return ok

    for row in order:
        s = row["sparsity"]
        if id(row) in played:  # an agent alone played earlier: its verdict stands
            if row["closed_loop"] == "pass":
                return row, *played[id(row)]
            continue
        if alone.get(s) is False:
            continue
        if left <= 0:
            continue  # out of plays: a cheaper one is never played, but an agent alone that passed still counts
        if play(row):
            return row, *played[id(row)]
        if s not in alone and left > 0:
            zero = next((r for r in order if r["sparsity"] == s and not any(r["thresholds"])), None)
            if zero is not None:
                alone[s] = play(zero) if id(zero) not in played else zero["closed_loop"] == "pass"
    return None, None, None


def tune(net_or_env: nn.Module | str, env: str | None = None, config: TuneConfig | None = None, *,
         observations: np.ndarray | None = None, progress: bool = True, **overrides: Any) -> TuneResult:
    """The cheapest per-layer thresholds (and sparsity) with no detectable closed-loop loss.

    ``tune("Breakout")`` searches the game's agents at ``config.sparsities`` (via
    :func:`~deltalearn.study.agent_at`); ``tune(net, "CartPole-v1")`` searches one network,
    which is also the dense reference. ``config`` fields can be overridden by keyword
    (``tune("Breakout", min_agreement=0.95)``). ``observations`` is the recorded episode for the
    open-loop search (the game's shipped trajectory by default). Deterministic given
    ``config.seed``; only :attr:`TuneResult.cpu_seconds` varies between runs.
    """
    cfg = replace(config or TuneConfig(), **overrides).check()
    start = time.process_time()
    env, agents, dense = _agents(net_or_env, env, cfg)
    obs = load_trajectory(env)["observations"] if observations is None else np.asarray(observations)
    bar = tqdm(total=len(agents) * cfg.budget + cfg.confirmations + 1, desc=f"tune {env}", disable=not progress)
    try:
        rows: list[dict[str, Any]] = []
        scales: dict[float, list[float]] = {}
        for net, s, _ in agents:
            scales[s] = input_scales(net, obs)
            search = _Search(net, s, obs, cfg, lambda: bar.update(1))
            search.run(scales[s])
            rows += search.rows
        dense_res = evaluate(dense, env, episodes=cfg.episodes, seed=cfg.seed, max_steps=cfg.max_steps)
        bar.update(1)
        nets = {s: net for net, s, _ in agents}
        row, res, paired = _confirm(env, nets, dense, dense_res.scores, rows, cfg, lambda: bar.update(1))
    finally:
        bar.close()
    names = {s: name for _, s, name in agents}
    layers = list(trace_chain(agents[0][0]).names)
    if row is None:  # nothing confirmed: the dense agent as it is, which loses nothing by definition
        return TuneResult(env, layers, [0.0] * len(layers), 0.0, env if isinstance(net_or_env, str) else None,
                          "fallback", 1.0, 1.0, 1.0, None, False, scales, rows, time.process_time() - start, cfg)
    return TuneResult(env, layers, list(row["thresholds"]), row["sparsity"], names[row["sparsity"]], row["kind"],
                      res.report.reduction, row["reduction"], row["agreement"], paired, True, scales, rows,
                      time.process_time() - start, cfg)


# --- a game tuned end to end: tuning seeds, then the held-out confirmation, one committed file each ---

TUNE_SCOPES: tuple[str, ...] = ("delta", "both")
"""``delta``: the dense agent's delta network alone (sparsity 0); ``both``: pruning and delta, every
shipped sparsity of the game."""

GAME_DEFAULTS: dict[str, dict[str, Any]] = {
    # Long games get a step cap on the tuning plays only (held-out episodes are never capped, as in the
    # committed held-out tables), a smaller open-loop budget (30: the uniform and scaled candidates and
    # about three greedy rounds) and fewer plays, so a run fits the CPU minutes a shared 2-core machine
    # gives. Dense episodes last ~5,800 steps in Robotank, ~5,300 in Enduro, ~2,050 in Freeway and
    # ~1,500 in BattleZone (held-out tables).
    "Robotank": {"max_steps": 3000},
    "Robotank-both": {"max_steps": 2000, "budget": 30, "confirmations": 3},
    # Enduro's held-out episodes alone cost ~160,000 uncapped steps. Two plays of 1,000 steps were too
    # few: both went to 0.9 candidates that just missed the floor, and the tuner fell back to dense
    "Enduro": {"max_steps": 2000, "budget": 20, "confirmations": 4},
    # Freeway's variants score alike in every episode of the held-out table: the first play decides
    "Freeway": {"max_steps": 1000, "budget": 30, "confirmations": 2},
    # Episodes from the held-out tables' spread (paired sd of the table setting against dense): for
    # SpaceInvaders 243 points against a floor of 75 (15% of 501), so 30 episodes give an interval of
    # +-91, wider than the floor, and 60 give +-63. BattleZone's sd is 8,300-9,800 against a floor of
    # 2,360: even 60 episodes give +-2,500, so only a setting that gains on average can pass, and 100+
    # would cost more CPU than the run has; it keeps 30. Robotank (sd 5.3, floor 2.4), Enduro (sd 121,
    # floor 45) and Breakout (sd 7-17 without its one 343-point episode, floor 5.2) keep 30.
    "SpaceInvaders": {"episodes": 60, "heldout_episodes": 60, "budget": 40, "confirmations": 3},
    "BattleZone": {"max_steps": 2000, "budget": 30, "confirmations": 3},
    # CartPole's pruned agents ship as book data, not as package agents
    "CartPole-v1": {"agent_directory": "book_data:pruned"},
}
"""Per-game defaults of ``deltalearn tune`` (``"<game>-<scope>"`` keys apply to one scope only): config
fields of :class:`TuneConfig` plus ``heldout_episodes``. Anything given explicitly wins."""

TUNED_COLUMNS: tuple[str, ...] = (
    "game", "scope", "sparsity", "agent", "kind", "thresholds", "reduction_tuning", "reduction_heldout",
    "reduction_heldout_vs_significant", "dense_mean", "tuned_mean", "paired_difference", "ci95_low", "ci95_high",
    "paired_sd", "floor", "verdict", "meets_rule", "heldout_episodes", "tuning_episodes", "tune_cpu_minutes",
    "heldout_cpu_minutes", "command", "confirm_seed", "confirm_episodes", "confirm_dense_mean", "confirm_tuned_mean",
    "confirm_diff", "confirm_ci_low", "confirm_ci_high", "confirm_paired_sd", "confirm_floor", "confirm_verdict", "confirm_meets_rule",
    "confirm_reduction", "confirm_cpu_minutes", "confirm_date")
"""The columns of :func:`load_tuned`, in order (``confirm_*``: the fresh-seed confirmation of
:func:`confirm_tuned`, NaN/None where a record has none). ``paired_sd``: the standard deviation of
the per-episode differences, for :func:`~deltalearn.study.stats.episodes_for_floor`."""
CONFIRM_COLUMNS: tuple[str, ...] = tuple(c for c in TUNED_COLUMNS if c.startswith("confirm_"))
_CONFIRM_OBJECTS = ("confirm_verdict", "confirm_meets_rule", "confirm_date")
"""Confirmation columns that hold None, never NaN, where a record has no confirmation."""


def _paired_sd(p: dict[str, Any]) -> float:
    """The standard deviation of the per-episode differences of a stored paired difference."""
    return p["paired_se"] * math.sqrt(p["episodes"])


def _directory(d: str | None) -> str | None:
    """An agent directory as the config stores it: ``book_data:<name>`` means a shipped data folder."""
    return str(book_data(d.split(":", 1)[1])) if d and d.startswith("book_data:") else d


def game_defaults(game: str, scope: str = "both") -> dict[str, Any]:
    """The :data:`GAME_DEFAULTS` of ``game`` for ``scope`` (``heldout_episodes`` included, default 30)."""
    if game not in ENV_NAMES:
        raise ValueError(f"unknown game {game!r}; known: {', '.join(ENV_NAMES)}")
    if scope not in TUNE_SCOPES:
        raise ValueError(f"scope must be one of {', '.join(TUNE_SCOPES)}, got {scope!r}")
    return {"heldout_episodes": HELDOUT_EPISODES, **GAME_DEFAULTS.get(game, {}),
            **GAME_DEFAULTS.get(f"{game}-{scope}", {})}


def scope_sparsities(game: str, scope: str = "both", directory: str | None = None) -> tuple[float, ...]:
    """The sparsities a scope searches: ``(0,)`` for ``delta``; for ``both``, 0 and every sparsity at
    which ``game`` ships a distilled agent (in ``directory``, the package's agents by default)."""
    game_defaults(game, scope)  # checks both
    if scope == "delta":
        return (0.0,)
    prefix = f"{game}-pruned-"
    found = sorted(float(n[len(prefix):]) for n in agent_names(_directory(directory)) if n.startswith(prefix))
    return (0.0, *found)


def tuned_verdict(ci_low: float, ci_high: float, dense_mean: float, max_loss: float = 0.15) -> str:
    """Issue 17's rule on a paired interval (chosen minus dense): ``no detectable loss`` when it holds 0
    and its lower end is above ``-max_loss`` of the dense mean; else which condition failed."""
    floor = -max_loss * abs(dense_mean)
    failed = []
    if ci_high < 0:
        failed.append("the interval lies below 0 (loss detected)")
    elif ci_low > 0:
        failed.append("the interval lies above 0 (gain detected)")
    if not ci_low > floor:
        failed.append(f"its lower end {ci_low:.4g} is not above {floor:.4g} ({max_loss:.0%} of the dense mean)")
    return "no detectable loss" if not failed else "fails: " + "; ".join(failed)


def _dense_scores(env: str, dense: nn.Module, seed: int, episodes: int, progress: bool, *,
                  table: bool) -> dict[str, Any]:
    """The dense agent's scores on seeds ``seed..``: with ``table``, the committed held-out table's where
    it holds them under the same protocol (checked by replaying its first episode); the rest played here."""
    eps, path = default_epsilon(env), DATA_DIR / "heldout" / f"{env}_table.json"
    scores: list[float] = []
    lengths: list[int] = []
    sig = steps = 0
    source = "played"
    if table and seed == HELDOUT_SEED and path.exists():
        rec = json.loads(path.read_text())["variants"].get("dense", {})
        same = (rec.get("seed") == HELDOUT_SEED and rec.get("epsilon") == eps and rec.get("max_steps") is None
                and rec.get("threshold") is None and rec.get("sparsity") == 0.0)
        if same:
            check = evaluate(dense, env, episodes=1, seed=HELDOUT_SEED)
            if check.scores[0] == rec["scores"][0] and check.lengths[0] == rec["lengths"][0]:
                k = min(episodes, len(rec["scores"]))
                scores, lengths = list(rec["scores"][:k]), list(rec["lengths"][:k])
                # the table keeps totals only: per decision over all its episodes
                sig, steps = rec["total_significant"] * sum(lengths) / rec["steps"], sum(lengths)
                source = (f"heldout/{env}_table.json (episodes 0-{k - 1}; episode 0 replayed here: "
                          f"score {check.scores[0]:g} in {check.lengths[0]} steps, as committed)")
            else:
                source = (f"played (heldout/{env}_table.json's episode 0 scored {rec['scores'][0]:g} in "
                          f"{rec['lengths'][0]} steps, a replay here {check.scores[0]:g} in {check.lengths[0]})")
    if len(scores) < episodes:
        res = evaluate(dense, env, episodes=episodes - len(scores), seed=seed + len(scores), progress=progress)
        scores += res.scores
        lengths += res.lengths
        sig, steps = sig + res.report.total_significant, steps + res.report.steps
        if not source.startswith("played"):
            source += f"; seeds {seed + len(scores) - len(res.scores)}+ played here"
    return {"scores": [float(x) for x in scores], "lengths": lengths, "source": source, "epsilon": eps,
            "significant_per_decision": sig / steps}


def _paired_play(env: str, directory: str | None, sparsity: float, thresholds: Sequence[float], backend: str,
                 max_loss: float, *, seed: int, episodes: int, dense_source: Callable[[nn.Module], dict[str, Any]],
                 progress: bool) -> dict[str, Any]:
    """One setting played on seeds ``seed..seed + episodes - 1`` (uncapped, the default epsilon), paired with
    the dense agent on the same seeds: the fields of a held-out or a fresh-seed confirmation.

    ``dense_source(dense_net)`` gives the dense side (:func:`_dense_scores`' fields): from the committed
    held-out table, from another confirmation of the same game, or played here.
    """
    if episodes < 2:
        raise ValueError(f"confirmation episodes must be >= 2 (a paired interval needs two), got {episodes!r}")
    start = time.process_time()
    dense = dense_source(agent_at(env, 0.0, directory).net)
    net = agent_at(env, sparsity, directory).net
    res = evaluate(net, env, episodes=episodes, seed=seed, threshold=list(thresholds), backend=backend,
                   progress=progress)
    pd_ = paired_difference(dense["scores"], res.scores)
    sig = res.report.total_significant / res.report.steps
    floor = -max_loss * abs(pd_.base_mean)
    return {"seed": seed, "episodes": episodes, "epsilon": dense["epsilon"], "max_steps": None,
            "backend": backend, "dense_source": dense["source"], "dense_scores": dense["scores"],
            "dense_lengths": dense["lengths"], "tuned_scores": [float(x) for x in res.scores],
            "tuned_lengths": res.lengths, "dense_mean": float(np.mean(dense["scores"])), "tuned_mean": res.mean_score,
            "paired": pd_.to_dict(), "floor": floor,
            "verdict": tuned_verdict(pd_.ci_low, pd_.ci_high, pd_.base_mean, max_loss),
            "meets_rule": pd_.ci_high >= 0 and pd_.ci_low > floor,
            "reduction": res.report.reduction, "significant_per_decision": sig,
            "dense_per_decision": res.report.total_dense / res.report.steps,
            "dense_significant_per_decision": dense["significant_per_decision"],
            "reduction_vs_significant": dense["significant_per_decision"] / sig,
            "cpu_seconds": time.process_time() - start}


def confirm_heldout(result: TuneResult, episodes: int = HELDOUT_EPISODES, *, progress: bool = False) -> dict[str, Any]:
    """Play ``result``'s setting on the held-out seeds (from :data:`HELDOUT_SEED`, uncapped, the default
    epsilon: the committed held-out tables' protocol), paired with the dense agent on the same seeds.

    Returns plain values: both score lists, the paired difference, the issue's verdict
    (:func:`tuned_verdict`), the closed-loop reduction (dense products per decision over the tuned
    setting's significant ones) and the same against the dense agent's significant products.
    """
    if episodes < 2:
        raise ValueError(f"held-out episodes must be >= 2 (a paired interval needs two), got {episodes!r}")
    cfg = result.config
    return _paired_play(result.env, _directory(cfg.agent_directory), result.sparsity, result.thresholds,
                        cfg.backend, cfg.max_loss, seed=HELDOUT_SEED, episodes=episodes, progress=progress,
                        dense_source=lambda net: _dense_scores(result.env, net, HELDOUT_SEED, episodes, progress,
                                                               table=True))


def _provenance() -> dict[str, Any]:
    """Commit, date, CPU and threads of this run (the library's code, the tuned records left out)."""
    dirty = _git("status", "--porcelain", "--", ":(top)deltalearn", ":(top,exclude)deltalearn/data/tuned")
    return {"git_commit": _git("rev-parse", "HEAD"), "git_dirty": bool(dirty),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "cpu": _cpu(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def tune_game(game: str, scope: str = "both", *, heldout_episodes: int | None = None, command: str | None = None,
              progress: bool = True, **overrides: Any) -> dict[str, Any]:
    """Tune ``game`` on the tuning seeds (:func:`tune`), then confirm the chosen setting on the held-out
    seeds (:func:`confirm_heldout`): the record ``deltalearn tune`` writes.

    ``scope`` is ``delta`` (sparsity 0) or ``both`` (:func:`scope_sparsities`); :data:`GAME_DEFAULTS`
    fill what ``overrides`` (:class:`TuneConfig` fields) and ``heldout_episodes`` leave out.
    """
    defaults = game_defaults(game, scope)
    held = defaults.pop("heldout_episodes")
    held = held if heldout_episodes is None else heldout_episodes
    known = {f.name for f in fields(TuneConfig)}
    if set(overrides) - known:
        raise ValueError(f"unknown tuning setting(s) {', '.join(sorted(set(overrides) - known))}; "
                         f"known: {', '.join(sorted(known))}")
    fields_ = {**defaults, **overrides}
    if "sparsities" not in fields_:
        fields_["sparsities"] = scope_sparsities(game, scope, fields_.get("agent_directory"))
    elif scope == "delta" and tuple(fields_["sparsities"]) != (0.0,):
        raise ValueError(f"scope 'delta' tunes the dense agent alone (sparsity 0), got sparsities "
                         f"{tuple(fields_['sparsities'])}; use scope 'both'")
    cfg = replace(TuneConfig(), **fields_).check()
    if held < 2:
        raise ValueError(f"heldout_episodes must be >= 2 (a paired interval needs two), got {held!r}")
    prov = _provenance()  # the code this run starts from (the tree may move on while it plays)
    run_cfg = replace(cfg, agent_directory=_directory(cfg.agent_directory))
    result = tune(game, config=run_cfg, progress=progress)
    result.config = cfg  # the stored form (book_data:...), not this machine's path
    heldout = confirm_heldout(result, held, progress=progress)
    tuned = result.to_dict()
    return {"game": game, "scope": scope, "command": command, "config": asdict(cfg), "heldout_episodes": held,
            "tuning": tuned, "heldout": heldout, "tune_cpu_minutes": result.cpu_seconds / 60,
            "heldout_cpu_minutes": heldout["cpu_seconds"] / 60, **prov}


def write_tuned(record: dict[str, Any], path: str | os.PathLike | None = None) -> Path:
    """Write a :func:`tune_game` record as JSON, atomically (a temporary file, then ``os.replace``), by
    default to the package's ``data/tuned/<game>-<scope>.json``; returns the path."""
    return _write_json(record, Path(path) if path is not None
                       else DATA_DIR / "tuned" / f"{record['game']}-{record['scope']}.json")


def _write_json(record: dict[str, Any], out: Path) -> Path:
    """``record`` as indented JSON at ``out``, atomically (the store's temporary file, then ``os.replace``)."""
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))
    return out


HELDOUT_RESERVED = range(HELDOUT_SEED, HELDOUT_SEED + 100)
"""Seeds kept for held-out plays (the tables' 30 and the tuned records' up to 60, with room): a fresh-seed
confirmation may not use them."""


def _tuned_folder(root: str | os.PathLike) -> Path:
    """``"tuned"``: the shipped records; anything else: a folder path."""
    return book_data("tuned") if isinstance(root, str) and root == "tuned" else Path(root)


def _dense_shared(game: str, scope: str, dense: nn.Module, folder: Path, directory: str | None, seed: int,
                  episodes: int) -> dict[str, Any] | None:
    """The dense side another scope's confirmation of ``game`` played on the same seeds under the same
    protocol, checked by replaying its first episode here; None when there is none or the replay differs.
    The dense play is deterministic, so playing it again would give the same scores at the same cost."""
    for other in TUNE_SCOPES:
        f = folder / "confirm" / f"{game}-{other}.json"
        if other == scope or not f.exists():
            continue
        c = json.loads(f.read_text())
        same = ((c["seed"], c["episodes"], c["epsilon"], c["max_steps"], c["agent_directory"], c["dense_source"])
                == (seed, episodes, default_epsilon(game), None, directory, "played"))
        if not same:
            continue
        check = evaluate(dense, game, episodes=1, seed=seed)
        if check.scores[0] != c["dense_scores"][0] or check.lengths[0] != c["dense_lengths"][0]:
            continue
        return {"scores": c["dense_scores"], "lengths": c["dense_lengths"], "epsilon": c["epsilon"],
                "significant_per_decision": c["dense_significant_per_decision"],
                "source": (f"played on these seeds by the confirmation of {game} ({other}) (confirm/{f.name}, commit "
                           f"{str(c['git_commit'])[:10]}; episode 0 replayed here: score {check.scores[0]:g} in "
                           f"{check.lengths[0]} steps, as stored)")}
    return None


def confirm_tuned(game: str, scope: str = "both", *, seed: int = 5000, episodes: int = 60, progress: bool = False,
                  root: str | os.PathLike = "tuned", share_dense: bool = True) -> dict[str, Any]:
    """Confirm a committed tuning record on fresh seeds: its setting and the dense agent both played on
    seeds ``seed..seed + episodes - 1`` (uncapped, the default epsilon, as held out), paired.

    A second, independent sample beside the record's held-out result: the same fields (scores,
    lengths, paired difference, floor, verdict, meets_rule, reduction, ...) plus the record's setting,
    CPU minutes and provenance. No dense score comes from a table: the dense agent is played on these
    seeds, except that with ``share_dense`` a game's second scope takes the dense side its first scope's
    confirmation (``<root>/confirm/``) played on the same seeds and protocol, after replaying its first
    episode here (``dense_source`` says which). Seeds that overlap the held-out block (1000-1099) or the
    record's tuning seeds are refused. ``root`` is where the records are (:func:`load_tuned`'s); write the
    result with :func:`write_confirm`.
    """
    game_defaults(game, scope)  # checks both names
    path = _tuned_folder(root) / f"{game}-{scope}.json"
    if not path.exists():
        have = sorted(f.stem for f in path.parent.glob("*.json"))
        raise FileNotFoundError(f"no tuning record for {game} ({scope}) to confirm: {path} does not exist; "
                                f"records there: {', '.join(have) or 'none'}")
    rec = json.loads(path.read_text())
    if episodes < 2:
        raise ValueError(f"confirmation episodes must be >= 2 (a paired interval needs two), got {episodes!r}")
    seeds = range(seed, seed + episodes)
    cfg = rec["config"]
    tuning = range(cfg["seed"], cfg["seed"] + cfg["episodes"])
    for name, used in (("held-out", HELDOUT_RESERVED), ("record's tuning", tuning)):
        if seeds.start < used.stop and used.start < seeds.stop:
            raise ValueError(f"confirmation seeds {seeds.start}..{seeds.stop - 1} overlap the {name} seeds "
                             f"{used.start}..{used.stop - 1}; choose fresh seeds (e.g. 5000)")
    t = rec["tuning"]
    prov = _provenance()

    def dense_source(net: nn.Module) -> dict[str, Any]:
        shared = _dense_shared(game, scope, net, path.parent, cfg["agent_directory"], seed, episodes) if share_dense \
            else None
        return shared or _dense_scores(game, net, seed, episodes, progress, table=False)

    out = _paired_play(game, _directory(cfg["agent_directory"]), t["sparsity"], t["thresholds"], cfg["backend"],
                       cfg["max_loss"], seed=seed, episodes=episodes, dense_source=dense_source, progress=progress)
    return {"game": game, "scope": scope, "record": path.name, "record_commit": rec.get("git_commit"),
            "agent": t["agent"], "sparsity": t["sparsity"], "kind": t["kind"], "thresholds": t["thresholds"],
            "agent_directory": cfg["agent_directory"], **out, "cpu_minutes": out["cpu_seconds"] / 60,
            "command": None, **prov}


def write_confirm(record: dict[str, Any], path: str | os.PathLike | None = None) -> Path:
    """Write a :func:`confirm_tuned` result as JSON, atomically, by default to the package's
    ``data/tuned/confirm/<game>-<scope>.json``; returns the path."""
    return _write_json(record, Path(path) if path is not None
                       else DATA_DIR / "tuned" / "confirm" / f"{record['game']}-{record['scope']}.json")


def _confirm_columns(folder: Path, game: str, scope: str) -> dict[str, Any]:
    """The confirmation columns of one record's row (NaN/None when it has no confirmation file)."""
    f = folder / "confirm" / f"{game}-{scope}.json"
    if not f.exists():
        return {c: (None if c in _CONFIRM_OBJECTS else math.nan) for c in CONFIRM_COLUMNS}
    c = json.loads(f.read_text())
    p = c["paired"]
    return {"confirm_seed": c["seed"], "confirm_episodes": c["episodes"], "confirm_dense_mean": c["dense_mean"],
            "confirm_tuned_mean": c["tuned_mean"], "confirm_diff": p["mean_difference"],
            "confirm_ci_low": p["ci_low"], "confirm_ci_high": p["ci_high"],
            "confirm_paired_sd": _paired_sd(p), "confirm_floor": c["floor"],
            "confirm_verdict": c["verdict"], "confirm_meets_rule": c["meets_rule"],
            "confirm_reduction": c["reduction"], "confirm_cpu_minutes": c["cpu_minutes"],
            "confirm_date": c["date"]}


def load_tuned(game: str | None = None, root: str | os.PathLike = "tuned") -> pd.DataFrame:
    """The committed tuning results, one row per (game, scope), columns :data:`TUNED_COLUMNS`: the
    held-out figures and, where ``confirm/<game>-<scope>.json`` exists, the fresh-seed confirmation's.

    ``root`` is the shipped folder ``"tuned"`` or a folder path; ``game`` keeps one game's rows.
    ``.attrs["provenance"]`` maps each ``"<game>-<scope>"`` to its commit, date, CPU and command.
    """
    folder = _tuned_folder(root)
    if game is not None and game not in ENV_NAMES:
        raise ValueError(f"unknown game {game!r}; known: {', '.join(ENV_NAMES)}")
    rows, prov = [], {}
    for f in sorted(folder.glob("*.json")):
        r = json.loads(f.read_text())
        if game is not None and r["game"] != game:
            continue
        t, h = r["tuning"], r["heldout"]
        rows.append({"game": r["game"], "scope": r["scope"], "sparsity": t["sparsity"], "agent": t["agent"],
                     "kind": t["kind"], "thresholds": t["thresholds"], "reduction_tuning": t["reduction"],
                     "reduction_heldout": h["reduction"], "reduction_heldout_vs_significant": h["reduction_vs_significant"],
                     "dense_mean": h["dense_mean"], "tuned_mean": h["tuned_mean"],
                     "paired_difference": h["paired"]["mean_difference"], "ci95_low": h["paired"]["ci_low"],
                     "ci95_high": h["paired"]["ci_high"],
                     "paired_sd": _paired_sd(h["paired"]),
                     "floor": h["floor"], "verdict": h["verdict"],
                     "meets_rule": h["meets_rule"], "heldout_episodes": h["episodes"],
                     "tuning_episodes": r["config"]["episodes"], "tune_cpu_minutes": r["tune_cpu_minutes"],
                     "heldout_cpu_minutes": r["heldout_cpu_minutes"], "command": r["command"],
                     **_confirm_columns(folder, r["game"], r["scope"])})
        prov[f"{r['game']}-{r['scope']}"] = {k: r.get(k) for k in ("git_commit", "git_dirty", "date", "cpu",
                                                                  "torch_threads", "command")} | {"file": f.name}
    df = pd.DataFrame(rows, columns=list(TUNED_COLUMNS))
    for c in _CONFIRM_OBJECTS:
        df[c] = df[c].astype(object).where(df[c].notna(), None)
    df.attrs["provenance"] = prov
    df.attrs["source"] = str(folder)
    return df
