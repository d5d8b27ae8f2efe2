"""Replay buffer: stacks rebuilt from single stored frames and n-step returns.

A scripted vector env with gymnasium's next-step autoreset provides ground truth: every
frame carries a unique id, so any sampled observation can be traced back to the step that
produced it.
"""
from __future__ import annotations

import numpy as np
import pytest

import deltalearn as dl


class ScriptedVecEnv:
    """Next-step autoreset vector env with scripted episode ends and life losses.

    ``episodes[e]`` is a list of ``(length, kind)``: the episode ends on its ``length``-th step
    with ``kind`` ``"term"`` or ``"trunc"`` (the list repeats). ``life_loss_at`` are episode steps
    (1-based) at which a life is lost without ending the episode. A frame is ``(uid, env + 1)``
    with a globally unique ``uid >= 1``; observations stack ``stack`` frames with zero padding
    at episode start (or are the frame itself when ``stack == 1``).
    """

    def __init__(self, episodes, stack=1, life_loss_at=(), seed=0):
        self.episodes = episodes
        self.n = len(episodes)
        self.stack = stack
        self.life_loss_at = set(life_loss_at)
        self.rng = np.random.default_rng(seed)
        self.uid = 0
        self.ep_index = [0] * self.n
        self.t = [0] * self.n
        self.frames = [None] * self.n
        self.needs_reset = [False] * self.n

    def _frame(self, e):
        self.uid += 1
        return np.array([self.uid, e + 1], dtype=np.int64)

    def _start(self, e):
        self.t[e] = 0
        self.frames[e] = [np.zeros(2, dtype=np.int64)] * (self.stack - 1) + [self._frame(e)]

    def _obs(self, e):
        if self.stack == 1:
            return self.frames[e][-1].copy()
        return np.stack(self.frames[e][-self.stack:])

    def reset(self):
        for e in range(self.n):
            self._start(e)
            self.needs_reset[e] = False
        return np.stack([self._obs(e) for e in range(self.n)])

    def step(self):
        obs, rew, term, trunc, lost = [], [], [], [], []
        for e in range(self.n):
            if self.needs_reset[e]:
                self.ep_index[e] += 1
                self._start(e)
                self.needs_reset[e] = False
                obs.append(self._obs(e)), rew.append(0.0), term.append(False), trunc.append(False)
                lost.append(False)
                continue
            self.t[e] += 1
            self.frames[e] = self.frames[e][1:] + [self._frame(e)]
            length, kind = self.episodes[e][self.ep_index[e] % len(self.episodes[e])]
            end = self.t[e] == length
            obs.append(self._obs(e))
            rew.append(float(self.rng.integers(1, 100)))
            term.append(end and kind == "term")
            trunc.append(end and kind == "trunc")
            lost.append(not end and self.t[e] in self.life_loss_at)
            self.needs_reset[e] = end
        return (np.stack(obs), np.array(rew, dtype=np.float32), np.array(term), np.array(trunc),
                np.array(lost))


def drive(env, rb, steps, seed=1, use_life_loss=False):
    """Fill ``rb`` from ``env``; return the true transitions per env (reset steps excluded)
    and every observation the agent acted on, by absolute step."""
    rng = np.random.default_rng(seed)
    obs = env.reset()
    rb.new_episodes()
    transitions = [[] for _ in range(env.n)]
    acted_on = []
    resetting = np.zeros(env.n, dtype=bool)
    for _ in range(steps):
        actions = rng.integers(0, 5, env.n)
        nxt, rew, term, trunc, lost = env.step()
        rb.add(obs, actions, rew, term, trunc, lost if use_life_loss else None)
        acted_on.append(obs.copy())
        for e in range(env.n):
            if not resetting[e]:
                transitions[e].append(dict(obs=obs[e].copy(), action=int(actions[e]), reward=float(rew[e]),
                                           next_obs=nxt[e].copy(), term=bool(term[e]), trunc=bool(trunc[e]),
                                           lost=bool(lost[e]) and use_life_loss))
        resetting = term | trunc
        obs = nxt
    return transitions, acted_on


def uid(obs):
    """Unique id of an observation: the id of its newest frame."""
    return int(np.asarray(obs).reshape(-1, 2)[-1, 0])


