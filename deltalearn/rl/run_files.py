"""What a training run keeps between steps, and the files in its ``run_dir`` that let it resume.

:class:`TrainState` is everything ``train`` carries from one agent step to the next.
:class:`RunFiles` writes it and reads it back:

- ``checkpoint.pt`` (networks, optimizer, counters, RNG states, history) and ``replay.npz``
  resume a run exactly where its last checkpoint left it;
- ``resume.pt`` is a few-MB warm-restart file (fp16 online and best weights, counters,
  history), small enough to commit, used when ``checkpoint.pt`` is absent (a fresh clone);
- ``best.pt`` holds the best network the periodic evaluations saw, ``history.json`` the
  learning curves in plain JSON.

A file made for another environment, seed or network is refused rather than loaded.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._status import status_line
from ..core.nets import NetworkSpec, QNetwork, build_network, copy_weights, load_state
from ..store.checkpoint import (CheckpointError, atomic_write, check_spec, load_checkpoint, remove_stale_temporaries,
                                save_checkpoint)
from .buffer import ReplayBuffer
from .dqn_config import DQNConfig

__all__ = ["TrainState", "RunFiles"]

HISTORY_KEYS = ("episode_step", "episode_return", "eval_step", "eval_mean", "eval_std", "loss_step", "loss")


@dataclass
class TrainState:
    """The networks, optimizer, replay memory, random generator and counters of a run."""

    q: QNetwork
    """The online network, the one being trained."""
    target: QNetwork
    """The target network the TD targets are computed with."""
    best: QNetwork
    """The best network the periodic evaluations have seen."""
    optimizer: torch.optim.Optimizer
    buffer: ReplayBuffer
    rng: np.random.Generator
    """Exploration's random numbers (the buffer has its own, for sampling)."""
    step: int = 0
    """Agent steps taken, summed over environments."""
    updates: int = 0
    best_score: float = -math.inf
    wall: float = 0.0
    """Seconds of training, summed over resumed sessions."""
    credit: float = 0.0
    """Fractional updates owed: ``num_envs / train_every`` accrue per vector step."""
    warm_until: int = 0
    """No updates until this step: a resumed run without its replay memory refills it first."""
    history: dict[str, list] = field(default_factory=lambda: {k: [] for k in HISTORY_KEYS})


