"""The sparse backend of :class:`~deltalearn.core.delta.DeltaNetwork`: work that grows with the changes sent.

The dense-backed delta network runs a full conv2d / linear on a mostly-zero delta, so it does as
much work as the dense network (more, counting the bookkeeping). This engine does the same update
with kernels compiled by numba that touch only the sent changes:

* a *select* pass compares each layer input with its reference, moves the reference by what is
  sent (drift-free, exactly as the dense path does) and lists the sent changes per row, summing
  their precomputed fan-outs (the significant products each sent change takes part in), so
  counting is one addition per sent change;
* a *scatter* pass adds each sent change times its weight slice to the accumulated
  pre-activations ``z`` it touches: for a conv layer a 32/64-wide axpy per kernel position into the
  outputs the input feeds (``z`` is kept channels-last so that axpy is contiguous), for a linear
  layer the sent weight columns.

Two paths share these semantics. The **fused** path (:class:`_Fused`, kernels in
:mod:`deltalearn.core._sparse_kernels`) serves chains of Conv2d / Linear, ReLU and flattening after an
optional QNetwork input scaling (the Nature DQN, the MLPs): one compiled call runs the whole step,
preprocessing included, for every stream. The **general** path (:class:`_Layer`) replays any other
supported chain with torch and calls the kernels per weight layer.

When a layer sends more than its ``crossover`` share of its inputs, the scatter loses to a dense
pass, so the delta is rebuilt from the list and applied with torch instead; the default crossover
of a layer is measured (:func:`layer_crossover`). Conv2d (zero padding, no groups) and Linear layers
in float32 on the CPU are served; anything else fails in one line that ends in ``use backend="dense"``.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit
from torch import nn

from . import _sparse_kernels as K
from .counting import input_fanouts

if TYPE_CHECKING:
    from .delta import DeltaNetwork

__all__ = ["SparseEngine", "DEFAULT_CROSSOVER", "layer_crossover", "check_sparse_layer"]

DEFAULT_CROSSOVER: dict[str, float] = {"conv": 0.2, "linear": 1.0}
"""Sent share of a layer's inputs above which a dense pass of the delta is cheaper than the scatter,
for a layer not measured in :data:`CROSSOVER_FILE` (measured on the Nature DQN's layers, rounded down)."""

CROSSOVER_FILE = Path(__file__).resolve().parents[1] / "data" / "bench" / "crossover.json"
"""Per-layer timings of the scatter and the dense fallback by share sent
(``book/scripts/sparse_crossover.py``); a layer of the same kind and size takes its measured crossover."""


@lru_cache(maxsize=1)
def _measured_crossovers() -> dict[tuple[str, int, int], float]:
    try:
        layers = json.loads(CROSSOVER_FILE.read_text())["layers"]
    except (OSError, ValueError, KeyError):
        return {}
    return {(r["kind"], int(r["inputs"]), int(r["outputs"])): 1.0 if r["crossover"] is None else float(r["crossover"])
            for r in layers}


def layer_crossover(kind: str, inputs: int, outputs: int) -> float:
    """The default crossover of one weight layer: measured for a layer of this kind and size, else per kind."""
    return _measured_crossovers().get((kind, inputs, outputs), DEFAULT_CROSSOVER[kind])


@njit(cache=True, nogil=True, fastmath=True)
def _mark(x, xref, th, over):  # pragma: no cover - compiled
    """``over[i] = |x[i] - xref[i]| > th``: a branch-free pass the compiler vectorises."""
    for i in range(x.shape[0]):
        over[i] = abs(x[i] - xref[i]) > th


@njit(cache=True, nogil=True)
def _select_row(x, xref, fresh, th, drift_free, fanout, over, idx, val):  # pragma: no cover - compiled
    """One stream: send ``d = x - xref`` where ``|d| > th`` (everything when ``fresh``), list the
    non-zero sent changes in ``idx``/``val``, move ``xref`` by them; returns (number sent, products).

    ``over`` is a byte scratch of ``n`` rounded up to 8 (its tail stays 0): marked in one
    vectorised pass, then read eight bytes at a time, so quiet stretches cost one test. Inside a
    word with a change the listing is branch-free (write, then advance by 0 or 1).
    """
    n = x.shape[0]
    if fresh:
        over[:n] = 1
    else:
        _mark(x, xref, th, over)
    words = over.view(np.uint64)
    m = 0
    c = 0
    for w in range(words.shape[0]):
        if words[w] == 0:
            continue
        for i in range(8 * w, min(8 * w + 8, n)):
            d = x[i] - xref[i]
            sent = over[i] != 0
            idx[m] = i
            val[m] = d
            keep = np.int64(sent and d != 0.0)
            m += keep
            c += fanout[i] * keep
            if sent and drift_free:
                xref[i] = xref[i] + d
    if not drift_free:
        xref[:] = x
    return m, c


@njit(cache=True, nogil=True)
def _select(x, xref, fresh, th, drift_free, fanout, over, idx, val, n_sent, counts):  # pragma: no cover
    """:func:`_select_row` for every stream; returns the number of changes sent in all."""
    total = 0
    for b in range(x.shape[0]):
        m, c = _select_row(x[b], xref[b], fresh[b], th, drift_free, fanout, over, idx[b], val[b])
        n_sent[b] = m
        counts[b] = c
        total += m
    return total


@njit(cache=True, nogil=True, fastmath=True)
def _scatter_linear(wt, idx, val, n_sent, dz, z):  # pragma: no cover - compiled
    """``z[b] += sum of val * wt[i]`` over the sent ``(i, val)``; ``wt`` is the weight transposed (in, out).

    The step's products are summed in ``dz`` first and added to ``z`` once, as the dense path does:
    changes that cancel exactly then leave ``z`` exactly as it was (and the counts at threshold 0
    equal the dense path's).
    """
    out = wt.shape[1]
    for b in range(z.shape[0]):
        if n_sent[b] == 0:
            continue
        dz[:] = 0.0
        for s in range(n_sent[b]):
            i = idx[b, s]
            d = val[b, s]
            for o in range(out):
                dz[o] += d * wt[i, o]
        for o in range(out):
            z[b, o] += dz[o]


@njit(cache=True, nogil=True, fastmath=True)
def _scatter_conv(w, dims, strides, ytab, ny, xtab, nx, idx, val, n_sent, dz, touched, z):  # pragma: no cover
    """Each sent input change times its weight slice into every output it feeds.

    ``w`` is (in * kh * kw, out): row ``(c * kh + ky) * kw + kx`` is the slice of input channel
    ``c`` at tap ``(ky, kx)``. The input element at flat index ``i`` (in the layout of
    ``strides``: ``c, y, x`` step by ``strides``, sizes ``dims``) feeds output row
    ``ytab[y, j, 1]`` through kernel row ``ytab[y, j, 0]`` for ``j < ny[y]`` (likewise columns):
    tables built once, so the loop does no division by the stride. ``z`` is (rows, ho * wo, out);
    products are summed in ``dz`` and added to ``z`` once per touched output position.
    """
    cin, h, wd = dims[0], dims[1], dims[2]
    sc, sy, sx = strides[0], strides[1], strides[2]
    kh, kw = ytab.shape[1], xtab.shape[1]
    wo = dims[3]
    cout = z.shape[2]
    for b in range(z.shape[0]):
        for s in range(n_sent[b]):
            i = idx[b, s]
            d = val[b, s]
            c = (i // sc) % cin
            y = (i // sy) % h
            x = (i // sx) % wd
            for jy in range(ny[y]):
                qy = (c * kh + ytab[y, jy, 0]) * kw
                py = ytab[y, jy, 1] * wo
                for jx in range(nx[x]):
                    q = qy + xtab[x, jx, 0]
                    p = py + xtab[x, jx, 1]
                    if not touched[p]:
                        touched[p] = True
                        for o in range(cout):
                            dz[p, o] = d * w[q, o]
                    else:
                        for o in range(cout):
                            dz[p, o] += d * w[q, o]
        for p in range(touched.shape[0]):
            if touched[p]:
                touched[p] = False
                for o in range(cout):
                    z[b, p, o] += dz[p, o]


def _taps(size: int, out: int, k: int, stride: int, pad: int, dil: int) -> tuple[np.ndarray, np.ndarray]:
    """Per input coordinate, the (kernel tap, output coordinate) pairs it feeds along one axis."""
    tab = np.zeros((size, k, 2), dtype=np.int64)
    n = np.zeros(size, dtype=np.int64)
    for y in range(size):
        for ky in range(k):
            t = y + pad - ky * dil
            if t >= 0 and t % stride == 0 and t // stride < out:
                tab[y, n[y]] = (ky, t // stride)
                n[y] += 1
    return tab, n


def check_sparse_layer(name: str, m: nn.Module, weight: torch.Tensor) -> None:
    """Raise a one-line error if the sparse backend cannot serve weight layer ``name``."""
    hint = 'use backend="dense"'
    if weight.dtype != torch.float32:
        raise TypeError(f"backend='sparse' needs float32 weights; layer {name} has {weight.dtype}: {hint}")
    if weight.device.type != "cpu":
        raise TypeError(f"backend='sparse' runs on the CPU; layer {name} is on {weight.device}: {hint}")
    if isinstance(m, nn.Conv2d):
        if m.groups != 1 or isinstance(m.padding, str) or m.padding_mode != "zeros":
            raise TypeError(f"backend='sparse' supports Conv2d with groups=1 and numeric zero padding; layer "
                            f"{name} has groups={m.groups}, padding={m.padding!r}, "
                            f"padding_mode={m.padding_mode!r}: {hint}")
    elif not isinstance(m, nn.Linear):
        raise TypeError(f"backend='sparse' supports Conv2d and Linear; layer {name} is "
                        f"{type(m).__name__}: {hint}")


class _Layer:
    """One weight layer's state and kernels' arguments for a batch of streams."""

    def __init__(self, m: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None,
                 in_shape: tuple[int, ...], rows: int, crossover: float) -> None:
        self.module = m
        self.conv = isinstance(m, nn.Conv2d)
        self.weight = weight
        self.crossover = crossover
        if self.conv:
            c, h, w = in_shape
            self.args = dict(stride=m.stride, padding=m.padding, dilation=m.dilation)
            ho, wo = F.conv2d(torch.zeros(1, c, h, w), weight, **self.args).shape[2:]
            self.dims = np.array([c, h, w, wo], dtype=np.int64)
            # weight slices (in * kh * kw, out): the scatter's inner loop over outputs is contiguous
            self.w = np.ascontiguousarray(weight.permute(1, 2, 3, 0).reshape(-1, weight.shape[0]).numpy())
            self.fan_chw = input_fanouts(m, in_shape, weight)
            fan = self.fan_chw  # reordered when the first input shows its memory layout
            (kh, kw), (st_y, st_x) = m.kernel_size, m.stride
            (p_y, p_x), (d_y, d_x) = m.padding, m.dilation
            self.ytab, self.ny = _taps(h, ho, kh, st_y, p_y, d_y)
            self.xtab, self.nx = _taps(w, wo, kw, st_x, p_x, d_x)
            self.channels_last: bool | None = None
            self.strides = np.zeros(3, dtype=np.int64)
            z0 = torch.zeros(rows, ho, wo, weight.shape[0])  # channels-last: (rows, ho, wo, out)
        else:
            self.w = np.ascontiguousarray(weight.t().numpy())
            fan = input_fanouts(m, in_shape, weight)
            z0 = torch.zeros(rows, weight.shape[0])
        self.fanout = fan.flatten().numpy().copy()
        n = int(self.fanout.shape[0])
        self.bias = np.zeros(z0.shape[1:], dtype=np.float32) if bias is None else \
            np.broadcast_to(bias.numpy(), z0.shape[1:]).copy()
        self.z = z0.numpy()
        self.z[:] = self.bias
        self.xref = np.zeros((rows, n), dtype=np.float32)
        self.over = np.zeros(-(-n // 8) * 8, dtype=np.uint8)
        self.idx = np.zeros((rows, n), dtype=np.int64)
        self.val = np.zeros((rows, n), dtype=np.float32)
        self.n_sent = np.zeros(rows, dtype=np.int64)
        self.counts = np.zeros(rows, dtype=np.int64)
        # the scatter's view of z: (rows, positions, out) for a conv layer
        self.z_flat = self.z.reshape(rows, -1, self.z.shape[-1]) if self.conv else self.z
        self.dz = np.zeros(self.z_flat.shape[1:], dtype=np.float32)  # one row's sum of products (scratch)
        self.touched = np.zeros(self.z_flat.shape[1], dtype=np.bool_) if self.conv else None

    def _set_layout(self, channels_last: bool) -> None:
        """Keep a conv layer's references in the memory order its inputs arrive in (no copy per step)."""
        c, h, w = (int(v) for v in self.dims[:3])
        self.channels_last = channels_last
        fan = self.fan_chw.permute(1, 2, 0) if channels_last else self.fan_chw
        self.fanout = fan.flatten().numpy().copy()
        self.strides[:] = (1, w * c, c) if channels_last else (h * w, w, 1)

    def flat_input(self, x: torch.Tensor) -> np.ndarray:
        """The input as (rows, n) float32 in the layer's reference order (a view when it already is)."""
        if x.dtype != torch.float32:
            raise TypeError(f"backend='sparse' needs float32 layer inputs, got {x.dtype}: use backend=\"dense\"")
        if self.conv:
            if self.channels_last is None:
                self._set_layout(not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last))
            if self.channels_last:
                x = x.permute(0, 2, 3, 1)
        return x.contiguous().numpy().reshape(x.shape[0], -1)

    def step(self, x: torch.Tensor, fresh: np.ndarray, any_fresh: bool, th: np.float32,
             drift_free: bool) -> torch.Tensor:
        """Send this step's changes, update ``z`` and return it (a copy) in the layer's output layout."""
        if any_fresh:
            self.xref[fresh] = 0
            self.z[fresh] = self.bias
        total = _select(self.flat_input(x), self.xref, fresh, th, drift_free, self.fanout, self.over,
                        self.idx, self.val, self.n_sent, self.counts)
        rows, n = self.xref.shape
        if total > self.crossover * rows * n:
            self._dense_delta(rows, n)
        elif self.conv:
            _scatter_conv(self.w, self.dims, self.strides, self.ytab, self.ny, self.xtab, self.nx,
                          self.idx, self.val, self.n_sent, self.dz, self.touched, self.z_flat)
        else:
            _scatter_linear(self.w, self.idx, self.val, self.n_sent, self.dz, self.z)
        out = torch.from_numpy(self.z.copy())
        return out.permute(0, 3, 1, 2) if self.conv else out

    def _dense_delta(self, rows: int, n: int) -> None:
        """Many changes: rebuild the delta from the lists and apply it with one dense torch pass."""
        d = np.zeros((rows, n), dtype=np.float32)
        for b in range(rows):
            k = self.n_sent[b]
            d[b, self.idx[b, :k]] = self.val[b, :k]
        dt = torch.from_numpy(d)
        if self.conv:
            c, h, w = (int(v) for v in self.dims[:3])
            dt = dt.view(rows, h, w, c).permute(0, 3, 1, 2) if self.channels_last else dt.view(rows, c, h, w)
            self.z += F.conv2d(dt, self.weight, **self.args).permute(0, 2, 3, 1).numpy()
        else:
            self.z += F.linear(dt, self.weight).numpy()


def fused_plan(owner: "DeltaNetwork") -> tuple[float | None, list[tuple[bool, bool]]] | None:
    """Whether the fused path can run ``owner``'s chain whole, and how.

    Returns ``(scale, layers)`` or ``None``: ``scale`` is the QNetwork's input scale (``None``
    when the chain has no preprocessing, so the input must already be float32), ``layers`` one
    ``(relu_before, flatten_before)`` per weight layer. Served: an optional QNetwork
    preprocessing, then only weight layers, ReLU, flattening and Identity, with the last
    weight layer last.
    """
    from .chain import _Preprocess
    from .nets import QNetwork

    program = owner.chain._program
    scale: float | None = None
    if program and isinstance(program[0][1], _Preprocess):
        net = owner.net
        if not (isinstance(net, QNetwork) and type(net).preprocess is QNetwork.preprocess):
            return None
        scale, program = float(net.input_scale), program[1:]
    layers: list[tuple[bool, bool]] = []
    relu = flat = False
    for _, fn, node, _, _, _, k, is_flat, _ in program:
        if k is not None:
            layers.append((relu, flat))
            relu = flat = False
        elif is_flat:
            flat = True
        elif isinstance(fn, nn.ReLU) or (node.op == "call_method" and node.target == "relu" and len(node.args) == 1) \
                or (fn in (F.relu, torch.relu) and len(node.args) == 1 and not node.kwargs.get("inplace", False)):
            if not layers:
                return None  # a ReLU on the raw input: not worth a special case
            relu = True
        elif not isinstance(fn, nn.Identity):
            return None
    if relu or flat or not layers:  # something after the last weight layer
        return None
    return scale, layers


_KERNEL_INPUTS = (torch.uint8, torch.float32, torch.float64)
"""Observation dtypes the fused kernels read directly (one compiled version each); others are cast first."""


def _pack_layer(l: int, name: str, m: nn.Module, weight: torch.Tensor, shape: tuple[int, ...], flat: bool,
                prev_out: tuple[int, int, int] | None) -> dict:
    """One weight layer in the fused path's layout: weight rows, fan-outs, tap tables, geometry.

    Conv inputs are read channels-last (a pixel's channels adjacent), except conv1's raw frame,
    whose references and fan-outs keep the frame's (c, h, w) order (``perm``); a linear layer after
    a conv reads that conv's channels-last output, so its weight rows are permuted to match.
    """
    cout = weight.shape[0]
    fan = input_fanouts(m, shape, weight)
    if isinstance(m, nn.Conv2d):
        c, h, wd = shape
        if c >= 1 << 15 or h >= 256 or wd >= 256:
            raise TypeError(f"backend='sparse' serves conv inputs up to 32767 channels and 255x255 pixels; "
                            f"layer {name} has {c}x{h}x{wd}: use backend=\"dense\"")
        args = dict(stride=m.stride, padding=m.padding, dilation=m.dilation)
        ho, wo = F.conv2d(torch.zeros(1, c, h, wd), weight, **args).shape[2:]
        (kh, kw), (sy, sx) = m.kernel_size, m.stride
        cc, yy, xx = np.meshgrid(np.arange(c), np.arange(h), np.arange(wd), indexing="ij")
        return dict(rows_w=weight.permute(1, 2, 3, 0).reshape(-1, cout).numpy(),
                    fan=fan if l == 0 else fan.permute(1, 2, 0), perm=int(l == 0), strides=(1, wd * c, c),
                    taps=(*_taps(h, ho, kh, sy, m.padding[0], m.dilation[0]),
                          *_taps(wd, wo, kw, sx, m.padding[1], m.dilation[1])),
                    dims=(c, h, wd, ho, wo, kh, kw), out=(cout, ho, wo),
                    # the fallback's delta is channels-last: a weight in the same layout spares oneDNN a reorder
                    torch_w=weight.contiguous(memory_format=torch.channels_last),
                    pos=((cc << 16) | (yy << 8) | xx).transpose(1, 2, 0).ravel().astype(np.int32))
    c = int(shape[0])
    rows_w = weight.t().numpy()
    if prev_out is not None and flat:
        pc, ph, pw = prev_out
        perm = np.arange(c).reshape(pc, ph, pw).transpose(1, 2, 0).ravel()
        rows_w, fan = rows_w[perm], fan[torch.from_numpy(perm)]
    one = _taps(1, 1, 1, 1, 0, 1)
    return dict(rows_w=rows_w, fan=fan, perm=0, strides=(1, 1, 1), taps=(*one, *one), dims=(c, 1, 1, 1, 1, 1, 1),
                torch_w=torch.from_numpy(np.ascontiguousarray(rows_w.T)), out=None, pos=None)


class _Fused:
    """The fused path's state: every layer's weights, references and accumulators in flat pools,
    so one compiled call (:func:`~deltalearn.core._sparse_kernels.fused_step`) runs a whole step."""

    def __init__(self, owner: "DeltaNetwork", plan: tuple[float | None, list[tuple[bool, bool]]],
                 obs: torch.Tensor, crossover: float | None) -> None:
        scale, flags = plan
        self.obs_shape = tuple(obs.shape[1:])
        self.float_input = scale is None
        self.scale = np.float32(1.0 if scale is None else scale)
        self.has_scale = scale is not None and scale != 1.0
        rows = int(obs.shape[0])
        shapes = owner.chain.input_shapes(obs[:1] if scale is not None else obs[:1].to(torch.float32))
        meta = np.zeros((len(flags), K.META_FIELDS), dtype=np.int64)
        ws, fans, biases, taps = [], [], [], []
        self.torch_w: list[tuple[nn.Module, torch.Tensor]] = []
        n_taps = z_off = x_off = w_off = pos_off = 0
        pos: list[np.ndarray] = [np.zeros(1, dtype=np.int32)]
        prev_out: tuple[int, int, int] | None = None  # the previous conv's (channels, ho, wo)
        cross = []
        for l, (m, weight, bias, shape, (relu, flat)) in enumerate(
                zip(owner.chain.weights, owner.weights, owner.biases, shapes, flags)):
            mt = meta[l]
            cout = weight.shape[0]
            g = _pack_layer(l, owner.names[l], m, weight, shape, flat, prev_out)
            rows_w, fan, (ytab, ny, xtab, nx) = g["rows_w"], g["fan"], g["taps"]
            c, h, wd, ho, wo, kh, kw = g["dims"]
            mt[K.SC:K.SX + 1] = g["strides"]
            mt[K.PERM] = g["perm"]
            self.torch_w.append((m, g["torch_w"]))
            prev_out_next = g["out"]
            n = int(np.prod(shape))
            mt[K.N], mt[K.CIN], mt[K.H], mt[K.WD], mt[K.WO], mt[K.COUT] = n, c, h, wd, wo, cout
            mt[K.KH], mt[K.KW], mt[K.RELU] = kh, kw, int(relu)
            mt[K.W_OFF], mt[K.Z_OFF], mt[K.ZSIZE], mt[K.X_OFF] = w_off, z_off, ho * wo * cout, x_off
            mt[K.B_OFF], mt[K.POS_] = z_off, pos_off
            if g["pos"] is not None:
                pos.append(g["pos"])
                pos_off += n
            for tab, key in ((ytab, K.YT), (ny, K.NYO), (xtab, K.XT), (nx, K.NXO)):
                mt[key] = n_taps
                taps.append(tab.ravel())
                n_taps += tab.size
            ws.append(np.ascontiguousarray(rows_w, dtype=np.float32).ravel())
            fans.append(fan.flatten().numpy())
            b = np.zeros(cout, np.float32) if bias is None else bias.numpy()
            biases.append(np.tile(b, ho * wo))
            w_off += ws[-1].size
            z_off += ho * wo * cout
            x_off += n
            kind = "conv" if isinstance(m, nn.Conv2d) else "linear"
            cross.append(layer_crossover(kind, n, ho * wo * cout) if crossover is None else float(crossover))
            prev_out = prev_out_next
        self.meta = meta
        self.th = np.array([np.float32(t) for t in owner.thresholds], dtype=np.float32)
        self.cross = np.array(cross, dtype=np.float64)
        self.W = np.concatenate(ws)
        self.taps = np.concatenate(taps).astype(np.int64)
        self.FAN = np.concatenate(fans).astype(np.int32)  # fan-outs are small; half the bytes to stream
        self.POS = np.concatenate(pos)[1:] if len(pos) > 1 else pos[0]
        self.BIAS = np.concatenate(biases).astype(np.float32)
        self.Z = np.zeros((rows, z_off), dtype=np.float32)
        self.XR = np.zeros((rows, x_off), dtype=np.float32)
        max_n = int(meta[:, K.N].max())
        max_z = int(meta[:, K.ZSIZE].max())
        self.over = np.zeros(-(-max_n // 8) * 8, dtype=np.uint8)
        self.idx = np.zeros((rows, max_n), dtype=np.int64)
        self.val = np.zeros((rows, max_n), dtype=np.float32)
        self.n_sent = np.zeros(rows, dtype=np.int64)
        self.dz = np.zeros(max_z, dtype=np.float32)
        self.touched = np.zeros(max_z, dtype=np.uint8)
        self.counts = np.zeros((rows, len(flags)), dtype=np.int64)
        self.pover = np.zeros(-(-max_n // 8) * 8, dtype=np.uint8)  # conv1's per-pixel marks (scratch)
        self.dbuf = np.zeros(rows * max_n, dtype=np.float32)  # a dense fallback's delta (scratch)
        # a uint8 frame into a first conv layer: the kernel compares it with the stream's last frame
        self.u8 = bool(meta[0, K.PERM]) and obs.dtype == torch.uint8
        n0 = int(meta[0, K.N]) if self.u8 else 8
        self.prev = np.zeros((rows, n0), dtype=np.uint8)
        self.dirty = np.zeros((rows, n0), dtype=np.uint8)
        last = meta[-1]
        self.out = slice(int(last[K.Z_OFF]), int(last[K.Z_OFF] + last[K.ZSIZE]))
        self.rows = rows
        self.dtype = obs.dtype
        self._u8_packed = self.u8
        self._bind()

    def fits(self, obs: torch.Tensor) -> bool:
        """Whether these pools can serve ``obs`` after a full reset: the same streams, shape and dtype."""
        return int(obs.shape[0]) == self.rows and tuple(obs.shape[1:]) == self.obs_shape and obs.dtype == self.dtype

    def restart(self) -> None:
        """Forget what a float frame midway turned off; every stream's next step is fresh, which rewrites
        its references, accumulators and last frame, so nothing else needs clearing."""
        self.u8 = self._u8_packed

    def _bind(self) -> None:
        """The kernel's arguments around (obs, fresh, drift_free, start), gathered once, not per step."""
        self._head = (self.scale, self.has_scale, self.meta, self.th, self.cross, self.W, self.taps, self.POS,
                      self.FAN, self.BIAS, self.Z, self.XR)
        self._tail = (self.over, self.idx, self.val, self.n_sent, self.dz, self.touched, self.counts, self.pover)

    def step(self, obs: torch.Tensor, fresh: np.ndarray, drift_free: bool) -> torch.Tensor:
        """One step of every stream; ``fresh`` marks the streams that start over (a dense first step)."""
        if obs.shape[1:] != self.obs_shape:
            raise ValueError(f"observation batch has shape {tuple(obs.shape)}; expected (batch, "
                             f"{', '.join(map(str, self.obs_shape))})")
        if self.float_input and obs.dtype != torch.float32:
            raise TypeError(f"backend='sparse' needs float32 layer inputs, got {obs.dtype}: use backend=\"dense\"")
        if obs.dtype not in _KERNEL_INPUTS:
            obs = obs.to(torch.float32)  # what the preprocessing's cast does first anyway
        if self.u8 and obs.dtype != torch.uint8:
            self.u8 = False  # the last frames kept are stale from now on: compare every input as floats
        u8 = self.u8
        x = obs.numpy() if obs.is_contiguous() else obs.contiguous().numpy()
        x = x.reshape(x.shape[0], -1)
        layers = self.meta.shape[0]
        start = 0
        head, tail = self._head, self._tail
        while True:
            stop = K.fused_step(x, *head, fresh, drift_free, start, *tail, u8, self.prev, self.dirty)
            if stop == layers:
                break
            self._dense_delta(stop)
            start = stop + 1
        return torch.from_numpy(self.Z[:, self.out].copy())

    def _dense_delta(self, l: int) -> None:
        """Layer ``l`` sent many changes: rebuild its delta and apply it with one torch conv / linear."""
        mt = self.meta[l]
        rows, n = self.Z.shape[0], int(mt[K.N])
        d = self.dbuf[:rows * n].reshape(rows, n)
        K.rebuild_delta(self.idx, self.val, self.n_sent, d)
        dt = torch.from_numpy(d)
        m, w = self.torch_w[l]
        if isinstance(m, nn.Conv2d):
            c, h, wd = int(mt[K.CIN]), int(mt[K.H]), int(mt[K.WD])
            dt = dt.view(rows, c, h, wd) if mt[K.SX] == 1 else dt.view(rows, h, wd, c).permute(0, 3, 1, 2)
            out = F.conv2d(dt, w, stride=m.stride, padding=m.padding, dilation=m.dilation)
            out = out.permute(0, 2, 3, 1).reshape(rows, -1)
        else:
            out = F.linear(dt, w)
        z0 = int(mt[K.Z_OFF])
        self.Z[:, z0:z0 + int(mt[K.ZSIZE])] += out.numpy()


class SparseEngine:
    """The sparse state and step of one :class:`~deltalearn.core.delta.DeltaNetwork`."""

    def __init__(self, owner: "DeltaNetwork", crossover: float | None = None) -> None:
        for name, m, w in zip(owner.names, owner.chain.weights, owner.weights):
            check_sparse_layer(name, m, w)
        if crossover is not None and not 0.0 <= float(crossover) <= 1.0:
            raise ValueError(f"crossover must be a share of a layer's inputs in [0, 1] (or None for the "
                             f"measured default), got {crossover!r}")
        self.owner = owner
        self.crossover = crossover
        self.thresholds = [np.float32(t) for t in owner.thresholds]
        self.layers: list[_Layer] = []
        self.fresh: np.ndarray | None = None
        self.plan = fused_plan(owner)
        self.use_fused = self.plan is not None
        """Run the whole step in one compiled call (set False before the first step to force the general path)."""
        self.fused: _Fused | None = None
        self._spare: _Fused | None = None
        """The pools of the last full reset, kept: packing the weights again took ~20 ms per episode."""
        self.any_fresh = False
        """Whether a stream starts over at the next step (kept as a bool: ``fresh.any()`` costs ~1 us a step)."""

    def reset(self, rows: "torch.Tensor | list[int] | None" = None) -> None:
        if rows is None or self.fresh is None:
            self._spare = self.fused or self._spare
            self.layers, self.fresh, self.fused = [], None, None
            return
        r = np.asarray(torch.as_tensor(rows))
        self.fresh[np.flatnonzero(r) if r.dtype == bool else r] = True
        self.any_fresh = bool(self.fresh.any())

    def _init_state(self, obs: torch.Tensor) -> None:
        o = self.owner
        rows = int(obs.shape[0])
        self.fresh = np.ones(rows, dtype=bool)
        self.any_fresh = True
        if self.use_fused and self.plan is not None:
            spare, self._spare = self._spare, None
            if spare is not None and spare.fits(obs):
                spare.restart()
                self.fused = spare
            else:
                self.fused = _Fused(o, self.plan, obs, self.crossover)
            return
        shapes = o.chain.input_shapes(obs[:1])
        self.layers = []
        for m, w, b, shape in zip(o.chain.weights, o.weights, o.biases, shapes):
            layer = _Layer(m, w, b, shape, rows, 0.0)
            kind = "conv" if layer.conv else "linear"
            layer.crossover = layer_crossover(kind, int(np.prod(shape)), int(np.prod(layer.z.shape[1:]))) \
                if self.crossover is None else self.crossover
            self.layers.append(layer)
        self.fresh = np.ones(rows, dtype=bool)

    def forward(self, obs: torch.Tensor, count: bool = True) -> torch.Tensor:
        """One step of every stream; the fused path when the chain allows it, else the chain replay."""
        fresh = self.fresh
        if fresh is None:
            with torch.no_grad():
                self._init_state(obs)
            fresh = self.fresh
        elif obs.shape[0] != fresh.shape[0]:
            raise ValueError(f"batch of {obs.shape[0]} observations, but the delta state holds "
                             f"{fresh.shape[0]} streams; call reset() to start over")
        fused = self.fused
        if fused is not None:
            out = fused.step(obs, fresh, self.owner.drift_free)
            if self.any_fresh:
                fresh[:] = False
                self.any_fresh = False
            # a plain attribute: set past nn.Module.__setattr__'s registry checks (~1 us a step)
            self.owner.__dict__["last_counts"] = torch.from_numpy(fused.counts.copy()) if count else None
            return out
        with torch.no_grad():
            return self._general_forward(obs, count)

    def _general_forward(self, obs: torch.Tensor, count: bool) -> torch.Tensor:
        o = self.owner
        fresh = self.fresh
        any_fresh, ths = bool(fresh.any()), self.thresholds

        def delta_layer(k: int, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
            return self.layers[k].step(x, fresh, any_fresh, ths[k], o.drift_free)

        out = o.chain.run(obs, delta_layer)
        self.fresh = np.zeros_like(fresh)
        self.any_fresh = False
        o.last_counts = torch.from_numpy(np.stack([l.counts for l in self.layers], axis=1)) if count else None
        return out
