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
           "action_count", "network_actions", "check_actions"]


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


def game_info(name: str) -> GameInfo:
    """Reference scores for an Atari game; a clear error for anything else."""
    if name not in GAMES:
        raise ValueError(f"unknown game {name!r}; Atari games: {', '.join(GAMES)}")
    return GAMES[name]


def is_atari(name: str) -> bool:
    """True for the Atari games, False for CartPole; raises for unknown names."""
    _check(name)
    return name != "CartPole-v1"


def _check(name: str) -> None:
    if name not in ENV_NAMES:
        raise ValueError(f"unknown environment {name!r}; known: {', '.join(ENV_NAMES)}")


def _ale_id(game: str) -> str:
    return f"ALE/{game}-v5"


def _snake(game: str) -> str:
    out = "".join("_" + c.lower() if c.isupper() else c for c in game).lstrip("_")
    return out


def make_env(name: str, seed: int | None = None, render_mode: str | None = None) -> gym.Env:
    """One evaluation environment (full episodes, unclipped rewards).

    Observations: CartPole float32 (4,), Atari uint8 (4, 84, 84).
    """
    _check(name)
    if name == "CartPole-v1":
        env = gym.make("CartPole-v1", render_mode=render_mode)
    else:
        import ale_py

        gym.register_envs(ale_py)
        env = gym.make(_ale_id(name), frameskip=1, repeat_action_probability=0.0,
                       full_action_space=False, render_mode=render_mode)
        env = gym.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84,
                                              terminal_on_life_loss=False, grayscale_obs=True)
        env = gym.wrappers.FrameStackObservation(env, 4, padding_type="zero")
    if seed is not None:
        env.action_space.seed(seed)
    return env


def make_vector_env(name: str, num_envs: int, seed: int | None = None) -> gym.vector.VectorEnv:
    """A vector env with next-step autoreset for training: whole games, raw rewards.

    Life-loss terminals and reward clipping are the trainer's business (it needs the raw
    game score for logging). ``AtariVectorEnv``'s own ``episodic_life`` restarts the whole
    game after a life loss, so an agent would only ever see its first life; we do not use it.
    """
    _check(name)
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if name == "CartPole-v1":
        env = gym.make_vec("CartPole-v1", num_envs=num_envs, vectorization_mode="sync")
    else:
        import ale_py

        env = ale_py.AtariVectorEnv(
            _snake(name), num_envs=num_envs, num_threads=min(num_envs, 2),
            repeat_action_probability=0.0, noop_max=30, frameskip=4, stack_num=4,
            episodic_life=False, reward_clipping=False, use_fire_reset=False,
        )
    if seed is not None:
        env.action_space.seed(seed)
    return env


def hns(game: str, score: float) -> float:
    """Human-normalised score: 0 is random play, 1 is the human reference."""
    g = game_info(game)
    return (score - g.random) / (g.human - g.random)


@lru_cache(maxsize=None)
def action_count(name: str) -> int:
    """How many actions ``name`` has (Atari: its minimal action set), read without playing a frame.

    Built from the same :func:`make_env` as evaluation, so it is exactly the action space a
    network is played on; cached, since building an Atari environment loads its ROM. The
    emulator's banner is silenced meanwhile, so a mismatch error stays one line.
    """
    _check(name)
    quiet = name != "CartPole-v1"
    if quiet:
        import ale_py

        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    try:
        env = make_env(name)
        n = int(env.action_space.n)
        env.close()
        return n
    finally:
        if quiet:
            ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Info)  # ALE's default


def network_actions(net: nn.Module) -> int | None:
    """How many actions (outputs) a Q-network has: its spec's ``n_actions``, else the width of
    its last layer with ``out_features``; ``None`` for a module that shows neither."""
    n = getattr(getattr(net, "spec", None), "n_actions", None)
    if n is not None:
        return int(n)
    widths = [m.out_features for m in net.modules() if hasattr(m, "out_features")]
    return int(widths[-1]) if widths else None


def check_actions(net: nn.Module, name: str, what: str = "the network") -> None:
    """Raise ValueError unless ``net`` has one output per action of ``name``.

    A net with too many outputs would pick actions the game lacks (the emulator fails
    mid-episode); one with too few silently never presses some buttons. Both are a network
    meant for another game, so every entry point that plays a network checks first.
    """
    n, want = network_actions(net), action_count(name)
    if n is not None and n != want:
        raise ValueError(f"{what} has {n} actions (outputs) but {name} has {want}: give a network made for {name}")
