"""Counts behind float layers move between machines: dl.counts_close and its tolerance.

The tolerance must pass float noise (oneDNN on and off here; the measurement of
book/scripts/count_noise.py across configurations) and fail any real change (a neighbouring
threshold or sparsity of the committed sweeps, one layer's count doubled). Exact kinds of count
(the first layer, dense counts) must stay exact.
"""
from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import deltalearn as dl

DATA = dl.study.book_data()
LAYERS = ["conv1", "conv2", "conv3", "fc1", "fc2"]
MARGIN = 4  # the tolerance must be this many times inside the noise and the real changes


def sweep(game: str) -> list[dict]:
    return json.loads((DATA / "reproduce" / f"{game}_sweep.json").read_text())


def committed(game: str, sparsity: float, threshold) -> list[int]:
    row = next(r for r in sweep(game) if r["sparsity"] == sparsity and r["threshold"] == threshold)
    return [row[f"significant_{n}"] for n in LAYERS]


@pytest.fixture(scope="module")
def breakout():
    """Breakout-pruned-0.79 at threshold 0.001 on its recorded episode, oneDNN on and off."""
    obs = dl.load_trajectory("Breakout")["observations"]
    net = dl.load_agent("Breakout-pruned-0.79")
    no_reference = np.zeros(len(obs), dtype=np.int64)  # agreement is not looked at here
    out, before = {}, torch.backends.mkldnn.enabled
    try:
        for onednn in (True, False):
            torch.backends.mkldnn.enabled = onednn
            out[onednn] = dl.replay(net, obs, threshold=0.001, reference=no_reference).report
    finally:
        torch.backends.mkldnn.enabled = before
    return out


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn-on", "onednn-off"])
def test_replay_with_onednn_on_or_off_is_close_to_the_committed_sweep(breakout, onednn):
    report = breakout[onednn]
    want = committed("Breakout", 0.79, 0.001)
    got = [l.significant for l in report.layers]
    assert dl.counts_close(got, want)
    assert dl.counts_close(report, want)  # a report is accepted too
    # exact kinds stay exact: the first layer sees exact pixel changes of the recorded frames,
    # dense counts are arithmetic
    assert got[0] == want[0]
    assert report.steps == 916
    assert [l.dense for l in report.layers] == [d * 916 for d in dl.core.dense_counts(dl.nature_dqn(4))]


def test_onednn_on_and_off_are_close_to_each_other(breakout):
    assert dl.counts_close(breakout[True], breakout[False])


@pytest.mark.parametrize("sparsity, threshold", [(0.79, 0.0), (0.79, 0.003), (0.5, 0.001), (0.9, 0.001),
                                                 (0.79, None)])
def test_a_neighbouring_sweep_cell_is_not_close(breakout, sparsity, threshold):
    other = committed("Breakout", sparsity, threshold)
    for report in breakout.values():
        assert not dl.counts_close(report, other)


@pytest.mark.parametrize("layer", range(len(LAYERS)), ids=LAYERS)
@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_one_layer_doubled_or_halved_is_not_close(breakout, layer, factor):
    counts = [l.significant for l in breakout[False].layers]
    changed = list(counts)
    changed[layer] = round(counts[layer] * factor)
    assert not dl.counts_close(changed, counts)
    assert not dl.counts_close(counts, changed)


def test_no_two_committed_sweep_cells_are_close_even_with_a_wider_tolerance():
    for game in dl.study.SIX_GAMES:
        rows = sweep(game)
        for a, b in itertools.combinations(rows, 2):
            x, y = ([r[f"significant_{n}"] for n in LAYERS] for r in (a, b))
            assert not dl.counts_close(x, y, rtol=MARGIN * dl.core.COUNT_RTOL, floor=MARGIN * dl.core.COUNT_FLOOR), \
                (game, a["sparsity"], a["threshold"], b["sparsity"], b["threshold"])


def test_no_two_grid_cells_are_close():
    """Chapter 6's CartPole grid: a neighbouring threshold or sparsity is caught even with the
    wider tolerance; a one-shot and a fine-tuned network of the same sparsity with it."""
    with open(DATA / "grid.csv") as f:
        rows = [r for r in csv.DictReader(f)]
    for a, b in itertools.combinations(rows, 2):
        if float(a["sparsity"]) == float(b["sparsity"]) == 0 and a["threshold"] == b["threshold"]:
            continue  # both kinds are the unpruned agent
        x, y = ([int(r[n]) for n in ("fc1", "fc2", "fc3")] for r in (a, b))
        same_setting = (a["sparsity"], a["threshold"]) == (b["sparsity"], b["threshold"])
        wider = 1 if same_setting else MARGIN
        assert not dl.counts_close(x, y, rtol=wider * dl.core.COUNT_RTOL, floor=wider * dl.core.COUNT_FLOOR), (a, b)


