"""The agent at sparsity s for a game: the one rule every chapter, command and table uses.

A game's agent at sparsity ``s`` is its shipped distilled agent ``<game>-pruned-<s>`` when one
ships (pruned in stages and recovered by distillation, :func:`deltalearn.rl.prune_and_distill`),
and otherwise the dense agent pruned in one shot, without any recovery. Sparsity 0 is the
dense agent. Keeping the rule in one place means a table, a sweep and a chapter can never
disagree about which network "Breakout at 0.79" is.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..core.nets import QNetwork, plain_copy
from ..core.pruning import check_sparsity, make_permanent, prune_network
from ..store.agents import agent_names, load_agent, pruned_agent_name

__all__ = ["PrunedAgent", "agent_at"]


@dataclass(frozen=True)
class PrunedAgent:
    """A game's network at one sparsity, and where it came from."""

    net: QNetwork
    """The network, in eval mode, with plain (mask-free) weights."""
    env: str
    """The environment it plays (``CartPole-v1`` or an Atari game)."""
    sparsity: float
    """The fraction of weights removed (0 for the dense agent)."""
    name: str | None
    """The shipped agent it is (``Breakout-pruned-0.79``, or the dense agent's name), ``None`` when
    it was pruned here in one shot."""

    @property
    def fine_tuned(self) -> bool:
        """Whether the pruned weights were recovered by distillation (a shipped pruned agent)."""
        return self.sparsity > 0 and self.name is not None

    @property
    def source(self) -> str:
        """A few words for a table or a plot legend."""
        if self.sparsity == 0:
            return f"dense agent {self.name!r}"
        return f"distilled agent {self.name!r}" if self.name else f"{self.env} pruned one-shot to {self.sparsity:g}"


def agent_at(env: str, sparsity: float, directory: str | os.PathLike | None = None,
             one_shot: bool = False) -> PrunedAgent:
    """``env``'s agent at ``sparsity``: the shipped distilled one if it exists, else one-shot pruning.

    ``directory`` is where the agents and their manifest are (the package's shipped agents by
    default; CartPole's distilled agents ship as book data: pass
    ``directory=dl.study.book_data("pruned")`` and the dense agent still comes from the package). ``one_shot=True`` skips the shipped distilled
    agent, to show what pruning alone keeps.
    """
    s = check_sparsity(sparsity)
    names = agent_names(directory)
    if s > 0 and not one_shot and pruned_agent_name(env, s) in names:
        name = pruned_agent_name(env, s)
        return PrunedAgent(load_agent(name, directory), env, s, name)
    dense = load_agent(env, directory) if env in names else load_agent(env)
    if s == 0:
        return PrunedAgent(dense, env, 0.0, env)
    return PrunedAgent(make_permanent(prune_network(plain_copy(dense), s)).eval(), env, s, None)
