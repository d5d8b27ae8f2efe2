"""One value for "which network runs": dense, pruned, delta or pruned+delta, and its settings.

A :class:`Variant` names everything that turns a trained network into the one that is played
or replayed: the fraction of weights pruned (and how they are ranked), and whether a delta
network runs on top, with which threshold(s) and whether it is drift-free. A :class:`Policy` is
that variant built on a network, ready to return Q-values and count multiplications.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .._fields import checked_fields
from .counting import dense_counts, forward_with_counts, layer_names
from .delta import DeltaNetwork, check_threshold
from .nets import plain_copy
from .pruning import check_sparsity, make_permanent, prune_network

__all__ = ["Variant", "Policy", "as_variant"]

SCOPES = ("layer", "global")


def _check_thresholds(threshold: Any) -> float | tuple[float, ...] | None:
    """None, one checked threshold, or a non-empty tuple of them (one per weight layer)."""
    if threshold is None:
        return None
    scalar_array = isinstance(threshold, (np.ndarray, torch.Tensor)) and threshold.ndim == 0
    if isinstance(threshold, (str, bytes)) or not isinstance(threshold, Iterable) or scalar_array:
        return check_threshold(threshold)  # a string is checked as one value, not iterated
    ths = tuple(check_threshold(t) for t in threshold)
    if not ths:
        raise ValueError("threshold is an empty sequence; give one number, one per weight layer, "
                         "or None for no delta network")
    return ths


@dataclass(frozen=True)
class Variant:
    """What runs instead of the dense network: pruning, a delta network, or both.

    ``Variant()`` is the dense network; ``Variant(sparsity=0.79, threshold=0.001)`` the paper's
    Breakout setting. Values are checked when the variant is made, so a bad one fails before
    any network is copied or any frame played.
    """

    sparsity: float = 0.0
    """Fraction of weights removed by magnitude, in [0, 1); 0 means no pruning."""
    threshold: float | tuple[float, ...] | None = None
    """Delta threshold: ``None`` means no delta network, a number (``0`` included: an exact delta
    network) applies to every weight layer's input, a tuple holds one per weight layer."""
    scope: str = "layer"
    """How pruned weights are ranked: ``"layer"`` (each layer to the same sparsity, the paper-like
    default) or ``"global"`` (all weights ranked together)."""
    drift_free: bool = True
    """Whether the delta network compares inputs with what it last sent (``True``, no drift) or
    with the previous input (``False``, the naive version chapter 5 teaches with)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparsity", check_sparsity(self.sparsity))
        object.__setattr__(self, "threshold", _check_thresholds(self.threshold))
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(map(repr, SCOPES))}, got {self.scope!r}")
        if not isinstance(self.drift_free, (bool, np.bool_)):
            raise ValueError(f"drift_free must be True or False, got {self.drift_free!r}")
        object.__setattr__(self, "drift_free", bool(self.drift_free))

    @classmethod
    def dense(cls) -> "Variant":
        """The network as trained: no pruning, no delta network."""
        return cls()

    @classmethod
    def pruned(cls, sparsity: float, scope: str = "layer") -> "Variant":
        """Pruning alone."""
        return cls(sparsity=sparsity, scope=scope)

    @classmethod
    def delta(cls, threshold: float | Sequence[float], drift_free: bool = True) -> "Variant":
        """A delta network alone (``threshold`` is required: ``None`` would be no delta network)."""
        if threshold is None:
            raise ValueError("Variant.delta needs a threshold (0 for an exact delta network)")
        return cls(threshold=threshold, drift_free=drift_free)

    @property
    def is_pruned(self) -> bool:
        return self.sparsity > 0

    @property
    def is_delta(self) -> bool:
        return self.threshold is not None

    @property
    def name(self) -> str:
        """``dense``, ``pruned``, ``delta`` or ``pruned+delta``."""
        parts = (["pruned"] if self.is_pruned else []) + (["delta"] if self.is_delta else [])
        return "+".join(parts) or "dense"

    @property
    def label(self) -> str:
        """The name with its settings, e.g. ``pruned+delta (sparsity 0.79, threshold 0.001)``;
        the scope and drift are shown only when they differ from the defaults."""
        bits = []
        if self.is_pruned:
            bits.append(f"sparsity {self.sparsity:g}" + (f" {self.scope}" if self.scope != "layer" else ""))
        if self.is_delta:
            th = self.threshold
            bits.append(f"threshold {th if isinstance(th, float) else list(th)}")
            if not self.drift_free:
                bits.append("drifting")
        return self.name + (f" ({', '.join(bits)})" if bits else "")

    def __str__(self) -> str:
        return self.label

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (a per-layer threshold becomes a list)."""
        th = self.threshold
        return {"sparsity": self.sparsity, "threshold": list(th) if isinstance(th, tuple) else th,
                "scope": self.scope, "drift_free": self.drift_free}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Variant":
        """The inverse of :meth:`to_dict`; missing keys take their defaults, unknown keys raise."""
        return cls(**checked_fields(cls, d))


