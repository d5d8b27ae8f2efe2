"""Prune a trained agent gradually and recover its policy by distillation (chapter 4's recipe).

One-shot magnitude pruning at the paper's sparsities (0.74-0.79) breaks an Atari agent's
policy. Re-training with TD learning would cost hours of play on our CPUs; distillation is far
cheaper: the dense agent is the teacher, and after each pruning stage the pruned student is
pulled towards the teacher's action preferences on the states the *student* visits
(Rusu et al. 2016, "Policy distillation"; the on-policy states are the DAgger idea). No reward
is used and nothing is re-learned, so the student inherits the teacher's play.

``prune_and_distill`` writes a checkpoint after every stage, so a killed run resumes at the
stage it was in.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .._fields import checked_fields
from ..store.checkpoint import CheckpointError, check_spec, load_checkpoint, remove_stale_temporaries, save_checkpoint
from .envs import check_actions
from .evaluation import evaluate
from ..core.nets import QNetwork, build_network, copy_weights, plain_copy
from ..core.pruning import check_sparsity, prune_network, sparsity_report
from .._status import status_line

__all__ = ["DistillConfig", "prune_and_distill"]


@dataclass
class DistillConfig:
    """Hyperparameters of gradual pruning with policy distillation."""

    stages: tuple[float, ...] = (0.5, 0.65, 0.74, 0.79, 0.85, 0.9)
    """Per-layer sparsities pruned to in turn; distillation follows each. Snapshots are kept at every stage."""
    rounds: int = 2
    """Rounds of (student plays, then distillation updates) per stage."""
    episodes: int = 4
    """Episodes the student plays per round to collect the states it visits."""
    max_steps: int = 2_500
    """Cap on a collection episode's length in agent steps."""
    epsilon: float = 0.05
    """Exploration while collecting states (the evaluation epsilon of the Atari protocol)."""
    pool: int = 40_000
    """States kept for distillation; the oldest are dropped first."""
    updates: int = 400
    """Gradient updates per round."""
    batch_size: int = 64
    """States per update."""
    lr: float = 1e-4
    """Adam learning rate."""
    temperature: float = 0.05
    """Softmax temperature on Q-values for the KL loss: low, because action gaps are small."""
    mse_weight: float = 0.01
    """Weight of a mean-squared error on the Q-values themselves, which keeps their scale."""
    seed: int = 0
    """Seeds the collection episodes and minibatch sampling."""
    threads: int = 0
    """torch threads (0: torch's default)."""
    lr_end: float | None = None
    """Learning rate reached at each stage's last update by cosine decay from ``lr`` (None: constant ``lr``).
    Long distillations settle better on a decaying rate."""
    teacher_episodes: int = 0
    """Episodes the teacher also plays every round, mixing its states into the pool with the student's
    (0: the teacher's states are only the pool's first ones)."""

    def validate(self) -> None:
        if not self.stages or list(self.stages) != sorted(self.stages):
            raise ValueError(f"stages must be increasing sparsities, got {self.stages}")
        for s in self.stages:
            check_sparsity(s)
        for name in ("rounds", "episodes", "max_steps", "pool", "updates", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")
        if self.teacher_episodes < 0:
            raise ValueError(f"teacher_episodes must be >= 0, got {self.teacher_episodes}")
        if self.lr_end is not None and not 0 <= self.lr_end <= self.lr:
            raise ValueError(f"lr_end must be None or in [0, lr={self.lr}], got {self.lr_end}")
        if self.lr <= 0 or self.temperature <= 0 or self.mse_weight < 0:
            raise ValueError("lr and temperature must be > 0 and mse_weight >= 0, got "
                             f"lr={self.lr}, temperature={self.temperature}, mse_weight={self.mse_weight}")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict; fields added after agents shipped are left out at their defaults,
        so a checkpoint or manifest record written before they existed still reads as the same config."""
        d = asdict(self)
        d["stages"] = list(self.stages)
        for name, default in _ADDED_FIELDS.items():
            if d[name] == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DistillConfig":
        d = checked_fields(cls, d)
        if "stages" in d:
            d["stages"] = tuple(float(s) for s in d["stages"])
        return cls(**d)


_ADDED_FIELDS: dict[str, Any] = {"lr_end": None, "teacher_episodes": 0}


def _collect(net: QNetwork, env: str, cfg: DistillConfig, seed: int, episodes: int | None = None) -> np.ndarray:
    res = evaluate(net, env, episodes=episodes or cfg.episodes, seed=seed, epsilon=cfg.epsilon, record=True,
                   max_steps=cfg.max_steps)
    return np.concatenate(res.observations)


def _distill_loss(q: torch.Tensor, target: torch.Tensor, cfg: DistillConfig) -> torch.Tensor:
    kl = F.kl_div(F.log_softmax(q / cfg.temperature, dim=1), F.log_softmax(target / cfg.temperature, dim=1),
                  log_target=True, reduction="batchmean")
    return kl + cfg.mse_weight * F.mse_loss(q, target)


def _fingerprint(net: QNetwork) -> str:
    """sha256 of a network's weights: a resumed distillation must have the same teacher."""
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _resume(ckpt: Path, teacher: QNetwork, teacher_id: str, start_id: str | None, env: str,
            cfg: DistillConfig) -> tuple[dict[float, QNetwork], list[dict[str, Any]]]:
    """The finished stages of a checkpoint, once it is known to be this very distillation."""
    data = load_checkpoint(ckpt)
    check_spec(data, teacher.spec, ckpt)
    if data.get("config") != cfg.to_dict() or data.get("env") != env:
        raise CheckpointError(f"{ckpt} belongs to another distillation (env {data.get('env')!r}, config "
                              f"{data.get('config')}); use another run_dir or delete it")
    if data.get("teacher", teacher_id) != teacher_id:
        raise CheckpointError(f"{ckpt} was distilled from another teacher (weights sha256 "
                              f"{data['teacher'][:12]}..., this one {teacher_id[:12]}...); "
                              "use another run_dir or delete it")
    if data.get("start") != start_id:
        raise CheckpointError(f"{ckpt} started from another student (weights sha256 {str(data.get('start'))[:12]}, "
                              f"this one {str(start_id)[:12]}; None is the teacher); use another run_dir or delete it")
    snapshots: dict[float, QNetwork] = {}
    for s, state in zip(data["done"], data["snapshots"]):
        net = build_network(teacher.spec)
        net.load_state_dict(state)
        snapshots[float(s)] = net.eval()
    return snapshots, list(data["history"])


def _agreement(net: QNetwork, states: torch.Tensor, target: torch.Tensor) -> float:
    with torch.no_grad():
        return float(np.mean([(net(states[i:i + 512]).argmax(1) == target[i:i + 512].argmax(1)).float().mean()
                              for i in range(0, len(states), 512)]))


def _targets(teacher: QNetwork, states: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([teacher(states[i:i + 512]) for i in range(0, len(states), 512)])


def prune_and_distill(teacher: QNetwork, env: str, cfg: DistillConfig | None = None,
                      run_dir: str | os.PathLike | None = None, progress: bool = True,
                      callback: Callable[[float, dict[str, Any]], None] | None = None,
                      student: QNetwork | None = None,
                      ) -> tuple[dict[float, QNetwork], list[dict[str, Any]]]:
    """Prune ``teacher``'s copy stage by stage, distilling after each; returns the snapshot
    (a plain network) at every stage sparsity and a per-stage history (agreement with the
    teacher on the pooled states, loss).

    ``student`` (default: the teacher) is the network pruning starts from, e.g. an already
    distilled sparser agent that a longer distillation should improve; it is not modified.
    With ``run_dir``, ``distill.pt`` there is rewritten atomically after each stage and a new
    call resumes after the last finished stage. ``callback(sparsity, record)`` follows each stage.
    """
    cfg = cfg or DistillConfig()
    cfg.validate()
    check_actions(teacher, env, "the teacher")  # before its first episode, not midway through one
    if student is not None and student.spec != teacher.spec:
        raise ValueError(f"the student's network spec {student.spec} differs from the teacher's {teacher.spec}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    teacher = plain_copy(teacher)
    teacher_id = _fingerprint(teacher)
    start_id = None if student is None else _fingerprint(plain_copy(student))
    student = plain_copy(teacher if student is None else student).train()
    snapshots: dict[float, QNetwork] = {}
    history: list[dict[str, Any]] = []
    ckpt = Path(run_dir) / "distill.pt" if run_dir is not None else None
    if run_dir is not None:  # what a killed write of distill.pt left behind
        remove_stale_temporaries(run_dir)
    if ckpt is not None and ckpt.exists():
        snapshots, history = _resume(ckpt, teacher, teacher_id, start_id, env, cfg)
        if snapshots:
            copy_weights(snapshots[max(snapshots)], student)

    def save() -> None:
        if ckpt is None:
            return
        done = sorted(snapshots)
        extra = {} if start_id is None else {"start": start_id}  # a checkpoint's shape is unchanged without it
        save_checkpoint(ckpt, {"spec": teacher.spec.to_dict(), "model": snapshots[done[-1]].state_dict(),
                               "env": env, "config": cfg.to_dict(), "done": done, "teacher": teacher_id,
                               "snapshots": [snapshots[s].state_dict() for s in done], "history": history, **extra})

    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    pool = _collect(teacher, env, cfg, seed=50_000 + cfg.seed)  # the teacher's own states to start from
    todo = [s for s in cfg.stages if s not in snapshots]
    bar = tqdm(total=len(cfg.stages) * cfg.rounds * cfg.updates, initial=len(snapshots) * cfg.rounds * cfg.updates,
               desc=f"prune+distill {env}", disable=not progress, unit="update")
    for s in todo:
        prune_network(student, s)
        stage = cfg.stages.index(s)
        losses: list[float] = []
        for r in range(cfg.rounds):
            fresh = [_collect(plain_copy(student), env, cfg, seed=60_000 + 100 * stage + 10 * r + cfg.seed)]
            if cfg.teacher_episodes:
                fresh.append(_collect(teacher, env, cfg, seed=70_000 + 1000 * stage + 10 * r + cfg.seed,
                                      episodes=cfg.teacher_episodes))
            pool = np.concatenate([pool, *fresh])[-cfg.pool:]
            states = torch.as_tensor(pool)
            target = _targets(teacher, states)
            for u in range(cfg.updates):
                if cfg.lr_end is not None:  # cosine from lr to lr_end over the stage's updates
                    t = (r * cfg.updates + u) / max(1, cfg.rounds * cfg.updates - 1)
                    for g in opt.param_groups:
                        g["lr"] = cfg.lr_end + 0.5 * (cfg.lr - cfg.lr_end) * (1 + np.cos(np.pi * t))
                i = torch.randint(len(states), (cfg.batch_size,), generator=gen)
                loss = _distill_loss(student(states[i]), target[i], cfg)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
                bar.update(1)
        snap = plain_copy(student)
        agree = _agreement(snap, torch.as_tensor(pool), target)
        snapshots[s] = snap
        rec = {"sparsity": s, "zero_fraction": sparsity_report(snap).total, "agreement": agree,
               "loss_first": float(np.mean(losses[:50])), "loss_last": float(np.mean(losses[-50:])),
               "states": int(len(pool))}
        history.append(rec)
        bar.set_postfix(sparsity=s, agreement=f"{agree:.3f}")
        save()
        if not progress:  # a background run still says where it is, one line per stage
            status_line(f"{env} sparsity {s:g} distilled", f"agreement {agree:.3f}",
                        f"loss {rec['loss_first']:.3f} -> {rec['loss_last']:.3f}")
        if callback is not None:
            callback(s, rec)
    bar.close()
    return {s: snapshots[s] for s in cfg.stages}, history
