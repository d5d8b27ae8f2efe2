"""The threshold tuner on CartPole: real input scales, agreement kept, cheapest confirmed, deterministic."""
import json
import re
import shlex

import numpy as np
import pytest
import torch

import deltalearn as dl
from deltalearn import cli

ENV = "CartPole-v1"
SMALL = dict(backend="dense", episodes=5, max_steps=300, budget=30, progress=False)


@pytest.fixture(scope="module")
def obs():
    return dl.load_trajectory(ENV)["observations"]


@pytest.fixture(scope="module")
def result():
    torch.set_num_threads(1)
    return dl.study.tune(ENV, **SMALL)


def test_input_scales_are_the_stds_of_each_layers_input(obs):
    net = dl.load_agent(ENV)
    with torch.no_grad():
        h0 = net.preprocess(torch.as_tensor(obs)).double()
        h1 = torch.relu(net.body[0](h0.float())).double()
        h2 = torch.relu(net.body[2](h1.float())).double()
    direct = [float(h.std(unbiased=False)) for h in (h0, h1, h2)]
    assert dl.study.input_scales(net, obs) == pytest.approx(direct, rel=1e-5)
    assert dl.study.input_scales(net, obs, batch=7) == pytest.approx(direct, rel=1e-5)


def test_result_keeps_the_agreement_and_the_scales(result, obs):
    cfg = result.config
    assert result.confirmed and result.layers == ["fc1", "fc2", "fc3"]
    assert result.scales[0.0] == pytest.approx(dl.study.input_scales(dl.load_agent(ENV), obs))
    # checked independently of the tuner's own bookkeeping: replay the chosen thresholds
    again = dl.replay(dl.load_agent(ENV), obs, threshold=result.thresholds)
    assert again.agreement == pytest.approx(result.agreement)
    assert again.agreement >= cfg.min_agreement
    greedy = result.table[result.table.kind == "greedy"]
    assert len(greedy) > 0  # the pass ran
    kinds = set(result.table.kind)
    assert {"uniform", "scaled"} <= kinds
    assert len(result.table) <= cfg.budget


def test_result_is_no_more_expensive_than_the_best_uniform_candidate(result):
    t = result.table
    chosen = t[t.thresholds.map(lambda x: x == result.thresholds)].iloc[0]
    uniform_ok = t[(t.kind == "uniform") & t.passes]
    assert chosen.significant <= uniform_ok.significant.min()
    assert result.open_loop_reduction == pytest.approx(chosen.reduction)


def _cheaper_ones_lost(r):
    """Every candidate cheaper than the chosen one that passed open loop lost in closed loop, or
    its agent lost on its own (threshold 0)."""
    t = r.table
    chosen = t[(t.sparsity == r.sparsity) & t.thresholds.map(lambda x: x == r.thresholds)].iloc[0]
    alone = {s: g[g.thresholds.map(lambda x: not any(x))].closed_loop.iloc[0] for s, g in t.groupby("sparsity")}
    for _, row in t[t.passes & (t.significant < chosen.significant)].iterrows():
        assert row.closed_loop == "fail" or alone[row.sparsity] == "fail", row


def test_the_paired_difference_is_against_the_dense_agent_on_the_tuning_seeds(result):
    cfg = result.config
    net = dl.load_agent(ENV)
    dense = dl.evaluate(net, ENV, episodes=cfg.episodes, seed=cfg.seed, max_steps=cfg.max_steps)
    tuned = dl.evaluate(net, ENV, episodes=cfg.episodes, seed=cfg.seed, max_steps=cfg.max_steps,
                        threshold=result.thresholds)
    assert result.paired == dl.paired_difference(dense.scores, tuned.scores)
    assert result.reduction == pytest.approx(tuned.report.reduction)
    assert result.paired.ci_low > -cfg.max_loss * dense.mean_score and result.paired.ci_high >= 0
    _cheaper_ones_lost(result)


def test_same_seed_same_result(result):
    again = dl.study.tune(dl.load_agent(ENV), ENV, **SMALL)
    a, b = result.to_dict(), again.to_dict()
    a.pop("cpu_seconds"), b.pop("cpu_seconds")
    a.pop("agent"), b.pop("agent")  # a network passed in has no name
    assert a == b
    json.dumps(result.to_dict())  # a committed file needs plain values


