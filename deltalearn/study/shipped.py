"""The data the book's chapters read, shipped inside the package.

A chapter copied alone into an empty folder must run next to a ``pip install``-ed library, so
everything it reads lives in the package's ``data/`` folder and is reached through these
functions, never through a path relative to the repository:

- ``grid.csv`` (chapter 6's pruning x delta grid, :func:`load_grid`) and ``pruned/`` (the CartPole
  agents distilled at each sparsity; ``dl.study.agent_at(env, s, directory=book_data("pruned"))``),
  both written by ``book/scripts/make_grid.py``;
- ``count_noise.json`` / ``.md`` (:func:`load_count_noise`), written by ``book/scripts/count_noise.py``;
- ``reproduce/`` and ``heldout/``, the two shipped sets of tables and sweeps that
  ``deltalearn reproduce`` writes (read with ``dl.load_table(game, root="heldout")`` and friends);
- ``histories/<run name>.json``, the training histories of the committed runs (:func:`training_histories`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from ..rl.envs import ENV_NAMES
from ..store.trajectories import DATA_DIR

__all__ = ["SHIPPED_SETS", "book_data", "shipped_set", "load_grid", "load_count_noise", "training_histories"]

SHIPPED_SETS: tuple[str, ...] = ("heldout", "reproduce")
"""The result sets that ship with the package: ``heldout`` (the reported tables, 30 held-out episodes
per game) and ``reproduce`` (the sweeps and the tables that chose the settings, seeds 0-9)."""

_GRID_INTS = ("fc1", "fc2", "fc3", "significant", "dense")


def _listing(folder: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not p.name.startswith("."))
    return ", ".join(names) or "nothing"


def book_data(name: str = "") -> Path:
    """The shipped data file or folder ``name`` (``"grid.csv"``, ``"heldout"``, ``"pruned"``, ...).

    With no name, the package's data folder itself. ``name`` may go deeper (``"heldout/summary.csv"``).
    Raises ``FileNotFoundError`` listing what the folder holds when ``name`` is not shipped.
    """
    if os.path.isabs(name) or ".." in Path(name).parts:
        raise ValueError(f"book_data takes a name inside the package's data folder, got {name!r}")
    path = DATA_DIR / name
    if not path.exists():
        parent = path.parent
        while not parent.is_dir():
            parent = parent.parent
        where = "the package's data folder" if parent == DATA_DIR else f"{parent.relative_to(DATA_DIR)}/"
        raise FileNotFoundError(f"no shipped data {name!r}; {where} holds {_listing(parent)}")
    return path


def shipped_set(root: str | os.PathLike) -> Path:
    """The folder a result loader reads: a shipped set's folder when ``root`` is one of
    :data:`SHIPPED_SETS` (as a plain string), else ``root`` itself as a path.

    A local folder that happens to be called ``heldout`` is read with ``Path("heldout")`` or
    ``"./heldout"``; the bare name means the shipped set.
    """
    if isinstance(root, str) and root in SHIPPED_SETS:
        return book_data(root)
    if isinstance(root, (str, os.PathLike)):
        return Path(root)
    raise TypeError(f"root is a shipped set ({', '.join(map(repr, SHIPPED_SETS))}) or a folder path, "
                    f"got {type(root).__name__} {root!r}")


def load_grid() -> pd.DataFrame:
    """Chapter 6's grid (``grid.csv``), one row per (kind, sparsity, threshold) cell, the CSV's columns.

    ``threshold`` stays the CSV's text (``"none"`` for no delta network, ``"0"``, ``"0.001"``, ...),
    so a cell is found by the same key the file writes; the counts are integers, the rest floats.
    """
    df = pd.read_csv(book_data("grid.csv"), dtype={"kind": str, "threshold": str}, keep_default_na=False)
    for col in _GRID_INTS:
        df[col] = df[col].astype("int64")
    return df


def load_count_noise() -> dict[str, Any]:
    """``count_noise.json``: how far counts behind float layers move across machine configurations
    (``summary`` per game and layer, and the ``replays`` it was computed from)."""
    return json.loads(book_data("count_noise.json").read_text())


def training_histories(game: str) -> dict[str, dict[str, Any]]:
    """The training histories of ``game``'s committed runs: run name -> that run's ``history.json``.

    Runs are the ones trained on ``game`` (``<game>-seed0``, ``<game>-short-seed0``, ...), in run-name
    order, which for the shipped runs is also the order they were made (oldest first). A game with no
    committed run gives an empty dict; a name that is no game raises ``ValueError`` listing the games
    that have runs.
    """
    folder = book_data("histories")
    out: dict[str, dict[str, Any]] = {}
    games: set[str] = set()
    for path in sorted(folder.glob("*.json")):
        hist = json.loads(path.read_text())
        env = hist["config"]["env"]
        games.add(env)
        if env == game and path.stem.startswith(f"{game}-"):
            out[path.stem] = hist
    if not out and game not in ENV_NAMES:
        raise ValueError(f"unknown game {game!r}; shipped training histories are for {', '.join(sorted(games))}")
    return out
