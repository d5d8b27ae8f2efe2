"""Ship what training and distillation made: evaluate the very weights that ship, and record how.

A shipped agent file holds fp16 weights, so the evaluation its manifest records is played by
the fp16-rounded network: whoever loads the file and plays the same seeds gets the recorded
scores. The record also says how the agent was made (config, seed, steps, teacher), so a table
that uses it can name where it came from.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ..core.nets import QNetwork
from ..store.agents import agent_names, agent_record, export_agent, fp16_rounded, pruned_agent_name, sha256
from ..store.checkpoint import load_checkpoint
from .distill import DistillConfig, prune_and_distill
from .dqn import TrainResult
from .envs import is_atari
from .evaluation import evaluate

__all__ = ["ship_trained", "distill_and_ship"]


def ship_trained(result: TrainResult, run_dir: str | os.PathLike, *, episodes: int = 10, seed: int = 0,
                 export: str | os.PathLike | None = None, name: str | None = None, init: str | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Evaluate a training run's best network; with ``export``, write it there as a shipped agent.

    The agent is named ``name`` (default: the environment) and its manifest record holds the
    config, the steps and frames trained, the step the best network was evaluated at, the
    learning curve of the run's periodic evaluations, ``init`` (the agent fine-tuning started
    from) and the evaluation of exactly the fp16 weights that ship. Returns the run's summary
    (env, run folder, wall time, evaluation without per-layer counts).
    """
    cfg = result.config
    if cfg is None:
        raise ValueError("the training result carries no config: pass the TrainResult that train() returned")
    net = fp16_rounded(result.best_net) if export else result.best_net
    ev = evaluate(net, cfg.env, episodes=episodes, seed=seed, progress=progress)
    summary = {"env": cfg.env, "run_dir": str(run_dir), "wall_time_s": round(result.wall_time, 1),
               "evaluation": {k: v for k, v in ev.to_dict().items() if k not in ("layers",)}}
    if not export:
        return summary
    steps = int(result.steps)
    record: dict[str, Any] = {
        "env": cfg.env, "agent_steps": steps, "frames": steps * (4 if is_atari(cfg.env) else 1),
        "wall_time_s": round(result.wall_time, 1), "seed": cfg.seed, "config": cfg.to_dict(),
        "evaluation": ev.record(),
    }
    if init:
        record["init"] = init
    # the shipped net is the best evaluated one, which may predate the run's last step
    best_file = Path(run_dir) / "best.pt"
    if best_file.exists():
        record["best_net_step"] = int(load_checkpoint(best_file)["step"])
    record["curve"] = {k: result.history[k] for k in ("eval_step", "eval_mean", "eval_std")}
    export_agent(net, name or cfg.env, record, directory=export)
    return summary


def distill_and_ship(teacher: QNetwork, env: str, cfg: DistillConfig, *, teacher_name: str,
                     run_dir: str | os.PathLike | None = None, keep: Sequence[float] | None = None,
                     episodes: int = 10, seed: int = 0, export: str | os.PathLike | None = None,
                     progress: bool = True, start: QNetwork | None = None,
                     start_name: str | None = None) -> dict[str, Any]:
    """Prune ``teacher`` stage by stage with distillation, evaluate the ``keep`` stages (default
    all) as they would ship, and with ``export`` write each there as ``<env>-pruned-<s>``.

    ``teacher_name`` is a shipped agent's name or the network file the teacher came from: the
    record keeps its sha256 and, for a shipped agent, its recorded evaluation. Returns what
    the stages scored, with the teacher's score beside them. ``start`` (named ``start_name``, a
    shipped agent or a file) is the network pruning starts from instead of the teacher; the
    record keeps its name and sha256 as ``init``/``init_sha256``.
    """
    if start is not None and not start_name:
        raise ValueError("a start network needs its start_name, so the shipped record can say where it came from")
    keep = list(cfg.stages) if keep is None else list(keep)
    missing = [k for k in keep if k not in cfg.stages]
    if missing:  # before any distilling, not after
        raise ValueError(f"--keep {missing} are not among the stages {list(cfg.stages)}")
    snaps, hist = prune_and_distill(teacher, env, cfg, run_dir=run_dir, progress=progress, student=start)
    init: dict[str, Any] = {}
    if start is not None:
        init = {"init": start_name, "init_sha256": agent_record(start_name)["sha256"] if start_name in agent_names()
                else sha256(start_name)}
    rec = agent_record(teacher_name) if teacher_name in agent_names() else None
    teacher_eval = (rec or {}).get("evaluation", {})
    teacher_sha = rec["sha256"] if rec is not None else sha256(teacher_name)
    out = []
    for s in keep:
        net = fp16_rounded(snaps[s])  # what ships
        ev = evaluate(net, env, episodes=episodes, seed=seed, progress=progress)
        row = {"sparsity": s, "mean_score": ev.mean_score, "std_score": ev.std_score,
               "stage": next(h for h in hist if h["sparsity"] == s)}
        out.append(row)
        if export:
            export_agent(net, pruned_agent_name(env, s), {
                "env": env, "teacher": teacher_name, "teacher_sha256": teacher_sha,
                "teacher_evaluation": teacher_eval, "config": {"sparsity": s, "distill": cfg.to_dict()},
                "stage": row["stage"], "seed": cfg.seed, "evaluation": ev.record(), **init,
            }, directory=export)
    return {"env": env, "teacher": teacher_name, "teacher_mean_score": teacher_eval.get("mean_score"), "pruned": out}
