"""Replay memory for vector envs, storing each Atari frame once.

A stacked Atari observation shares 3 of its 4 frames with the next one, so storing
``(obs, next_obs)`` pairs would keep every frame 8 times. This buffer keeps only the newest
frame of each observation, per environment, in a ring, and rebuilds stacks on sampling
(zero frames before an episode's first observation, as the envs pad them). Next
observations come from the following slot. It assumes next-step autoreset (gymnasium 1.x
vector envs): after a step that ends an episode, the next ``step`` only resets.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..store.checkpoint import atomic_write

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

    # checkpointing: plain arrays so np.load(allow_pickle=False) can read them back; of the
    # per-slot ones, (cap, num_envs, ...), only the filled slots are saved
    _ARRAYS = ("frames", "actions", "rewards", "terminated", "ended", "reset_step", "start")
    _PER_ENV = ("_prev_ended", "_next_start")

    def state_dict(self) -> dict[str, np.ndarray]:
        """The buffer as plain arrays, holding only the filled slots.

        The arrays are preallocated at full capacity, so saving them whole would write GBs of
        zeros early in an Atari run. Until the ring wraps around the filled slots are
        ``0 .. size-1`` (``pos == size``); after that ``size == cap`` and all are saved.
        """
        d = {k: getattr(self, k)[:self.size] for k in self._ARRAYS}
        d.update({k: getattr(self, k) for k in self._PER_ENV})
        d["meta"] = np.array([self.pos, self.size, self.cap, self.num_envs, self.stack], dtype=np.int64)
        return d

    def load_state_dict(self, d: dict[str, np.ndarray]) -> None:
        """Restore from :meth:`state_dict` into arrays of this buffer's full capacity.

        Also reads older files whose per-slot arrays hold all ``cap`` slots. Everything is
        checked before anything is assigned, so a refused file leaves the buffer as it was.
        """
        self._restore(d, adopt=False)

    def _restore(self, d: dict[str, np.ndarray], adopt: bool) -> None:
        """:meth:`load_state_dict`; ``adopt`` keeps full arrays that nothing else references
        (just read from a file) instead of copying them, which spares a GB of RAM."""
        missing = [k for k in ("meta", *self._ARRAYS, *self._PER_ENV) if k not in d]
        if missing:
            raise ValueError(f"saved replay buffer lacks {missing}; it is not a deltalearn replay file")
        pos, size, cap, n, stack = (int(v) for v in d["meta"])
        if (cap, n, stack) != (self.cap, self.num_envs, self.stack):
            raise ValueError(f"saved replay buffer has another shape than this run's: {cap} slots x {n} envs, "
                             f"stack {stack}, not {self.cap} x {self.num_envs}, stack {self.stack}")
        if not 0 <= size <= cap or not 0 <= pos < cap or (size < cap and pos != size):
            raise ValueError(f"saved replay buffer has inconsistent counters (pos {pos}, size {size}, cap {cap})")
        fresh: dict[str, np.ndarray] = {}
        for k in self._ARRAYS:
            mine, saved = getattr(self, k), d[k]
            # a file holds the filled slots (size) or, written before that, all of them (cap)
            if (saved.ndim != mine.ndim or saved.shape[0] not in (size, cap) or saved.shape[1:] != mine.shape[1:]
                    or saved.dtype != mine.dtype):
                raise ValueError(f"saved replay buffer has another shape than this run's: {k} is "
                                 f"{saved.dtype}{list(saved.shape)}, expected {mine.dtype}{[size, *mine.shape[1:]]}")
            if adopt and size == cap and saved.flags.writeable and saved.flags.c_contiguous:
                fresh[k] = saved
                continue
            # unfilled slots are zero, as in a buffer that never wrote them; np.zeros (not
            # zeros_like) leaves their pages untouched, so a resumed early run stays small in RAM
            full = np.zeros(mine.shape, dtype=mine.dtype)
            full[:size] = saved[:size]
            fresh[k] = full
        for k in self._PER_ENV:
            if d[k].shape != (self.num_envs,):
                raise ValueError(f"saved replay buffer has another shape than this run's: {k} is {list(d[k].shape)}")
            fresh[k] = np.array(d[k], dtype=bool)
        for k, v in fresh.items():
            setattr(self, k, v)
        self.pos, self.size = pos, size

    def save(self, path: str | os.PathLike) -> None:
        """Atomically write :meth:`state_dict` (the filled slots only) to an ``.npz`` file.

        Uncompressed, as before: a checkpoint costs disk I/O but no CPU time of the training loop.
        """
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: given a name, np.savez would append ".npz"
                np.savez(f, **self.state_dict())

        atomic_write(path, write)

    def load(self, path: str | os.PathLike) -> None:
        """Restore from a file written by :meth:`save` (or an older full-capacity one).

        Raises ``ValueError`` naming the file when it is unreadable or for another buffer;
        the buffer is then unchanged.
        """
        try:
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        except Exception as e:  # a truncated zip, a foreign file: numpy raises many types
            raise ValueError(f"replay file {str(path)!r} is unreadable ({type(e).__name__}: {e})") from None
        try:
            self._restore(d, adopt=True)
        except ValueError as e:
            raise ValueError(f"replay file {str(path)!r}: {e}") from None
