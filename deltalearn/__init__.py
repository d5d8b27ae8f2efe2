"""deltalearn: fewer multiplications for DQN agents through pruning and delta networks.

A chapter needs only ``import deltalearn as dl``; everything public is re-exported here.

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

from .checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint
from .counting import (COUNT_FLOOR, COUNT_RTOL, LayerCount, MultiplicationReport, combine, count_dense,
                       count_forward, count_weights, counts_close, dense_counts, dense_products, layer_names,
                       significant_products, weight_layers)
from .delta import DeltaNetwork, check_threshold
from .dqn import DQNConfig, TrainResult, copy_weights, load_state, select_device, train
from .envs import (ENV_NAMES, GAMES, GameInfo, action_count, check_actions, game_info, hns, is_atari, make_env,
                   make_vector_env, network_actions)
from .evaluation import EvalResult, Policy, ReplayResult, default_epsilon, evaluate, make_policy, replay
from .nets import MODELS, NetworkSpec, QNetwork, build_network, mlp_qnet, nature_dqn, plain_copy
from .pruning import SparsityReport, check_sparsity, is_pruned, make_permanent, prune_network, sparsity_report
from .replay import Batch, ReplayBuffer

from .distill import DistillConfig, prune_and_distill
from .agents import (AGENT_DIR, agent_names, agent_record, agent_table, export_agent, fp16_rounded, load_agent,
                     load_agent_or_file, load_network_file, pruned_agent_name, record_evaluation)
from .stats import PairedComparison, paired_comparison
from .reproduce import (FIGURE_GAMES, FIRST_PERSON_GAMES, HELDOUT_EPISODES, HELDOUT_SEED, INPUT_THRESHOLDS,
                        TUNING_EPISODES, TUNING_SEED, OUR_SETTINGS, PAPER_RANGES,
                        PAPER_SETTINGS, SIX_GAMES, SWEEP_THRESHOLDS, reproduce_sweep, reproduce_table,
                        layer_shares, six_game_summary, summary_row, sweep_thresholds, table_setting, write_results)
from .trajectories import load_trajectory, record_trajectory, save_trajectory, trajectory_names

__version__ = "0.1.0"
