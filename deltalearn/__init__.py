"""deltalearn: fewer multiplications for DQN agents through pruning and delta networks.

A chapter needs only ``import deltalearn as dl``. The top level holds what a student uses in the
chapters; everything else lives in four namespaces, one per floor of the library:

- ``dl.core``: networks, counting, pruning, delta networks (modelling and measurement)
- ``dl.store``: checkpoint files, shipped agents, recorded episodes
- ``dl.rl``: environments, replay memory, Double DQN, evaluation, distillation
- ``dl.study``: the paper's games and settings, reproduced tables and sweeps, statistics

A floor imports only the floors listed before it; ``deltalearn.cli`` sits on top.

Environment variable ``DELTALEARN_ONEDNN``: ``0`` (or ``off``, ``false``, ``no``) switches
torch's oneDNN (mkldnn) kernels off when deltalearn is imported, ``1`` (or ``on``, ``true``,
``yes``, or unset) leaves torch's default. oneDNN sums a convolution's products in another
order than torch's own kernels, so significant-product counts behind a float layer move in
their last few digits (see :data:`deltalearn.counting.COUNT_RTOL`); running both ways checks
that no result depends on it. Child processes (notebook kernels, workers) inherit the
variable, so ``DELTALEARN_ONEDNN=0 python -m pytest`` checks everything without oneDNN.
"""
import os as _os

import torch as _torch


def _onednn_switch(value: str | None) -> None:
    """Apply a ``DELTALEARN_ONEDNN`` value: off values switch oneDNN off, on values leave it."""
    v = (value or "").strip().lower()
    if v in ("0", "off", "false", "no"):
        _torch.backends.mkldnn.enabled = False
    elif v not in ("", "1", "on", "true", "yes"):
        raise ValueError(f"DELTALEARN_ONEDNN={value!r}: use 0/off to switch oneDNN off, 1/on (or unset) "
                         "for torch's default")


_onednn_switch(_os.environ.get("DELTALEARN_ONEDNN"))

from . import core, rl, store, study
from .core import (DeltaNetwork, MultiplicationReport, QNetwork, Variant, count_dense, count_significant,
                   count_weights, counts_close, layer_names, make_permanent, mlp_qnet, nature_dqn, prune_network,
                   sparsity_report, weight_layers)
from .rl import DQNConfig, ReplayBuffer, double_dqn_update, evaluate, make_env, replay, train
from .store import agent_names, agent_record, load_agent, load_trajectory
from .study import agent_at, load_sweep, load_table, paired_difference, reproduce_game

__all__ = ["core", "rl", "store", "study",
           "nature_dqn", "mlp_qnet", "QNetwork", "weight_layers", "layer_names", "count_dense", "count_significant",
           "count_weights", "counts_close", "MultiplicationReport", "prune_network", "make_permanent",
           "sparsity_report", "DeltaNetwork", "Variant",
           "make_env", "DQNConfig", "train", "double_dqn_update", "ReplayBuffer", "evaluate", "replay",
           "load_agent", "agent_names", "agent_record", "load_trajectory",
           "agent_at", "load_table", "load_sweep", "paired_difference", "reproduce_game"]

__version__ = "0.1.0"
