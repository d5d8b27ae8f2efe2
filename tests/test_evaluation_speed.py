"""The evaluation loop's shortcuts change nothing that is played or counted.

Non-delta variants count their significant products from per-input fan-outs instead of a second
convolution on 0/1 masks, and a table's evaluations share their environments: both must give
bit-identical Q-values, identical counts and identical episodes.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import deltalearn as dl
from deltalearn.core.counting import forward_with_counts
from deltalearn.rl import evaluation as ev

from _helpers import small_conv_net


class _DilatedGrouped(nn.Module):
    """Padding, dilation and groups together: the fan-outs must follow every one of them."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(4, 6, kernel_size=3, stride=2, padding=2, dilation=2, groups=2)
        self.c2 = nn.Conv2d(6, 4, kernel_size=2, stride=1, padding=1)
        self.fc = nn.Linear(4 * 7 * 7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x * 0.5))
        x = torch.relu(self.c2(x))
        return self.fc(torch.flatten(x, 1))


def _with_zeros(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    return torch.where(torch.rand(shape, generator=g) < 0.4, torch.zeros(()), x)


@pytest.mark.parametrize("make, shape", [(small_conv_net, (2, 10, 10)), (_DilatedGrouped, (4, 12, 12)),
                                         (lambda: dl.core.mlp_qnet(4, 2), (4,))])
@pytest.mark.parametrize("sparsity", [0.0, 0.7])
def test_fanout_counts_and_q_equal_the_mask_convolutions(make, shape, sparsity):
    net = make()
    pol = dl.core.Policy(net, dl.Variant(sparsity), example_input=torch.zeros(1, *shape))
    fast = ev._FanoutCounted(pol.net, torch.zeros(1, *shape))
    for batch in (1, 5):
        x = _with_zeros((batch, *shape), batch)
        q_ref, c_ref = forward_with_counts(pol.net, x)
        q, c = fast(x)
        assert torch.equal(q, q_ref)  # bit-identical, not close
        assert c.dtype == torch.int64 and torch.equal(c, c_ref)
        assert (c_ref > 0).all()  # something was counted in every layer, so equality says something


def test_fanout_counts_on_breakouts_recorded_frames():
    obs = torch.as_tensor(dl.store.load_trajectory("Breakout")["observations"][::50])
    for s in (0.0, 0.79):
        pol = dl.core.Policy(dl.study.agent_at("Breakout", s).net, dl.Variant())
        q_ref, c_ref = forward_with_counts(pol.net, obs)
        q, c = ev._FanoutCounted(pol.net, obs[:1])(obs)
        assert torch.equal(q, q_ref) and torch.equal(c, c_ref)


def _the_old_path(monkeypatch):
    """Every decision through Policy.__call__, as before the shortcut."""
    monkeypatch.setattr(ev, "_stepper", lambda pol, example: pol)


def _same(a: ev.EvalResult, b: ev.EvalResult) -> None:
    assert a.scores == b.scores and a.lengths == b.lengths
    assert a.report.to_dict() == b.report.to_dict()
    assert np.array_equal(a.report.per_step, b.report.per_step)


@pytest.mark.parametrize("env, net, kw", [
    ("CartPole-v1", lambda: dl.study.agent_at("CartPole-v1", 0.0).net, {"episodes": 3}),
    ("Breakout", lambda: dl.study.agent_at("Breakout", 0.79).net, {"episodes": 2, "max_steps": 60}),
])
def test_evaluate_and_replay_give_what_the_old_path_gave(monkeypatch, env, net, kw):
    net = net()
    new = [ev.evaluate(net, env, seed=3, sparsity=s, **kw) for s in (0.0, 0.5)]
    obs = np.asarray(new[0].observations[0]) if new[0].observations else None
    obs = ev.record_trajectory(net, env, seed=3, max_steps=40)["observations"] if obs is None else obs
    new_replay = ev.replay(net, obs, sparsity=0.5, batch=16)
    with monkeypatch.context() as m:
        _the_old_path(m)
        old = [ev.evaluate(net, env, seed=3, sparsity=s, **kw) for s in (0.0, 0.5)]
        old_replay = ev.replay(net, obs, sparsity=0.5, batch=16)
    for a, b in zip(new, old):
        _same(a, b)
    assert np.array_equal(new_replay.q_values, old_replay.q_values)
    assert np.array_equal(new_replay.report.per_step, old_replay.report.per_step)


def test_reused_environments_play_the_same_episodes(monkeypatch):
    net = dl.study.agent_at("CartPole-v1", 0.0).net
    fresh = [ev.evaluate(net, "CartPole-v1", episodes=3, seed=s, threshold=0.01, epsilon=0.3) for s in (0, 7)]
    built = []
    real = ev.make_env
    monkeypatch.setattr(ev, "make_env", lambda *a, **k: built.append(1) or real(*a, **k))
    with ev.reusing_envs():
        with ev.reusing_envs():  # nested: the outer block keeps them
            reused = [ev.evaluate(net, "CartPole-v1", episodes=3, seed=s, threshold=0.01, epsilon=0.3)
                      for s in (0, 7)]
        pool = ev._POOL["CartPole-v1"]
        assert len(pool) == 3
    assert len(built) == 3  # the second evaluation built none
    assert ev._POOL is None
    for a, b in zip(fresh, reused):
        _same(a, b)


def test_an_evaluation_cut_short_closes_its_environments_instead_of_keeping_them(monkeypatch):
    closed = []
    real = ev.make_env

    def made(*a, **k):
        env = real(*a, **k)
        close = env.close
        env.close = lambda: closed.append(1) or close()
        return env

    class Stop(Exception):
        pass

    monkeypatch.setattr(ev, "make_env", made)
    net = dl.study.agent_at("CartPole-v1", 0.0).net
    with ev.reusing_envs():
        ev.evaluate(net, "CartPole-v1", episodes=2, seed=0)
        assert len(ev._POOL["CartPole-v1"]) == 2 and not closed
        monkeypatch.setattr(ev, "default_epsilon", lambda env: (_ for _ in ()).throw(Stop()))
        with pytest.raises(Stop):  # fails before any env is borrowed: the pool is untouched
            ev.evaluate(net, "CartPole-v1", episodes=2, seed=0)
        monkeypatch.setattr(ev, "default_epsilon", lambda env: 0.0)
        monkeypatch.setattr(ev.np.random, "default_rng", lambda *a: (_ for _ in ()).throw(Stop()))
        with pytest.raises(Stop):  # fails after borrowing both: they are closed, not kept
            ev.evaluate(net, "CartPole-v1", episodes=2, seed=0)
        assert len(closed) == 2 and ev._POOL["CartPole-v1"] == []


@pytest.mark.parametrize("game", ["Breakout", "SpaceInvaders"])
def test_the_greyscale_inner_env_shows_the_network_the_same_frames(game):
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    rgb = gym.make(f"ALE/{game}-v5", frameskip=1, repeat_action_probability=0.0, full_action_space=False)
    assert rgb.unwrapped._obs_type == "rgb"
    rgb = gym.wrappers.FrameStackObservation(gym.wrappers.AtariPreprocessing(
        rgb, noop_max=30, frame_skip=4, screen_size=84, terminal_on_life_loss=False, grayscale_obs=True), 4,
        padding_type="zero")
    ours = dl.make_env(game)
    assert ours.unwrapped._obs_type == "grayscale"
    rng = np.random.default_rng(1)
    for seed in (0, 5):  # a second reset: the no-op starts are drawn again
        a, _ = rgb.reset(seed=seed)
        b, _ = ours.reset(seed=seed)
        assert np.array_equal(a, b)
        for _ in range(150):
            act = int(rng.integers(ours.action_space.n))
            a, ra, ta, ua, _ = rgb.step(act)
            b, rb, tb, ub, _ = ours.step(act)
            assert np.array_equal(a, b) and (ra, ta, ua) == (rb, tb, ub)
    frame = dl.make_env(game, render_mode="rgb_array")
    frame.reset(seed=0)
    assert frame.render().shape == (210, 160, 3)  # rendering still shows the colour screen
