"""The held-out episodes: where the book reports scores, and where nothing was chosen.

Settings (sparsity, thresholds, which pruned agent ships) are chosen on the episodes of
:data:`~deltalearn.study.settings.TUNING_SEED`; scores are reported on the
:data:`~deltalearn.study.settings.HELDOUT_EPISODES` episodes from
:data:`~deltalearn.study.settings.HELDOUT_SEED` on, which no choice saw.
"""
from __future__ import annotations

import os
from typing import Sequence

from torch import nn

from ..core.variants import Variant, as_variant
from ..rl.evaluation import EvalResult, evaluate
from ..store.agents import agent_names, load_agent, record_evaluation
from .settings import HELDOUT_EPISODES, HELDOUT_SEED

__all__ = ["evaluate_heldout"]


def evaluate_heldout(env: str, net: nn.Module | None = None, variant: Variant | None = None, *,
                     sparsity: float | None = None, threshold: float | Sequence[float] | None = None,
                     epsilon: float | None = None, name: str | None = None, record: bool = False,
                     progress: bool = False, directory: str | os.PathLike | None = None,
                     backend: str = "dense") -> EvalResult:
    """Play ``env``'s held-out episodes with ``net`` (by default ``env``'s shipped agent) as
    ``variant`` (or the ``sparsity``/``threshold`` shorthand).

    ``record=True`` stores the result as the shipped agent ``name``'s ``heldout_evaluation`` (per-episode
    scores and lengths) in its manifest. Only a shipped agent played as it ships (dense, the default
    epsilon) may be recorded, so a record always means the same thing. ``backend`` runs a delta
    variant (``"dense"`` or ``"sparse"``, as in :func:`~deltalearn.rl.evaluate`).
    """
    v = as_variant(variant, sparsity=sparsity, threshold=threshold, where="evaluate_heldout")
    if net is None:
        name = name or env
        net = load_agent(name, directory)
    if record and (name is None or name not in agent_names(directory) or v != Variant() or epsilon is not None):
        raise ValueError("a held-out record is a shipped agent's own evaluation: it needs the agent's name (got "
                         f"{name!r}), the dense variant (got {v.label}) and the default epsilon (got {epsilon})")
    res = evaluate(net, env, episodes=HELDOUT_EPISODES, seed=HELDOUT_SEED, variant=v, epsilon=epsilon,
                   progress=progress, backend=backend)
    if record:
        record_evaluation(name, "heldout_evaluation", res.record(lengths=True), directory)
    return res
