"""The settings of one Double DQN run, in one dataclass (stored with every run file and agent)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .._fields import checked_fields
from ..core.pruning import check_sparsity
from .envs import is_atari

__all__ = ["DQNConfig"]


@dataclass
class DQNConfig:
    """Hyperparameters of one DQN run. Step counts are *agent* steps summed over envs."""

    env: str = "CartPole-v1"
    """``CartPole-v1`` or an Atari game name such as ``Breakout``."""
    total_steps: int = 50_000
    """Agent steps to train for (one Atari agent step is 4 frames)."""
    seed: int = 0
    """Seeds the networks, exploration, replay sampling and environments."""
    num_envs: int = 1
    """Environments stepped together; more envs mean cheaper steps, same replay ratio."""
    hidden: tuple[int, ...] = (128, 128)
    """MLP hidden widths (vector observations only)."""
    buffer_size: int = 50_000
    """Replay capacity in transitions (Atari frames are stored once each)."""
    batch_size: int = 64
    """Transitions per gradient update."""
    gamma: float = 0.99
    """Discount factor."""
    n_step: int = 1
    """Rewards summed before bootstrapping (n-step returns speed up credit assignment)."""
    lr: float = 1e-3
    """Adam learning rate."""
    adam_eps: float = 1e-8
    """Adam epsilon (Atari agents commonly use 1.5e-4)."""
    learning_starts: int = 1_000
    """Agent steps of experience collected before the first update."""
    train_every: int = 1
    """Agent steps per gradient update (the inverse replay ratio)."""
    target_update: int = 250
    """Gradient updates between hard copies of the online network to the target network."""
    eps_start: float = 1.0
    """Exploration epsilon at the start."""
    eps_end: float = 0.02
    """Exploration epsilon after the decay."""
    eps_decay_steps: int = 10_000
    """Agent steps over which epsilon falls linearly."""
    max_grad_norm: float = 10.0
    """Gradient norm clip."""
    clip_rewards: bool = False
    """Clip training rewards to [-1, 1] (Atari)."""
    life_loss_terminal: bool = False
    """Treat a lost life as terminal for the TD target (Atari)."""
    eval_every: int = 5_000
    """Agent steps between evaluations (0: none)."""
    eval_episodes: int = 10
    """Episodes per periodic evaluation."""
    eval_epsilon: float | None = None
    """Epsilon during evaluation (None: 0.05 Atari, 0 CartPole)."""
    eval_max_steps: int | None = None
    """Cap on an evaluation episode's length (None: the env's own limit)."""
    stop_score: float | None = None
    """Stop early once a periodic evaluation's mean score reaches this (None: never)."""
    checkpoint_every: int = 10_000
    """Agent steps between checkpoints."""
    save_replay: bool = True
    """Save the replay buffer with each checkpoint, so a resumed run loses nothing."""
    sparsity: float = 0.0
    """Prune to this per-layer sparsity while training (cubic schedule, Zhu & Gupta 2017)."""
    prune_start: int = 0
    """Agent step at which pruning starts."""
    prune_end: int = 0
    """Agent step at which the final sparsity is reached (0: at total_steps * 3/4)."""
    prune_every: int = 1_000
    """Agent steps between pruning rounds."""
    threads: int = 0
    """torch threads (0: torch's default)."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""

    @classmethod
    def cartpole(cls, **kw: Any) -> "DQNConfig":
        """Settings that solve CartPole-v1 in under a minute on one CPU thread.

        3-step returns made it reliable: seeds 0-5 all reached a 100-episode mean >= 475
        (with 1-step returns seed 1 did not within 50k steps).

        One torch thread: for a network this small, thread synchronisation costs more than it
        saves, and on a busy machine two threads can be ten times slower.
        """
        base: dict[str, Any] = dict(hidden=(256, 256), lr=2.3e-3, n_step=3, buffer_size=100_000, train_every=2,
                                    target_update=128, eps_decay_steps=8_000, eps_end=0.04,
                                    eval_every=2_500, stop_score=500.0, threads=1)
        base.update(kw)
        return cls(**base)

    @classmethod
    def atari(cls, env: str, **kw: Any) -> "DQNConfig":
        """CPU-budget Atari settings: 4 envs, 3-step Double DQN, 1 update per 4 agent steps."""
        base = dict(env=env, total_steps=1_000_000, num_envs=4, buffer_size=200_000, batch_size=32,
                    n_step=3, lr=1e-4, adam_eps=1.5e-4, learning_starts=20_000, train_every=4,
                    target_update=2_000, eps_start=1.0, eps_end=0.01, eps_decay_steps=250_000,
                    clip_rewards=True, life_loss_terminal=True, eval_every=100_000, eval_episodes=5,
                    eval_max_steps=10_000, checkpoint_every=25_000, prune_every=10_000)
        base.update(kw)
        return cls(**base)

    def validate(self) -> None:
        """Raise ``ValueError`` for a setting no run can use, before any environment starts."""
        is_atari(self.env)  # raises for unknown envs
        if self.total_steps < 1 or self.num_envs < 1 or self.batch_size < 1 or self.n_step < 1:
            raise ValueError("total_steps, num_envs, batch_size and n_step must be >= 1")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        check_sparsity(self.sparsity)
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (``hidden`` as a list), as stored in run files and manifests."""
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DQNConfig":
        """The inverse of :meth:`to_dict`; raises ``ValueError`` naming any unknown key.

        A misspelt or foreign key (a run file of another tool, a distillation record) would
        otherwise be dropped without a word and the run would quietly use a default. Every
        config committed with this project (shipped agents, ``runs/*``) uses only today's fields.
        """
        kw = checked_fields(cls, d)
        if "hidden" in kw:
            kw["hidden"] = tuple(kw["hidden"])
        return cls(**kw)
