"""Delta networks: update a neuron only when its input changed by more than a threshold.

Each weight layer keeps, per input element, the value it last transmitted (``x_ref``) and,
per output, its accumulated pre-activation (``z``, which starts at the bias). A step sends
only the input changes ``d = x - x_ref`` with ``|d| > threshold`` and adds ``W * d`` to
``z``. Because ``x_ref`` moves by exactly what was sent, the gap between the true input and
what the layer has seen never exceeds the threshold: errors do not drift. The first step
after :meth:`DeltaNetwork.reset` sends everything, i.e. it is a dense pass.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .chain import trace_chain
from .counting import significant_products

__all__ = ["DeltaNetwork", "check_threshold"]


def check_threshold(threshold: float) -> float:
    """Validate one delta threshold: a finite number >= 0."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number >= 0, got {threshold!r}") from None
    if math.isnan(t) or t < 0 or math.isinf(t):
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    return t


class DeltaNetwork(nn.Module):
    """A stateful, batched delta version of a trained network.

    ``net`` is our :class:`~deltalearn.core.nets.QNetwork` or any module whose forward is a chain
    of supported operations (see :mod:`deltalearn.core.chain`); ``example_input``, if given, is
    run once to check the chain early. ``threshold`` is one number for every weight layer or a
    sequence with one per weight layer (applied to that layer's input). Weights are copied when
    the delta network is built (pruned zeros included); later changes to ``net`` are not seen.
    Row ``b`` of every batch is one independent stream (one environment of a vector env).

    ``drift_free=False`` is the naive variant for teaching: it compares each input with the
    previous *input* instead of the last *transmitted* value, so sub-threshold changes are
    lost for good and the output drifts away from the dense network's.

    ``backend="dense"`` (the default, the reference for the chapters and tests) applies each delta
    with a dense torch conv2d / linear; ``backend="sparse"`` (:mod:`deltalearn.core.sparse_delta`)
    does the same update on the CPU with compiled kernels whose work grows with the changes sent,
    and falls back per layer to a dense pass of the delta when a layer sends more than
    ``crossover`` of its inputs (default: measured per layer, see
    :func:`~deltalearn.core.sparse_delta.layer_crossover`). Its :attr:`last_sent` stays empty.
    """

    def __init__(self, net: nn.Module, threshold: float | Sequence[float] = 0.0,
                 drift_free: bool = True, example_input: torch.Tensor | None = None,
                 backend: str = "dense", crossover: float | None = None) -> None:
        super().__init__()
        self.chain = trace_chain(net)
        """The network's operations; :meth:`Chain.run` replays them with a callback per weight layer."""
        if example_input is not None:
            self.chain.input_shapes(torch.as_tensor(example_input))
        self.net = net
        self.names = list(self.chain.names)
        n = len(self.names)
        if isinstance(threshold, (int, float, str)) or not isinstance(threshold, Iterable):
            # one value for all layers (a string or None is checked, not iterated)
            ths = [check_threshold(threshold)] * n
        else:
            ths = [check_threshold(t) for t in threshold]
            if len(ths) != n:
                raise ValueError(f"got {len(ths)} thresholds for {n} weight layers ({', '.join(self.names)})")
        self.thresholds = ths
        self.drift_free = drift_free
        with torch.no_grad():
            self.weights = [m.weight.detach().clone() for m in self.chain.weights]
            self.biases = [None if m.bias is None else m.bias.detach().clone() for m in self.chain.weights]
        self.x_ref: list[torch.Tensor] = []
        self.z: list[torch.Tensor] = []
        self.fresh: torch.Tensor | None = None
        self.last_counts: torch.Tensor | None = None
        """Significant products of the last step, int64 (batch, layers)."""
        self.last_sent: list[torch.Tensor] = []
        """Per weight layer, the boolean mask of input changes sent at the last step (dense backend)."""
        if backend not in ("dense", "sparse"):
            raise ValueError(f"backend must be 'dense' or 'sparse', got {backend!r}")
        if crossover is not None and backend != "sparse":
            raise ValueError(f"crossover={crossover!r} only applies to backend='sparse'")
        self.backend = backend
        self._engine = None
        if backend == "sparse":
            from .sparse_delta import SparseEngine  # numba compiles on first use: import it only when asked
            self._engine = SparseEngine(self, crossover)

    @property
    def batch_size(self) -> int | None:
        if self._engine is not None:
            return None if self._engine.fresh is None else int(self._engine.fresh.shape[0])
        return None if self.fresh is None else int(self.fresh.shape[0])

    def reset(self, rows: torch.Tensor | Sequence[int] | None = None) -> None:
        """Start new episodes: all rows (``None``) or the given rows (indices or bool mask).

        The next step of a reset row is a dense pass that initialises its state.
        """
        if self._engine is not None:
            self._engine.reset(rows)
            return
        if rows is None or self.fresh is None:
            self.x_ref, self.z, self.fresh = [], [], None
            return
        idx = torch.as_tensor(rows, device=self.fresh.device)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        self.fresh[idx] = True

    def _init_state(self, obs: torch.Tensor) -> None:
        """Zero references and bias-only accumulators, shaped by one pass of ``obs``."""
        dev = obs.device
        self.weights = [w.to(dev) for w in self.weights]
        self.biases = [None if bb is None else bb.to(dev) for bb in self.biases]
        x_ref, z = [], []

        def init(k: int, m: nn.Module, h: torch.Tensor) -> torch.Tensor:
            x_ref.append(torch.zeros_like(h))
            out = self._layer(k, m, torch.zeros_like(h), bias=True)
            z.append(out)
            return out

        with torch.no_grad():
            self.chain.run(obs, init)
        self.x_ref, self.z = x_ref, z
        self.fresh = torch.ones(obs.shape[0], dtype=torch.bool, device=dev)

    def _layer(self, k: int, m: nn.Module, d: torch.Tensor, bias: bool) -> torch.Tensor:
        """Weight layer ``k`` (with the weights copied at construction) applied to ``d``."""
        w = self.weights[k].to(d.device)
        b = self.biases[k].to(d.device) if (bias and self.biases[k] is not None) else None
        if isinstance(m, nn.Linear):
            return F.linear(d, w, b)
        return F.conv2d(d, w, b, stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups)

    def forward(self, obs: torch.Tensor, count: bool = True) -> torch.Tensor:
        """One step for every row: returns the Q-values (batch, actions).

        With ``count=True`` the significant products per row and layer are left in
        :attr:`last_counts`.
        """
        obs = torch.as_tensor(obs)
        if self._engine is not None:  # its fused path runs no torch op, so no grad mode to set (~3 us a step)
            return self._engine.forward(obs, count)
        return self._dense_forward(obs, count)

    @torch.no_grad()
    def _dense_forward(self, obs: torch.Tensor, count: bool) -> torch.Tensor:
        """The dense-backed step (``backend="dense"``)."""
        if self.fresh is None:
            self._init_state(obs)
        elif obs.shape[0] != self.fresh.shape[0]:
            raise ValueError(f"batch of {obs.shape[0]} observations, but the delta state holds "
                             f"{self.fresh.shape[0]} streams; call reset() to start over")
        fresh = self.fresh
        counts: list[torch.Tensor] = []
        sent: list[torch.Tensor] = []

        def delta_layer(k: int, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
            x_ref, z = self.x_ref[k], self.z[k]
            if fresh.any():
                # a new episode: forget the old state so this step is a dense pass
                x_ref[fresh] = 0
                z[fresh] = self._layer(k, m, torch.zeros_like(x[fresh]), bias=True)
            d = x - x_ref
            keep = d.abs() > self.thresholds[k]
            keep[fresh] = True
            d = torch.where(keep, d, torch.zeros_like(d))
            if self.drift_free:
                x_ref += d
            else:
                x_ref.copy_(x)
            z += self._layer(k, m, d, bias=False)
            sent.append(d != 0)
            if count:
                counts.append(significant_products(m, d != 0, weight=self.weights[k]))
            return z.clone()

        out = self.chain.run(obs, delta_layer)
        self.fresh = torch.zeros_like(fresh)
        self.last_sent = sent
        self.last_counts = torch.stack(counts, dim=1) if count else None
        return out
