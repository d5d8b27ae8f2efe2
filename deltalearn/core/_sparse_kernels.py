"""Compiled kernels of the sparse delta engine's fused path: a whole network step in one call.

The fused path serves chains made only of weight layers (Conv2d / Linear), ReLU and flattening,
after an optional ``float32(obs) * scale`` preprocessing (the Nature DQN and the MLPs). Every
layer's state lives in a few flat pools, described by one row of ``meta`` per layer, so one numba
call runs every layer for every stream with no torch operation and no Python per layer:

* ``W``: each layer's weights as (in_channels * kh * kw, out) rows (a Linear layer is a 1x1 conv on
  a 1x1 image with ``in`` channels; a Linear after a conv has its rows permuted to the conv's
  channels-last output order);
* ``Z``: (rows, sum of output sizes), each layer's accumulated pre-activations, channels-last;
* ``XR``: (rows, sum of input sizes), each layer's references, in the order its input is read;
* ``FAN``: per input element, its fan-out (significant products per unit sent), for counting.

Select is compiled without fastmath: moving the reference by exactly the sent ``d``
(``xref + (x - xref)``, not ``x``) must survive the compiler.
"""
from __future__ import annotations

import numpy as np
from numba import njit

# columns of the per-layer ``meta`` table
N, CIN, H, WD, WO, COUT, KH, KW, SC, SY, SX, W_OFF, Z_OFF, ZSIZE, X_OFF, YT, NYO, XT, NXO, RELU, B_OFF, POS_, PERM = \
    range(23)
META_FIELDS = 23

_GATHER = np.uint64(0x0102040810204080)
"""Times a word of eight 0/1 bytes, its top byte holds byte k's flag in bit k (no two partial products meet)."""
_LOWEST_BIT = np.array([0] + [(v & -v).bit_length() - 1 for v in range(1, 256)], dtype=np.int64)
"""The index of the lowest set bit of each byte value."""


@njit(cache=True, nogil=True, fastmath=True)
def _mark(src, xref, th, scale, has_scale, relu, over):  # pragma: no cover - compiled
    """``over[i] = |x[i] - xref[i]| > th`` with ``x = relu?(float32(src) * scale?)``; vectorised."""
    for i in range(src.shape[0]):
        x = np.float32(src[i])
        if has_scale:
            x = x * scale
        if relu:
            x = max(x, np.float32(0.0))
        over[i] = abs(x - xref[i]) > th


@njit(cache=True, nogil=True)
def select_row(src, xref, th, fresh, drift_free, scale, has_scale, relu, fan,
               over, idx, val):  # pragma: no cover - compiled
    """One stream, one layer: list the non-zero sent changes in ``idx``/``val``, move the references
    by them (drift-free) and return (number sent, significant products).

    ``src``, ``xref`` and ``fan`` are this layer's slices (indexing a pool at an offset defeats
    the compiler's vectorisation)."""
    n = src.shape[0]
    if fresh:
        over[:n] = 1
    else:
        _mark(src, xref, th, scale, has_scale, relu, over)
    nw = (n + 7) // 8
    over[n:nw * 8] = 0
    words = over[:nw * 8].view(np.uint64)
    m = 0
    c = 0
    for w in range(nw):
        wv = words[w]
        if wv == 0:
            continue
        # visit only the marked bytes: gather their 0/1 flags into an 8-bit mask and walk its set bits
        # (3x faster than testing all eight at 12-24% sent, measured)
        mk = np.int64((wv * _GATHER) >> np.uint64(56))
        while mk != 0:
            i = 8 * w + _LOWEST_BIT[mk]
            mk &= mk - 1
            x = np.float32(src[i])
            if has_scale:
                x = x * scale
            if relu:
                x = max(x, np.float32(0.0))
            d = x - xref[i]
            idx[m] = i
            val[m] = d
            keep = np.int64(d != 0.0)
            m += keep
            c += fan[i] * keep
            if drift_free:
                xref[i] = xref[i] + d
    if not drift_free:
        for i in range(n):
            x = np.float32(src[i])
            if has_scale:
                x = x * scale
            if relu:
                x = max(x, np.float32(0.0))
            xref[i] = x
    return m, c


