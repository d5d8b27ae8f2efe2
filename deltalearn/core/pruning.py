"""Unstructured magnitude pruning, per layer (the paper-like default) or global.

Built on ``torch.nn.utils.prune``: a pruned layer keeps ``weight_orig`` and a 0/1
``weight_mask`` and recomputes ``weight = weight_orig * mask`` before every forward, so
pruned weights stay exactly zero while the network is fine-tuned. The layers pruned are the
Conv2d / Linear layers of the network's forward (:func:`~deltalearn.core.counting.weight_layers`),
so any network that can be counted can be pruned.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from .counting import layer_names, weight_layers

__all__ = ["check_sparsity", "prune_network", "make_permanent", "sparsity_report", "SparsityReport",
           "is_pruned"]


def check_sparsity(sparsity: float) -> float:
    """Validate a sparsity: a fraction of weights to remove in [0, 1)."""
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise ValueError(f"sparsity must be in [0, 1) (the fraction of weights removed), got {sparsity!r}")
    return s


def is_pruned(net: nn.Module) -> bool:
    """True when some layer of ``net`` carries a pruning mask."""
    return any(hasattr(m, "weight_mask") for m in weight_layers(net))


def prune_network(net: nn.Module, sparsity: float, scope: str = "layer",
                  include_last: bool = True) -> nn.Module:
    """Remove the ``sparsity`` fraction of smallest-magnitude weights, in place; returns ``net``.

    ``net`` is our QNetwork or any module whose forward is a supported chain; anything else is
    refused (:class:`~deltalearn.core.chain.UnsupportedNetwork`) before a weight is touched.

    ``scope="layer"`` prunes every layer to the same fraction (L1 per layer); ``"global"``
    ranks all weights together, which tends to spare small early layers. Pruning an already
    pruned network prunes further (masks multiply). Biases are never pruned.
    """
    s = check_sparsity(sparsity)
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    layers = weight_layers(net)
    if not include_last:
        layers = layers[:-1]
    if s == 0.0:
        return net
    if scope == "layer":
        for m in layers:
            # amount is relative to the weights still unpruned: reach s of the whole layer
            already = _zero_fraction(m)
            amount = 0.0 if already >= s else (s - already) / (1 - already)
            prune.l1_unstructured(m, "weight", amount=amount)
    else:
        total = sum(m.weight.numel() for m in layers)
        already = sum(_zero_fraction(m) * m.weight.numel() for m in layers) / total
        amount = 0.0 if already >= s else (s - already) / (1 - already)
        prune.global_unstructured([(m, "weight") for m in layers], pruning_method=prune.L1Unstructured,
                                  amount=amount)
    return net


def _zero_fraction(m: nn.Module) -> float:
    """Fraction already pruned by a mask; torch prunes a masked tensor relative to what remains.

    An unmasked tensor counts as 0: L1 pruning then ranks its zeros first anyway.
    """
    mask = getattr(m, "weight_mask", None)
    return 0.0 if mask is None else float((mask == 0).sum()) / mask.numel()


def make_permanent(net: nn.Module) -> nn.Module:
    """Fold masks into plain weights (zeros stay zeros); the net then saves like a dense one."""
    for m in weight_layers(net):
        if prune.is_pruned(m) and hasattr(m, "weight_mask"):
            prune.remove(m, "weight")
    return net


@dataclass
class SparsityReport:
    """Fraction of zero weights per weight layer and overall."""

    names: list[str]
    zeros: list[int]
    sizes: list[int]

    @property
    def total(self) -> float:
        return sum(self.zeros) / sum(self.sizes)

    def as_dict(self) -> dict[str, float]:
        return {n: z / s for n, z, s in zip(self.names, self.zeros, self.sizes)} | {"total": self.total}

    def __str__(self) -> str:
        return "\n".join(f"{n:>6}: {z / s:6.1%} of {s:,} weights zero"
                         for n, z, s in zip(self.names, self.zeros, self.sizes)) + f"\n total: {self.total:6.1%}"

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{n}</td><td style='text-align:right'>{s:,}</td>"
                       f"<td style='text-align:right'>{z / s:.1%}</td></tr>"
                       for n, z, s in zip(self.names, self.zeros, self.sizes))
        return ("<table><thead><tr><th>layer</th><th>weights</th><th>zero</th></tr></thead><tbody>"
                + rows + f"<tr><td>total</td><td style='text-align:right'>{sum(self.sizes):,}</td>"
                f"<td style='text-align:right'>{self.total:.1%}</td></tr></tbody></table>")


def sparsity_report(net: nn.Module) -> SparsityReport:
    """Zero weights per layer, counted on the effective (masked) weights."""
    layers = weight_layers(net)
    with torch.no_grad():
        zeros = [int((m.weight == 0).sum()) for m in layers]
    return SparsityReport(layer_names(net), zeros, [m.weight.numel() for m in layers])
