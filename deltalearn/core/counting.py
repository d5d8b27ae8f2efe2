"""Counting multiplications: dense (all products) and significant (both operands non-zero).

The paper's unit is the *significant multiplication*: a product whose weight and input are
both non-zero. For one layer it is counted exactly, and cheaply, by running the layer's own
operator on 0/1 masks: ``conv2d(input != 0, weight != 0)`` summed over all outputs gives the
number of (non-zero input, non-zero weight) pairs that meet, with the layer's stride and
padding taken into account.

Which counts are the same on every machine: dense counts, counts on masks of shipped weights
and recorded observations (the first layer, also behind a delta threshold, because the changes
of recorded frames are exact differences), and integer arithmetic on them. A count behind a
float layer is not: another CPU or kernel library sums the products of a convolution in another
order, activations move in their last bits, and an element that sits on a delta threshold or on
ReLU's zero flips. Compare such counts with :func:`counts_close`.
"""
from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .chain import trace_chain

__all__ = [
    "weight_layers", "layer_names", "dense_products", "significant_products", "input_fanouts",
    "forward_with_counts", "count_significant", "LayerCount", "MultiplicationReport", "count_dense",
    "count_weights", "dense_counts", "combine", "COUNT_RTOL", "COUNT_FLOOR", "counts_close",
]


def _example(net: nn.Module, example_input: Any, what: str) -> torch.Tensor:
    """A batch to run ``net`` on for shapes: ``example_input``, else zeros of ``net.input_shape``."""
    if example_input is not None:
        return torch.as_tensor(example_input)
    shape = getattr(net, "input_shape", None)
    if shape is None:
        raise ValueError(f"{what} needs example_input (a batch of one observation) for "
                         f"{type(net).__name__}, which has no input_shape")
    return torch.zeros(1, *shape)


def weight_layers(net: nn.Module, example_input: Any = None) -> list[nn.Module]:
    """The Conv2d / Linear layers of ``net`` in the order its forward calls them (the layers that
    multiply). ``example_input``, if given, is run through the net to check the whole chain."""
    chain = trace_chain(net)
    if example_input is not None:
        chain.input_shapes(torch.as_tensor(example_input))
    return list(chain.weights)


def layer_names(net: nn.Module, example_input: Any = None) -> list[str]:
    """Short names ``conv1, conv2, ..., fc1, fc2`` for the weight layers."""
    chain = trace_chain(net)
    if example_input is not None:
        chain.input_shapes(torch.as_tensor(example_input))
    return list(chain.names)


def _conv_args(layer: nn.Conv2d) -> dict[str, Any]:
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        raise TypeError("only numeric zero padding is supported for counting")
    return dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)


def dense_products(layer: nn.Module, in_shape: Sequence[int]) -> int:
    """All products of one layer for one sample with input shape ``in_shape`` (no batch)."""
    if isinstance(layer, nn.Linear):
        return layer.in_features * layer.out_features
    if isinstance(layer, nn.Conv2d):
        with torch.no_grad():
            out = F.conv2d(torch.zeros(1, *in_shape), torch.zeros_like(layer.weight), **_conv_args(layer))
        per_output = (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1]
        return int(out.numel()) * per_output
    raise TypeError(f"{type(layer).__name__} does no multiplications we count")