@njit(cache=True, nogil=True)
def select_frame(src, xref, th, fresh, drift_free, scale, has_scale, fan, over, pover, cin, hw,
                 idx, val):  # pragma: no cover - compiled
    """:func:`select_row` for a (c, h, w) frame whose sent changes are listed channels-last.

    The references and fan-outs stay in the frame's own order, so the marking pass is the same
    vectorised one; the marks are OR-ed per pixel, and the pixels with a change list their sent
    channels together (index ``pixel * c + channel``), so the scatter treats them as one group.
    """
    n = cin * hw
    if fresh:
        over[:n] = 1
    else:
        _mark(src, xref, th, scale, has_scale, False, over)
    nw = (hw + 7) // 8
    if hw % 8 == 0:  # OR the channels' marks eight pixels at a time
        ow = over[:n].view(np.uint64)
        pw = pover[:hw].view(np.uint64)
        for w in range(nw):
            acc = ow[w]
            for ch in range(1, cin):
                acc |= ow[ch * nw + w]
            pw[w] = acc
    else:
        for q in range(hw):
            acc8 = over[q]
            for ch in range(1, cin):
                acc8 |= over[ch * hw + q]
            pover[q] = acc8
    pover[hw:nw * 8] = 0
    words = pover[:nw * 8].view(np.uint64)
    m = 0
    c = 0
    for w in range(nw):
        if words[w] == 0:
            continue
        for q in range(8 * w, min(8 * w + 8, hw)):
            if pover[q] == 0:
                continue
            for ch in range(cin):
                j = ch * hw + q
                x = np.float32(src[j])
                if has_scale:
                    x = x * scale
                d = x - xref[j]
                sent = over[j] != 0
                idx[m] = q * cin + ch
                val[m] = d
                keep = np.int64(sent and d != 0.0)
                m += keep
                c += fan[j] * keep
                if sent and drift_free:
                    xref[j] = xref[j] + d
    if not drift_free:
        for j in range(n):
            x = np.float32(src[j])
            xref[j] = x * scale if has_scale else x
    return m, c


@njit(cache=True, nogil=True)
def select_frame_u8(src, prev, dirty, xref, th, fresh, drift_free, scale, has_scale, fan, pover, cin, hw,
                    idx, val):  # pragma: no cover - compiled
    """:func:`select_frame` for a uint8 frame, looking only at the bytes that changed.

    An element whose frame byte equals the last step's (``prev``) has the same input value, so it is
    sent again only if its reference was left off that value: a send that moved the reference by
    ``d`` without landing exactly on the input (float round-off) marks it ``dirty``. So the scan
    compares bytes eight at a time (a quarter of the float pass's bytes, no conversion) and only
    changed or dirty elements are converted and tested, with the same ``|d| > th`` as the dense path.
    """
    if fresh:
        pover[:hw] = 1
    elif hw % 8 == 0:  # each channel's plane starts on a word: OR the channels' changes 8 pixels a time
        nw = hw // 8
        s64 = src.view(np.uint64)
        p64 = prev.view(np.uint64)
        d64 = dirty.view(np.uint64)
        pw = pover[:hw].view(np.uint64)
        pw[:] = 0
        for ch in range(cin):  # one plane at a time on slices: vectorised (4x faster than across planes)
            sw, pv, dw = s64[ch * nw:(ch + 1) * nw], p64[ch * nw:(ch + 1) * nw], d64[ch * nw:(ch + 1) * nw]
            for w in range(nw):
                pw[w] |= (sw[w] ^ pv[w]) | dw[w]
    else:
        for q in range(hw):
            acc8 = np.uint8(0)
            for ch in range(cin):
                j = ch * hw + q
                acc8 |= (src[j] ^ prev[j]) | dirty[j]
            pover[q] = acc8
    nwp = (hw + 7) // 8
    pover[hw:nwp * 8] = 0
    words = pover[:nwp * 8].view(np.uint64)
    m = 0
    c = 0
    for w in range(nwp):
        if words[w] == 0:
            continue
        for q in range(8 * w, min(8 * w + 8, hw)):
            if pover[q] == 0:
                continue
            for ch in range(cin):
                j = ch * hw + q
                prev[j] = src[j]
                x = np.float32(src[j])
                if has_scale:
                    x = x * scale
                d = x - xref[j]
                sent = fresh or abs(d) > th
                idx[m] = q * cin + ch
                val[m] = d
                keep = np.int64(sent and d != 0.0)
                m += keep
                c += fan[j] * keep
                if drift_free:
                    if sent:
                        xref[j] = xref[j] + d
                    dirty[j] = np.uint8(sent and xref[j] != x)
                else:
                    xref[j] = x
    return m, c


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def _axpy(dv, first, d0, w0, d1, w1, d2, w2, d3, w3, k):  # pragma: no cover - compiled
    """``dv (=|+=) sum_j d_j * w_j`` over ``k`` (1, 2 or 4) weight slices, vectorised over ``dv``:
    one load and store of ``dv`` per group instead of per sent change."""
    cout = dv.shape[0]
    if k == 4:
        if first:
            for o in range(cout):
                dv[o] = (d0 * w0[o] + d1 * w1[o]) + (d2 * w2[o] + d3 * w3[o])
        else:
            for o in range(cout):
                dv[o] += (d0 * w0[o] + d1 * w1[o]) + (d2 * w2[o] + d3 * w3[o])
    elif k == 2:
        if first:
            for o in range(cout):
                dv[o] = d0 * w0[o] + d1 * w1[o]
        else:
            for o in range(cout):
                dv[o] += d0 * w0[o] + d1 * w1[o]
    elif first:
        for o in range(cout):
            dv[o] = d0 * w0[o]
    else:
        for o in range(cout):
            dv[o] += d0 * w0[o]


