"""Double DQN with n-step returns, in one readable loop (in the spirit of CleanRL).

``train(DQNConfig(...), run_dir)`` trains an agent on CartPole or an Atari game. Its gradient
step is :func:`double_dqn_update`, the unit the book teaches. With a ``run_dir``, every
``checkpoint_every`` agent steps it saves the run (see :mod:`deltalearn.rl.run_files`), and
calling ``train`` again with the same ``run_dir`` resumes it. ``cfg.sparsity > 0`` prunes while
training, on the schedule of :class:`~deltalearn.rl.schedule.PruningSchedule`.
"""
from __future__ import annotations

import copy
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .._status import status_line
from ..core.nets import NetworkSpec, QNetwork, build_network, copy_weights, plain_copy
from ..core.pruning import prune_network
from .buffer import Batch, ReplayBuffer
from .dqn_config import DQNConfig
from .envs import check_actions, is_atari, make_vector_env
from .evaluation import evaluate
from .run_files import RunFiles, TrainState
from .schedule import PruningSchedule

__all__ = ["DQNConfig", "TrainResult", "train", "double_dqn_update", "select_device", "PruningSchedule"]


def double_dqn_update(q: torch.nn.Module, target: torch.nn.Module, optimizer: torch.optim.Optimizer,
                      batch: Batch, max_grad_norm: float = 10.0) -> float:
    """One Double DQN gradient step on a sampled batch; returns the loss.

    The online network ``q`` picks the best next action, the ``target`` network values it
    (van Hasselt et al. 2016), and ``q``'s value of the action taken is pulled towards that
    target with the Huber loss. ``batch`` comes from ``ReplayBuffer.sample(batch_size, n_step,
    gamma)``: its ``returns`` already sum up to n discounted rewards and its ``discounts`` are
    ``gamma**n``, or 0 where the episode terminated. Clipping the gradient norm keeps an early,
    wildly wrong target from wrecking the network. A pruned ``q`` stays pruned: its masks hold
    the removed weights at zero.
    """
    with torch.no_grad():  # the target is a fixed regression goal: no gradient flows into it
        next_a = q(batch.next_obs).argmax(1, keepdim=True)
        next_v = target(batch.next_obs).gather(1, next_a).squeeze(1)
        y = batch.returns + batch.discounts * next_v
    pred = q(batch.obs).gather(1, batch.actions.unsqueeze(1)).squeeze(1)
    loss = F.smooth_l1_loss(pred, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(q.parameters(), max_grad_norm)
    optimizer.step()
    return float(loss.detach())


@dataclass
class TrainResult:
    """The trained (final) network, the best evaluated one, and the run's history."""

    net: QNetwork
    best_net: QNetwork
    history: dict[str, list] = field(default_factory=dict)
    config: DQNConfig | None = None
    wall_time: float = 0.0
    """Seconds of training, summed over resumed sessions."""
    steps: int = 0
    """Agent steps trained (may stop short of ``total_steps`` with ``stop_score``)."""


def select_device(name: str = "auto") -> torch.device:
    """CUDA when asked or available, else CPU; nothing here needs a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(cfg: DQNConfig, run_dir: str | os.PathLike | None = None, resume: bool = True,
          progress: bool = True, callback: Callable[[int, dict[str, Any]], None] | None = None,
          init: QNetwork | None = None) -> TrainResult:
    """Train (or resume) a Double DQN agent; returns the final and best networks.

    ``callback(agent_step, info)`` is called after every vector step (for plots or tests).
    ``init`` starts from a trained network's weights instead of random ones: with
    ``cfg.sparsity > 0`` this is prune-while-fine-tuning (pruned weights stay zero).
    ``resume=False`` starts afresh in a ``run_dir`` that holds a run. SIGTERM and Ctrl-C checkpoint.
    """
    cfg.validate()
    if init is not None:  # a network for another game: say so before any environment starts
        check_actions(init, cfg.env, "the init network")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = select_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    envs = make_vector_env(cfg.env, cfg.num_envs, seed=cfg.seed)
    spec = _spec_for(cfg, envs)
    s = _new_state(cfg, spec, envs, device, rng, init)
    files = RunFiles(run_dir, cfg, spec, device)
    if resume and files.restore(s) == "checkpoint" and s.step >= cfg.total_steps:
        envs.close()  # a finished run: nothing to do
        return TrainResult(s.q, s.best, s.history, cfg, s.wall, s.step)

    obs, info = envs.reset(seed=int(cfg.seed * 1_000 + s.step))
    s.buffer.new_episodes()
    episodes = _Episodes(cfg, info)
    bar = tqdm(total=cfg.total_steps, initial=s.step, desc=f"DQN {cfg.env}", disable=not progress,
               unit="step", smoothing=0.05)
    t_start = time.time() - s.wall
    next_ckpt = (s.step // cfg.checkpoint_every + 1) * cfg.checkpoint_every
    next_eval = (s.step // cfg.eval_every + 1) * cfg.eval_every if cfg.eval_every else math.inf
    schedule = PruningSchedule.from_config(cfg)
    pruned_to = _prune(s.q, schedule.sparsity_at(s.step))  # a resumed run: be where the schedule is
    next_prune = schedule.first_round(s.step)
    old_term = _checkpoint_on_sigterm()
    try:
        while s.step < cfg.total_steps:
            # act epsilon-greedily, store the transition
            eps = max(cfg.eps_end, cfg.eps_start + (cfg.eps_end - cfg.eps_start) * s.step / max(1, cfg.eps_decay_steps))
            with torch.no_grad():
                greedy = s.q(torch.as_tensor(obs, device=device)).argmax(1).cpu().numpy()
            explore = s.rng.random(cfg.num_envs) < eps
            actions = np.where(explore, s.rng.integers(0, envs.single_action_space.n, cfg.num_envs), greedy)
            next_obs, reward, term, trunc, info = envs.step(actions)
            episodes.record(s, obs, actions, reward, term, trunc, info)
            obs = next_obs
            s.step += cfg.num_envs
            bar.update(cfg.num_envs)

            if s.step >= next_prune:
                pruned_to = _prune(s.q, schedule.sparsity_at(s.step))
                next_prune = schedule.next_round(s.step)
            # learn: one update per train_every agent steps, a hard target copy every target_update updates
            if s.step > cfg.learning_starts and s.step > s.warm_until:
                s.credit += cfg.num_envs / cfg.train_every
                while s.credit >= 1:
                    s.credit -= 1
                    batch = s.buffer.sample(cfg.batch_size, cfg.n_step, cfg.gamma, device=device)
                    loss = double_dqn_update(s.q, s.target, s.optimizer, batch, cfg.max_grad_norm)
                    s.updates += 1
                    if s.updates % cfg.target_update == 0:
                        copy_weights(s.q, s.target)
                    if s.updates % 100 == 0:
                        s.history["loss_step"].append(s.step)
                        s.history["loss"].append(loss)

            if s.step >= next_eval:
                # while pruning is under way a sparser network will follow: only a fully pruned one can be "best"
                _evaluate(s, cfg, files, may_be_best=pruned_to >= cfg.sparsity)
                next_eval += cfg.eval_every
                if cfg.stop_score is not None and s.history["eval_mean"][-1] >= cfg.stop_score:
                    break
            if s.step >= next_ckpt:
                s.wall = time.time() - t_start
                files.save(s)
                next_ckpt += cfg.checkpoint_every
                if not progress:
                    _log_status(cfg, s, eps)
            _show_progress(bar, cfg, s, eps)
            if callback is not None:
                callback(s.step, {"eps": eps, "updates": s.updates})
        if cfg.eval_every and (not s.history["eval_step"] or s.history["eval_step"][-1] != s.step):
            _evaluate(s, cfg, files, may_be_best=pruned_to >= cfg.sparsity)
        s.wall = time.time() - t_start
        files.save(s)
    except KeyboardInterrupt:  # also SIGTERM, see _checkpoint_on_sigterm
        s.wall = time.time() - t_start
        files.save(s)
        raise
    finally:
        bar.close()
        envs.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    best = s.best if cfg.eval_every else plain_copy(s.q)
    return TrainResult(s.q, best, s.history, cfg, s.wall, s.step)


def _spec_for(cfg: DQNConfig, envs: Any) -> NetworkSpec:
    n_actions = int(envs.single_action_space.n)
    if is_atari(cfg.env):
        return NetworkSpec("nature-dqn", n_actions)
    return NetworkSpec("mlp", n_actions, obs_dim=int(np.prod(envs.single_observation_space.shape)),
                       hidden=tuple(cfg.hidden))


def _new_state(cfg: DQNConfig, spec: NetworkSpec, envs: Any, device: torch.device, rng: np.random.Generator,
               init: QNetwork | None) -> TrainState:
    """Fresh networks (from ``init``'s weights, if given), optimizer and replay memory."""
    atari = is_atari(cfg.env)
    # channels_last makes CPU convolutions ~15% faster here; it changes no result
    fmt = torch.channels_last if atari else torch.contiguous_format
    q = build_network(spec).to(device, memory_format=fmt)
    target = build_network(spec).to(device, memory_format=fmt)
    if init is not None:
        if init.spec != spec:
            raise ValueError(f"init network is {init.spec}, but {cfg.env} needs {spec}")
        copy_weights(init, q)
    target.load_state_dict(q.state_dict())
    best = copy.deepcopy(q)
    opt = torch.optim.Adam(q.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
    obs_space = envs.single_observation_space
    rb = ReplayBuffer(cfg.buffer_size, cfg.num_envs, tuple(obs_space.shape), obs_space.dtype,
                      stack=obs_space.shape[0] if atari else 1, seed=cfg.seed)
    return TrainState(q, target, best, opt, rb, rng)


def _prune(q: QNetwork, sparsity: float) -> float:
    """Prune ``q`` to ``sparsity`` (nothing at 0); return the sparsity it now has."""
    if sparsity > 0:
        prune_network(q, sparsity)
    return sparsity


class _Episodes:
    """Per-environment bookkeeping between vector steps: returns so far, lives, episode ends."""

    def __init__(self, cfg: DQNConfig, info: dict[str, Any]) -> None:
        self.cfg = cfg
        self.lives = np.asarray(info.get("lives", np.zeros(cfg.num_envs)))
        self.ep_return = np.zeros(cfg.num_envs)
        # gymnasium's next-step autoreset: the step after an episode's end only resets that env
        self.prev_done = np.zeros(cfg.num_envs, dtype=bool)

    def record(self, s: TrainState, obs: np.ndarray, actions: np.ndarray, reward: np.ndarray,
               term: np.ndarray, trunc: np.ndarray, info: dict[str, Any]) -> None:
        """Store one vector step in the replay memory, and finished episodes' returns in the history."""
        cfg = self.cfg
        new_lives = np.asarray(info.get("lives", self.lives))
        lost = (new_lives < self.lives) & ~self.prev_done if cfg.life_loss_terminal else None
        self.lives = new_lives
        r = np.sign(reward) if cfg.clip_rewards else reward
        s.buffer.add(obs, actions, r.astype(np.float32), term, trunc, lost)
        self.ep_return += np.where(self.prev_done, 0.0, reward)
        for e in np.flatnonzero((term | trunc) & ~self.prev_done):
            s.history["episode_step"].append(s.step + cfg.num_envs)
            s.history["episode_return"].append(float(self.ep_return[e]))
            self.ep_return[e] = 0.0
        self.prev_done = (term | trunc) & ~self.prev_done


def _evaluate(s: TrainState, cfg: DQNConfig, files: RunFiles, may_be_best: bool) -> None:
    """Play ``eval_episodes`` seeded episodes; keep (and save) the network if it is the best so far."""
    res = evaluate(s.q, cfg.env, episodes=cfg.eval_episodes, seed=10_000 + cfg.seed,
                   epsilon=cfg.eval_epsilon, max_steps=cfg.eval_max_steps)
    s.history["eval_step"].append(s.step)
    s.history["eval_mean"].append(res.mean_score)
    s.history["eval_std"].append(res.std_score)
    if res.mean_score >= s.best_score and may_be_best:
        s.best_score = res.mean_score
        copy_weights(s.q, s.best)
        files.save_best(s.q, s.step, s.best_score)


def _show_progress(bar: Any, cfg: DQNConfig, s: TrainState, eps: float) -> None:
    """Every 50 vector steps, the progress bar's epsilon, recent return and last evaluation."""
    hist = s.history
    if not bar.disable and hist["episode_return"] and s.step % (cfg.num_envs * 50) == 0:
        post = {"eps": f"{eps:.2f}", "return": f"{np.mean(hist['episode_return'][-20:]):.1f}"}
        if hist["eval_mean"]:
            post["eval"] = f"{hist['eval_mean'][-1]:.1f}"
        bar.set_postfix(post, refresh=False)


def _log_status(cfg: DQNConfig, s: TrainState, eps: float) -> None:
    """One line per checkpoint on stderr, so a background run (``--no-progress``) can be watched."""
    hist = s.history
    recent = hist["episode_return"][-20:]
    parts = [f"{cfg.env} step {s.step:,}/{cfg.total_steps:,}",
             f"train {s.wall / 60:.1f} min", f"eps {eps:.3f}",
             f"return(last {len(recent)}) {np.mean(recent):.1f}" if recent else "return -"]
    if hist["eval_mean"]:
        parts.append(f"eval@{hist['eval_step'][-1]:,} {hist['eval_mean'][-1]:.1f}")
    status_line(*parts)


def _checkpoint_on_sigterm() -> Any:
    """Turn SIGTERM (``kill``, a scheduler's stop) into KeyboardInterrupt so the run checkpoints."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, handler)
