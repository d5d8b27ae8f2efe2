"""Every bad input gives a clear error that names the bad value."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

import deltalearn as dl
from deltalearn import cli


# --- thresholds -----------------------------------------------------------------------

@pytest.mark.parametrize("bad, shown", [(-1, "-1"), (-0.5, "-0.5"), (float("nan"), "nan"), (float("inf"), "inf"),
                                        (float("-inf"), "-inf"), ("abc", "abc"), (None, "None")])
def test_bad_threshold(bad, shown):
    with pytest.raises(ValueError, match="threshold") as e:
        dl.core.check_threshold(bad)
    assert shown in str(e.value)
    net = dl.mlp_qnet(4, 2, hidden=(8,))
    with pytest.raises(ValueError, match="threshold") as e:
        dl.DeltaNetwork(net, bad)
    assert shown in str(e.value)


def test_bad_threshold_in_a_per_layer_list():
    net = dl.mlp_qnet(4, 2, hidden=(8,))
    with pytest.raises(ValueError, match="nan"):
        dl.DeltaNetwork(net, [0.1, float("nan")])
    with pytest.raises(ValueError, match="3 thresholds for 2 weight layers"):
        dl.DeltaNetwork(net, [0.1, 0.1, 0.1])
    assert dl.core.check_threshold(0) == 0.0 and dl.core.check_threshold("0.25") == 0.25


# --- sparsity --------------------------------------------------------------------------

@pytest.mark.parametrize("bad, shown", [(1.0, "1.0"), (1.5, "1.5"), (-0.1, "-0.1"), (float("nan"), "nan"),
                                        (float("inf"), "inf"), ("lots", "lots")])
def test_bad_sparsity(bad, shown):
    net = dl.mlp_qnet(4, 2, hidden=(8,))
    with pytest.raises(ValueError, match="sparsity") as e:
        dl.prune_network(net, bad)
    assert shown in str(e.value)
    assert not dl.core.is_pruned(net)
    with pytest.raises(ValueError, match="sparsity"):
        dl.core.check_sparsity(bad)
    with pytest.raises(ValueError, match="sparsity") as e:
        dl.Variant(sparsity=bad)
    assert shown in str(e.value)
    with pytest.raises(ValueError, match="sparsity"):
        dl.evaluate(net, "CartPole-v1", episodes=1, sparsity=bad)


def test_bad_scope():
    with pytest.raises(ValueError, match="'everything'"):
        dl.prune_network(dl.mlp_qnet(4, 2), 0.5, scope="everything")


# --- environments and games ------------------------------------------------------------

def test_unknown_env_and_game():
    with pytest.raises(ValueError, match="'Tetris'"):
        dl.make_env("Tetris")
    with pytest.raises(ValueError, match="'Tetris'"):
        dl.rl.make_vector_env("Tetris", 2)
    with pytest.raises(ValueError, match="'CartPole-v1'"):
        dl.rl.game_info("CartPole-v1")  # not an Atari game
    with pytest.raises(ValueError, match="'pong'"):
        dl.rl.game_info("pong")  # names are case-sensitive
    with pytest.raises(ValueError, match="'Tetris'"):
        dl.DQNConfig(env="Tetris").validate()
    with pytest.raises(ValueError, match="'Tetris'"):
        dl.evaluate(dl.mlp_qnet(4, 2), "Tetris", episodes=1)
    assert dl.rl.game_info("Breakout").human == 30.5


def test_bad_config_values():
    with pytest.raises(ValueError, match="gamma"):
        dl.DQNConfig(gamma=1.5).validate()
    with pytest.raises(ValueError, match="sparsity"):
        dl.DQNConfig(sparsity=2).validate()
    with pytest.raises(ValueError, match="'tpu'"):
        dl.DQNConfig(device="tpu").validate()
    with pytest.raises(ValueError, match="episodes"):
        dl.evaluate(dl.mlp_qnet(4, 2), "CartPole-v1", episodes=0)
    with pytest.raises(ValueError, match="epsilon"):
        dl.evaluate(dl.mlp_qnet(4, 2), "CartPole-v1", episodes=1, epsilon=1.5)


# --- observations ----------------------------------------------------------------------

def test_observation_of_the_wrong_shape():
    mlp = dl.mlp_qnet(4, 2)
    with pytest.raises(ValueError, match=r"\(3, 5\)") as e:
        mlp(torch.zeros(3, 5))
    assert "(batch, 4)" in str(e.value)
    with pytest.raises(ValueError, match=r"\(4,\)"):
        mlp(torch.zeros(4))  # missing batch dimension
    dqn = dl.nature_dqn(4)
    with pytest.raises(ValueError, match=r"\(1, 4, 84, 83\)") as e:
        dqn(torch.zeros(1, 4, 84, 83, dtype=torch.uint8))
    assert "(batch, 4, 84, 84)" in str(e.value)
    with pytest.raises(ValueError, match=r"\(2, 3, 84, 84\)"):
        dl.DeltaNetwork(dqn, 0.0)(torch.zeros(2, 3, 84, 84))
    with pytest.raises(ValueError, match=r"\(1, 5\)"):
        dl.core.forward_with_counts(mlp, torch.zeros(1, 5))


def test_bad_network_sizes():
    with pytest.raises(ValueError, match="n_actions must be >= 1, got 0"):
        dl.nature_dqn(0)
    with pytest.raises(ValueError, match="hidden=\\(8, 0\\)"):
        dl.mlp_qnet(4, 2, hidden=(8, 0))
    with pytest.raises(ValueError, match="'resnet'"):
        dl.core.build_network(dl.core.NetworkSpec("resnet", 4))


# --- checkpoints -----------------------------------------------------------------------

@pytest.fixture
def mlp_file(tmp_path):
    torch.manual_seed(30)
    net = dl.mlp_qnet(4, 2, hidden=(16, 16))
    path = dl.store.export_agent(net, "tiny", {"note": "test"}, directory=tmp_path)
    return net, path


def test_checkpoint_for_another_architecture(mlp_file):
    net, path = mlp_file
    with pytest.raises(dl.store.CheckpointError, match="nature-dqn") as e:
        dl.store.load_network_file(path, expected=dl.core.NetworkSpec("nature-dqn", 4))
    assert "mlp" in str(e.value)
    with pytest.raises(dl.store.CheckpointError, match="hidden=\\(64, 64\\)"):
        dl.store.load_network_file(path, expected=dl.core.NetworkSpec("mlp", 2, obs_dim=4, hidden=(64, 64)))
    # the right spec loads, with the same Q-values (fp16 weights)
    loaded = dl.store.load_network_file(path, expected=net.spec)
    x = torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), atol=1e-2, rtol=1e-2)


def test_weights_that_do_not_fit_the_spec_are_a_checkpoint_error(tmp_path):
    net = dl.mlp_qnet(4, 2, hidden=(16,))
    path = tmp_path / "lying.pt"
    spec = dl.core.NetworkSpec("mlp", 2, obs_dim=4, hidden=(32,)).to_dict()
    dl.store.save_checkpoint(path, {"spec": spec, "model": net.state_dict()})
    with pytest.raises(dl.store.CheckpointError, match="do not fit"):
        dl.store.load_network_file(path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "not-a-checkpoint", "missing"])
def test_damaged_checkpoint_files(mlp_file, damage):
    net, path = mlp_file
    original = path.read_bytes()
    bad = path.with_name(f"{damage}.pt")
    if damage == "truncated":
        bad.write_bytes(original[: len(original) // 2])
    elif damage == "garbage":
        bad.write_bytes(bytes(range(256)) * 40)
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "not-a-checkpoint":
        torch.save({"weights": torch.zeros(3)}, bad)
    with pytest.raises(dl.store.CheckpointError) as e:
        dl.store.load_network_file(bad)
    assert str(bad) in str(e.value)
    # the original file is untouched and still loads
    assert path.read_bytes() == original
    dl.store.load_network_file(path)


def test_agent_file_whose_bytes_changed_fails_the_hash_check(tmp_path):
    agents = tmp_path / "agents"
    shutil.copytree(dl.store.AGENT_DIR, agents)
    assert dl.load_agent("CartPole-v1", directory=agents) is not None  # the copy is intact
    f = agents / dl.agent_record("CartPole-v1", agents)["file"]
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(dl.store.CheckpointError, match="sha256"):
        dl.load_agent("CartPole-v1", directory=agents)
    f.unlink()
    with pytest.raises(dl.store.CheckpointError, match="missing"):
        dl.load_agent("CartPole-v1", directory=agents)
    with pytest.raises(ValueError, match="'Tetris'"):
        dl.load_agent("Tetris", directory=agents)


def test_unknown_trajectory():
    with pytest.raises(ValueError, match="'Tetris'"):
        dl.load_trajectory("Tetris")


# --- command line -----------------------------------------------------------------------

def run_cli(capsys, *argv):
    """Run the CLI in-process; return (exit code, stderr)."""
    try:
        code = cli.main(list(argv))
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, shown", [
    (["evaluate", "--game", "CartPole-v1", "--threshold", "-1"], "-1"),
    (["evaluate", "--game", "CartPole-v1", "--threshold", "nan"], "nan"),
    (["evaluate", "--game", "CartPole-v1", "--threshold", "inf"], "inf"),
    (["evaluate", "--game", "CartPole-v1", "--threshold", "0.1,-2"], "-2"),
    (["evaluate", "--game", "CartPole-v1", "--sparsity", "1.5"], "1.5"),
    (["evaluate", "--game", "CartPole-v1", "--sparsity", "1"], "'1'"),
    (["evaluate", "--game", "Tetris"], "'Tetris'"),
    (["count", "--sparsity", "-0.2"], "-0.2"),
    (["count", "--model", "resnet"], "'resnet'"),
    (["train", "--env", "Tetris"], "'Tetris'"),
    (["train", "--env", "CartPole-v1", "--set", "nonsense=1"], "'nonsense=1'"),
    (["evaluate", "--game", "CartPole-v1", "--threads", "-3"], "-3"),
    (["reproduce", "--game", "CartPole-v1", "--threads", "-3"], "-3"),
    (["reproduce", "--game", "CartPole-v1"], "'CartPole-v1'"),  # no table setting: name one
])
def test_cli_bad_input_exits_nonzero_naming_the_value(capsys, argv, shown):
    code, err = run_cli(capsys, *argv)
    if code is not None and not isinstance(code, int):  # SystemExit("message")
        err, code = str(code), 1
    assert code != 0
    assert shown in err, err


def test_cli_bad_checkpoint_is_one_clear_line(capsys, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    code, err = run_cli(capsys, "evaluate", "--game", "CartPole-v1", "--checkpoint", str(bad), "--episodes", "1")
    assert code == 2
    assert str(bad) in err and "Traceback" not in err


def test_cli_negative_threshold_via_the_real_entry_point():
    p = subprocess.run([sys.executable, "-m", "deltalearn.cli", "evaluate", "--game", "CartPole-v1",
                        "--threshold", "-1"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode != 0
    assert "threshold" in p.stderr and "-1" in p.stderr
    assert "Traceback" not in p.stderr


# --- a network made for another game ----------------------------------------------------

@pytest.fixture
def no_frames(monkeypatch):
    """Fail the test if evaluation or training builds an environment to play in: the action
    check must come first. Reading a game's action count (its own env, no frame) stays allowed."""
    def refuse(*a, **k):
        raise AssertionError("an environment was built to play before the action check")

    monkeypatch.setattr(dl.rl.evaluation, "make_env", refuse)
    monkeypatch.setattr(dl.rl.dqn, "make_vector_env", refuse)


