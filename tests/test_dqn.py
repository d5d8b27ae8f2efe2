"""DQN training: a killed run resumes from its last checkpoint; checkpoint files are atomic."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import deltalearn as dl


class Killed(RuntimeError):
    """Stands for the process dying (not a KeyboardInterrupt, which would checkpoint first)."""


def tiny_config(**kw):
    base = dict(env="CartPole-v1", total_steps=3000, learning_starts=500, checkpoint_every=1000,
                eval_every=1000, eval_episodes=1, eval_max_steps=50, hidden=(32, 32), batch_size=32,
                buffer_size=5000, train_every=4, target_update=50, eps_decay_steps=1000, seed=3, threads=1,
                device="cpu")
    base.update(kw)
    return dl.DQNConfig(**base)


def test_killed_run_resumes_from_its_checkpoint(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config()

    def kill_midway(step, info):
        if step == 2500:  # after the step-2000 checkpoint, before the next one
            raise Killed("simulated crash")

    with pytest.raises(Killed):
        dl.train(cfg, run, progress=False, callback=kill_midway)
    saved = dl.load_checkpoint(run / "checkpoint.pt")
    assert saved["step"] == 2000  # steps 2001..2500 were never saved
    assert (run / "replay.npz").exists()
    saved_hist = saved["history"]
    assert saved_hist["eval_step"] == [1000, 2000]
    assert len(saved_hist["episode_step"]) > 0 and max(saved_hist["episode_step"]) <= 2000
    assert saved["updates"] > 0

    seen = []
    res = dl.train(tiny_config(), run, progress=False, callback=lambda step, info: seen.append(step))
    # it picked up at the checkpoint: the first step of the resumed session is 2001, not 1
    assert seen[0] == 2001
    assert seen[-1] == 3000 and len(seen) == 1000
    assert res.steps == 3000
    # the history of the first session is kept, and the second session appends to it
    for key in ("episode_step", "episode_return", "eval_step", "eval_mean", "loss_step", "loss"):
        n = len(saved_hist[key])
        assert res.history[key][:n] == saved_hist[key], key
    assert res.history["eval_step"] == [1000, 2000, 3000]
    assert all(s > 2000 for s in res.history["episode_step"][len(saved_hist["episode_step"]):])
    final = dl.load_checkpoint(run / "checkpoint.pt")
    assert final["step"] == 3000 == cfg.total_steps
    assert final["updates"] > saved["updates"]
    hist_json = json.loads((run / "history.json").read_text())
    assert hist_json["step"] == 3000
    assert (run / "best.pt").exists()
    # the final network in the checkpoint is the returned one
    net = dl.load_network_file(run / "checkpoint.pt")
    x = torch.randn(5, 4)
    with torch.no_grad():
        torch.testing.assert_close(net(x), res.net(x))

    # training a finished run again does nothing and returns at total_steps
    again = []
    res2 = dl.train(tiny_config(), run, progress=False, callback=lambda s, i: again.append(s))
    assert again == [] and res2.steps == 3000


def test_resume_refuses_a_run_dir_of_another_run(tmp_path):
    run = tmp_path / "run"
    dl.train(tiny_config(total_steps=600, checkpoint_every=300, eval_every=0), run, progress=False)
    assert dl.load_checkpoint(run / "checkpoint.pt")["step"] == 600
    with pytest.raises(dl.CheckpointError, match="seed"):
        dl.train(tiny_config(total_steps=900, seed=4, eval_every=0), run, progress=False)


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "ckpt.bin"
    path.write_bytes(b"old contents")

    def half_then_crash(tmp):
        with open(tmp, "wb") as f:
            f.write(b"new con")
            f.flush()
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        dl.atomic_write(path, half_then_crash)
    assert path.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.bin"]  # no temporary file left

    dl.atomic_write(path, lambda tmp: Path(tmp).write_bytes(b"new contents"))
    assert path.read_bytes() == b"new contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.bin"]


def test_save_checkpoint_keeps_old_checkpoint_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    net = dl.mlp_qnet(4, 2, hidden=(8,))
    dl.save_checkpoint(path, {"spec": net.spec.to_dict(), "model": net.state_dict(), "step": 1})
    before = path.read_bytes()

    real_save = torch.save

    def crashing_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        with open(f, "r+b") as fh:  # leave a half-written file behind, then die
            fh.truncate(len(before) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        dl.save_checkpoint(path, {"spec": net.spec.to_dict(), "model": net.state_dict(), "step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert dl.load_checkpoint(path)["step"] == 1


def test_warm_restart_from_compact_resume_file(tmp_path):
    """Only resume.pt survives (a fresh clone): training continues from its step and history."""
    import torch

    cfg = dl.DQNConfig.cartpole(total_steps=2000, learning_starts=300, checkpoint_every=1000, eval_every=0,
                                stop_score=None)
    dl.train(cfg, tmp_path, progress=False)
    for f in ("checkpoint.pt", "replay.npz"):
        (tmp_path / f).unlink()
    data = torch.load(tmp_path / "resume.pt", weights_only=True)
    assert data["step"] == 2000 and all(v.dtype == torch.float16 for v in data["model"].values())
    n_eps = len(data["history"]["episode_return"])
    seen = []
    cfg2 = dl.DQNConfig.from_dict({**cfg.to_dict(), "total_steps": 2500})
    res = dl.train(cfg2, tmp_path, progress=False, callback=lambda step, info: seen.append(step))
    assert seen[0] == 2001 and res.steps == 2500
    assert len(res.history["episode_return"]) >= n_eps
    first = {k: v.float() for k, v in data["model"].items()}
    assert any((p.detach() - first[k]).abs().max() > 0 for k, p in res.net.state_dict().items())


def test_warm_restart_keeps_the_best_network_with_its_score(tmp_path):
    """resume.pt carries the best evaluated network: after a warm restart the best score still
    belongs to the weights it was measured on, not to the resumed (later) weights."""
    cfg = tiny_config(total_steps=2000, eval_every=1000)
    first = dl.train(cfg, tmp_path, progress=False)
    for f in ("checkpoint.pt", "replay.npz", "best.pt"):
        (tmp_path / f).unlink()
    data = torch.load(tmp_path / "resume.pt", weights_only=True)
    assert data["best_score"] == max(first.history["eval_mean"])
    for k, v in first.best_net.state_dict().items():
        assert torch.equal(data["best"][k].float(), v.half().float()), k
    # no evaluation in the resumed part: the best network must come back from the file
    cfg2 = dl.DQNConfig.from_dict({**cfg.to_dict(), "total_steps": 2400, "eval_every": 100_000})
    res = dl.train(cfg2, tmp_path, progress=False)
    for k, v in res.best_net.state_dict().items():
        assert torch.equal(v, data["best"][k].float()), k


def test_old_resume_file_without_best_forgets_its_best_score(tmp_path):
    """A resume.pt written before it kept the best net: the next evaluation defines the best."""
    cfg = tiny_config(total_steps=2000, eval_every=1000)
    dl.train(cfg, tmp_path, progress=False)
    for f in ("checkpoint.pt", "replay.npz", "best.pt"):
        (tmp_path / f).unlink()
    data = torch.load(tmp_path / "resume.pt", weights_only=True)
    del data["best"]
    data["best_score"] = 1e9  # a score no network of this run could beat
    dl.save_checkpoint(tmp_path / "resume.pt", data)
    res = dl.train(dl.DQNConfig.from_dict({**cfg.to_dict(), "total_steps": 3000}), tmp_path, progress=False)
    assert res.history["eval_step"][-1] == 3000
    assert dl.load_checkpoint(tmp_path / "best.pt")["score"] == res.history["eval_mean"][-1]


def test_background_run_logs_one_status_line_per_checkpoint(tmp_path, capsys):
    cfg = tiny_config(total_steps=1500, checkpoint_every=500, eval_every=0)
    dl.train(cfg, tmp_path / "run", progress=False)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "step" in ln]
    assert len(lines) == 3
    assert "CartPole-v1 step 1,500/1,500" in lines[-1] and "eps" in lines[-1]


def test_pruning_schedule_survives_a_kill_and_best_is_only_a_fully_pruned_net(tmp_path):
    run = tmp_path / "run"
    # rounds every 1000 steps do not divide prune_end=1800: the last round must still land on 1800,
    # before the evaluation at 2000 (the last one) may pick a best network
    cfg = tiny_config(total_steps=2000, sparsity=0.6, prune_every=1000, prune_end=1800, eval_every=500)

    def kill(step, info):
        if step == 1500:
            raise Killed("simulated crash")

    with pytest.raises(Killed):
        dl.train(cfg, run, progress=False, callback=kill)
    assert not (run / "best.pt").exists()  # evaluations at 500 and 1000 saw a partly pruned net
    res = dl.train(cfg, run, progress=False)
    for net in (res.best_net, res.net):
        rep = dl.sparsity_report(net)
        assert rep.zeros == [round(0.6 * n) for n in rep.sizes], rep  # torch prune's exact count
    assert dl.load_checkpoint(run / "best.pt")["step"] == 2000
