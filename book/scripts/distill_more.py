"""Longer distillation of a shipped pruned agent towards its dense teacher (issue 17, item 2).

The shipped ``<Game>-pruned-0.9`` agents came from 800 distillation updates per stage. This
script continues from a shipped, less sparse student (default ``<Game>-pruned-0.79``) with
many more rounds of (student plays, then distillation updates) per stage, with
``dl.rl.prune_and_distill(..., student=...)``. Seeded, one torch thread: the same command
gives the same file.

Four actions, all on one run folder (``runs/distill-more/<Game>-<tag>``, resumable):

  distill   run (or resume) the distillation
  tune      score the result on tuning seeds (2000...) paired against the dense agent
  heldout   score it on the held-out seeds (1000-1029) paired against the dense agent
  ship      write the last stage as ``<Game>-pruned-<s>`` into deltalearn/agents (10 episodes,
            seed 0, through ``dl.rl.distill_and_ship``, which resumes the finished run)

The shipped agents were made by (see NOTES-distill.md for what was measured):

  Breakout-pruned-0.9: 6 more rounds x 1000 updates at 0.9 from the agent it replaced
  python book/scripts/distill_more.py distill --game Breakout --tag b --start Breakout-pruned-0.9
      --start-commit 9bf0883 --stages 0.9 --rounds 6 --updates 1000     (then tune, heldout, ship)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import deltalearn as dl
from deltalearn.rl.distill import DistillConfig
from deltalearn.store.agents import fp16_rounded, load_agent_or_file

ROOT = Path(__file__).resolve().parents[2]


def config(a: argparse.Namespace) -> DistillConfig:
    return DistillConfig(stages=tuple(a.stages), rounds=a.rounds, episodes=a.episodes, pool=a.pool,
                         updates=a.updates, lr=a.lr, lr_end=a.lr_end, teacher_episodes=a.teacher_episodes,
                         seed=a.seed, threads=1)


def run_dir(a: argparse.Namespace) -> Path:
    return ROOT / "runs" / "distill-more" / f"{a.game}-{a.tag}"


def start_file(name: str, commit: str) -> str:
    """The shipped agent ``name`` as committed at ``commit``, written to the runs folder: a run that
    started from an agent it then replaced stays reproducible. Returns its path from the repo root."""
    rel = Path("runs") / "distill-more" / f"{name}@{commit[:7]}.pt"
    if not (ROOT / rel).exists():
        blob = subprocess.run(["git", "show", f"{commit}:deltalearn/agents/{name}.pt"], cwd=ROOT, check=True,
                              capture_output=True).stdout
        (ROOT / rel).parent.mkdir(parents=True, exist_ok=True)
        (ROOT / rel).write_bytes(blob)
    return str(rel)


def paired(student: dl.QNetwork, a: argparse.Namespace, seed: int, episodes: int) -> dict:
    """Student and dense agent on the same seeds; the paired difference student - dense."""
    cache = ROOT / "runs" / "distill-more" / f"dense-{a.game}-{seed}-{episodes}.json"
    if cache.exists():  # the dense agent's episodes do not change between candidates
        dense = json.loads(cache.read_text())
    else:
        ev = dl.evaluate(dl.load_agent(a.game), a.game, episodes=episodes, seed=seed, epsilon=0.05)
        dense = {"scores": list(ev.scores), "mean_score": ev.mean_score}
        cache.write_text(json.dumps(dense) + "\n")
    ev = dl.evaluate(student, a.game, episodes=episodes, seed=seed, epsilon=0.05)
    d = dl.paired_difference(dense["scores"], ev.scores)
    return {"game": a.game, "tag": a.tag, "seed": seed, "episodes": episodes, "dense_mean": dense["mean_score"],
            "student_mean": ev.mean_score, "difference": d.mean_difference, "ci": [d.ci_low, d.ci_high],
            "ci_low_over_dense": d.ci_low / dense["mean_score"] if dense["mean_score"] else None,
            # the rule: no loss detected (the interval reaches 0 or above) and at most -15% excluded
            "no_detectable_loss": bool(d.ci_high >= 0 and d.ci_low > -0.15 * dense["mean_score"]),
            "student_scores": list(ev.scores), "dense_scores": dense["scores"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("action", choices=("distill", "tune", "heldout", "ship"))
    p.add_argument("--game", required=True)
    p.add_argument("--tag", default="a", help="names the run folder runs/distill-more/<GAME>-<TAG>")
    p.add_argument("--start", default=None, help="shipped agent to start from (default <GAME>-pruned-0.79)")
    p.add_argument("--start-commit", default=None,
                   help="take --start as shipped at this git commit (the agent a run replaced)")
    p.add_argument("--stages", type=float, nargs="+", default=[0.85, 0.9])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--updates", type=int, default=1000)
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--pool", type=int, default=60_000)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lr-end", type=float, default=1e-5)
    p.add_argument("--teacher-episodes", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-episodes", type=int, default=30, help="tune/heldout episodes")
    p.add_argument("--stage", type=float, default=None, help="tune/heldout: the stage to score (default the last)")
    a = p.parse_args(argv)
    os.chdir(ROOT)  # the start file's name in a shipped record is relative to the repository
    torch.set_num_threads(1)
    cfg = config(a)
    start_name = a.start or f"{a.game}-pruned-0.79"
    if a.start_commit:
        start_name = start_file(start_name, a.start_commit)
    teacher, start = dl.load_agent(a.game), load_agent_or_file(ROOT / start_name if a.start_commit else start_name)
    rd = run_dir(a)
    rd.mkdir(parents=True, exist_ok=True)
    if a.action == "ship":
        out = dl.rl.distill_and_ship(teacher, a.game, cfg, teacher_name=a.game, run_dir=rd, keep=[cfg.stages[-1]],
                                     export=ROOT / "deltalearn" / "agents", progress=False, start=start,
                                     start_name=start_name)
        print(json.dumps(out, indent=1))
        return 0
    snaps, hist = dl.rl.prune_and_distill(teacher, a.game, cfg, run_dir=rd, progress=False, student=start)
    if a.action == "distill":
        print(json.dumps(hist, indent=1))
        return 0
    s = a.stage if a.stage is not None else cfg.stages[-1]
    seed = 2000 if a.action == "tune" else 1000
    res = paired(fp16_rounded(snaps[s]), a, seed, a.eval_episodes)  # the weights as they would ship
    res.update(stage=s, config=cfg.to_dict(), start=start_name)
    (rd / f"{a.action}-{s:g}.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if not k.endswith("_scores")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
