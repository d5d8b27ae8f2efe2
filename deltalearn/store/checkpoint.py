"""Safe checkpoint files: atomic writes, ``weights_only`` loads, clear errors.

A checkpoint is a plain dict of tensors and Python scalars/lists/dicts, so it loads with
``torch.load(..., weights_only=True)`` (no code can run from a file). Writes go to a
temporary file in the same folder and are moved into place with ``os.replace``, so a run
killed mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from ..core.nets import NetworkSpec
from .._status import status_line

__all__ = ["CheckpointError", "atomic_write", "remove_stale_temporaries", "save_checkpoint", "load_checkpoint",
           "check_spec"]

# the names atomic_write's mkstemp call gives: ".<name>.<random>.tmp", random in [a-z0-9_]
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]+\.tmp")


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, corrupt or for another network."""


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then move the temporary file over ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; checkpoints are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files :func:`atomic_write` left in ``directory``; return their paths.

    A process killed mid-write (``kill -9``, power loss) cannot clean up after itself, and a
    replay buffer's temporary file is hundreds of MB. Only files named like ours
    (``.<name>.<random>.tmp``) directly in ``directory`` are removed, and one status line says
    which. Call it when a run starts in its folder: a folder is one run's, so no other process
    is writing there.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed: list[Path] = []
    for p in sorted(directory.iterdir()):
        if _TEMPORARY.fullmatch(p.name) and p.is_file() and not p.is_symlink():
            p.unlink()
            removed.append(p)
    if removed:
        status_line(f"removed {len(removed)} stale temporary file(s) of an interrupted write in {directory}",
                    ", ".join(p.name for p in removed))
    return removed


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Atomically save a dict of tensors and plain Python values."""
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``; any failure is a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or not a deltalearn checkpoint "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(data, dict) or "spec" not in data or "model" not in data:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a deltalearn checkpoint "
                              f"(expected a dict with 'spec' and 'model')")
    return data


def check_spec(data: dict[str, Any], expected: NetworkSpec, path: str | os.PathLike = "") -> NetworkSpec:
    """Raise when a checkpoint was made for another architecture than ``expected``."""
    try:
        got = NetworkSpec.from_dict(data["spec"])
    except Exception:
        raise CheckpointError(f"checkpoint {str(path)!r} has an unreadable network spec") from None
    if got != expected:
        raise CheckpointError(f"checkpoint {str(path)!r} is for {got}, not for {expected}")
    return got
