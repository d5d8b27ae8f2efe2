"""Trained agents shipped inside the package, loaded offline and hash-checked.

Each agent is ``agents/<name>.pt``: fp16 weights (half the size, and the Q-values of a
trained DQN do not care) plus its :class:`~deltalearn.nets.NetworkSpec`. ``agents/manifest.json``
records for each file its sha256 and how it was made (steps, frames, wall time,
hyperparameters, seed, evaluation score), so a loaded agent is exactly the one measured.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, atomic_write, check_spec, load_checkpoint, save_checkpoint
from ..core.nets import NetworkSpec, QNetwork, build_network, copy_weights, load_state, WeightsMismatch

__all__ = ["AGENT_DIR", "agent_names", "agent_record", "load_agent", "export_agent", "fp16_rounded", "pruned_agent_name", "record_evaluation",
           "load_network_file", "load_agent_or_file", "agent_table", "sha256"]

AGENT_DIR = Path(__file__).resolve().parent.parent / "agents"


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest(directory: Path) -> dict[str, Any]:
    p = directory / "manifest.json"
    return json.loads(p.read_text()) if p.exists() else {}


def _write_manifest(directory: Path, man: dict[str, Any]) -> None:
    atomic_write(directory / "manifest.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(man, indent=2, sort_keys=True) + "\n"))


def agent_names(directory: str | os.PathLike | None = None) -> list[str]:
    """Names of the shipped agents (environment names such as ``CartPole-v1`` or ``Pong``)."""
    return sorted(_manifest(Path(directory) if directory else AGENT_DIR))


def agent_record(name: str, directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """The manifest entry of a shipped agent: hash, training record, evaluation."""
    man = _manifest(Path(directory) if directory else AGENT_DIR)
    if name not in man:  # a short line: the full list is a command away, not 29 names on one line
        close = difflib.get_close_matches(name, list(man), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"no shipped agent {name!r}; {hint}`deltalearn agents` lists the {len(man)} shipped ones, "
                         "or give a path to a .pt network file")
    return man[name]


def load_network_file(path: str | os.PathLike, expected: NetworkSpec | None = None) -> QNetwork:
    """Load a network saved by :func:`export_agent` or a training ``best.pt``/``checkpoint.pt``."""
    data = load_checkpoint(path)
    spec = NetworkSpec.from_dict(data["spec"])
    if expected is not None:
        check_spec(data, expected, path)
    try:
        return load_state(build_network(spec), data["model"]).eval()
    except WeightsMismatch as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: {e}") from None


def load_agent(name: str, directory: str | os.PathLike | None = None) -> QNetwork:
    """Load a shipped agent by name after checking its sha256 against the manifest."""
    d = Path(directory) if directory else AGENT_DIR
    rec = agent_record(name, d)
    path = d / rec["file"]
    digest = sha256(path) if path.exists() else "missing"
    if digest != rec["sha256"]:
        raise CheckpointError(f"agent file {str(path)!r} does not match its manifest "
                              f"(sha256 {digest[:12]}..., expected {rec['sha256'][:12]}...)")
    return load_network_file(path)


def load_agent_or_file(agent: str | os.PathLike, directory: str | os.PathLike | None = None) -> QNetwork:
    """A shipped agent by name, else a network file by path (``*.pt``, or any file that exists).

    What ``--agent`` and ``--init`` take; anything else is the unknown-name error of
    :func:`agent_record`, which points to ``deltalearn agents``.
    """
    text = os.fspath(agent)
    if text not in agent_names(directory) and (text.endswith(".pt") or Path(text).is_file()):
        return load_network_file(text)
    return load_agent(text, directory)  # a shipped name, or the error for an unknown one


def agent_table(directory: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One row per shipped agent, for listing: name, game, actions, its manifest score (and
    held-out score where measured) and per-layer sparsity.

    ``score`` is the record's ``evaluation`` (10 seeded episodes, those settings were chosen on);
    ``heldout_score`` is ``heldout_evaluation``'s mean, ``None`` until one is recorded.
    ``sparsity`` is 0 for a dense agent and the record's ``config.sparsity`` for a pruned one.
    """
    d = Path(directory) if directory else AGENT_DIR
    rows = []
    for name, rec in sorted(_manifest(d).items()):
        ev, held = rec.get("evaluation") or {}, rec.get("heldout_evaluation") or {}
        rows.append({"name": name, "game": rec.get("env"), "actions": rec.get("spec", {}).get("n_actions"),
                     "score": ev.get("mean_score"), "episodes": ev.get("episodes"),
                     "heldout_score": held.get("mean_score"), "heldout_episodes": held.get("episodes"),
                     "sparsity": float((rec.get("config") or {}).get("sparsity", 0.0))})
    return rows


def record_evaluation(name: str, key: str, evaluation: dict[str, Any],
                      directory: str | os.PathLike | None = None) -> None:
    """Store ``evaluation`` under ``key`` (e.g. ``heldout_evaluation``) in a shipped agent's
    manifest entry, atomically. The agent file, and so its sha256, is unchanged."""
    d = Path(directory) if directory else AGENT_DIR
    man = _manifest(d)
    if name not in man:
        raise ValueError(f"no shipped agent {name!r} to record an evaluation for; see `deltalearn agents`")
    if key in ("file", "sha256", "spec"):
        raise ValueError(f"{key!r} is part of the agent's identity, not an evaluation")
    man[name][key] = evaluation
    _write_manifest(d, man)


def pruned_agent_name(env: str, sparsity: float) -> str:
    """The shipped name of an environment's distilled pruned agent, e.g. ``Breakout-pruned-0.79``."""
    return f"{env}-pruned-{sparsity:g}"


def fp16_rounded(net: QNetwork) -> QNetwork:
    """A plain copy of ``net`` whose weights went through fp16, as a shipped agent's do."""
    plain = build_network(net.spec)
    copy_weights(net, plain)
    with torch.no_grad():
        for p in plain.parameters():
            p.copy_(p.half().float())
    return plain.eval()


def export_agent(net: QNetwork, name: str, record: dict[str, Any],
                 directory: str | os.PathLike | None = None) -> Path:
    """Write ``net`` as a compact fp16 agent file and add it to the manifest."""
    d = Path(directory) if directory else AGENT_DIR
    plain = build_network(net.spec)
    copy_weights(net, plain)
    state = {k: v.detach().cpu().half() for k, v in plain.state_dict().items()}
    path = d / f"{name}.pt"
    save_checkpoint(path, {"spec": net.spec.to_dict(), "model": state})
    man = _manifest(d)
    man[name] = {"file": path.name, "sha256": sha256(path), "spec": net.spec.to_dict(), **record}
    _write_manifest(d, man)
    return path