@pytest.mark.parametrize("game, n", [("CartPole-v1", 2), ("Breakout", 4), ("SpaceInvaders", 6)])
def test_action_count_of_a_game(game, n):
    assert dl.rl.action_count(game) == n
    with pytest.raises(ValueError, match="'Tetris'"):
        dl.rl.action_count("Tetris")


@pytest.mark.parametrize("n, game, want", [(6, "Breakout", 4), (4, "SpaceInvaders", 6), (4, "CartPole-v1", 2)])
def test_evaluate_refuses_a_network_for_another_game(no_frames, n, game, want):
    net = dl.nature_dqn(n)
    with pytest.raises(ValueError) as e:
        dl.evaluate(net, game, episodes=1)
    msg = str(e.value)
    assert f"has {n} actions" in msg and f"{game} has {want}" in msg
    with pytest.raises(ValueError, match=f"has {n} actions"):
        dl.rl.check_actions(net, game)
    dl.rl.check_actions(dl.nature_dqn(want), game)  # the right size passes


def test_evaluate_refuses_a_plain_module_for_another_game_before_playing(no_frames):
    from torch import nn

    class Q(nn.Module):  # no spec, no n_actions: its output width is found by one forward
        def __init__(self) -> None:
            super().__init__()
            self.network = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

        def forward(self, x):
            return self.network(x)

    with pytest.raises(ValueError, match="has 3 actions .* CartPole-v1 has 2"):
        dl.evaluate(Q(), "CartPole-v1", episodes=1)
    with pytest.raises(ValueError, match=r"cannot be run on an observation of Breakout \(shape \(1, 4, 84, 84\)\)"):
        dl.evaluate(Q(), "Breakout", episodes=1)


