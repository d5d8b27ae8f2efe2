"""Environments: CartPole and the Atari games of the paper, on one protocol.

Atari protocol (the book states it; training and evaluation share it):
``ALE/<Game>-v5`` with sticky actions off, 4-frame skip with max-pooling, 84x84 grey
frames, up to 30 no-ops at reset, 4 frames stacked with *zero* padding at episode start
(what ``ale_py.AtariVectorEnv`` does), no FIRE pressed for the agent. Training additionally
treats every life loss as terminal for the TD target (the game goes on) and clips rewards
to [-1, 1]; evaluation plays whole games with unclipped scores.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np

if TYPE_CHECKING:
    from torch import nn

__all__ = ["GameInfo", "GAMES", "ENV_NAMES", "game_info", "is_atari", "make_env", "make_vector_env", "hns",
           "action_count", "example_observation", "network_actions", "check_actions"]


@dataclass(frozen=True)
class GameInfo:
    """Reference scores of one Atari game (random and human as used for HNS)."""

    name: str
    random: float
    human: float
    nature_dqn: float


GAMES: dict[str, GameInfo] = {g.name: g for g in [
    GameInfo("Breakout", 1.7, 30.5, 401.2),
    GameInfo("SpaceInvaders", 148.0, 1668.7, 1976.0),
    GameInfo("Robotank", 2.2, 11.9, 51.6),
    GameInfo("BattleZone", 2360.0, 37187.5, 26300.0),
    GameInfo("Enduro", 0.0, 860.5, 301.8),
    GameInfo("Freeway", 0.0, 29.6, 30.3),
    GameInfo("Pong", -20.7, 14.6, 18.9),
]}
ENV_NAMES = ("CartPole-v1", *GAMES)


def game_info(env: str) -> GameInfo:
    """Reference scores for an Atari game; a clear error for anything else."""
    if env not in GAMES:
        raise ValueError(f"unknown game {env!r}; Atari games: {', '.join(GAMES)}")
    return GAMES[env]


def is_atari(env: str) -> bool:
    """True for the Atari games, False for CartPole; raises for unknown names."""
    _check(env)
    return env != "CartPole-v1"


def _check(env: str) -> None:
    if env not in ENV_NAMES:
        raise ValueError(f"unknown environment {env!r}; known: {', '.join(ENV_NAMES)}")


def _ale_id(game: str) -> str:
    return f"ALE/{game}-v5"


def _snake(game: str) -> str:
    out = "".join("_" + c.lower() if c.isupper() else c for c in game).lstrip("_")
    return out


def make_env(env: str, seed: int | None = None, render_mode: str | None = None) -> gym.Env:
    """One evaluation environment (full episodes, unclipped rewards) for the name ``env``.

    Observations: CartPole float32 (4,), Atari uint8 (4, 84, 84).
    """
    _check(env)
    if env == "CartPole-v1":
        out = gym.make("CartPole-v1", render_mode=render_mode)
    else:
        import ale_py

        gym.register_envs(ale_py)
        # AtariPreprocessing reads the screen from the emulator itself and drops the inner env's
        # observation, so a greyscale one (a third of an RGB copy, per emulated frame) changes no
        # frame the network sees and saves about a sixth of every step
        out = gym.make(_ale_id(env), frameskip=1, repeat_action_probability=0.0,
                       full_action_space=False, render_mode=render_mode, obs_type="grayscale")
        out = gym.wrappers.AtariPreprocessing(out, noop_max=30, frame_skip=4, screen_size=84,
                                              terminal_on_life_loss=False, grayscale_obs=True)
        out = gym.wrappers.FrameStackObservation(out, 4, padding_type="zero")
    if seed is not None:
        out.action_space.seed(seed)
    return out


def make_vector_env(env: str, num_envs: int, seed: int | None = None) -> gym.vector.VectorEnv:
    """A vector env with next-step autoreset for training: whole games, raw rewards.

    Life-loss terminals and reward clipping are the trainer's business (it needs the raw
    game score for logging). ``AtariVectorEnv``'s own ``episodic_life`` restarts the whole
    game after a life loss, so an agent would only ever see its first life; we do not use it.
    """
    _check(env)
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if env == "CartPole-v1":
        out = gym.make_vec("CartPole-v1", num_envs=num_envs, vectorization_mode="sync")
    else:
        import ale_py

        out = ale_py.AtariVectorEnv(
            _snake(env), num_envs=num_envs, num_threads=min(num_envs, 2),
            repeat_action_probability=0.0, noop_max=30, frameskip=4, stack_num=4,
            episodic_life=False, reward_clipping=False, use_fire_reset=False,
        )
    if seed is not None:
        out.action_space.seed(seed)
    return out


def hns(env: str, score: float) -> float:
    """Human-normalised score of an Atari game: 0 is random play, 1 is the human reference."""
    g = game_info(env)
    return (score - g.random) / (g.human - g.random)


@lru_cache(maxsize=None)
def _spaces(env: str) -> tuple[int, tuple[int, ...], np.dtype]:
    """Action count, observation shape and dtype of ``env``, read without playing a frame.

    Built from the same :func:`make_env` as evaluation, so they are exactly what a network is
    played on; cached, since building an Atari environment loads its ROM. The emulator's banner
    is silenced meanwhile, so a mismatch error stays one line.
    """
    _check(env)
    quiet = env != "CartPole-v1"
    if quiet:
        import ale_py

        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    try:
        e = make_env(env)
        space = e.observation_space
        out = int(e.action_space.n), tuple(space.shape), np.dtype(space.dtype)
        e.close()
        return out
    finally:
        if quiet:
            ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Info)  # ALE's default


def action_count(env: str) -> int:
    """How many actions ``env`` has (Atari: its minimal action set), read without playing a frame."""
    return _spaces(env)[0]


def example_observation(env: str) -> np.ndarray:
    """An observation of ``env``'s shape and dtype (all zeros), for sizing or tracing a network
    before any frame is played."""
    _, shape, dtype = _spaces(env)
    return np.zeros(shape, dtype)


def network_actions(net: nn.Module, example: np.ndarray | None = None) -> int | None:
    """How many actions (outputs) a Q-network has.

    Its spec's (or its own) ``n_actions`` if it declares one; else the width of its output on
    ``example`` (one unbatched observation), if given; else the width of its last module with
    ``out_features``. ``None`` for a module that shows none of these.
    """
    n = getattr(getattr(net, "spec", None), "n_actions", None)
    if n is None:
        n = getattr(net, "n_actions", None)
    if isinstance(n, int):
        return int(n)
    if example is not None:
        import torch

        param = next(net.parameters(), None)
        x = torch.as_tensor(example, device=None if param is None else param.device)[None]
        with torch.no_grad():
            out = net(x)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
            raise ValueError(f"a Q-network must return a (batch, actions) tensor; on one observation of shape "
                             f"{tuple(x.shape[1:])} this one returned "
                             f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        return int(out.shape[1])
    widths = [m.out_features for m in net.modules() if hasattr(m, "out_features")]
    return int(widths[-1]) if widths else None


def check_actions(net: nn.Module, env: str, what: str = "the network") -> None:
    """Raise ValueError unless ``net`` has one output per action of ``env``.

    A net with too many outputs would pick actions the game lacks (the emulator fails
    mid-episode); one with too few silently never presses some buttons. Both are a network
    meant for another game, so every entry point that plays a network checks first. A network
    that does not declare ``n_actions`` is run once on an (all-zero) observation of ``env``; one
    that cannot take that observation fails here too, naming its shape.
    """
    want = action_count(env)
    try:
        n = network_actions(net, example_observation(env))
    except Exception as e:  # noqa: BLE001 - any failure of a reader's forward, said in one line
        shape = tuple(example_observation(env).shape)
        raise ValueError(f"{what} cannot be run on an observation of {env} (shape (1, {', '.join(map(str, shape))})"
                         f"): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if n is not None and n != want:
        raise ValueError(f"{what} has {n} actions (outputs) but {env} has {want}: give a network made for {env}")
