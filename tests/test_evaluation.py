"""Evaluation and replay: one Variant value, its shorthand, and networks that are not ours."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

import deltalearn as dl

# --- Variant ---------------------------------------------------------------------------


def test_variant_names_and_labels():
    assert dl.Variant() == dl.Variant.dense() and dl.Variant().name == "dense" and dl.Variant().label == "dense"
    assert dl.Variant(0.5).name == "pruned" and dl.Variant.pruned(0.5) == dl.Variant(0.5)
    assert dl.Variant(threshold=0).name == "delta"  # threshold 0 is an exact delta network, not "off"
    assert dl.Variant.delta(0.01) == dl.Variant(threshold=0.01)
    both = dl.Variant(0.79, 0.001)
    assert both.name == "pruned+delta" and both.label == "pruned+delta (sparsity 0.79, threshold 0.001)"
    assert str(both) == both.label
    assert dl.Variant(threshold=[0, 0.01, 0.1]).label == "delta (threshold [0.0, 0.01, 0.1])"
    assert dl.Variant(0.5, scope="global").label == "pruned (sparsity 0.5 global)"
    assert dl.Variant(threshold=0.01, drift_free=False).label == "delta (threshold 0.01, drifting)"


def test_variant_normalises_and_round_trips():
    v = dl.Variant(0.5, [0.1, np.float32(0.25), "0.5"])
    assert v.threshold == (0.1, 0.25, 0.5) and isinstance(v.threshold, tuple)
    assert dl.Variant(threshold=np.float64(0.01)).threshold == 0.01
    assert dl.Variant(threshold=np.array([0.1, 0.2])).threshold == (0.1, 0.2)
    for w in [dl.Variant(), v, dl.Variant(0.9, 0.001, scope="global", drift_free=False)]:
        d = w.to_dict()
        assert dl.Variant.from_dict(json.loads(json.dumps(d))) == w
    assert dl.Variant.from_dict({"threshold": 0.01}) == dl.Variant(threshold=0.01)
    assert len({dl.Variant(0.5, [0.1, 0.2]), dl.Variant(0.5, (0.1, 0.2))}) == 1  # hashable, equal
    with pytest.raises(AttributeError):
        v.sparsity = 0.1  # frozen


@pytest.mark.parametrize("kwargs, shown", [
    ({"sparsity": 1.0}, "1.0"), ({"sparsity": -0.1}, "-0.1"), ({"sparsity": "lots"}, "lots"),
    ({"threshold": -1}, "-1"), ({"threshold": float("nan")}, "nan"), ({"threshold": "abc"}, "abc"),
    ({"threshold": [0.1, -2]}, "-2"), ({"threshold": []}, "empty"),
    ({"scope": "everything"}, "'everything'"), ({"drift_free": "no"}, "'no'"),
])
def test_bad_variant_values_are_named(kwargs, shown):
    with pytest.raises(ValueError) as e:
        dl.Variant(**kwargs)
    assert shown in str(e.value) and next(iter(kwargs)) in str(e.value)


def test_variant_from_dict_refuses_unknown_keys():
    with pytest.raises(ValueError, match="'thresholds'"):
        dl.Variant.from_dict({"thresholds": 0.1})
    with pytest.raises(ValueError, match="threshold"):
        dl.Variant.delta(None)


# --- evaluate and replay take one variant ----------------------------------------------

@pytest.fixture(scope="module")
def cartpole():
    return dl.load_agent("CartPole-v1")


@pytest.fixture(scope="module")
def episode():
    return dl.load_trajectory("CartPole-v1")["observations"][:150]


def test_variant_and_shorthand_give_the_same_evaluation(cartpole):
    v = dl.Variant(0.5, 0.01)
    a = dl.evaluate(cartpole, "CartPole-v1", episodes=2, seed=3, variant=v, max_steps=60)
    b = dl.evaluate(cartpole, "CartPole-v1", episodes=2, seed=3, sparsity=0.5, threshold=0.01, max_steps=60)
    assert a.variant == b.variant == v
    assert a.to_dict() == b.to_dict() and a.to_dict()["variant"] == "pruned+delta"
    assert a.report.label == v.label
    dense = dl.evaluate(cartpole, "CartPole-v1", episodes=2, seed=3, max_steps=60)
    assert dense.variant == dl.Variant() and dense.report.total_significant != a.report.total_significant


@pytest.mark.parametrize("call", ["evaluate", "replay"])
def test_a_variant_and_its_shorthand_together_are_an_error(cartpole, episode, call):
    run = (lambda **k: dl.evaluate(cartpole, "CartPole-v1", episodes=1, **k)) if call == "evaluate" else \
        (lambda **k: dl.replay(cartpole, episode, **k))
    with pytest.raises(ValueError, match="variant=.*threshold=0.1") as e:
        run(variant=dl.Variant(0.5), threshold=0.1)
    assert call in str(e.value)
    with pytest.raises(ValueError, match="sparsity=0.0"):  # even a shorthand equal to the default
        run(variant=dl.Variant(threshold=0.1), sparsity=0.0)
    with pytest.raises(TypeError, match="float 0.05"):  # e.g. the old positional epsilon
        run(variant=0.05)


def test_replay_keeps_the_variant_and_matches_the_shorthand(cartpole, episode):
    v = dl.Variant(0.8, [0.0, 0.01, 0.1])
    a, b = dl.replay(cartpole, episode, v), dl.replay(cartpole, episode, sparsity=0.8, threshold=[0.0, 0.01, 0.1])
    assert a.variant == b.variant == v and dl.replay(cartpole, episode).variant == dl.Variant()
    assert a.report.to_dict() == b.report.to_dict() and np.array_equal(a.actions, b.actions)
    with pytest.raises(ValueError, match="steps >= 1"):
        dl.replay(cartpole, episode[:0])


def test_scope_reaches_pruning(cartpole, episode):
    """Variant(scope='global') prunes exactly like prune_network(..., scope='global')."""
    glob = dl.replay(cartpole, episode, dl.Variant(0.8, scope="global"))
    by_hand = dl.replay(dl.prune_network(dl.core.plain_copy(cartpole), 0.8, scope="global"), episode)
    layer = dl.replay(cartpole, episode, dl.Variant(0.8))
    assert glob.report.to_dict()["layers"] == by_hand.report.to_dict()["layers"]
    assert glob.report.to_dict()["layers"] != layer.report.to_dict()["layers"]


def test_drift_free_reaches_the_delta_network(cartpole, episode):
    """Variant(drift_free=False) runs the naive delta network: the same Q-values step by step."""
    naive = dl.replay(cartpole, episode, dl.Variant(threshold=0.05, drift_free=False))
    delta = dl.DeltaNetwork(dl.core.plain_copy(cartpole), 0.05, drift_free=False)
    q = np.concatenate([delta(torch.as_tensor(episode[i:i + 1])).numpy() for i in range(len(episode))])
    assert np.array_equal(naive.q_values, q)
    exact = dl.replay(cartpole, episode, dl.Variant(threshold=0.05))
    assert not np.array_equal(naive.q_values, exact.q_values)


def test_a_per_layer_threshold_of_the_wrong_length_fails_before_playing(cartpole, monkeypatch):
    monkeypatch.setattr(dl.rl.evaluation, "make_env", lambda *a, **k: pytest.fail("built an env first"))
    with pytest.raises(ValueError, match="2 thresholds for 3 weight layers"):
        dl.evaluate(cartpole, "CartPole-v1", episodes=1, threshold=[0.1, 0.1])


# --- one spelling: env -----------------------------------------------------------------

def test_the_environment_argument_is_env_everywhere():
    assert dl.rl.default_epsilon(env="Breakout") == 0.05 and dl.rl.default_epsilon(env="CartPole-v1") == 0.0
    assert dl.rl.hns(env="Breakout", score=30.5) == pytest.approx(1.0)
    assert dl.rl.game_info(env="Enduro").human == 860.5
    assert dl.rl.is_atari(env="Pong") and not dl.rl.is_atari(env="CartPole-v1")
    assert dl.rl.action_count(env="Breakout") == 4
    e = dl.make_env(env="CartPole-v1")
    assert e.observation_space.shape == (4,)
    e.close()
    obs = dl.rl.example_observation(env="Breakout")
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8 and not obs.any()
    traj = dl.rl.record_trajectory(dl.load_agent("CartPole-v1"), env="CartPole-v1", seed=0, max_steps=20)
    assert traj["observations"].shape == (20, 4) and float(traj["score"]) == 20.0


# --- any network -----------------------------------------------------------------------

class CleanRLQNetwork(nn.Module):
    """A Q-network written the way CleanRL's dqn.py / dqn_atari.py write it."""

    def __init__(self, network: nn.Sequential, scale: bool) -> None:
        super().__init__()
        self.network = network
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x / 255.0) if self.scale else self.network(x)


