"""When to prune while training: the cubic sparsity schedule of Zhu & Gupta (2017)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .dqn_config import DQNConfig

__all__ = ["PruningSchedule"]


@dataclass(frozen=True)
class PruningSchedule:
    """Sparsity rising from 0 at ``start`` to ``final`` at ``end``, fast at first, then gently.

    ``s(t) = final * (1 - (1 - f)^3)`` with ``f`` the fraction of the way from ``start`` to
    ``end``: most weights go early, while the network still has many to spare, and the last
    few are removed slowly. Rounds of pruning fall every ``every`` agent steps, plus one
    exactly at ``end``. A ``final`` of 0 never prunes.
    """

    final: float
    start: int
    end: int
    every: int

    @classmethod
    def from_config(cls, cfg: DQNConfig) -> "PruningSchedule":
        """The schedule of a run; ``prune_end`` 0 means three quarters of ``total_steps``."""
        end = cfg.prune_end or int(cfg.total_steps * 3 / 4)
        return cls(cfg.sparsity, cfg.prune_start, end, cfg.prune_every)

    def sparsity_at(self, step: int) -> float:
        """The sparsity the network should have after ``step`` agent steps."""
        if self.final <= 0 or step < self.start:
            return 0.0
        frac = min(1.0, (step - self.start) / max(1, self.end - self.start))
        return self.final * (1 - (1 - frac) ** 3)

    def first_round(self, step: int = 0) -> float:
        """The first round of a run starting, or resuming, at ``step`` (inf: none is left)."""
        if self.final <= 0:
            return math.inf
        return self.start if step <= self.start else self.next_round(step)

    def next_round(self, step: int) -> float:
        """The step of the round after one at ``step``: on the ``every`` grid, or ``end``; inf once done."""
        if self.sparsity_at(step) >= self.final:
            return math.inf
        grid = (step // self.every + 1) * self.every
        return min(grid, self.end) if step < self.end else math.inf
