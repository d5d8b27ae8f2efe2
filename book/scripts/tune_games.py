"""Tune every committed (game, scope) again, one after another: the runs behind ``deltalearn/data/tuned/``.

Run from the repository root:

    python book/scripts/tune_games.py                      # every committed run, in the order below
    python book/scripts/tune_games.py --only Breakout-both # one run
    python book/scripts/tune_games.py --dry-run            # print the commands only
    python book/scripts/tune_games.py --confirm            # the fresh-seed confirmations (resumable)

Each run is one ``deltalearn tune --game G --scope S`` with the game's defaults
(``dl.study.GAME_DEFAULTS``), one torch thread, writing ``deltalearn/data/tuned/<game>-<scope>.json``.
A committed record also stores its own full command (every option spelled out): to reproduce one file
exactly, even after a default has changed, run that command (``dl.study.load_tuned().command``).

``--confirm`` runs instead the pre-declared confirmation of every committed Atari record on fresh seeds
(``deltalearn tune --game G --scope S --confirm``: seeds 5000-5059, 60 uncapped episodes, the tuned setting
and the dense agent both played), in :data:`CONFIRM_ORDER`. It is resumable: a record whose
``deltalearn/data/tuned/confirm/<game>-<scope>.json`` exists is skipped, and each file is written as soon
as its run finishes.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

RUNS: tuple[tuple[str, str], ...] = (
    ("CartPole-v1", "both"),
    ("Robotank", "delta"), ("Robotank", "both"),
    ("BattleZone", "delta"), ("BattleZone", "both"),
    ("Freeway", "both"), ("Enduro", "both"), ("SpaceInvaders", "both"), ("Breakout", "both"),
)
"""The (game, scope) runs, in the order they were made (Breakout last: its sparsest agent was still
being distilled)."""

CONFIRM_ORDER: tuple[tuple[str, str], ...] = (
    ("Robotank", "delta"), ("SpaceInvaders", "both"), ("Robotank", "both"), ("BattleZone", "both"),
    ("Enduro", "both"), ("Breakout", "both"), ("BattleZone", "delta"), ("Freeway", "both"),
)
"""Every committed Atari record, in the order the confirmations run (the records nearest the rule's
edge first; Freeway, degenerate, last). A game's second scope takes the dense play of its first
(``confirm_tuned(share_dense=True)``)."""


def _confirm(only: list[str] | None, dry_run: bool) -> int:
    """The fresh-seed confirmations, one subprocess each; a record already confirmed is skipped."""
    import deltalearn as dl

    folder = dl.study.book_data("tuned")
    for game, scope in CONFIRM_ORDER:
        key = f"{game}-{scope}"
        if only and key not in only:
            continue
        if (folder / "confirm" / f"{key}.json").exists():
            print(f"{key}: confirmed already, skipped", flush=True)
            continue
        cmd = [sys.executable, "-m", "deltalearn.cli", "tune", "--game", game, "--scope", scope, "--confirm",
               "--threads", "1"]
        print(shlex.join(cmd), flush=True)
        if not dry_run:
            subprocess.run(cmd, check=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", default=None, metavar="GAME-SCOPE",
                   help="only these runs, e.g. Breakout-both Robotank-delta")
    p.add_argument("--committed-commands", action="store_true",
                   help="run each committed record's own command instead of today's defaults")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--confirm", action="store_true",
                   help="confirm the committed Atari records on fresh seeds instead (skips those already confirmed)")
    a = p.parse_args(argv)
    known = {f"{g}-{s}" for g, s in RUNS}
    if a.confirm:
        return _confirm(a.only, a.dry_run)
    bad = sorted(set(a.only or ()) - known)
    if bad:
        p.error(f"unknown run(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
    stored = {}
    if a.committed_commands:
        import deltalearn as dl

        df = dl.study.load_tuned()
        stored = {f"{g}-{s}": c for g, s, c in zip(df.game, df.scope, df.command)}
    for game, scope in RUNS:
        key = f"{game}-{scope}"
        if a.only and key not in a.only:
            continue
        cmd = shlex.split(stored[key]) if key in stored else ["deltalearn", "tune", "--game", game, "--scope", scope]
        cmd = [sys.executable, "-m", "deltalearn.cli", *cmd[1:], "--threads", "1"]
        print(shlex.join(cmd), flush=True)
        if not a.dry_run:
            subprocess.run(cmd, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
