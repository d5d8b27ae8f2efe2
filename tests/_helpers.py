"""Small networks and brute-force references shared by the tests."""
from __future__ import annotations

import torch
from torch import nn

import deltalearn as dl


def small_conv_net(n_actions: int = 3, input_scale: float = 0.5) -> dl.QNetwork:
    """A tiny conv Q-network with stride and padding: (2, 10, 10) -> 3 Q-values.

    conv(2->4, k3, s2, p1): 10x10 -> 5x5; conv(4->6, k3, s1, p1): 5x5 -> 5x5; fc 150 -> 16 -> actions.
    A non-unit ``input_scale`` checks that the delta/counting code sees the scaled input.
    """
    body = nn.Sequential(
        nn.Conv2d(2, 4, kernel_size=3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4, 6, kernel_size=3, stride=1, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 5 * 5, 16), nn.ReLU(),
        nn.Linear(16, n_actions),
    )
    return dl.QNetwork(dl.core.NetworkSpec("small-conv", n_actions), body, (2, 10, 10), input_scale=input_scale)


def brute_conv_pairs(layer: nn.Conv2d, x: torch.Tensor, w: torch.Tensor | None = None) -> list[int]:
    """Count (non-zero weight, non-zero input) pairs of a conv layer with explicit loops.

    Positions that fall in the zero padding are not inputs and never count.
    """
    w = layer.weight if w is None else w
    b_, c_in, h, wd = x.shape
    c_out, c_per_group, kh, kw = w.shape
    sh, sw = layer.stride
    ph, pw = layer.padding
    dh, dw = layer.dilation
    groups = layer.groups
    out_per_group = c_out // groups
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xl = (x != 0).tolist()
    wl = (w != 0).tolist()
    counts = []
    for b in range(b_):
        n = 0
        for o in range(c_out):
            g = o // out_per_group
            for oy in range(oh):
                for ox in range(ow):
                    for ci in range(c_per_group):
                        c = g * c_per_group + ci
                        for ky in range(kh):
                            iy = oy * sh - ph + ky * dh
                            if not 0 <= iy < h:
                                continue
                            for kx in range(kw):
                                ix = ox * sw - pw + kx * dw
                                if not 0 <= ix < wd:
                                    continue
                                if wl[o][ci][ky][kx] and xl[b][c][iy][ix]:
                                    n += 1
        counts.append(n)
    return counts


def brute_linear_pairs(layer: nn.Linear, x: torch.Tensor, w: torch.Tensor | None = None) -> list[int]:
    """Count (non-zero weight, non-zero input) pairs of a linear layer with explicit loops."""
    w = layer.weight if w is None else w
    wl = (w != 0).tolist()
    counts = []
    for row in (x != 0).tolist():
        n = 0
        for o in range(w.shape[0]):
            for i in range(w.shape[1]):
                if wl[o][i] and row[i]:
                    n += 1
        counts.append(n)
    return counts


def brute_pairs(layer: nn.Module, x: torch.Tensor) -> list[int]:
    if isinstance(layer, nn.Conv2d):
        return brute_conv_pairs(layer, x)
    return brute_linear_pairs(layer, x)