def test_a_loss_in_closed_loop_is_rejected():
    # at agreement 0.45 the open-loop proxy lets through settings that drop the pole at once
    r = dl.study.tune(ENV, **{**SMALL, "budget": 18, "confirmations": 2}, min_agreement=0.45)
    played = r.table[r.table.closed_loop.notna()]
    # the two cheapest lost; the dense agent alone is never played (it is the reference), so
    # with the plays spent nothing is confirmed: the dense agent as it is
    assert list(played.closed_loop) == ["fail", "fail"] and (played.ci_high < 0).all()
    assert (played.significant <= r.table[r.table.passes & r.table.closed_loop.isna()].significant.min()).all()
    assert not r.confirmed and r.kind == "fallback" and r.thresholds == [0.0, 0.0, 0.0] and r.paired is None


def test_an_agent_that_loses_on_its_own_is_dropped(obs):
    # CartPole's distilled 0.9 agent drops the pole early in some episodes; 0.8 holds
    r = dl.study.tune(ENV, **{**SMALL, "budget": 20}, sparsities=(0.8, 0.9), observations=obs[:200],
                      agent_directory=str(dl.study.book_data("pruned")))
    t = r.table
    assert set(r.scales) == {0.8, 0.9} and set(t.sparsity) == {0.8, 0.9}
    zero9 = t[(t.sparsity == 0.9) & t.thresholds.map(lambda x: not any(x))]
    assert list(zero9.closed_loop) == ["fail"]
    assert r.confirmed and r.sparsity == 0.8 and r.agent == "CartPole-v1-pruned-0.8"
    _cheaper_ones_lost(r)


@pytest.mark.parametrize("kw, match", [
    (dict(min_agreement=0.0), "min_agreement must be in \\(0, 1\\]"),
    (dict(min_agreement=1.2), "min_agreement must be in \\(0, 1\\]"),
    (dict(budget=-1), "budget must be >= 1"),
    (dict(episodes=1), "episodes must be >= 2"),
    (dict(seed=1010), "overlap the held-out seeds"),
    (dict(backend="gpu"), "backend must be one of"),
    (dict(sparsities=(1.0,)), "sparsities must be"),
    (dict(sparsities=(0.5, 0.5)), "distinct"),
])
def test_bad_settings_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        dl.study.tune(ENV, progress=False, **kw)


def test_bad_targets_are_named():
    with pytest.raises(ValueError, match="unknown environment 'Pacman'"):
        dl.study.tune("Pacman", progress=False)
    with pytest.raises(ValueError, match="needs the game the network plays"):
        dl.study.tune(dl.load_agent(ENV), progress=False)
    with pytest.raises(ValueError, match="give the game once"):
        dl.study.tune(ENV, "Breakout", progress=False)
    with pytest.raises(TypeError, match="Q-network or a game name"):
        dl.study.tune(3, ENV, progress=False)
    with pytest.raises(TypeError, match="unexpected keyword"):
        dl.study.tune(ENV, progress=False, thresholds=0.1)


def test_the_open_loop_search_alone_matches_the_tuners_table(result, obs):
    t = dl.study.search_open_loop(dl.load_agent(ENV), obs, result.config)
    assert t.drop(columns="closed_loop").equals(result.table[t.columns].drop(columns="closed_loop"))


# --- deltalearn tune: the record a game's tuning commits, and the committed records ---

CLI_SMALL = ["--game", ENV, "--episodes", "5", "--max-steps", "300", "--budget", "20", "--backend", "dense",
             "--heldout-episodes", "5", "--no-progress"]
VOLATILE = ("tune_cpu_minutes", "heldout_cpu_minutes", "date", "git_commit", "git_dirty")


def _stable(rec):
    rec = {k: v for k, v in rec.items() if k not in VOLATILE}
    rec["tuning"] = {k: v for k, v in rec["tuning"].items() if k != "cpu_seconds"}
    rec["heldout"] = {k: v for k, v in rec["heldout"].items() if k != "cpu_seconds"}
    return rec