class RunFiles:
    """The files of one run in ``run_dir``; with ``run_dir=None`` nothing is written or read.

    Opening a run removes the temporary files a killed checkpoint write left in its folder (a
    replay buffer's can pass a GB): a folder holds one run, so no other process writes there.
    """

    def __init__(self, run_dir: str | os.PathLike | None, cfg: DQNConfig, spec: NetworkSpec,
                 device: torch.device) -> None:
        self.dir = Path(run_dir) if run_dir is not None else None
        self.cfg, self.spec, self.device = cfg, spec, device
        if self.dir is not None:
            remove_stale_temporaries(self.dir)

    def _path(self, name: str) -> Path:
        if self.dir is None:
            raise ValueError(f"a run without a run_dir has no {name}")
        return self.dir / name

    def restore(self, state: TrainState) -> str | None:
        """Load the run's latest saved state into ``state``; return ``"checkpoint"``, ``"warm"`` or None.

        ``checkpoint.pt`` resumes exactly. Without it, ``resume.pt`` gives a warm restart: the
        target network starts as the online one, Adam starts afresh, the random generators are
        reseeded from the step, and updates wait ``learning_starts`` steps for fresh experience.
        """
        if self.dir is None:
            return None
        if self._path("checkpoint.pt").exists():
            self._restore_checkpoint(state)
            return "checkpoint"
        if self._path("resume.pt").exists():
            self._restore_warm(state)
            return "warm"
        return None

    def _restore_checkpoint(self, state: TrainState) -> None:
        cfg = self.cfg
        data = self.read("checkpoint.pt")
        load_state(state.q, data["model"])
        state.target.load_state_dict(data["target"])
        load_state(state.best, data["best"])
        state.optimizer.load_state_dict(data["optimizer"])
        state.step, state.updates, state.best_score = int(data["step"]), int(data["updates"]), float(data["best_score"])
        state.wall, state.credit = float(data["wall_time"]), float(data.get("credit", 0.0))
        state.history = data["history"]
        state.rng.bit_generator.state = data["np_rng"]
        state.buffer.rng.bit_generator.state = data["replay_rng"]
        torch.set_rng_state(data["torch_rng"])
        replay = self._path("replay.npz")
        if cfg.save_replay and replay.exists():
            try:
                state.buffer.load(replay)
            except Exception as e:  # also MemoryError on a small machine: the run goes on without it
                # the networks and counters are still good: refill the buffer, then learn on
                why = e if isinstance(e, ValueError) else f"replay file {str(replay)!r}: {type(e).__name__}: {e}"
                status_line(str(why), f"not resumed: updates wait {cfg.learning_starts:,} steps for fresh experience")
            if len(state.buffer) == 0:
                state.warm_until = state.step + cfg.learning_starts
        else:
            state.warm_until = state.step + cfg.learning_starts

    def _restore_warm(self, state: TrainState) -> None:
        cfg = self.cfg
        data = self.read("resume.pt")
        load_state(state.q, data["model"])
        copy_weights(state.q, state.target)
        state.step, state.updates, state.best_score = int(data["step"]), int(data["updates"]), float(data["best_score"])
        if "best" in data:
            load_state(state.best, data["best"])
        else:
            # Breakout, Freeway and Pong's committed runs/*/resume.pt predate the best network
            # in this file: their best_score would label the resumed weights with another
            # network's score, so the next evaluation starts afresh
            copy_weights(state.q, state.best)
            state.best_score = -math.inf
        state.wall, state.history = float(data["wall_time"]), data["history"]
        state.rng = np.random.default_rng([cfg.seed, state.step])
        torch.manual_seed(cfg.seed * 1_000_003 + state.step)
        state.warm_until = state.step + cfg.learning_starts

    def read(self, name: str) -> dict[str, Any]:
        """Load ``checkpoint.pt`` or ``resume.pt``, refusing a file made for another network, env or seed."""
        path = self._path(name)
        data = load_checkpoint(path, map_location=self.device)
        check_spec(data, self.spec, path)
        saved = DQNConfig.from_dict(data["config"])
        if saved.env != self.cfg.env or saved.seed != self.cfg.seed:
            raise CheckpointError(f"{path} belongs to a run on {saved.env} seed {saved.seed}, "
                                  f"not {self.cfg.env} seed {self.cfg.seed}; use another run_dir")
        return data

    def save(self, state: TrainState) -> None:
        """Write ``replay.npz``, ``checkpoint.pt``, ``resume.pt`` and ``history.json``, each atomically."""
        if self.dir is None:
            return
        cfg, s = self.cfg, state
        if cfg.save_replay:
            s.buffer.save(self._path("replay.npz"))
        save_checkpoint(self._path("checkpoint.pt"), {
            "spec": self.spec.to_dict(), "config": cfg.to_dict(), "model": s.q.state_dict(),
            "target": s.target.state_dict(), "best": s.best.state_dict(), "optimizer": s.optimizer.state_dict(),
            "step": s.step, "updates": s.updates, "best_score": s.best_score, "wall_time": s.wall,
            "credit": s.credit, "history": s.history, "np_rng": s.rng.bit_generator.state,
            "replay_rng": s.buffer.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
        })
        self.save_compact(state)
        atomic_write(self._path("history.json"), lambda tmp: Path(tmp).write_text(json.dumps(
            {"config": cfg.to_dict(), "step": s.step, "wall_time": s.wall, "best_score": s.best_score,
             **s.history})))

    def save_compact(self, state: TrainState) -> None:
        """``resume.pt``: fp16 online and best weights, counters and history, a few MB.

        ``checkpoint.pt`` and ``replay.npz`` resume exactly but are tens of MB and GBs; this
        file is small enough to commit, and resuming from it is a warm restart (see :meth:`restore`).
        """
        if self.dir is None:
            return

        def half(net: QNetwork) -> dict[str, torch.Tensor]:
            return {k: v.detach().cpu().half() if v.is_floating_point() else v.cpu()
                    for k, v in net.state_dict().items()}

        s = state
        save_checkpoint(self._path("resume.pt"), {
            "spec": self.spec.to_dict(), "config": self.cfg.to_dict(), "model": half(s.q), "step": s.step,
            "updates": s.updates, "best_score": s.best_score, "wall_time": s.wall, "history": s.history,
            "best": half(s.best)})

    def save_best(self, net: QNetwork, step: int, score: float) -> None:
        """``best.pt``: the network with plain weights (pruning masks folded in), its step and score."""
        if self.dir is None:
            return
        plain = build_network(net.spec)
        copy_weights(net, plain)
        save_checkpoint(self._path("best.pt"), {"spec": self.spec.to_dict(), "model": plain.state_dict(),
                                                "step": step, "score": score})