class HeadFirst(nn.Module):
    """Declares its head before its body, so the last module with ``out_features`` is not the output."""

    def __init__(self, n_out: int) -> None:
        super().__init__()
        self.head = nn.Linear(8, n_out)
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_check_actions_runs_a_network_without_n_actions():
    dl.rl.check_actions(HeadFirst(2), "CartPole-v1")
    with pytest.raises(ValueError, match="has 3 actions .* CartPole-v1 has 2"):
        dl.rl.check_actions(HeadFirst(3), "CartPole-v1")
    assert dl.rl.network_actions(HeadFirst(3)) == 8  # without an observation, only the guess
    assert dl.rl.network_actions(HeadFirst(3), dl.rl.example_observation("CartPole-v1")) == 3
    with pytest.raises(ValueError, match=r"cannot be run on an observation of CartPole-v1 \(shape \(1, 4\)\)"):
        dl.rl.check_actions(nn.Sequential(nn.Linear(5, 2)), "CartPole-v1")
    with pytest.raises(ValueError, match="has 6 actions .* Breakout has 4"):
        dl.rl.check_actions(CleanRLQNetwork(copy.deepcopy(dl.nature_dqn(6).body), scale=True), "Breakout")


def test_a_cleanrl_mlp_evaluates_and_replays_like_our_qnetwork(cartpole, episode):
    ours = cartpole
    theirs = CleanRLQNetwork(copy.deepcopy(ours.body), scale=False)
    assert not hasattr(theirs, "spec") and not hasattr(theirs, "input_shape")
    for v in [dl.Variant(), dl.Variant(0.5), dl.Variant(threshold=0.01), dl.Variant(0.8, [0.0, 0.01, 0.1])]:
        a = dl.evaluate(ours, "CartPole-v1", episodes=2, seed=1, variant=v, max_steps=80, record=True)
        b = dl.evaluate(theirs, "CartPole-v1", episodes=2, seed=1, variant=v, max_steps=80, record=True)
        assert a.to_dict() == b.to_dict(), v
        assert all(np.array_equal(x, y) for x, y in zip(a.actions, b.actions))
        ra, rb = dl.replay(ours, episode, v), dl.replay(theirs, episode, v)
        assert ra.report.to_dict() == rb.report.to_dict() and np.array_equal(ra.actions, rb.actions)
        assert np.array_equal(ra.q_values, rb.q_values)
    # its own forward is untouched: evaluate and replay copied it
    x = torch.as_tensor(episode[:5])
    assert torch.equal(theirs(x), ours(x))