def test_action_count_of_a_plain_module():
    from torch import nn

    assert dl.rl.network_actions(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))) == 3
    with pytest.raises(ValueError, match="has 3 actions"):
        dl.rl.check_actions(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), "CartPole-v1")


def test_reproduce_table_and_sweep_refuse_a_network_for_another_game(no_frames, monkeypatch):
    breakout, invaders = dl.nature_dqn(4), dl.nature_dqn(6)
    with pytest.raises(ValueError, match="has 6 actions .* Breakout has 4"):
        dl.study.reproduce_table(invaders, "Breakout", 0.5, 0.001, episodes=1, progress=False)
    with pytest.raises(ValueError, match="the pruned network has 6 actions"):
        dl.study.reproduce_table(breakout, "Breakout", 0.5, 0.001, episodes=1, progress=False, pruned_net=invaders)
    monkeypatch.setattr(dl.study.reproduce, "replay", lambda *a, **k: pytest.fail("replayed before the check"))
    obs = torch.zeros(2, 4, 84, 84, dtype=torch.uint8).numpy()
    with pytest.raises(ValueError, match="has 4 actions .* SpaceInvaders has 6"):
        dl.study.reproduce_sweep(breakout, "SpaceInvaders", obs, [0.0], [None], episodes=1, progress=False)
    with pytest.raises(ValueError, match="has 6 actions .* Breakout has 4"):
        dl.study.reproduce_sweep(breakout, "Breakout", obs, [0.5], [None], episodes=1, progress=False,
                           pruned_nets={0.5: invaders})