@pytest.fixture(scope="module")
def cli_record(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("tuned") / "first.json"
    assert cli.main(["tune", *CLI_SMALL, "--scope", "both", "--sparsities", "0", "0.8", "--out", str(out)]) == 0
    return out, json.loads(out.read_text())


def test_the_cli_record_reproduces_from_its_own_command(cli_record, tmp_path):
    out, rec = cli_record
    assert rec["game"] == ENV and rec["scope"] == "both" and rec["config"]["sparsities"] == [0.0, 0.8]
    assert rec["command"].startswith(f"deltalearn tune --game {ENV} --scope both --sparsities 0 0.8 --episodes 5")
    again = tmp_path / "again.json"
    argv = shlex.split(rec["command"])[1:] + ["--out", str(again), "--no-progress"]
    assert cli.main(argv) == 0
    assert _stable(json.loads(again.read_text())) == _stable(rec)
    assert not list(out.parent.glob(".*.tmp"))  # the atomic write left no temporary file


def test_the_heldout_confirmation_is_an_independent_paired_run(cli_record):
    _, rec = cli_record
    t, h = rec["tuning"], rec["heldout"]
    net = dl.study.agent_at(ENV, t["sparsity"], dl.study.book_data("pruned")).net
    dense = dl.evaluate(dl.load_agent(ENV), ENV, episodes=5, seed=1000)
    tuned = dl.evaluate(net, ENV, episodes=5, seed=1000, threshold=t["thresholds"])
    assert h["dense_scores"] == dense.scores and h["tuned_scores"] == tuned.scores
    assert h["paired"] == dl.paired_difference(dense.scores, tuned.scores).to_dict()
    assert h["reduction"] == pytest.approx(tuned.report.reduction)
    assert t["agent"] == "CartPole-v1-pruned-0.8" and h["reduction"] > 20


@pytest.mark.parametrize("argv, match", [
    (["--game", "Pacman"], "unknown game 'Pacman'"),
    (["--game", ENV, "--scope", "delta", "--sparsities", "0.5"], "scope 'delta' tunes the dense agent alone"),
    (["--game", ENV, "--seed", "1010"], "overlap the held-out seeds"),
    (["--game", ENV, "--heldout-episodes", "1"], "heldout_episodes must be >= 2"),
])
def test_bad_tune_commands_are_named(argv, match, capsys):
    assert cli.main(["tune", *argv, "--no-progress", "--out", "/nonexistent/never.json"]) == 2
    assert re.search(match, capsys.readouterr().err)


@pytest.mark.parametrize("argv, match", [
    (["--game", ENV, "--min-agreement", "1.5"], "--min-agreement: must be a number in \\(0, 1\\], got '1.5'"),
    (["--game", ENV, "--scope", "all"], "invalid choice: 'all'"),
    (["--game", ENV, "--episodes", "0"], "--episodes: must be a whole number >= 1, got '0'"),
    (["--game", ENV, "--sparsities", "1.2"], "--sparsities"),
])
def test_bad_tune_values_stop_argparse(argv, match, capsys):
    with pytest.raises(SystemExit):
        cli.main(["tune", *argv])
    assert re.search(match, capsys.readouterr().err)


def test_scopes_and_defaults():
    assert dl.study.scope_sparsities(ENV, "delta") == (0.0,)
    assert dl.study.scope_sparsities(ENV, "both", "book_data:pruned") == (0.0, 0.3, 0.5, 0.7, 0.8, 0.9)
    assert dl.study.scope_sparsities("SpaceInvaders", "both") == (0.0, 0.5, 0.74, 0.9)
    assert dl.study.game_defaults("SpaceInvaders")["heldout_episodes"] == 60
    assert dl.study.game_defaults("Robotank", "both") == {"heldout_episodes": 30, "max_steps": 2000, "budget": 30,
                                                          "confirmations": 3}
    assert dl.study.game_defaults("Robotank", "delta") == {"heldout_episodes": 30, "max_steps": 3000}
    assert dl.study.game_defaults("Breakout") == {"heldout_episodes": 30}
    with pytest.raises(ValueError, match="scope must be one of delta, both, got 'pruned'"):
        dl.study.game_defaults("Breakout", "pruned")


def test_the_verdict_rule_names_the_failed_condition():
    v = dl.study.tuned_verdict
    assert v(-1.0, 2.0, 20.0) == "no detectable loss"
    assert "loss detected" in v(-5.0, -1.0, 20.0) and "lower end -5 is not above -3" in v(-5.0, -1.0, 20.0)
    assert v(-4.0, 2.0, 20.0) == "fails: its lower end -4 is not above -3 (15% of the dense mean)"
    assert v(1.0, 2.0, 20.0).startswith("fails: the interval lies above 0 (gain detected)")


def test_committed_records_load_and_their_verdicts_follow_their_numbers():
    df = dl.study.load_tuned()
    assert list(df.columns) == list(dl.study.TUNED_COLUMNS) and len(df) >= 1
    assert "CartPole-v1-both" in df.attrs["provenance"]
    assert (df.heldout_episodes >= 30).all()
    for f in sorted(dl.study.book_data("tuned").glob("*.json")):
        h = json.loads(f.read_text())["heldout"]
        p = dl.paired_difference(h["dense_scores"], h["tuned_scores"])  # recomputed from the scores
        assert p.ci_low == pytest.approx(h["paired"]["ci_low"])
        assert p.ci_high == pytest.approx(h["paired"]["ci_high"]) and p.base_mean == pytest.approx(h["dense_mean"])
        floor = -0.15 * abs(p.base_mean)
        holds = p.ci_low <= 0 <= p.ci_high and p.ci_low > floor  # the rule, written out again
        assert (h["verdict"] == "no detectable loss") == holds, f.name
        assert h["meets_rule"] == (p.ci_high >= 0 and p.ci_low > floor), f.name
    one = dl.study.load_tuned(ENV)
    assert set(one.game) == {ENV}
    with pytest.raises(ValueError, match="unknown game 'Pong2'"):
        dl.study.load_tuned("Pong2")


# --- the fresh-seed confirmation of a committed record (deltalearn tune --confirm) ---

CONFIRM_EPISODES = 4


@pytest.fixture(scope="module")
def confirm_root(tmp_path_factory):
    """A records folder holding a copy of the committed CartPole record, and its confirmation written by the CLI."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("records")
    (root / f"{ENV}-both.json").write_text((dl.study.book_data("tuned") / f"{ENV}-both.json").read_text())
    out = root / "confirm" / f"{ENV}-both.json"
    argv = ["tune", "--game", ENV, "--scope", "both", "--confirm", "--confirm-seed", "5000", "--confirm-episodes",
            str(CONFIRM_EPISODES), "--records", str(root), "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    return root, json.loads(out.read_text())


def test_the_cli_confirmation_is_an_independent_paired_run_on_fresh_seeds(confirm_root):
    root, c = confirm_root
    rec = json.loads((root / f"{ENV}-both.json").read_text())
    t = rec["tuning"]
    net = dl.study.agent_at(ENV, t["sparsity"], dl.study.book_data("pruned")).net
    dense = dl.evaluate(dl.load_agent(ENV), ENV, episodes=CONFIRM_EPISODES, seed=5000)
    tuned = dl.evaluate(net, ENV, episodes=CONFIRM_EPISODES, seed=5000, threshold=t["thresholds"],
                        backend=rec["config"]["backend"])
    assert c["seed"] == 5000 and c["episodes"] == CONFIRM_EPISODES and c["max_steps"] is None
    assert c["dense_source"] == "played"  # both sides played here, nothing reused
    assert c["dense_scores"] == dense.scores and c["tuned_scores"] == tuned.scores
    assert c["dense_lengths"] == dense.lengths and c["tuned_lengths"] == tuned.lengths
    assert c["paired"] == dl.paired_difference(dense.scores, tuned.scores).to_dict()
    assert c["reduction"] == pytest.approx(tuned.report.reduction)
    assert c["thresholds"] == t["thresholds"] and c["agent"] == t["agent"]
    assert c["command"] == (f"deltalearn tune --game {ENV} --scope both --confirm --confirm-seed 5000 "
                            f"--confirm-episodes {CONFIRM_EPISODES} --records {root}")
    assert not list((root / "confirm").glob(".*.tmp"))


def test_load_tuned_gains_the_confirmation_columns(confirm_root):
    root, c = confirm_root
    row = dl.study.load_tuned(root=root).iloc[0]
    assert row.confirm_episodes == CONFIRM_EPISODES and row.confirm_seed == 5000
    assert row.confirm_diff == c["paired"]["mean_difference"] and row.confirm_ci_low == c["paired"]["ci_low"]
    assert row.confirm_verdict == c["verdict"] and row.confirm_reduction == c["reduction"]
    # a record without a confirmation file: NaN and None, not an error
    bare = root.parent / "bare"
    bare.mkdir()
    (bare / f"{ENV}-both.json").write_text((root / f"{ENV}-both.json").read_text())
    row = dl.study.load_tuned(root=bare).iloc[0]
    assert np.isnan(row.confirm_diff) and row.confirm_verdict is None and row.confirm_meets_rule is None


@pytest.mark.parametrize("argv, match", [
    (["--confirm-seed", "1050"], r"seeds 1050\.\.1053 overlap the held-out seeds 1000\.\.1099"),
    (["--confirm-seed", "998"], r"overlap the held-out seeds"),
    (["--confirm-seed", "2020"], r"overlap the record's tuning seeds 2000\.\.2029"),
    (["--confirm-episodes", "1"], "confirmation episodes must be >= 2"),
    (["--episodes", "5"], "--confirm plays the committed record's own setting; tuning option.s. --episodes"),
])
def test_bad_confirmations_are_named(argv, match, capsys):
    base = ["tune", "--game", ENV, "--confirm", "--confirm-episodes", "4", "--no-progress", "--out",
            "/nonexistent/never.json"]
    assert cli.main([*base, *argv]) == 2
    assert re.search(match, capsys.readouterr().err)


def test_a_missing_record_is_named(tmp_path, capsys):
    argv = ["tune", "--game", "Breakout", "--confirm", "--records", str(tmp_path), "--no-progress"]
    assert cli.main(argv) == 2
    assert re.search(r"no tuning record for Breakout \(both\) to confirm: .*Breakout-both.json does not exist; "
                     r"records there: none", capsys.readouterr().err)
    with pytest.raises(FileNotFoundError, match="no tuning record for Robotank"):
        dl.study.confirm_tuned("Robotank", "delta", root=tmp_path)


def _check_confirmation(c):
    p = dl.paired_difference(c["dense_scores"], c["tuned_scores"])  # recomputed from the stored scores
    assert p.ci_low == pytest.approx(c["paired"]["ci_low"]) and p.ci_high == pytest.approx(c["paired"]["ci_high"])
    assert p.base_mean == pytest.approx(c["dense_mean"]) and len(c["tuned_scores"]) == c["episodes"]
    floor = -0.15 * abs(p.base_mean)
    assert c["floor"] == pytest.approx(floor)
    holds = p.ci_low <= 0 <= p.ci_high and p.ci_low > floor  # the rule, written out again
    assert (c["verdict"] == "no detectable loss") == holds
    assert c["meets_rule"] == (p.ci_high >= 0 and p.ci_low > floor)
    # played on these seeds, here or by the game's other scope's confirmation
    assert c["dense_source"] == "played" or c["dense_source"].startswith("played on these seeds by the confirmation")


def test_every_confirmation_verdict_follows_its_own_scores(confirm_root):
    _check_confirmation(confirm_root[1])
    committed = sorted((dl.study.book_data("tuned") / "confirm").glob("*.json")) if (
        dl.study.book_data("tuned") / "confirm").exists() else []
    for f in committed:
        c = json.loads(f.read_text())
        assert f.name == f"{c['game']}-{c['scope']}.json"
        _check_confirmation(c)
        assert c["seed"] == 5000 and c["episodes"] == 60, f.name  # the pre-declared design
        assert not set(range(c["seed"], c["seed"] + c["episodes"])) & set(range(1000, 1100)), f.name


def test_a_second_scope_takes_the_dense_side_its_first_scope_played(confirm_root, capsys):
    root, first = confirm_root
    (root / f"{ENV}-delta.json").write_text((root / f"{ENV}-both.json").read_text())  # a second record of the game
    base = ["tune", "--game", ENV, "--scope", "delta", "--confirm", "--confirm-episodes", str(CONFIRM_EPISODES),
            "--records", str(root), "--no-progress"]
    assert cli.main([*base, "--out", str(root / "confirm" / f"{ENV}-delta.json")]) == 0
    shared = json.loads((root / "confirm" / f"{ENV}-delta.json").read_text())
    assert shared["dense_source"].startswith(f"played on these seeds by the confirmation of {ENV} (both)")
    assert "episode 0 replayed here" in shared["dense_source"]
    assert cli.main([*base, "--play-dense", "--out", str(root / "played.json")]) == 0
    played = json.loads((root / "played.json").read_text())
    assert played["dense_source"] == "played" and played["command"].endswith("--play-dense")
    for key in ("dense_scores", "dense_lengths", "dense_significant_per_decision", "paired", "verdict"):
        assert shared[key] == played[key] == first[key], key
    # another seed range is not the same protocol: nothing is shared
    assert cli.main([*base, "--confirm-seed", "6000", "--out", str(root / "other.json")]) == 0
    assert json.loads((root / "other.json").read_text())["dense_source"] == "played"
    _check_confirmation(shared)
