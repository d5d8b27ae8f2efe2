"""Replay memory for vector envs, storing each Atari frame once.

A stacked Atari observation shares 3 of its 4 frames with the next one, so storing
``(obs, next_obs)`` pairs would keep every frame 8 times. This buffer keeps only the newest
frame of each observation, per environment, in a ring, and rebuilds stacks on sampling
(zero frames before an episode's first observation, as the envs pad them). Next
observations come from the following slot. It assumes next-step autoreset (gymnasium 1.x
vector envs): after a step that ends an episode, the next ``step`` only resets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["ReplayBuffer", "Batch"]


@dataclass
class Batch:
    """A sampled batch of n-step transitions, as tensors."""

    obs: torch.Tensor
    actions: torch.Tensor
    returns: torch.Tensor
    """Discounted sum of up to n rewards."""
    next_obs: torch.Tensor
    discounts: torch.Tensor
    """gamma**m for bootstrapping from ``next_obs`` after m steps, 0 when the episode terminated."""


class ReplayBuffer:
    """Ring buffer of ``capacity`` transitions in total, ``capacity // num_envs`` per env."""

    def __init__(self, capacity: int, num_envs: int, obs_shape: tuple[int, ...], obs_dtype: Any,
                 stack: int = 1, seed: int = 0) -> None:
        if capacity < num_envs * 8:
            raise ValueError(f"capacity {capacity} is too small for {num_envs} envs")
        if stack > 1 and obs_shape[0] != stack:
            raise ValueError(f"obs_shape {obs_shape} does not start with the stack size {stack}")
        self.num_envs = num_envs
        self.cap = capacity // num_envs
        self.stack = stack
        self.obs_shape = tuple(obs_shape)
        frame_shape = self.obs_shape[1:] if stack > 1 else self.obs_shape
        self.frames = np.zeros((self.cap, num_envs, *frame_shape), dtype=obs_dtype)
        self.actions = np.zeros((self.cap, num_envs), dtype=np.int64)
        self.rewards = np.zeros((self.cap, num_envs), dtype=np.float32)
        self.terminated = np.zeros((self.cap, num_envs), dtype=bool)
        self.ended = np.zeros((self.cap, num_envs), dtype=bool)
        self.reset_step = np.zeros((self.cap, num_envs), dtype=bool)
        self.start = np.zeros((self.cap, num_envs), dtype=bool)
        self.pos = 0
        self.size = 0
        self._prev_ended = np.zeros(num_envs, dtype=bool)
        self._next_start = np.ones(num_envs, dtype=bool)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size * self.num_envs

    def new_episodes(self) -> None:
        """Call after ``env.reset()``: the next observations start new episodes.

        The interrupted episodes are closed as truncated: the last stored observation plays
        the part of the final observation, so nothing links them to the new episodes.
        """
        if self.size >= 2:
            last, before = self._ring(np.array([self.size - 1, self.size - 2]))
            self.ended[before] = True
            self.reset_step[last] = True
            self.rewards[last] = 0.0
            self.ended[last] = self.terminated[last] = False
        self._next_start[:] = True
        self._prev_ended[:] = False

    def add(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
            terminated: np.ndarray, truncated: np.ndarray, life_lost: np.ndarray | None = None) -> None:
        """Record one vector step: ``obs`` is what the agent acted on.

        ``life_lost`` marks steps treated as terminal for the TD target although the game
        goes on (Nature DQN's life-loss trick); the episode boundary stays where the env put it.
        """
        p = self.pos
        start = self._next_start.copy()
        if self.stack > 1:
            if start.any() and obs[start, :-1].any():
                raise ValueError("an episode's first observation has non-zero padding frames; "
                                 "this buffer rebuilds stacks assuming zero padding")
            self.frames[p] = obs[:, -1]
        else:
            self.frames[p] = obs
        is_reset = self._prev_ended.copy()
        self.actions[p] = actions
        self.rewards[p] = np.where(is_reset, 0.0, rewards)
        lost = np.zeros_like(terminated) if life_lost is None else life_lost
        self.terminated[p] = (terminated | lost) & ~is_reset
        self.ended[p] = (terminated | truncated) & ~is_reset
        self.reset_step[p] = is_reset
        self.start[p] = start
        self._next_start = is_reset
        self._prev_ended = self.ended[p].copy()
        self.pos = (p + 1) % self.cap
        self.size = min(self.size + 1, self.cap)

    def _ring(self, logical: np.ndarray) -> np.ndarray:
        return (self.pos - self.size + logical) % self.cap

    def _stacks(self, logical: np.ndarray, env: np.ndarray) -> np.ndarray:
        if self.stack == 1:
            return self.frames[self._ring(logical), env]
        out = np.zeros((len(logical), *self.obs_shape), dtype=self.frames.dtype)
        out[:, -1] = self.frames[self._ring(logical), env]
        ok = np.ones(len(logical), dtype=bool)
        for o in range(1, self.stack):
            ok &= ~self.start[self._ring(logical - o + 1), env]
            out[ok, -1 - o] = self.frames[self._ring(logical[ok] - o), env[ok]]
        return out

    def sample(self, batch_size: int, n_step: int = 1, gamma: float = 0.99,
               device: torch.device | str = "cpu") -> Batch:
        """Uniformly sample n-step transitions (truncated at episode ends)."""
        lo, hi = self.stack - 1, self.size - n_step
        if hi <= lo:
            raise ValueError(f"only {len(self)} transitions stored; too few to sample")
        idx = np.empty(0, dtype=np.int64)
        env = np.empty(0, dtype=np.int64)
        while len(idx) < batch_size:
            i = self.rng.integers(lo, hi, size=2 * batch_size)
            e = self.rng.integers(0, self.num_envs, size=2 * batch_size)
            good = ~self.reset_step[self._ring(i), e]
            idx, env = np.concatenate([idx, i[good]]), np.concatenate([env, e[good]])
        idx, env = idx[:batch_size], env[:batch_size]
        ret = np.zeros(batch_size, dtype=np.float32)
        alive = np.ones(batch_size, dtype=bool)
        term = np.zeros(batch_size, dtype=bool)
        steps = np.zeros(batch_size, dtype=np.int64)
        for j in range(n_step):
            r = self._ring(idx + j)
            ret += np.where(alive, gamma ** j * self.rewards[r, env], 0.0).astype(np.float32)
            steps += alive
            term |= alive & self.terminated[r, env]
            alive &= ~(self.ended[r, env] | self.terminated[r, env])
        disc = np.where(term, 0.0, gamma ** steps).astype(np.float32)
        obs = self._stacks(idx, env)
        nxt = self._stacks(idx + steps, env)
        t = lambda a: torch.as_tensor(a, device=device)
        return Batch(t(obs), t(self.actions[self._ring(idx), env]), t(ret), t(nxt), t(disc))

    # checkpointing: plain arrays so np.load(allow_pickle=False) can read them back
    _ARRAYS = ("frames", "actions", "rewards", "terminated", "ended", "reset_step", "start",
               "_prev_ended", "_next_start")

    def state_dict(self) -> dict[str, np.ndarray]:
        d = {k: getattr(self, k) for k in self._ARRAYS}
        d["meta"] = np.array([self.pos, self.size, self.cap, self.num_envs, self.stack], dtype=np.int64)
        return d

    def load_state_dict(self, d: dict[str, np.ndarray]) -> None:
        pos, size, cap, n, stack = (int(v) for v in d["meta"])
        if (cap, n, stack) != (self.cap, self.num_envs, self.stack) or d["frames"].shape != self.frames.shape:
            raise ValueError("saved replay buffer has another shape than this run's")
        for k in self._ARRAYS:
            setattr(self, k, np.array(d[k]))
        self.pos, self.size = pos, size
