"""The ``deltalearn`` command line, run as a real subprocess."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import deltalearn as dl
from deltalearn import cli

# one torch thread in the child too: faster on a busy 2-core machine
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def deltalearn(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "deltalearn.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def test_count_json_for_nature_dqn():
    p = deltalearn("count", "--model", "nature-dqn", "--actions", "4", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["total_dense"] == 9_345_024
    assert d["total_significant"] == 9_345_024  # dense, unpruned: every product counts
    assert d["reduction"] == pytest.approx(1.0)
    assert [l["name"] for l in d["layers"]] == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    assert [l["dense"] for l in d["layers"]] == [3_276_800, 2_654_208, 1_806_336, 1_605_632, 2048]
    assert all(set(l) == {"name", "dense", "significant"} for l in d["layers"])
    assert all(l["significant"] == l["dense"] for l in d["layers"])


def test_count_json_with_sparsity_in_process(capsys):
    assert cli.main(["count", "--model", "nature-dqn", "--actions", "6", "--sparsity", "0.75", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["total_dense"] == 9_345_024 + 2 * 512
    for l in d["layers"]:
        # every input non-zero: a quarter of the weights remain, so about a quarter of the products
        assert l["significant"] == pytest.approx(0.25 * l["dense"], rel=0.01)
    assert d["reduction"] == pytest.approx(4.0, rel=0.01)


def test_evaluate_json_on_cartpole():
    p = deltalearn("evaluate", "--game", "CartPole-v1", "--episodes", "2", "--seed", "0", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    for key in ("scores", "mean_score", "std_score", "layers", "total_dense", "total_significant", "reduction",
                "steps", "variant", "episodes"):
        assert key in d, key
    assert len(d["scores"]) == 2 and d["episodes"] == 2
    assert d["mean_score"] == pytest.approx(sum(d["scores"]) / 2)
    assert d["steps"] == sum(d["lengths"]) == sum(d["scores"])  # CartPole: +1 per step
    assert d["variant"] == "dense"
    assert d["total_dense"] == d["steps"] * sum(dl.core.dense_counts(dl.load_agent("CartPole-v1")))
    assert 0 < d["total_significant"] <= d["total_dense"]
    assert d["reduction"] == pytest.approx(d["total_dense"] / d["total_significant"])
    # the same command in-process gives the same numbers (seeded)
    same = dl.evaluate(dl.load_agent("CartPole-v1"), "CartPole-v1", episodes=2, seed=0).to_dict()
    assert same["scores"] == d["scores"] and same["total_significant"] == d["total_significant"]


def test_evaluate_delta_variant_text_output(capsys):
    assert cli.main(["evaluate", "--game", "CartPole-v1", "--episodes", "1", "--threshold", "0.01",
                        "--sparsity", "0.5", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "pruned+delta" in out and "total" in out and "fc1" in out


HELP_OPTIONS = {"train": ["--env", "--steps", "--run-dir", "--set"],
                "evaluate": ["--env", "--episodes", "--threshold", "--sparsity", "--json"],
                "distill": ["--env", "--stages", "--keep", "--export"],
                "reproduce": ["--env", "--parts", "--workers", "--engine", "--scheduler", "--max-steps"],
                "count": ["--model", "--actions", "--sparsity", "--json"]}


@pytest.mark.parametrize("command", sorted(HELP_OPTIONS))
def test_help(capsys, command):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: deltalearn {command}" in out
    for opt in HELP_OPTIONS[command]:
        assert opt in out


@pytest.mark.parametrize("command", ["train", "distill", "evaluate", "reproduce"])
def test_env_is_the_one_spelling_and_game_still_works(command):
    parser = cli.build_parser()
    for option in ("--env", "--game"):  # --game: the README's older commands
        assert parser.parse_args([command, option, "Breakout"]).env in ("Breakout", ["Breakout"])
    sub = parser._subparsers._group_actions[0].choices[command]
    assert sub.format_usage().count("--env") == 1 and "--game" not in sub.format_usage()


def test_help_through_the_console_script():
    exe = shutil.which("deltalearn")
    cmd = [exe] if exe else [sys.executable, "-m", "deltalearn.cli"]
    sub = subprocess.run(cmd + ["evaluate", "--help"], capture_output=True, text=True, timeout=120, env=ENV)
    assert sub.returncode == 0 and "usage: deltalearn evaluate" in sub.stdout


def test_train_export_then_prune_while_fine_tuning(tmp_path, capsys):
    """The exported record reproduces exactly from the shipped (fp16) file, and --init with a
    sparsity fine-tunes that agent into a pruned one in its own run folder."""
    agents = tmp_path / "agents"
    common = ["--env", "CartPole-v1", "--seed", "1", "--eval-episodes", "3", "--no-progress", "--export", str(agents)]
    small = ["total_steps=1500", "learning_starts=300", "eval_every=500", "eval_episodes=2", "checkpoint_every=500"]
    assert cli.main(["train", *common, "--run-dir", str(tmp_path / "dense"), "--set", *small]) == 0
    rec = dl.agent_record("CartPole-v1", agents)
    assert rec["best_net_step"] in rec["curve"]["eval_step"]  # the shipped net is an evaluated one
    again = dl.evaluate(dl.load_agent("CartPole-v1", agents), "CartPole-v1", episodes=3, seed=0)
    assert again.scores == rec["evaluation"]["scores"]

    assert cli.main(["train", *common, "--init", str(agents / "CartPole-v1.pt"), "--export-name", "pruned",
                 "--run-dir", str(tmp_path / "pruned"), "--set", *small, "sparsity=0.5", "prune_end=1000"]) == 0
    pruned = dl.load_agent("pruned", agents)
    for name, frac in dl.sparsity_report(pruned).as_dict().items():
        assert abs(frac - 0.5) < 0.01, (name, frac)
    assert dl.agent_record("pruned", agents)["init"].endswith("CartPole-v1.pt")


def test_distill_exports_pruned_stages_whose_records_reproduce(tmp_path, capsys, monkeypatch):
    agents = tmp_path / "agents"
    shutil.copytree(dl.store.AGENT_DIR, agents)
    shipped = dl.agent_names(agents)
    args = ["distill", "--game", "CartPole-v1", "--stages", "0.5", "0.8", "--keep", "0.8", "--eval-episodes", "2",
            "--run-dir", str(tmp_path / "run"), "--export", str(agents), "--no-progress",
            "--set", "rounds=1", "updates=60", "episodes=2", "max_steps=200", "threads=1"]
    monkeypatch.setattr(dl.store.agents, "AGENT_DIR", agents)  # the teacher is read from the copy
    assert cli.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert [p["sparsity"] for p in out["pruned"]] == [0.8]
    name = dl.store.pruned_agent_name("CartPole-v1", 0.8)
    rec = dl.agent_record(name, agents)
    net = dl.load_agent(name, agents)
    assert dl.sparsity_report(net).zeros == [round(0.8 * n) for n in dl.sparsity_report(net).sizes]
    assert dl.evaluate(net, "CartPole-v1", episodes=2, seed=0).scores == rec["evaluation"]["scores"]
    assert rec["teacher_sha256"] == dl.agent_record("CartPole-v1")["sha256"]
    assert dl.agent_names(agents) == sorted({*shipped, name})  # added, nothing else touched
    # the pruned agent's record reproduces from the command line too
    capsys.readouterr()
    assert cli.main(["evaluate", "--game", "CartPole-v1", "--agent", name, "--episodes", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["scores"] == rec["evaluation"]["scores"]


def test_evaluate_refuses_an_agent_of_another_game(capsys):
    assert cli.main(["evaluate", "--game", "Breakout", "--agent", "CartPole-v1", "--episodes", "1"]) != 0
    err = capsys.readouterr().err
    assert "CartPole-v1" in err and "Breakout" in err
    assert cli.main(["evaluate", "--game", "CartPole-v1", "--agent", "Nope", "--episodes", "1"]) != 0
    assert "Nope" in capsys.readouterr().err


def test_reproduce_end_to_end_with_a_distilled_agent(tmp_path, monkeypatch, capsys):
    agents, traj, out = tmp_path / "agents", tmp_path / "traj", tmp_path / "out"
    shutil.copytree(dl.store.AGENT_DIR, agents)
    monkeypatch.setattr(dl.store.agents, "AGENT_DIR", agents)
    assert cli.main(["distill", "--game", "CartPole-v1", "--stages", "0.5", "--eval-episodes", "1", "--no-progress",
                     "--run-dir", str(tmp_path / "run"), "--export", str(agents),
                     "--set", "rounds=1", "updates=30", "episodes=1", "max_steps=100", "threads=1"]) == 0
    args = ["reproduce", "--game", "CartPole-v1", "--sparsity", "0.5", "--threshold", "0.01", "--episodes", "2",
            "--sweep-sparsities", "0", "0.5", "--sweep-thresholds", "none", "0.01", "--trajectory-steps", "80",
            "--trajectory-dir", str(traj), "--out", str(out), "--no-progress"]
    assert cli.main(args) == 0
    table = json.loads((out / "CartPole-v1_table.json").read_text())
    assert table["pruned_from"] == "CartPole-v1-pruned-0.5" and "pruned one-shot" in table["variants"]
    sweep = json.loads((out / "CartPole-v1_sweep.json").read_text())
    assert [(r["sparsity"], r["threshold"], r["fine_tuned"]) for r in sweep] == [
        (0.0, None, False), (0.0, 0.01, False), (0.5, None, True), (0.5, 0.01, True)]
    rec = dl.load_trajectory("CartPole-v1", traj)
    assert str(rec["agent_sha256"]) == dl.agent_record("CartPole-v1")["sha256"] and len(rec["observations"]) <= 80
    # the recorded episode is reused while the agent is unchanged
    stamp = (traj / "CartPole-v1.npz").stat().st_mtime_ns
    assert cli.main(args) == 0
    assert (traj / "CartPole-v1.npz").stat().st_mtime_ns == stamp
    assert json.loads((out / "CartPole-v1_sweep.json").read_text()) == sweep
    # one part at a time: a sweep-only run leaves the table and the summary alone
    stamps = {f: (out / f).stat().st_mtime_ns for f in ("CartPole-v1_table.json", "summary.json")}
    (out / "CartPole-v1_sweep.json").unlink()
    assert cli.main([*args, "--parts", "sweep"]) == 0
    assert json.loads((out / "CartPole-v1_sweep.json").read_text()) == sweep
    assert {f: (out / f).stat().st_mtime_ns for f in stamps} == stamps


def test_sigterm_checkpoints_a_training_run_and_says_how_to_resume(tmp_path):
    import signal
    import time

    run = tmp_path / "run"
    # no regular checkpoint in this run: any checkpoint on disk was written because of the signal
    p = subprocess.Popen([sys.executable, "-m", "deltalearn.cli", "train", "--game", "CartPole-v1", "--run-dir",
                          str(run), "--no-progress", "--set", "total_steps=10000000", "checkpoint_every=1000000000",
                          "eval_every=1000", "eval_episodes=1", "threads=1"],
                         stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    while not (run / "best.pt").exists() and time.time() < deadline:  # the first evaluation, at step 1000
        time.sleep(0.2)
    assert (run / "best.pt").exists(), "no evaluation within two minutes"
    assert not (run / "checkpoint.pt").exists()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "the same command resumes" in err and "Traceback" not in err
    assert json.loads((run / "history.json").read_text())["step"] >= 1000
    assert dl.store.load_checkpoint(run / "checkpoint.pt")["step"] >= 1000


# --- bad input that used to get through ------------------------------------------------

@pytest.mark.parametrize("game, checkpoint, n, want", [("Breakout", "SpaceInvaders.pt", 6, 4),
                                                       ("SpaceInvaders", "Breakout.pt", 4, 6)])
def test_evaluate_a_network_for_another_game_is_one_line_and_no_play(game, checkpoint, n, want):
    path = str(dl.store.AGENT_DIR / checkpoint)
    p = deltalearn("evaluate", "--game", game, "--checkpoint", path, "--episodes", "1", "--no-progress")
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().count("\n") == 0, p.stderr  # one line: no traceback, no emulator banner
    assert f"has {n} actions" in p.stderr and f"{game} has {want}" in p.stderr and path in p.stderr
    assert p.stdout == ""


@pytest.fixture
def no_play(monkeypatch):
    """Fail if anything builds an environment to play in (the action count's own env is allowed)."""
    def refuse(*a, **k):
        raise AssertionError("an environment was built to play before the action check")

    monkeypatch.setattr(dl.rl.evaluation, "make_env", refuse)
    monkeypatch.setattr(dl.rl.dqn, "make_vector_env", refuse)


@pytest.mark.parametrize("argv", [
    ["evaluate", "--game", "Breakout", "--agent", str(dl.store.AGENT_DIR / "SpaceInvaders.pt")],
    ["distill", "--game", "Breakout", "--agent", str(dl.store.AGENT_DIR / "SpaceInvaders.pt")],
    ["train", "--env", "Breakout", "--init", str(dl.store.AGENT_DIR / "SpaceInvaders.pt")],
    ["reproduce", "--game", "Breakout", "--pruned-checkpoint", str(dl.store.AGENT_DIR / "SpaceInvaders-pruned-0.74.pt")],
])
def test_every_command_refuses_a_network_for_another_game(no_play, capsys, tmp_path, argv):
    code = cli.main([*argv, *(["--out", str(tmp_path)] if argv[0] == "reproduce" else []),
                     *(["--run-dir", str(tmp_path / "run")] if argv[0] in ("train", "distill") else [])])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "has 6 actions" in err and "Breakout has 4" in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_agent_of_another_game_by_name(capsys):
    assert cli.main(["train", "--env", "Breakout", "--init", "SpaceInvaders"]) == 2
    err = capsys.readouterr().err
    assert "SpaceInvaders" in err and "Breakout" in err


def test_agent_by_path_plays_like_the_shipped_name(capsys):
    path = str(dl.store.AGENT_DIR / "CartPole-v1.pt")
    runs = {}
    for agent in ("CartPole-v1", path):
        assert cli.main(["evaluate", "--game", "CartPole-v1", "--agent", agent, "--episodes", "2", "--json",
                         "--threads", "1"]) == 0
        runs[agent] = json.loads(capsys.readouterr().out)["scores"]
    assert runs[path] == runs["CartPole-v1"]


def test_unknown_agent_is_a_short_line_pointing_to_the_listing(capsys):
    assert cli.main(["evaluate", "--game", "Breakout", "--agent", "Breakot"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 200, err
    assert "'Breakot'" in err and "deltalearn agents" in err and "did you mean 'Breakout'" in err
    assert "SpaceInvaders" not in err  # the names are no longer dumped


def test_agents_lists_every_shipped_agent():
    p = deltalearn("agents")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split()[:3] == ["name", "game", "actions"] and "sparsity" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == dl.agent_names()
    row = {line.split()[0]: line.split() for line in lines[1:]}
    assert row["Breakout"][1:4] == ["Breakout", "4", f"{dl.agent_record('Breakout')['evaluation']['mean_score']:.1f}"]
    assert row["Breakout"][-1] == "0" and row["Breakout-pruned-0.79"][-1] == "0.79"
    assert len({len(line) for line in lines if not line.startswith("CartPole")}) <= 2  # aligned columns
    p = deltalearn("agents", "--json")
    rows = json.loads(p.stdout)
    assert [r["name"] for r in rows] == dl.agent_names()
    assert {r["name"]: r["sparsity"] for r in rows}["SpaceInvaders-pruned-0.74"] == 0.74


def test_agents_shows_a_heldout_column_once_a_record_has_one(tmp_path, monkeypatch, capsys):
    man = json.loads((dl.store.AGENT_DIR / "manifest.json").read_text())
    man["Breakout"]["heldout_evaluation"] = {"episodes": 30, "seed": 1000, "mean_score": 37.25}
    man["Pong"].pop("heldout_evaluation", None)  # a record without one shows "-"
    (tmp_path / "manifest.json").write_text(json.dumps(man))
    monkeypatch.setattr(dl.store.agents, "AGENT_DIR", tmp_path)
    assert cli.main(["agents"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "held-out (30 ep)" in lines[0]
    row = {line.split()[0]: line.split() for line in lines[1:]}
    assert "37.2" in row["Breakout"] or "37.3" in row["Breakout"]
    assert row["Pong"][-2] == "-"
    assert cli.main(["agents", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["Breakout"]["heldout_score"] == 37.25 and rows["Pong"]["heldout_score"] is None


# --- interrupts say what was cut short and what was kept -----------------------------------

def test_interrupted_evaluate_says_how_far_it_got(monkeypatch, capsys):
    import gymnasium as gym

    real = dl.rl.evaluation.make_env
    ended = []

    class CtrlCAfterThree(gym.Wrapper):
        """Ctrl-C at the first step after three episodes (of any slot) have ended."""

        def step(self, action):
            if len(ended) >= 3:
                raise KeyboardInterrupt
            out = self.env.step(action)
            if out[2] or out[3]:
                ended.append(1)
            return out

    monkeypatch.setattr(dl.rl.evaluation, "make_env", lambda *a, **k: CtrlCAfterThree(real(*a, **k)))
    code = cli.main(["evaluate", "--game", "CartPole-v1", "--episodes", "10", "--no-progress", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 130
    assert err == "deltalearn evaluate: interrupted after 3 of 10 episodes; nothing was written\n"


def test_interrupted_reproduce_names_what_it_wrote_and_the_partial_table(monkeypatch, capsys, tmp_path):
    calls = []
    real = dl.study.reproduce.evaluate

    def evaluate(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # dense and pruned are done, delta is cut short
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(dl.study.reproduce, "evaluate", evaluate)
    args = ["reproduce", "--game", "CartPole-v1", "--sparsity", "0.5", "--threshold", "0.01", "--episodes", "1",
            "--parts", "table", "--out", str(tmp_path), "--no-progress", "--threads", "1"]
    assert cli.main(args) == 130
    err = capsys.readouterr().err.splitlines()[-1]  # after the status lines of the finished variants
    partial = tmp_path / "CartPole-v1_table.partial.json"
    assert err == (f"deltalearn reproduce: interrupted; nothing new was written to {tmp_path}; finished table "
                   f"variants (dense, pruned) are kept in {partial}: the same command resumes them")
    monkeypatch.setattr(dl.study.reproduce, "evaluate", real)
    assert cli.main(args) == 0 and not partial.exists()