def test_a_cleanrl_atari_network_replays_like_our_nature_dqn():
    ours = dl.load_agent("Breakout")
    theirs = CleanRLQNetwork(copy.deepcopy(ours.body), scale=True)  # x / 255.0, as CleanRL writes it
    obs = dl.load_trajectory("Breakout")["observations"][:60]
    for v in [dl.Variant(), dl.Variant(0.79, 0.001)]:
        a, b = dl.replay(ours, obs, v), dl.replay(theirs, obs, v)
        assert np.array_equal(a.actions, b.actions), v
        # x / 255 and x * (1/255) may differ in the last bit: counts behind a float layer are close,
        # the first layer's (exact differences of recorded frames) equal
        assert a.report.layers[0] == b.report.layers[0]
        assert dl.counts_close(a.report, b.report) and a.report.total_dense == b.report.total_dense
    ev = dl.evaluate(theirs, "Breakout", episodes=1, seed=0, variant=dl.Variant(0.79, 0.001), max_steps=40)
    assert ev.report.steps == 40 and ev.report.total_dense == 40 * sum(dl.core.dense_counts(ours))


class Residual(nn.Module):
    """Not a chain: its output adds two branches."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 2), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x)


def test_an_unsupported_network_fails_before_playing_or_replaying(monkeypatch, episode):
    monkeypatch.setattr(dl.rl.evaluation, "make_env", lambda *a, **k: pytest.fail("built an env first"))
    with pytest.raises(dl.core.UnsupportedNetwork, match="Residual.forward"):
        dl.evaluate(Residual(), "CartPole-v1", episodes=1)
    with pytest.raises(dl.core.UnsupportedNetwork, match="Residual.forward"):
        dl.replay(Residual(), episode, threshold=0.01)