@njit(cache=True, nogil=True, fastmath=True)
def scatter_linear_row(W, cout, idx, val, m, dz, z):  # pragma: no cover - compiled
    """A linear layer's :func:`scatter_row`: sent columns eight at a time into ``dz``, then ``z``.

    Eight weight columns per pass over ``dz``: fc1 streams its columns from memory, and fewer
    passes over the accumulator leave more of the bandwidth to them."""
    dz[:cout] = 0.0
    s = 0
    while s + 8 <= m:
        d0, d1, d2, d3 = val[s], val[s + 1], val[s + 2], val[s + 3]
        d4, d5, d6, d7 = val[s + 4], val[s + 5], val[s + 6], val[s + 7]
        q0, q1, q2, q3 = idx[s] * cout, idx[s + 1] * cout, idx[s + 2] * cout, idx[s + 3] * cout
        q4, q5, q6, q7 = idx[s + 4] * cout, idx[s + 5] * cout, idx[s + 6] * cout, idx[s + 7] * cout
        w0, w1, w2, w3 = W[q0:q0 + cout], W[q1:q1 + cout], W[q2:q2 + cout], W[q3:q3 + cout]
        w4, w5, w6, w7 = W[q4:q4 + cout], W[q5:q5 + cout], W[q6:q6 + cout], W[q7:q7 + cout]
        for o in range(cout):
            dz[o] += ((d0 * w0[o] + d1 * w1[o]) + (d2 * w2[o] + d3 * w3[o])) + \
                ((d4 * w4[o] + d5 * w5[o]) + (d6 * w6[o] + d7 * w7[o]))
        s += 8
    while s < m:
        d0 = val[s]
        q0 = idx[s] * cout
        w0 = W[q0:q0 + cout]
        for o in range(cout):
            dz[o] += d0 * w0[o]
        s += 1
    for o in range(cout):
        z[o] += dz[o]


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def _axpy8(dv, first, d0, w0, d1, w1, d2, w2, d3, w3, d4, w4, d5, w5, d6, w6, d7, w7):  # pragma: no cover
    """:func:`_axpy` over eight weight slices."""
    cout = dv.shape[0]
    if first:
        for o in range(cout):
            dv[o] = ((d0 * w0[o] + d1 * w1[o]) + (d2 * w2[o] + d3 * w3[o])) + \
                ((d4 * w4[o] + d5 * w5[o]) + (d6 * w6[o] + d7 * w7[o]))
    else:
        for o in range(cout):
            dv[o] += ((d0 * w0[o] + d1 * w1[o]) + (d2 * w2[o] + d3 * w3[o])) + \
                ((d4 * w4[o] + d5 * w5[o]) + (d6 * w6[o] + d7 * w7[o]))


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def _scatter8(W, pos, idx, val, s, y, x, cout, kh, kw, taps, yt, nyo, xt, nxo, wo, dz, touched):  # pragma: no cover
    """Eight sent channels of one pixel (``idx[s:s + 8]``) into every output position they feed."""
    c0, c1, c2, c3 = pos[idx[s]] >> 16, pos[idx[s + 1]] >> 16, pos[idx[s + 2]] >> 16, pos[idx[s + 3]] >> 16
    c4, c5, c6, c7 = pos[idx[s + 4]] >> 16, pos[idx[s + 5]] >> 16, pos[idx[s + 6]] >> 16, pos[idx[s + 7]] >> 16
    d0, d1, d2, d3, d4, d5, d6, d7 = val[s], val[s + 1], val[s + 2], val[s + 3], val[s + 4], val[s + 5], \
        val[s + 6], val[s + 7]
    step = kh * kw * cout  # rows of one tap for consecutive channels
    for jy in range(taps[nyo + y]):
        ey = yt + (y * kh + jy) * 2
        ky = taps[ey]
        py = taps[ey + 1] * wo
        for jx in range(taps[nxo + x]):
            ex = xt + (x * kw + jx) * 2
            p = py + taps[ex + 1]
            t = (ky * kw + taps[ex]) * cout
            q0, q1, q2, q3 = c0 * step + t, c1 * step + t, c2 * step + t, c3 * step + t
            q4, q5, q6, q7 = c4 * step + t, c5 * step + t, c6 * step + t, c7 * step + t
            first = touched[p] == 0
            touched[p] = 1
            _axpy8(dz[p * cout:(p + 1) * cout], first, d0, W[q0:q0 + cout], d1, W[q1:q1 + cout], d2,
                   W[q2:q2 + cout], d3, W[q3:q3 + cout], d4, W[q4:q4 + cout], d5, W[q5:q5 + cout], d6,
                   W[q6:q6 + cout], d7, W[q7:q7 + cout])