def significant_products(layer: nn.Module, x_nonzero: torch.Tensor,
                         weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample count of (non-zero input, non-zero weight) pairs in ``layer``.

    ``x_nonzero`` is a boolean (batch, ...) mask of the layer's non-zero inputs; ``weight``
    defaults to the layer's (effective, possibly pruned) weight. Returns int64 (batch,).
    """
    w = layer.weight if weight is None else weight
    with torch.no_grad():
        wm = (w != 0).to(torch.float32)
        xm = x_nonzero.to(torch.float32)
        if isinstance(layer, nn.Linear):
            # each non-zero input i meets the non-zero weights of column i
            per_input = wm.sum(dim=0).to(torch.float64)
            return (xm.to(torch.float64) @ per_input).round().to(torch.int64)
        if isinstance(layer, nn.Conv2d):
            out = F.conv2d(xm, wm, **_conv_args(layer))
            # each output element is an exact small integer; sum in float64 to stay exact
            return out.to(torch.float64).flatten(1).sum(dim=1).round().to(torch.int64)
    raise TypeError(f"{type(layer).__name__} does no multiplications we count")


def input_fanouts(layer: nn.Module, in_shape: Sequence[int], weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per input element of ``layer`` (shape ``in_shape``, no batch): how many non-zero weights it meets
    over all outputs, int64 in ``in_shape``.

    A layer's significant products are these summed over its non-zero inputs, so with them fixed per
    network, counting a step is one dot product instead of :func:`significant_products`' second
    convolution on 0/1 masks (the sparse engine and the evaluation of networks without a delta
    network count this way). ``weight`` defaults to the layer's own.
    """
    w = layer.weight if weight is None else weight
    wm = (w.detach() != 0).to(torch.float32)
    if isinstance(layer, nn.Linear):
        return wm.sum(dim=0).round().to(torch.int64)
    if isinstance(layer, nn.Conv2d):
        # the gradient of sum(conv(x, mask(W))) with respect to x: exact small integers in float32
        probe = torch.zeros(1, *in_shape, device=wm.device, requires_grad=True)
        with torch.enable_grad():
            F.conv2d(probe, wm, **_conv_args(layer)).sum().backward()
        return probe.grad[0].round().to(torch.int64)
    raise TypeError(f"{type(layer).__name__} does no multiplications we count")


def _run_counting(net: nn.Module, obs: Any, dense: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and significant products (batch, layers); appends each layer's dense products for
    one row to ``dense`` when given."""
    counts: list[torch.Tensor] = []

    def count(k: int, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        counts.append(significant_products(m, x != 0))
        if dense is not None:
            dense.append(dense_products(m, tuple(x.shape[1:])))
        return m(x)

    with torch.no_grad():
        out = trace_chain(net).run(torch.as_tensor(obs), count)
    return out, torch.stack(counts, dim=1)


def forward_with_counts(net: nn.Module, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``net`` on a batch and count significant products per sample per weight layer.

    Returns ``(output, counts)`` with counts int64 of shape (batch, n_weight_layers). The output is
    the net's own forward: ``obs`` goes in as the net's forward would take it.
    """
    return _run_counting(net, obs)


def count_significant(net: nn.Module, obs: torch.Tensor, label: str = "") -> MultiplicationReport:
    """Significant products of ``net`` on a batch of observations, one decision per row.

    The report sums the rows (``steps`` is the batch size); ``per_step`` keeps each row's counts.
    """
    dense: list[int] = []
    _, counts = _run_counting(net, obs, dense)
    return MultiplicationReport.from_counts(trace_chain(net).names, dense, counts.numpy(), label=label)


def dense_counts(net: nn.Module, example_input: Any = None) -> list[int]:
    """Dense products per weight layer for one decision of ``net``.

    ``example_input`` (a batch of one observation) gives the shapes; our QNetworks have an
    ``input_shape`` and need none.
    """
    chain = trace_chain(net)
    shapes = chain.input_shapes(_example(net, example_input, "dense_counts"))
    return [dense_products(m, s) for m, s in zip(chain.weights, shapes)]


@dataclass
class LayerCount:
    """Multiplications of one layer, summed over ``steps`` decisions."""

    name: str
    dense: int
    significant: int

    @property
    def reduction(self) -> float:
        return self.dense / self.significant if self.significant else float("inf")


@dataclass
class MultiplicationReport:
    """Per-layer dense and significant multiplications, summed over ``steps`` decisions.

    ``per_step`` (optional) holds the significant count per decision and layer, shape
    (steps, layers), for plots over an episode.
    """

    layers: list[LayerCount]
    steps: int = 1
    label: str = ""
    per_step: np.ndarray | None = field(default=None, repr=False)

    @property
    def total_dense(self) -> int:
        return sum(l.dense for l in self.layers)

    @property
    def total_significant(self) -> int:
        return sum(l.significant for l in self.layers)

    @property
    def reduction(self) -> float:
        """Dense / significant: how many times fewer multiplications are needed."""
        s = self.total_significant
        return self.total_dense / s if s else float("inf")

    def per_decision(self) -> dict[str, float]:
        """Mean dense and significant multiplications per decision."""
        n = max(self.steps, 1)
        return {"dense": self.total_dense / n, "significant": self.total_significant / n}

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "steps": self.steps,
            "layers": [{"name": l.name, "dense": l.dense, "significant": l.significant}
                       for l in self.layers],
            "total_dense": self.total_dense,
            "total_significant": self.total_significant,
            "reduction": self.reduction,
        }

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)

    def _rows(self) -> list[tuple[str, str, str, str]]:
        rows = [(l.name, f"{l.dense:,}", f"{l.significant:,}", f"{l.reduction:.1f}x") for l in self.layers]
        rows.append(("total", f"{self.total_dense:,}", f"{self.total_significant:,}", f"{self.reduction:.1f}x"))
        return rows

    def __str__(self) -> str:
        rows = [("layer", "dense", "significant", "reduction")] + self._rows()
        w = [max(len(r[i]) for r in rows) for i in range(4)]
        out = [f"{self.label} ({self.steps} decisions)"] if self.label else []
        out += ["  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
        return "\n".join(out)

    def _repr_html_(self) -> str:
        cap = f"<caption>{html.escape(self.label)} ({self.steps} decisions)</caption>" if self.label else ""
        body = "".join(
            "<tr>" + "".join(f"<td style='text-align:{'left' if i == 0 else 'right'}'>{html.escape(c)}</td>"
                             for i, c in enumerate(r)) + "</tr>" for r in self._rows())
        return ("<table>" + cap + "<thead><tr><th style='text-align:left'>layer</th>"
                "<th style='text-align:right'>dense</th><th style='text-align:right'>significant</th>"
                "<th style='text-align:right'>reduction</th></tr></thead><tbody>" + body + "</tbody></table>")

    @classmethod
    def from_counts(cls, names: Sequence[str], dense_per_step: Sequence[int],
                    significant: np.ndarray, label: str = "") -> "MultiplicationReport":
        """Build a report from a (steps, layers) array of per-decision significant counts."""
        significant = np.asarray(significant, dtype=np.int64).reshape(-1, len(names))
        steps = significant.shape[0]
        layers = [LayerCount(n, int(d) * steps, int(s))
                  for n, d, s in zip(names, dense_per_step, significant.sum(axis=0))]
        return cls(layers, steps=steps, label=label, per_step=significant)


def count_dense(net: nn.Module, example_input: Any = None, *, label: str = "dense") -> MultiplicationReport:
    """Report for one decision counting every product as significant (the paper's baseline).

    ``example_input`` (a batch of one observation, any dtype) gives the layers' shapes; our
    QNetworks have an ``input_shape`` and need none.
    """
    d = dense_counts(net, example_input)
    return MultiplicationReport.from_counts(layer_names(net), d, np.array([d]), label=label)


def count_weights(net: nn.Module, example_input: Any = None, *, label: str = "") -> MultiplicationReport:
    """One decision assuming every input is non-zero: only zero (pruned) weights are skipped.

    This is what pruning alone saves, independent of any observation. ``example_input`` as
    for :func:`count_dense`.
    """
    chain = trace_chain(net)
    shapes = chain.input_shapes(_example(net, example_input, "count_weights"))
    sig = [int(significant_products(m, torch.ones(1, *s, dtype=torch.bool))[0])
           for m, s in zip(chain.weights, shapes)]
    dense = [dense_products(m, s) for m, s in zip(chain.weights, shapes)]
    return MultiplicationReport.from_counts(chain.names, dense, np.array([sig]), label=label)


def combine(reports: Iterable[MultiplicationReport], label: str = "") -> MultiplicationReport:
    """Sum reports over episodes (same layers)."""
    reports = list(reports)
    if not reports:
        raise ValueError("no reports to combine")
    names = [l.name for l in reports[0].layers]
    layers = [LayerCount(n, sum(r.layers[i].dense for r in reports), sum(r.layers[i].significant for r in reports))
              for i, n in enumerate(names)]
    per = [r.per_step for r in reports]
    per_step = np.concatenate(per) if all(p is not None for p in per) else None
    return MultiplicationReport(layers, steps=sum(r.steps for r in reports), label=label or reports[0].label,
                                per_step=per_step)


COUNT_RTOL: float = 2e-3
"""Relative tolerance per layer when significant-product counts behind float layers are compared
across machines or kernel libraries (:func:`counts_close`): 2 in 1,000 of the layer's count.

Measured by ``book/scripts/count_noise.py`` (results in ``deltalearn/data/count_noise.md``): the recorded
episodes of the six Atari games replayed at 5-13 cells of their committed sweeps with oneDNN on,
oneDNN off, and with oneDNN/MKL/ATen limited to AVX2 (standing in for another CPU; it replays the
committed sweeps exactly), and CartPole at all 84 cells of chapter 6's grid. Deviations from the
committed counts were 1e-7 to 3e-5 of a layer's count as a rule (Breakout-pruned-0.79 at 0.001:
fc1 58,254,410 with oneDNN off, 58,254,487 on, 58,254,547 committed), and at most 3.2e-4 for a
layer of a million products or more (Robotank fc1 at threshold 0.03: 1,582 of 4,955,214).
CartPole's counts never moved. The smallest real change, between two neighbouring committed cells
(the next threshold, first-layer threshold or sparsity), moves its most changed layer by 9.4e-3
(CartPole: no delta network against threshold 0), and by 2.8e-2 in the Atari sweeps (Robotank:
first-layer threshold 0.01 against 0.001). With :data:`COUNT_FLOOR`, every measured deviation is
at least 7.6 times inside the tolerance, and every neighbouring pair differs by at least 4.7 times
it (Atari: 14 times).
"""

COUNT_FLOOR: float = 1e-5
"""Floor of :func:`counts_close`'s per-layer tolerance, as a share of all layers' products together:
a layer may differ by ``COUNT_FLOOR * sum(counts)`` products whatever its own count.

Small layers need it. A flipped element costs a whole column of products, so a layer with few
products moves by a large share of them: Freeway's last layer by 48 products of 11,535 (4.1e-3)
with oneDNN off, Breakout's by 14 of 15,683 (8.9e-4); a relative tolerance that passed these would
be as large as the smallest real changes. Such differences are below 1e-6 of the network's
products and cannot move any quoted reduction. An absolute floor in products would have to grow
with the episode and the network (CartPole's episode is 1e7 products, an Atari episode 1e8 to
1e10); a share of the total does. The price: a layer holding less than about 1e-5 of the products
(Freeway's last layer at sparsity 0.9, 94 products of 76 million) could double unnoticed.
"""


def _as_counts(x: "Sequence[int] | MultiplicationReport", what: str) -> list[int]:
    if isinstance(x, MultiplicationReport):
        return [l.significant for l in x.layers]
    out = []
    for v in x:
        f = float(v)
        if not math.isfinite(f) or f < 0 or f != int(f):
            raise ValueError(f"{what}: counts must be non-negative integers, got {v!r}")
        out.append(int(f))
    return out


def counts_close(a: "Sequence[int] | MultiplicationReport", b: "Sequence[int] | MultiplicationReport",
                 rtol: float = COUNT_RTOL, floor: float = COUNT_FLOOR) -> bool:
    """Whether two per-layer significant-product counts agree up to float round-off.

    ``a`` and ``b`` are per-layer counts (sequences of integers, or
    :class:`MultiplicationReport`) over the same decisions. Layer ``i`` agrees when
    ``|a[i] - b[i]| <= rtol * max(a[i], b[i]) + floor * max(sum(a), sum(b))``.
    ``rtol=0, floor=0`` asks for equality. See :data:`COUNT_RTOL` and :data:`COUNT_FLOOR` for what
    the defaults were measured against: they pass the differences between machines and kernel
    libraries, and fail a neighbouring threshold or sparsity.
    """
    x, y = _as_counts(a, "a"), _as_counts(b, "b")
    if len(x) != len(y):
        raise ValueError(f"counts of {len(x)} and {len(y)} layers cannot be compared")
    for name, v in (("rtol", rtol), ("floor", floor)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    slack = floor * max(sum(x), sum(y))
    return all(abs(p - q) <= rtol * max(p, q) + slack for p, q in zip(x, y))
