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
        dl.check_threshold(bad)
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
    assert dl.check_threshold(0) == 0.0 and dl.check_threshold("0.25") == 0.25


# --- sparsity --------------------------------------------------------------------------

@pytest.mark.parametrize("bad, shown", [(1.0, "1.0"), (1.5, "1.5"), (-0.1, "-0.1"), (float("nan"), "nan"),
                                        (float("inf"), "inf"), ("lots", "lots")])
def test_bad_sparsity(bad, shown):
    net = dl.mlp_qnet(4, 2, hidden=(8,))
    with pytest.raises(ValueError, match="sparsity") as e:
        dl.prune_network(net, bad)
    assert shown in str(e.value)
    assert not dl.is_pruned(net)
    with pytest.raises(ValueError, match="sparsity"):
        dl.check_sparsity(bad)
    with pytest.raises(ValueError, match="sparsity"):
        dl.make_policy(net, sparsity=bad)


def test_bad_scope():
    with pytest.raises(ValueError, match="'everything'"):
        dl.prune_network(dl.mlp_qnet(4, 2), 0.5, scope="everything")


# --- environments and games ------------------------------------------------------------

def test_unknown_env_and_game():
    with pytest.raises(ValueError, match="'Tetris'"):
        dl.make_env("Tetris")
    with pytest.raises(ValueError, match="'Tetris'"):
        dl.make_vector_env("Tetris", 2)
    with pytest.raises(ValueError, match="'CartPole-v1'"):
        dl.game_info("CartPole-v1")  # not an Atari game
    with pytest.raises(ValueError, match="'pong'"):
        dl.game_info("pong")  # names are case-sensitive
    with pytest.raises(ValueError, match="'Tetris'"):
        dl.DQNConfig(env="Tetris").validate()
    with pytest.raises(ValueError, match="'Tetris'"):
        dl.evaluate(dl.mlp_qnet(4, 2), "Tetris", episodes=1)
    assert dl.game_info("Breakout").human == 30.5


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
        dl.count_forward(mlp, torch.zeros(1, 5))


def test_bad_network_sizes():
    with pytest.raises(ValueError, match="n_actions must be >= 1, got 0"):
        dl.nature_dqn(0)
    with pytest.raises(ValueError, match="hidden=\\(8, 0\\)"):
        dl.mlp_qnet(4, 2, hidden=(8, 0))
    with pytest.raises(ValueError, match="'resnet'"):
        dl.build_network(dl.NetworkSpec("resnet", 4))


# --- checkpoints -----------------------------------------------------------------------

@pytest.fixture
def mlp_file(tmp_path):
    torch.manual_seed(30)
    net = dl.mlp_qnet(4, 2, hidden=(16, 16))
    path = dl.export_agent(net, "tiny", {"note": "test"}, directory=tmp_path)
    return net, path


def test_checkpoint_for_another_architecture(mlp_file):
    net, path = mlp_file
    with pytest.raises(dl.CheckpointError, match="nature-dqn") as e:
        dl.load_network_file(path, expected=dl.NetworkSpec("nature-dqn", 4))
    assert "mlp" in str(e.value)
    with pytest.raises(dl.CheckpointError, match="hidden=\\(64, 64\\)"):
        dl.load_network_file(path, expected=dl.NetworkSpec("mlp", 2, obs_dim=4, hidden=(64, 64)))
    # the right spec loads, with the same Q-values (fp16 weights)
    loaded = dl.load_network_file(path, expected=net.spec)
    x = torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), atol=1e-2, rtol=1e-2)


def test_weights_that_do_not_fit_the_spec_are_a_checkpoint_error(tmp_path):
    net = dl.mlp_qnet(4, 2, hidden=(16,))
    path = tmp_path / "lying.pt"
    spec = dl.NetworkSpec("mlp", 2, obs_dim=4, hidden=(32,)).to_dict()
    dl.save_checkpoint(path, {"spec": spec, "model": net.state_dict()})
    with pytest.raises(dl.CheckpointError, match="do not fit"):
        dl.load_network_file(path)


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
    with pytest.raises(dl.CheckpointError) as e:
        dl.load_network_file(bad)
    assert str(bad) in str(e.value)
    # the original file is untouched and still loads
    assert path.read_bytes() == original
    dl.load_network_file(path)


def test_agent_file_whose_bytes_changed_fails_the_hash_check(tmp_path):
    agents = tmp_path / "agents"
    shutil.copytree(dl.AGENT_DIR, agents)
    assert dl.load_agent("CartPole-v1", directory=agents) is not None  # the copy is intact
    f = agents / dl.agent_record("CartPole-v1", agents)["file"]
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(dl.CheckpointError, match="sha256"):
        dl.load_agent("CartPole-v1", directory=agents)
    f.unlink()
    with pytest.raises(dl.CheckpointError, match="missing"):
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
