"""Shipped agents, recorded trajectories and seeded evaluation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import deltalearn as dl


@pytest.fixture(scope="module")
def cartpole():
    torch.set_num_threads(1)
    return dl.load_agent("CartPole-v1")


@pytest.fixture(scope="module")
def trajectory():
    return dl.load_trajectory("CartPole-v1")


def test_shipped_agent_matches_its_manifest(cartpole):
    assert "CartPole-v1" in dl.agent_names()
    rec = dl.agent_record("CartPole-v1")
    assert dl.store.agents.sha256(dl.store.AGENT_DIR / rec["file"]) == rec["sha256"]
    assert dl.core.NetworkSpec.from_dict(rec["spec"]) == cartpole.spec
    assert cartpole.spec.model == "mlp" and cartpole.n_actions == 2 and cartpole.input_shape == (4,)


def test_trajectory_is_a_full_episode_of_the_shipped_agent(cartpole, trajectory):
    obs, actions = trajectory["observations"], trajectory["actions"]
    assert obs.shape == (len(actions), 4) and obs.dtype == np.float32
    assert float(trajectory["score"]) == len(actions)
    with torch.no_grad():
        greedy = cartpole(torch.as_tensor(obs)).argmax(1).numpy()
    # CartPole is evaluated greedily: the recorded actions are the agent's own choices
    assert (greedy == actions).all()


@pytest.mark.parametrize("threshold", [None, 0.05])
def test_same_seed_gives_identical_scores_and_counts(cartpole, threshold):
    kw = dict(episodes=3, seed=5, threshold=threshold, max_steps=150, parallel=2, epsilon=0.1)
    a = dl.evaluate(cartpole, "CartPole-v1", **kw)
    b = dl.evaluate(cartpole, "CartPole-v1", **kw)
    assert a.scores == b.scores and a.lengths == b.lengths
    assert np.array_equal(a.report.per_step, b.report.per_step)
    assert a.report.to_dict() == b.report.to_dict()
    assert a.report.steps == sum(a.lengths)
    # a different seed meets different games (epsilon-greedy: different random actions)
    c = dl.evaluate(cartpole, "CartPole-v1", **{**kw, "seed": 6})
    assert c.scores != a.scores or not np.array_equal(c.report.per_step, a.report.per_step)


def test_episode_results_do_not_depend_on_parallel_slots(cartpole):
    kw = dict(episodes=3, seed=1, max_steps=120, epsilon=0.2)
    one = dl.evaluate(cartpole, "CartPole-v1", parallel=1, **kw)
    three = dl.evaluate(cartpole, "CartPole-v1", parallel=3, **kw)
    assert one.scores == three.scores and one.lengths == three.lengths


def test_dense_evaluation_counts_equal_forward_with_counts_on_the_recorded_observations(cartpole):
    res = dl.evaluate(cartpole, "CartPole-v1", episodes=2, seed=0, max_steps=100, record=True)
    obs = torch.as_tensor(np.concatenate(res.observations))
    q, counts = dl.core.forward_with_counts(cartpole, obs)
    assert np.array_equal(res.report.per_step, counts.numpy())
    # greedy evaluation (epsilon 0 for CartPole): the actions are the argmax of the Q-values
    assert np.array_equal(np.concatenate(res.actions), q.argmax(1).numpy())
    dense = dl.core.dense_counts(cartpole)
    assert [l.dense for l in res.report.layers] == [d * len(obs) for d in dense]


def test_delta_at_threshold_zero_replays_the_dense_actions(cartpole, trajectory):
    obs = trajectory["observations"]
    rr = dl.replay(cartpole, obs, threshold=0.0)
    assert rr.agreement == 1.0
    assert np.array_equal(rr.reference_actions, trajectory["actions"])
    with torch.no_grad():
        q_dense = cartpole(torch.as_tensor(obs)).numpy()
    np.testing.assert_allclose(rr.q_values, q_dense, atol=1e-3, rtol=1e-4)
    # the first step is a dense pass: its counts are forward_with_counts's
    _, first = dl.core.forward_with_counts(cartpole, torch.as_tensor(obs[:1]))
    assert rr.report.per_step[0].tolist() == first[0].tolist()
    assert rr.report.per_step.shape == (len(obs), 3)
    assert rr.report.total_dense == dl.replay(cartpole, obs).report.total_dense


def test_replay_without_delta_counts_like_forward_with_counts(cartpole, trajectory):
    obs = trajectory["observations"][:100]
    rr = dl.replay(cartpole, obs)
    _, counts = dl.core.forward_with_counts(cartpole, torch.as_tensor(obs))
    assert np.array_equal(rr.report.per_step, counts.numpy())
    assert rr.agreement == 1.0


def test_pruned_and_delta_variants_do_fewer_multiplications(cartpole, trajectory):
    obs = trajectory["observations"]
    dense = dl.replay(cartpole, obs).report
    pruned = dl.replay(cartpole, obs, sparsity=0.8).report
    both = dl.replay(cartpole, obs, sparsity=0.8, threshold=0.01).report
    assert pruned.total_significant < 0.3 * dense.total_significant
    assert both.total_significant < pruned.total_significant
    assert dense.total_dense == pruned.total_dense == both.total_dense


@pytest.mark.episodes  # whole Atari episodes: about 7 minutes for the 29 agents
@pytest.mark.parametrize("name", dl.agent_names())
def test_every_shipped_agent_reproduces_its_recorded_evaluation(name):
    """The manifest's scores come from the shipped (fp16) weights: the first seeded episode
    replays to the same score (each episode depends only on its own seed)."""
    torch.set_num_threads(1)
    rec = dl.agent_record(name)
    ev = rec["evaluation"]
    n = 1  # one episode per agent keeps the suite fast; the note records full 10-episode checks
    got = dl.evaluate(dl.load_agent(name), rec["env"], episodes=n, seed=ev["seed"], epsilon=ev["epsilon"])
    assert got.scores == ev["scores"][:n]


def test_every_pruned_agent_has_its_sparsity_and_a_known_teacher():
    for name in dl.agent_names():
        rec = dl.agent_record(name)
        if "teacher" not in rec:
            continue
        s = rec["config"]["sparsity"]
        assert name == dl.store.pruned_agent_name(rec["env"], s)
        rep = dl.sparsity_report(dl.load_agent(name))
        # fp16 storage can only add zeros (weights below fp16's range), never remove one
        assert all(z >= round(s * n) and z <= round(s * n) + n // 1000 for z, n in zip(rep.zeros, rep.sizes)), rep
        assert rec["teacher_sha256"] == dl.agent_record(rec["teacher"])["sha256"]


def test_stacked_frame_trajectories_are_stored_once_per_frame_and_load_identically(tmp_path):
    shipped = dl.load_trajectory("Breakout")
    obs = shipped["observations"][:200]
    traj = {**shipped, "observations": obs}
    path = dl.store.save_trajectory(traj, "stacked", tmp_path)
    with np.load(path) as z:
        assert "observations" not in z.files and z["frames"].shape == (len(obs) + 3, 84, 84)
    back = dl.load_trajectory("stacked", tmp_path)
    assert back["observations"].dtype == obs.dtype and np.array_equal(back["observations"], obs)
    assert np.array_equal(back["actions"], shipped["actions"])
    # anything that is not one stacked episode is stored as it is
    mixed = obs[[0, 5, 9]]
    dl.store.save_trajectory({**traj, "observations": mixed}, "mixed", tmp_path)
    with np.load(tmp_path / "mixed.npz") as z:
        assert "observations" in z.files
    assert np.array_equal(dl.load_trajectory("mixed", tmp_path)["observations"], mixed)


def test_a_recorded_evaluation_lands_in_the_manifest_and_leaves_the_agent_intact(tmp_path):
    import shutil

    shutil.copy(dl.store.AGENT_DIR / "CartPole-v1.pt", tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"CartPole-v1": dl.agent_record("CartPole-v1")}))
    held = {"episodes": 30, "seed": dl.study.HELDOUT_SEED, "scores": [500.0] * 30, "mean_score": 500.0}
    dl.store.record_evaluation("CartPole-v1", "heldout_evaluation", held, directory=tmp_path)
    rec = dl.agent_record("CartPole-v1", tmp_path)
    assert rec["heldout_evaluation"] == held and rec["sha256"] == dl.agent_record("CartPole-v1")["sha256"]
    dl.load_agent("CartPole-v1", tmp_path)  # still hash-checked and loadable
    with pytest.raises(ValueError, match="no shipped agent"):
        dl.store.record_evaluation("Pong-v9", "heldout_evaluation", held, directory=tmp_path)
    with pytest.raises(ValueError, match="identity"):
        dl.store.record_evaluation("CartPole-v1", "sha256", held, directory=tmp_path)


def test_every_dense_agent_has_a_heldout_record_on_the_heldout_seeds():
    for name in dl.agent_names():
        rec = dl.agent_record(name)
        if "teacher" in rec:  # pruned agents: their tables report them
            continue
        held = rec["heldout_evaluation"]
        assert (held["seed"], held["episodes"], len(held["scores"])) == (dl.study.HELDOUT_SEED, dl.study.HELDOUT_EPISODES, 30)
        assert held["mean_score"] == pytest.approx(np.mean(held["scores"]))