def expected_n_step(transitions, n, gamma):
    """By hand: sum up to n rewards; stop at a terminal (discount 0, also for a life loss) or
    a truncation (bootstrap from the final observation with gamma**m)."""
    out = {}
    for trs in transitions:
        for i in range(len(trs)):
            ret, disc, nxt, kind = 0.0, None, None, "full"
            for j in range(n):
                if i + j >= len(trs):
                    break  # not enough recorded future: cannot be sampled
                tr = trs[i + j]
                ret += gamma ** j * tr["reward"]
                if tr["term"] or tr["lost"]:
                    disc, nxt, kind = 0.0, tr["next_obs"], "term"
                    break
                if tr["trunc"]:
                    disc, nxt, kind = gamma ** (j + 1), tr["next_obs"], "trunc"
                    break
            else:
                disc, nxt = gamma ** n, trs[i + n - 1]["next_obs"]
            if disc is not None:
                out[uid(trs[i]["obs"])] = dict(obs=trs[i]["obs"], action=trs[i]["action"], ret=ret, disc=disc,
                                               next_obs=nxt, kind=kind)
    return out


@pytest.mark.parametrize("use_life_loss", [False, True])
@pytest.mark.parametrize("n_step", [1, 3])
def test_n_step_returns_match_hand_computation(n_step, use_life_loss):
    gamma = 0.9
    env = ScriptedVecEnv([[(5, "term"), (2, "trunc"), (7, "trunc"), (1, "term")],
                          [(4, "trunc"), (6, "term"), (3, "term")]],
                         life_loss_at=(3,), seed=2)
    # 2 x 60 slots for 150 steps: the ring wraps around
    rb = dl.ReplayBuffer(120, 2, (2,), np.int64, stack=1, seed=3)
    transitions, _ = drive(env, rb, 150, use_life_loss=use_life_loss)
    want = expected_n_step(transitions, n_step, gamma)
    batch = rb.sample(3000, n_step=n_step, gamma=gamma)
    kinds = set()
    for o, a, r, nx, d in zip(batch.obs.numpy(), batch.actions.numpy(), batch.returns.numpy(),
                              batch.next_obs.numpy(), batch.discounts.numpy()):
        key = uid(o)
        assert key in want, f"sampled an observation no agent step acted on: {o}"
        w = want[key]
        np.testing.assert_array_equal(o, w["obs"])
        assert a == w["action"]
        assert r == pytest.approx(w["ret"], rel=1e-6), f"return of {o} ({w['kind']})"
        assert d == pytest.approx(w["disc"], rel=1e-6), f"discount of {o} ({w['kind']})"
        np.testing.assert_array_equal(nx, w["next_obs"], err_msg=f"next obs of {o} ({w['kind']})")
        kinds.add(w["kind"])
    # the sample covered transitions cut by a terminal and by a truncation
    assert {"term", "trunc"} <= kinds
    if n_step > 1:
        assert "full" in kinds


def test_stacks_rebuilt_from_frames_equal_the_env_observations():
    env = ScriptedVecEnv([[(5, "term"), (2, "trunc"), (9, "trunc"), (1, "term")],
                          [(3, "trunc"), (6, "term"), (12, "term")]], stack=4, seed=4)
    rb = dl.ReplayBuffer(2 * 40, 2, (4, 2), np.int64, stack=4, seed=5)
    steps = 130
    transitions, acted_on = drive(env, rb, steps)
    assert rb.size == 40  # wrapped around
    # every stored slot from the stack-1'th on rebuilds to the observation the env produced
    for logical in range(rb.stack - 1, rb.size):
        absolute = steps - rb.size + logical
        for e in range(2):
            got = rb._stacks(np.array([logical]), np.array([e]))[0]
            np.testing.assert_array_equal(got, acted_on[absolute][e], err_msg=f"slot {logical}, env {e}")
    # and through the public sampler, observations and next observations are the true ones
    true_next = {uid(tr["obs"]): tr for trs in transitions for tr in trs}
    batch = rb.sample(2000, n_step=1, gamma=0.99)
    seen_final = 0
    for o, nx in zip(batch.obs.numpy(), batch.next_obs.numpy()):
        tr = true_next[uid(o)]
        np.testing.assert_array_equal(o, tr["obs"])
        np.testing.assert_array_equal(nx, tr["next_obs"])
        seen_final += tr["term"] or tr["trunc"]
    assert seen_final > 0  # final observations of ended episodes were rebuilt too


