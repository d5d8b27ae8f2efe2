"""Typed results: every committed table, sweep and summary reads back as objects, and the summary
computed on them is the one the dict-reading code gave."""
import json
import math

import numpy as np
import pandas as pd
import pytest

import deltalearn as dl
from deltalearn.study import results

DATA = dl.study.book_data()  # the package data the chapters read
TABLE_DIRS = [DATA / "reproduce", DATA / "heldout"]
TABLES = sorted(p for d in TABLE_DIRS for p in d.glob("*_table.json"))
SWEEPS = sorted((DATA / "reproduce").glob("*_sweep.json"))


def _same(a, b) -> bool:
    """Equal values, NaN equal to NaN, a list equal to the tuple it was decoded into."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


@pytest.mark.parametrize("path", TABLES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_committed_table_loads_as_typed_objects(path):
    raw = json.loads(path.read_text())
    t = dl.study.load_table(path)
    assert t == dl.study.load_table(raw["env"], path.parent)
    assert (t.env, t.sparsity, t.threshold, t.episodes, t.seed) == (raw["env"], raw["sparsity"], raw["threshold"],
                                                                    raw["episodes"], raw["seed"])
    assert (t.fine_tuned, t.pruned_from) == (raw["fine_tuned"], raw["pruned_from"])
    assert t.pruned_weights_reduction == raw.get("pruned_weights_reduction")
    assert list(t.variants) == list(raw["variants"])
    for name, v in t.variants.items():
        r = raw["variants"][name]
        assert isinstance(v.report, dl.MultiplicationReport) and v.name == name
        assert list(v.scores) == r["scores"] and list(v.lengths) == r["lengths"] and v.episodes == t.episodes
        assert (v.mean_score, v.std_score) == (np.mean(r["scores"]), np.std(r["scores"]))
        assert v.hns == r.get("hns") and v.steps == r["steps"] == sum(v.lengths)
        assert v.threshold == (None if r["threshold"] is None else r["threshold"])
        assert [(l.name, l.dense, l.significant) for l in v.report.layers] == \
            [(l["name"], l["dense"], l["significant"]) for l in r["layers"]]
        assert (v.report.total_significant, v.reduction) == (r["total_significant"], r["reduction"])
        assert sum(v.per_decision().values()) == pytest.approx(v.significant_per_decision)
        assert sum(v.per_decision("dense").values()) == pytest.approx(v.dense_per_decision)
    c = t.compare("pruned", "dense")
    assert c == dl.paired_difference(raw["variants"]["dense"]["scores"], raw["variants"]["pruned"]["scores"])


@pytest.mark.parametrize("directory", TABLE_DIRS, ids=lambda p: p.name)
def test_six_game_summary_and_the_committed_summary(directory):
    rows = results.six_game_summary(directory)
    assert [r["game"] for r in rows] == [g for g in dl.study.SIX_GAMES if (directory / f"{g}_table.json").exists()]
    committed = dl.study.load_summary(directory)
    # the choosing-episode summary predates some columns; the held-out one has them all
    assert list(committed.columns) == [c for c in results.SUMMARY_COLUMNS if c in committed]
    assert directory.name != "heldout" or list(committed.columns) == list(results.SUMMARY_COLUMNS)
    assert list(committed["game"]) == [r["game"] for r in rows]
    for r, (_, c) in zip(rows, committed.iterrows()):
        for k in committed.columns:
            v = r[k]
            assert _same(v, c[k]) or v == pytest.approx(c[k], nan_ok=True), (r["game"], k, v, c[k])


def test_layer_shares_are_per_decision():
    def variant(name, steps, counts):
        return {"env": "CartPole-v1", "sparsity": 0.0, "threshold": None, "seed": 0, "epsilon": 0.0,
                "scores": [1.0], "lengths": [steps], "mean_score": 1.0, "std_score": 0.0,
                "steps": steps, "layers": [{"name": f"l{i}", "dense": 100, "significant": c}
                                           for i, c in enumerate(counts)]}

    def table(dense, delta):
        return dl.study.GameTable.from_dict({"env": "CartPole-v1", "sparsity": 0.5, "threshold": 0.01,
                                             "episodes": 1, "fine_tuned": False,
                                             "variants": {"dense": variant("dense", *dense),
                                                          "delta": variant("delta", *delta)}})

    # the delta variant played twice as many decisions for the same totals: half the work per decision
    t = table((100, [40, 10]), (200, [40, 2]))
    assert results.layer_shares(t) == pytest.approx({"l0": 0.5, "l1": 0.1})
    assert results.layer_shares(t, "dense") == {"l0": 1.0, "l1": 1.0}
    assert np.isnan(results.layer_shares(table((1, [0]), (1, [0])))["l0"])
    with pytest.raises(KeyError, match="no variant 'pruned'.*dense, delta"):
        results.layer_shares(t, "pruned")


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_committed_sweep_loads_with_its_thresholds_decoded(path):
    env = path.name[: -len("_sweep.json")]
    sw = dl.load_sweep(env, path.parent)
    assert sw.attrs["env"] == env and sw.equals(dl.load_sweep(path))
    csv = pd.read_csv(path.with_suffix(".csv"))
    assert len(sw) == len(csv)
    for col in ("sparsity", "reduction", "agreement", "mean_score", "significant_conv1", "significant_fc2"):
        assert np.array_equal(sw[col].to_numpy(), csv[col].to_numpy()), col
    for (_, row), text in zip(sw.iterrows(), csv["threshold"]):
        t = row["threshold"]
        if pd.isna(text):
            assert t is None and np.isnan(row["first_layer_threshold"]) and not row["per_layer"]
        elif "/" in str(text):
            assert isinstance(t, tuple) and row["per_layer"] and t == tuple(float(x) for x in text.split("/"))
            assert row["first_layer_threshold"] == t[0]
        else:
            assert isinstance(t, float) and not row["per_layer"] and t == row["first_layer_threshold"] == float(text)
        # every cell is found by its own sparsity and threshold, and only it
        assert dl.study.sweep_cell(sw, row["sparsity"], t).name == row.name
        if isinstance(t, tuple):
            assert dl.study.sweep_cell(sw, row["sparsity"], list(t)).name == row.name


def test_the_sweep_lookup_names_what_the_sweep_has():
    sw = dl.load_sweep("Robotank", DATA / "reproduce")
    assert dl.study.sweep_cell(sw, 0.9, 0.001)["threshold"] == 0.001
    with pytest.raises(KeyError, match=r"Robotank's sweep has no cell at sparsity 0.5, threshold 0.001; "
                                       r"its sparsities are 0, 0.9 and its thresholds None, 0.0, 0.001"):
        dl.study.sweep_cell(sw, 0.5, 0.001)
    with pytest.raises(KeyError, match="no cell at sparsity 0.9, threshold 0.2"):
        dl.study.sweep_cell(sw, 0.9, 0.2)
    # one number for every layer is not the per-layer cell that starts with it, nor the reverse
    with pytest.raises(KeyError, match="no cell"):
        dl.study.sweep_cell(sw, 0.9, [0.001] * 5)
    with pytest.raises(KeyError, match="no cell"):
        dl.study.sweep_cell(sw, 0.0, [0.1, 0.001])
    assert dl.study.sweep_cell(sw, 0.9, [0.1] + [0.001] * 4)["per_layer"]


def test_a_missing_result_is_named_with_what_is_there(tmp_path):
    with pytest.raises(FileNotFoundError, match="no table at .*Pong_table.json; .* holds BattleZone_table.json"):
        dl.load_table("Pong", DATA / "heldout")
    with pytest.raises(FileNotFoundError, match="no folder .*nowhere.*shipped set"):
        dl.load_table("Breakout", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no sweeps"):
        dl.load_sweep("Breakout", tmp_path)
    with pytest.raises(FileNotFoundError, match="no summary"):
        dl.study.load_summary(tmp_path)
    assert dl.study.load_tables(tmp_path) == {}
    assert list(dl.study.load_tables(DATA / "heldout")) == list(dl.study.SIX_GAMES)


def test_agent_scores_read_the_manifest_records():
    rec = dl.agent_record("Robotank-pruned-0.9")
    assert dl.study.agent_scores("Robotank-pruned-0.9") == tuple(rec["evaluation"]["scores"])
    held = dl.study.agent_scores("Breakout", "heldout_evaluation")
    assert held == dl.load_table("Breakout", DATA / "heldout").variants["dense"].scores
    with pytest.raises(KeyError, match="records no evaluation 'heldout'; it records evaluation"):
        dl.study.agent_scores("Breakout", "heldout")