def as_variant(variant: Variant | None = None, *, sparsity: float | None = None,
               threshold: float | Sequence[float] | None = None, where: str = "") -> Variant:
    """The variant meant by a call that takes ``variant`` or the ``sparsity``/``threshold`` shorthand.

    Giving both is an error (one of them would be silently ignored); giving neither means dense.
    ``where`` names the calling function in the error.
    """
    at = f"{where}: " if where else ""
    if variant is None:
        return Variant(0.0 if sparsity is None else sparsity, threshold)
    if not isinstance(variant, Variant):
        raise TypeError(f"{at}variant must be a Variant (or None for the shorthand), got "
                        f"{type(variant).__name__} {variant!r}")
    given = [f"{k}={v!r}" for k, v in (("sparsity", sparsity), ("threshold", threshold)) if v is not None]
    if given:
        raise ValueError(f"{at}give either variant= or the shorthand sparsity=/threshold=, not both: "
                         f"got variant={variant} and {', '.join(given)}")
    return variant


class Policy:
    """A variant built on a network: Q-values plus multiplication counts for a batch of streams.

    The network is copied (``net`` is never changed), pruned if the variant says so, and wrapped
    in a :class:`~deltalearn.core.delta.DeltaNetwork` if it has a threshold. ``example_input`` is
    one batch of observations (any values, the right shape and dtype); a network that does not
    declare its ``input_shape`` needs it to be counted and delta-ized. ``backend`` is the delta
    network's (``"dense"``, the reference, or ``"sparse"``, the compiled engine).
    """

    def __init__(self, net: nn.Module, variant: Variant | None = None,
                 example_input: torch.Tensor | None = None, backend: str = "dense") -> None:
        self.variant = Variant() if variant is None else as_variant(variant)
        v = self.variant
        net = plain_copy(net)
        if v.is_pruned:
            prune_network(net, v.sparsity, scope=v.scope)
            make_permanent(net)
        self.net = net
        # our QNetworks know their input shape; any other network is measured on the example
        example = None if hasattr(net, "input_shape") or example_input is None else \
            torch.as_tensor(example_input, device=next(net.parameters()).device)
        self.delta = None if not v.is_delta else DeltaNetwork(net, v.threshold, drift_free=v.drift_free,
                                                               example_input=example, backend=backend)
        self.names = layer_names(net)
        self.dense_per_step = dense_counts(net, example)

    @property
    def label(self) -> str:
        return self.variant.label

    def reset(self, rows: Sequence[int] | None = None) -> None:
        """Start new episodes in the given rows (all with ``None``); only a delta network has state."""
        if self.delta is not None:
            self.delta.reset(rows)

    def __call__(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Q-values (batch, actions) and significant products (batch, layers)."""
        if self.delta is not None:
            q = self.delta(obs)
            return q, self.delta.last_counts
        return forward_with_counts(self.net, obs)
