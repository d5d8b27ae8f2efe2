"""Recorded episodes shipped with the package, for exact, reproducible counts.

Counting multiplications on a *recorded* trajectory gives the same integers on every
machine; replaying a live episode does not always (float round-off can flip a close
action and the game diverges). Chapters pin their exact numbers on these recordings.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .checkpoint import atomic_write

__all__ = ["DATA_DIR", "save_trajectory", "load_trajectory", "trajectory_names"]

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def _is_frame_stack(obs: np.ndarray) -> bool:
    """True when each observation is the previous one shifted by one frame (a stacked-frame episode)."""
    return obs.ndim == 4 and len(obs) > 1 and obs.shape[1] > 1 and bool(np.array_equal(obs[1:, :-1], obs[:-1, 1:]))


def save_trajectory(traj: dict[str, np.ndarray], name: str, directory: str | os.PathLike | None = None) -> Path:
    """Write a trajectory as compressed ``<name>.npz`` (atomically).

    Stacked Atari observations repeat every frame four times; such an episode is stored as
    its sequence of distinct frames (``frames``), a quarter of the size, and
    :func:`load_trajectory` rebuilds the identical ``observations``.
    """
    path = Path(directory or DATA_DIR) / f"{name}.npz"
    data = dict(traj)
    obs = np.asarray(data["observations"])
    if _is_frame_stack(obs):
        del data["observations"]
        data["frames"] = np.concatenate([obs[0], obs[1:, -1]])
        data["stack"] = np.array(obs.shape[1])
    atomic_write(path, lambda tmp: np.savez_compressed(open(tmp, "wb"), **data))
    return path


def trajectory_names(directory: str | os.PathLike | None = None) -> list[str]:
    return sorted(p.stem for p in Path(directory or DATA_DIR).glob("*.npz"))


def load_trajectory(name: str, directory: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Load a shipped trajectory: ``observations`` (steps, ...), ``actions``, ``score``, ``seed``."""
    path = Path(directory or DATA_DIR) / f"{name}.npz"
    if not path.is_file():
        raise ValueError(f"no shipped trajectory {name!r}; shipped: {', '.join(trajectory_names(directory)) or 'none'}")
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    if "frames" in data:
        frames, stack = data.pop("frames"), int(data.pop("stack"))
        windows = np.lib.stride_tricks.sliding_window_view(frames, stack, axis=0)  # (steps, H, W, stack)
        data["observations"] = np.ascontiguousarray(np.moveaxis(windows, -1, 1))
    return data
