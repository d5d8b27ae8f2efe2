"""A study's tasks in local processes or on a Dask cluster write exactly what a serial run writes."""
from __future__ import annotations

import math
import multiprocessing
import shutil
import time
from pathlib import Path

import pytest

import deltalearn as dl
from deltalearn import cli
from deltalearn.study import iter_tasks, map_tasks, reproduce_game, reproduce_games

# one game, table and sweep, in options the command line can say too: its sweep cells are the tasks
CARTPOLE = dict(sparsity=0.5, threshold=0.01, episodes=2, seed=3, sweep_sparsities=[0.0, 0.5, 0.7],
                sweep_thresholds=[None, 0.01], sweep_episodes=1, max_steps=100, progress=False)
CARTPOLE_ARGS = ["--sparsity", "0.5", "--threshold", "0.01", "--episodes", "2", "--seed", "3", "--sweep-sparsities",
                 "0", "0.5", "0.7", "--sweep-thresholds", "none", "0.01", "--sweep-episodes", "1", "--max-steps", "100",
                 "--no-progress"]
# two games, short episodes: the games are the tasks
TWO = dict(sparsity=0.79, threshold=0.01, episodes=1, seed=0, max_steps=30, sweep_sparsities=[0.0, 0.79],
           sweep_thresholds=[0.01], progress=False)


def files(out: Path) -> dict[str, str]:
    return {f.name: f.read_text() for f in sorted(out.iterdir()) if f.is_file()}


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory) -> Path:
    """The shipped episodes of CartPole and (its first 30 frames) Breakout, so the sweeps replay little."""
    d = tmp_path_factory.mktemp("traj")
    shutil.copy(dl.store.DATA_DIR / "CartPole-v1.npz", d)
    breakout = dict(dl.load_trajectory("Breakout"))
    breakout["observations"], breakout["actions"] = breakout["observations"][:30], breakout["actions"][:30]
    dl.store.save_trajectory(breakout, "Breakout", d)
    return d


@pytest.fixture(scope="module")
def serial_one(tmp_path_factory, trajectories) -> dict[str, str]:
    out = tmp_path_factory.mktemp("serial_one")
    got = reproduce_game("CartPole-v1", out, trajectory_dir=trajectories, **CARTPOLE)
    assert [p.name for p in got.written] == ["CartPole-v1_table.json", "CartPole-v1_sweep.json", "CartPole-v1_sweep.csv"]
    assert [(r["sparsity"], r["threshold"]) for r in got.sweep] == [(s, t) for s in (0.0, 0.5, 0.7) for t in (None, 0.01)]
    return files(out)


@pytest.fixture(scope="module")
def serial_two(tmp_path_factory, trajectories) -> dict[str, str]:
    out = tmp_path_factory.mktemp("serial_two")
    run = reproduce_games(["CartPole-v1", "Breakout"], out, trajectory_dir=trajectories, **TWO)
    assert [g.env for g in run.games] == ["CartPole-v1", "Breakout"] and run.summary[0]["game"] == "Breakout"
    assert run.games[1].table["pruned_from"] == "Breakout-pruned-0.79"  # dl.study.agent_at's distilled agent
    return files(out)


def test_map_tasks_keeps_task_order_and_checks_its_options():
    assert map_tasks(abs, [-3, 1, -2]) == [3, 1, 2]
    assert map_tasks(pow, [1, 2, 3], shared=2) == [2, 4, 8]  # fn(shared, task)
    for bad, shown in [(dict(workers=0), "0"), (dict(engine="ray"), "'ray'"), (dict(engine="dask"), "scheduler"),
                       (dict(workers=2, engine="serial"), "workers=2"),
                       (dict(workers=2, engine="processes", scheduler="tcp://x:1"), "'processes'")]:
        with pytest.raises(ValueError, match=shown):
            map_tasks(abs, [1], **bad)


def test_stopping_early_ends_the_worker_processes_at_once():
    # what Ctrl-C does too: the tasks still running (a minute each) are not waited for
    results = iter_tasks(time.sleep, [0, 60, 60, 60], workers=2)
    assert next(results) is None
    started = time.monotonic()
    results.close()
    assert time.monotonic() - started < 10 and multiprocessing.active_children() == []


def test_the_command_with_two_workers_writes_what_the_serial_run_writes(tmp_path, trajectories, serial_one, capsys):
    # one game: its sweep's cells run in two local processes, each sent the agent and the episode once
    args = ["reproduce", "--env", "CartPole-v1", *CARTPOLE_ARGS, "--trajectory-dir", str(trajectories),
            "--out", str(tmp_path), "--threads", "1", "--workers", "2"]
    assert cli.main(args) == 0
    got = files(tmp_path)
    assert {k: got[k] for k in serial_one} == serial_one and set(got) == {*serial_one, "summary.json"}
    assert capsys.readouterr().out.splitlines()[:2] == [f"CartPole-v1: wrote {tmp_path}/CartPole-v1_table.json",
                                                        f"CartPole-v1: wrote {tmp_path}/CartPole-v1_sweep.json, "
                                                        f"{tmp_path}/CartPole-v1_sweep.csv"]


def test_a_local_dask_cluster_writes_what_the_serial_run_writes(tmp_path, trajectories, serial_one, serial_two):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        # one game: its sweep's cells are the tasks; two games: the games are
        reproduce_game("CartPole-v1", tmp_path / "one", trajectory_dir=trajectories, engine="dask",
                       scheduler=c.scheduler_address, **CARTPOLE)
        reproduce_games(["CartPole-v1", "Breakout"], tmp_path / "two", trajectory_dir=trajectories,
                        scheduler=c.scheduler_address, **TWO)
        with pytest.raises(ValueError, match="math domain error"):  # a task's error reaches the caller
            map_tasks(math.sqrt, [4.0, -1.0], scheduler=c.scheduler_address)
    assert files(tmp_path / "one") == serial_one
    assert files(tmp_path / "two") == serial_two