@njit(cache=True, nogil=True, fastmath=True)
def scatter_row(W, mt, taps, pos, idx, val, m, dz, touched, z):  # pragma: no cover - compiled
    """One stream, one layer: each sent change times its weight slice into every output it feeds.

    ``W`` and ``z`` are this layer's slices of the pools. Sent changes of one input pixel (the
    channels of a channels-last input, or any inputs of a linear layer) feed the same outputs, so
    they go in groups of up to four: one pass over each touched output's channels per group. The
    products are summed in ``dz`` per touched output position and added to ``z`` once, as the
    dense path's ``z += conv(d)`` does: exactly cancelling changes then leave ``z`` untouched.
    The axpys run on slices, which the compiler vectorises (flat pool indexing measured 5x slower).
    A conv input element's (channel, row, column) comes packed from the table ``pos``
    (``c << 16 | y << 8 | x``): three integer divisions per sent change cost more than conv1's axpys.
    """
    cin, h, wd, wo, cout = mt[CIN], mt[H], mt[WD], mt[WO], mt[COUT]
    kh, kw, sc, sy, sx = mt[KH], mt[KW], mt[SC], mt[SY], mt[SX]
    yt, nyo, xt, nxo = mt[YT], mt[NYO], mt[XT], mt[NXO]
    npos = mt[ZSIZE] // cout
    linear = h == 1 and wd == 1
    s = 0
    while s < m:
        i = idx[s]
        if linear:  # every input feeds the one output position: any four sends form a group
            k = 4 if s + 4 <= m else (2 if s + 2 <= m else 1)
            y = x = 0
            c0 = i
            c1 = idx[s + 1] if k > 1 else c0
            c2 = idx[s + 2] if k > 2 else c0
            c3 = idx[s + 3] if k > 3 else c0
        else:
            e = pos[i]
            pix = e & 0xFFFF
            y = pix >> 8
            x = pix & 0xFF
            # the run of sent changes at this pixel (up to 8, then 4, 2, 1)
            k = 1
            while k < 8 and s + k < m and (pos[idx[s + k]] & 0xFFFF) == pix:
                k += 1
            if k == 8:
                _scatter8(W, pos, idx, val, s, y, x, cout, kh, kw, taps, yt, nyo, xt, nxo, wo, dz, touched)
                s += 8
                continue
            k = 4 if k >= 4 else (2 if k >= 2 else 1)
            c0 = e >> 16
            c1 = pos[idx[s + 1]] >> 16 if k > 1 else c0
            c2 = pos[idx[s + 2]] >> 16 if k > 2 else c0
            c3 = pos[idx[s + 3]] >> 16 if k > 3 else c0
        d0 = val[s]
        d1 = val[s + 1] if k > 1 else d0
        d2 = val[s + 2] if k > 2 else d0
        d3 = val[s + 3] if k > 3 else d0
        for jy in range(taps[nyo + y]):
            ey = yt + (y * kh + jy) * 2
            ky = taps[ey]
            py = taps[ey + 1] * wo
            for jx in range(taps[nxo + x]):
                ex = xt + (x * kw + jx) * 2
                kx = taps[ex]
                p = py + taps[ex + 1]
                q0 = ((c0 * kh + ky) * kw + kx) * cout
                q1 = ((c1 * kh + ky) * kw + kx) * cout
                q2 = ((c2 * kh + ky) * kw + kx) * cout
                q3 = ((c3 * kh + ky) * kw + kx) * cout
                first = touched[p] == 0
                touched[p] = 1
                _axpy(dz[p * cout:(p + 1) * cout], first, d0, W[q0:q0 + cout], d1, W[q1:q1 + cout],
                      d2, W[q2:q2 + cout], d3, W[q3:q3 + cout], k)
        s += k
    for p in range(npos):
        if touched[p] != 0:
            touched[p] = 0
            dv = dz[p * cout:(p + 1) * cout]
            zv = z[p * cout:(p + 1) * cout]
            for o in range(cout):
                zv[o] += dv[o]