def test_first_observation_with_nonzero_padding_is_rejected():
    rb = dl.ReplayBuffer(64, 1, (4, 2), np.int64, stack=4)
    obs = np.ones((1, 4, 2), dtype=np.int64)
    with pytest.raises(ValueError, match="padding"):
        rb.add(obs, np.zeros(1), np.zeros(1, np.float32), np.zeros(1, bool), np.zeros(1, bool))


def test_state_dict_round_trip_gives_identical_samples():
    env = ScriptedVecEnv([[(5, "term"), (3, "trunc")], [(4, "trunc")]], stack=4, seed=6)
    rb = dl.ReplayBuffer(2 * 40, 2, (4, 2), np.int64, stack=4, seed=7)
    drive(env, rb, 60)
    rb2 = dl.ReplayBuffer(2 * 40, 2, (4, 2), np.int64, stack=4, seed=7)
    rb2.load_state_dict({k: np.array(v) for k, v in rb.state_dict().items()})
    a, b = rb.sample(64, n_step=3), rb2.sample(64, n_step=3)
    for f in ("obs", "actions", "returns", "next_obs", "discounts"):
        assert np.array_equal(getattr(a, f).numpy(), getattr(b, f).numpy())
    with pytest.raises(ValueError, match="another shape"):
        dl.ReplayBuffer(2 * 30, 2, (4, 2), np.int64, stack=4).load_state_dict(rb.state_dict())


def test_atari_vector_env_stacks_rebuild_exactly():
    """Real Pong frames from ale_py's AtariVectorEnv (the training env, with episodes cut at
    100 agent steps so the 300 random steps cross episode ends)."""
    ale_py = pytest.importorskip("ale_py")
    env = ale_py.AtariVectorEnv("pong", num_envs=2, num_threads=1, repeat_action_probability=0.0,
                                noop_max=30, frameskip=4, stack_num=4, episodic_life=False,
                                reward_clipping=False, use_fire_reset=False, max_num_frames_per_episode=400)
    try:
        rb = dl.ReplayBuffer(2 * 200, 2, (4, 84, 84), np.uint8, stack=4, seed=8)
        rng = np.random.default_rng(9)
        obs, _ = env.reset(seed=0)
        rb.new_episodes()
        acted_on, pairs, ends = [], set(), 0
        resetting = np.zeros(2, dtype=bool)
        for _ in range(300):
            actions = rng.integers(0, 6, 2)
            nxt, rew, term, trunc, _ = env.step(actions)
            rb.add(obs, actions, rew.astype(np.float32), term, trunc)
            acted_on.append(obs.copy())
            for e in range(2):
                if not resetting[e]:
                    pairs.add((obs[e].tobytes(), nxt[e].tobytes()))
            ends += int((term | trunc).sum())
            resetting = term | trunc
            obs = nxt
    finally:
        env.close()
    assert ends >= 4  # both envs crossed episode ends
    assert rb.size == 200
    for logical in range(3, rb.size):
        absolute = 300 - rb.size + logical
        got = np.stack([rb._stacks(np.array([logical]), np.array([e]))[0] for e in range(2)])
        np.testing.assert_array_equal(got, acted_on[absolute], err_msg=f"slot {logical}")
    batch = rb.sample(500, n_step=1)
    for o, nx in zip(batch.obs.numpy(), batch.next_obs.numpy()):
        assert (o.tobytes(), nx.tobytes()) in pairs


class AtariLikeEnv(ScriptedVecEnv):
    """:class:`ScriptedVecEnv` with 84x84 uint8 frames, the size and type of the Atari envs' frames."""

    def _obs(self, e):
        return np.stack([atari_frame(f) for f in self.frames[e][-self.stack:]])


def atari_frame(frame):
    """A distinct non-zero 84x84 image per frame id; the zero frame (padding) stays zero."""
    if frame[0] == 0:
        return np.zeros((84, 84), dtype=np.uint8)
    return ((frame[0] * 31 + frame[1] * 7 + np.arange(84 * 84)) % 255 + 1).astype(np.uint8).reshape(84, 84)


def record_steps(env, steps, seed=1):
    """The arguments of ``steps`` consecutive ``ReplayBuffer.add`` calls, to feed several buffers alike."""
    rng = np.random.default_rng(seed)
    obs, out = env.reset(), []
    for _ in range(steps):
        actions = rng.integers(0, 4, env.n)
        nxt, rew, term, trunc, lost = env.step()
        out.append((obs, actions, rew, term, trunc, lost))
        obs = nxt
    return out