def test_the_committed_measurement_passes_with_a_margin_and_exact_layers_never_moved():
    """count_noise.json (dl.study.load_count_noise()): every replayed cell in every configuration is close to the
    committed one with the tolerance narrowed MARGIN times; first layers never moved."""
    measured = dl.study.load_count_noise()["replays"]
    assert {"native", "onednn-off", "avx2"} <= set(measured)
    n = 0
    for config, res in measured.items():
        for game, rows in res["games"].items():
            if game == "CartPole-v1":
                with open(DATA / "grid.csv") as f:
                    ref_rows = [{"kind": r["kind"], "sparsity": float(r["sparsity"]),
                                 "threshold": None if r["threshold"] == "none" else float(r["threshold"]),
                                 **{f"significant_{k}": int(r[k]) for k in ("fc1", "fc2", "fc3")}}
                                for r in csv.DictReader(f)]
            else:
                ref_rows = sweep(game)
            for row in rows:
                ref = next(r for r in ref_rows if r["sparsity"] == row["sparsity"]
                           and r["threshold"] == row["threshold"] and r.get("kind", row["kind"]) == row["kind"])
                names = [k for k in ref if k.startswith("significant_") and k != "significant_per_decision"]
                got, want = [row[k] for k in names], [ref[k] for k in names]
                assert dl.counts_close(got, want, rtol=dl.core.COUNT_RTOL / MARGIN, floor=dl.core.COUNT_FLOOR / MARGIN), \
                    (config, game, row["sparsity"], row["threshold"], got, want)
                assert got[0] == want[0], (config, game, "the first layer is exact")
                n += 1
    assert n >= 100


def test_counts_close_compares_layer_by_layer():
    assert dl.counts_close([10, 0, 5], [10, 0, 5], rtol=0, floor=0)
    assert not dl.counts_close([10, 0, 5], [10, 0, 6], rtol=0, floor=0)
    # rtol: relative to the larger of the two counts of that layer
    assert dl.counts_close([1000, 10], [1001, 10], rtol=1e-3, floor=0)
    assert not dl.counts_close([1000, 10], [1002, 10], rtol=1e-3, floor=0)
    # floor: a share of all layers' products together, so a tiny layer may move a little
    assert dl.counts_close([1_000_000, 10], [1_000_000, 19], rtol=0, floor=1e-5)
    assert not dl.counts_close([1_000_000, 10], [1_000_000, 21], rtol=0, floor=1e-5)
    # integers of any kind: numpy, pandas, floats with integral values
    assert dl.counts_close(np.array([3, 4]), [3.0, np.int64(4)])


@pytest.mark.parametrize("a, b, match", [([1, 2], [1, 2, 3], "layers"), ([1, -2], [1, 2], "non-negative"),
                                         ([1, 2.5], [1, 2], "integers"), ([1, float("nan")], [1, 2], "integers")])
def test_counts_close_rejects_bad_counts(a, b, match):
    with pytest.raises(ValueError, match=match):
        dl.counts_close(a, b)


@pytest.mark.parametrize("kw", [dict(rtol=-1e-3), dict(floor=float("inf")), dict(rtol="0.1")])
def test_counts_close_rejects_bad_tolerances(kw):
    with pytest.raises(ValueError, match="finite number >= 0"):
        dl.counts_close([1], [1], **kw)


@pytest.mark.parametrize("value, want", [(None, None), ("", None), ("1", None), ("on", None), ("0", False),
                                         (" OFF ", False), ("no", False)])
def test_deltalearn_onednn_values(value, want):
    before = torch.backends.mkldnn.enabled
    try:
        torch.backends.mkldnn.enabled = True
        dl._onednn_switch(value)
        assert torch.backends.mkldnn.enabled is (True if want is None else want)  # on values leave torch's default
    finally:
        torch.backends.mkldnn.enabled = before
    with pytest.raises(ValueError, match="DELTALEARN_ONEDNN='maybe'"):
        dl._onednn_switch("maybe")


def test_deltalearn_onednn_is_honoured_at_import_in_a_child_process():
    """What a notebook kernel sees: the variable is inherited and applied by ``import deltalearn``."""
    env = {**os.environ, "DELTALEARN_ONEDNN": "0"}
    code = "import torch, deltalearn; print(torch.backends.mkldnn.enabled)"
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == "False"