@njit(cache=True, nogil=True)
def rebuild_delta(idx, val, n_sent, d):  # pragma: no cover - compiled
    """Each stream's sent list written out as its dense delta ``d`` (rows, inputs), for a dense fallback."""
    d[:] = 0.0
    for b in range(d.shape[0]):
        row = d[b]
        for s in range(n_sent[b]):
            row[idx[b, s]] = val[b, s]


@njit(cache=True, nogil=True)
def fused_step(obs, scale, has_scale, meta, th, cross, W, taps, POS, FAN, BIAS, Z, XR, fresh, drift_free,
               start, over, idx, val, n_sent, dz, touched, counts, pover, u8, prev, dirty):  # pragma: no cover
    """Run layers ``start..`` for every stream; returns the layer index at which the caller must
    apply a dense pass of the delta (its sent share exceeded ``cross``), or the number of layers.

    ``idx``/``val`` (rows, max inputs) hold the sent lists of the layer returned. With ``u8`` (a
    uint8 frame into a first conv layer) the first layer looks only at changed bytes
    (:func:`select_frame_u8`), keeping each stream's last frame in ``prev`` and its ``dirty`` marks.
    """
    rows = obs.shape[0]
    layers = meta.shape[0]
    for l in range(start, layers):
        mt = meta[l]
        n, x0, z0, zs, b0 = mt[N], mt[X_OFF], mt[Z_OFF], mt[ZSIZE], mt[B_OFF]
        total = 0
        for b in range(rows):
            if fresh[b]:
                XR[b, x0:x0 + n] = 0.0
                Z[b, z0:z0 + zs] = BIAS[b0:b0 + zs]
        fan = FAN[x0:x0 + n]
        for b in range(rows):
            xr = XR[b, x0:x0 + n]
            if l == 0 and u8:
                m, c = select_frame_u8(obs[b].view(np.uint8), prev[b], dirty[b], xr, th[l], fresh[b], drift_free,
                                       scale, has_scale, fan, pover, mt[CIN], mt[H] * mt[WD], idx[b], val[b])
            elif l == 0 and mt[PERM] != 0:
                m, c = select_frame(obs[b], xr, th[l], fresh[b], drift_free, scale, has_scale, fan, over, pover,
                                    mt[CIN], mt[H] * mt[WD], idx[b], val[b])
            elif l == 0:
                m, c = select_row(obs[b], xr, th[l], fresh[b], drift_free, scale, has_scale, False, fan,
                                  over, idx[b], val[b])
            else:
                p0 = meta[l - 1, Z_OFF]
                m, c = select_row(Z[b, p0:p0 + n], xr, th[l], fresh[b], drift_free, np.float32(1.0), False,
                                  mt[RELU] != 0, fan, over, idx[b], val[b])
            n_sent[b] = m
            counts[b, l] = c
            total += m
        if total > cross[l] * rows * n:
            return l
        Wl = W[mt[W_OFF]:mt[W_OFF] + mt[CIN] * mt[KH] * mt[KW] * mt[COUT]]
        pos = POS[mt[POS_]:mt[POS_] + n]
        for b in range(rows):
            if n_sent[b] == 0:
                continue
            if mt[H] == 1 and mt[WD] == 1 and mt[KH] == 1 and mt[KW] == 1:
                scatter_linear_row(Wl, mt[COUT], idx[b], val[b], n_sent[b], dz, Z[b, z0:z0 + zs])
            else:
                scatter_row(Wl, mt, taps, pos, idx[b], val[b], n_sent[b], dz, touched, Z[b, z0:z0 + zs])
    return layers