def test_distill_and_train_refuse_a_network_for_another_game(no_frames, tmp_path):
    with pytest.raises(ValueError, match="the teacher has 6 actions .* Breakout has 4"):
        dl.rl.prune_and_distill(dl.nature_dqn(6), "Breakout", run_dir=tmp_path / "d", progress=False)
    assert not (tmp_path / "d").exists()
    with pytest.raises(ValueError, match="the init network has 4 actions .* SpaceInvaders has 6"):
        dl.train(dl.DQNConfig.atari("SpaceInvaders"), tmp_path / "t", init=dl.nature_dqn(4), progress=False)
    assert not (tmp_path / "t").exists()


def test_unknown_agent_name_is_one_short_line_pointing_to_the_listing():
    with pytest.raises(ValueError) as e:
        dl.store.load_agent_or_file("breakout")
    msg = str(e.value)
    assert "'breakout'" in msg and "did you mean 'Breakout'" in msg and "deltalearn agents" in msg
    assert "\n" not in msg and len(msg) < 200 and "SpaceInvaders" not in msg


def test_agent_or_file_loads_either(tmp_path):
    by_name = dl.store.load_agent_or_file("CartPole-v1")
    by_path = dl.store.load_agent_or_file(dl.store.AGENT_DIR / "CartPole-v1.pt")
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.equal(by_name(x), by_path(x))
    with pytest.raises(dl.store.CheckpointError, match="nothing.pt"):
        dl.store.load_agent_or_file(tmp_path / "nothing.pt")