def assert_same_replay(a, b):
    assert (a.pos, a.size, a.cap) == (b.pos, b.size, b.cap)
    for k in a._ARRAYS + a._PER_ENV:
        got, want = getattr(b, k), getattr(a, k)
        assert got.shape == want.shape and got.dtype == want.dtype, k
        np.testing.assert_array_equal(got, want, err_msg=k)
    b.rng.bit_generator.state = a.rng.bit_generator.state  # as a resumed run restores it
    x, y = a.sample(64, n_step=3), b.sample(64, n_step=3)
    for f in ("obs", "actions", "returns", "next_obs", "discounts"):
        assert np.array_equal(getattr(x, f).numpy(), getattr(y, f).numpy()), f


def atari_like_buffer(steps=(), seed=11):
    """2 envs x 200 slots of 84x84 frames (2.8 MB when full), fed ``steps``."""
    rb = dl.ReplayBuffer(2 * 200, 2, (4, 84, 84), np.uint8, stack=4, seed=seed)
    rb.new_episodes()
    for args in steps:
        rb.add(*args)
    return rb


def atari_like_steps(n=320):
    env = AtariLikeEnv([[(7, "term"), (3, "trunc"), (11, "term")], [(5, "trunc"), (9, "term")]],
                       stack=4, life_loss_at=(2,), seed=10)
    return record_steps(env, n)


def test_saved_replay_file_grows_with_the_filled_slots_and_round_trips_exactly(tmp_path):
    """A checkpoint early in a run must not write the whole preallocated buffer (1.4 GB for
    Atari's 200k frames); loading gives back the very buffer, before and after the ring wraps."""
    steps = atari_like_steps()
    frame = 84 * 84
    path = tmp_path / "replay.npz"
    sizes = {}
    for upto in (25, 260):  # 25 of 200 slots per env filled; then wrapped around, mid-ring
        rb = atari_like_buffer(steps[:upto])
        rb.save(path)
        filled, full = rb.size * rb.num_envs * frame, rb.cap * rb.num_envs * frame
        sizes[upto] = path.stat().st_size
        assert filled <= sizes[upto] < filled + 32_000  # frames plus a few small arrays and headers
        back = atari_like_buffer(seed=99)
        back.load(path)
        assert_same_replay(rb, back)
        # and it goes on as if never saved: the same slots overwritten, the same samples
        for args in steps[upto:upto + 60]:
            back.add(*args)
        assert_same_replay(atari_like_buffer(steps[:upto + 60]), back)
    assert (rb.size, rb.pos) == (rb.cap, 60)
    assert sizes[25] < full / 7 and sizes[260] >= full


def test_replay_file_of_the_whole_preallocated_buffer_still_loads(tmp_path):
    """Files written before only the filled slots were saved hold every slot, filled or not."""
    rb = atari_like_buffer(atari_like_steps(40))
    old = {k: getattr(rb, k) for k in rb._ARRAYS + rb._PER_ENV}
    old["meta"] = np.array([rb.pos, rb.size, rb.cap, rb.num_envs, rb.stack], dtype=np.int64)
    path = tmp_path / "replay.npz"
    with open(path, "wb") as f:
        np.savez(f, **old)
    assert path.stat().st_size >= rb.frames.nbytes
    back = atari_like_buffer(seed=99)
    back.load(path)
    assert_same_replay(rb, back)


def test_unusable_replay_file_is_refused_by_name_and_changes_nothing(tmp_path):
    rb = atari_like_buffer(atari_like_steps(40))
    path = tmp_path / "replay.npz"
    rb.save(path)
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"  # a write killed midway, without atomic_write
    cut.write_bytes(data[:len(data) // 2])
    other_capacity = dl.ReplayBuffer(2 * 100, 2, (4, 84, 84), np.uint8, stack=4)
    for target, file, match in ((atari_like_buffer(seed=99), cut, "unreadable"),
                                (other_capacity, path, "another shape")):
        before = {k: getattr(target, k).copy() for k in target._ARRAYS + target._PER_ENV}
        with pytest.raises(ValueError, match=match) as err:
            target.load(file)
        assert file.name in str(err.value)
        assert target.size == 0 and target.pos == 0
        for k, v in before.items():
            np.testing.assert_array_equal(getattr(target, k), v, err_msg=k)
