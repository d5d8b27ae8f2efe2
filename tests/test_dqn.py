"""DQN training: a killed run resumes from its last checkpoint; checkpoint files are atomic."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
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
    saved = dl.store.load_checkpoint(run / "checkpoint.pt")
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
    final = dl.store.load_checkpoint(run / "checkpoint.pt")
    assert final["step"] == 3000 == cfg.total_steps
    assert final["updates"] > saved["updates"]
    hist_json = json.loads((run / "history.json").read_text())
    assert hist_json["step"] == 3000
    assert (run / "best.pt").exists()
    # the final network in the checkpoint is the returned one
    net = dl.store.load_network_file(run / "checkpoint.pt")
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
    assert dl.store.load_checkpoint(run / "checkpoint.pt")["step"] == 600
    with pytest.raises(dl.store.CheckpointError, match="seed"):
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
        dl.store.atomic_write(path, half_then_crash)
    assert path.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.bin"]  # no temporary file left

    dl.store.atomic_write(path, lambda tmp: Path(tmp).write_bytes(b"new contents"))
    assert path.read_bytes() == b"new contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.bin"]


def test_save_checkpoint_keeps_old_checkpoint_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    net = dl.mlp_qnet(4, 2, hidden=(8,))
    dl.store.save_checkpoint(path, {"spec": net.spec.to_dict(), "model": net.state_dict(), "step": 1})
    before = path.read_bytes()

    real_save = torch.save

    def crashing_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        with open(f, "r+b") as fh:  # leave a half-written file behind, then die
            fh.truncate(len(before) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        dl.store.save_checkpoint(path, {"spec": net.spec.to_dict(), "model": net.state_dict(), "step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert dl.store.load_checkpoint(path)["step"] == 1


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
    """A resume.pt written before it kept the best net (runs/Breakout, Freeway and Pong still are):
    the next evaluation defines the best."""
    cfg = tiny_config(total_steps=2000, eval_every=1000)
    dl.train(cfg, tmp_path, progress=False)
    for f in ("checkpoint.pt", "replay.npz", "best.pt"):
        (tmp_path / f).unlink()
    data = torch.load(tmp_path / "resume.pt", weights_only=True)
    del data["best"]
    data["best_score"] = 1e9  # a score no network of this run could beat
    dl.store.save_checkpoint(tmp_path / "resume.pt", data)
    res = dl.train(dl.DQNConfig.from_dict({**cfg.to_dict(), "total_steps": 3000}), tmp_path, progress=False)
    assert res.history["eval_step"][-1] == 3000
    assert dl.store.load_checkpoint(tmp_path / "best.pt")["score"] == res.history["eval_mean"][-1]


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
    assert dl.store.load_checkpoint(run / "best.pt")["step"] == 2000


def test_starting_a_run_removes_stale_temporary_files_and_nothing_else(tmp_path, capsys):
    """``kill -9`` during a checkpoint write leaves atomic_write's temporary file (hundreds of MB
    for a replay buffer); the next run in that folder deletes it, and only it."""
    run = tmp_path / "run"
    run.mkdir()
    stale = run / ".replay.npz.abc123.tmp"
    stale.write_bytes(bytes(1000))
    others = {"notes.txt": b"mine", "replay.npz.tmp": b"not atomic_write's", ".hidden": b"h", ".replay.npz": b"r"}
    for name, data in others.items():
        (run / name).write_bytes(data)
    cfg = tiny_config(total_steps=300, checkpoint_every=300, eval_every=0)
    dl.train(cfg, run, progress=False)
    assert not stale.exists()
    for name, data in others.items():
        assert (run / name).read_bytes() == data, name
    said = [ln for ln in capsys.readouterr().err.splitlines() if "stale" in ln]
    assert len(said) == 1 and ".replay.npz.abc123.tmp" in said[0]
    # with nothing to remove, nothing is said
    dl.train(tiny_config(total_steps=600, checkpoint_every=300, eval_every=0), run, progress=False)
    assert "stale" not in capsys.readouterr().err


def test_a_distillation_run_dir_is_cleaned_of_stale_temporary_files_too(tmp_path, capsys):
    from deltalearn.rl.distill import DistillConfig, prune_and_distill

    run = tmp_path / "distill"
    run.mkdir()
    (run / ".distill.pt.k2x_9q0a.tmp").write_bytes(b"half a checkpoint")
    (run / "notes.txt").write_text("mine")
    cfg = DistillConfig(stages=(0.5,), rounds=1, episodes=1, max_steps=20, updates=2, batch_size=8, threads=1)
    prune_and_distill(dl.load_agent("CartPole-v1"), "CartPole-v1", cfg, run_dir=run, progress=False)
    assert sorted(p.name for p in run.iterdir()) == ["distill.pt", "notes.txt"]
    assert ".distill.pt.k2x_9q0a.tmp" in capsys.readouterr().err


def test_resume_reads_whole_buffer_replay_files_and_survives_unreadable_ones(tmp_path, capsys):
    """replay.npz holds the filled slots only; a file of the whole preallocated buffer (written
    before) resumes exactly as well, and an unreadable one leaves a run that refills its buffer."""
    cfg = tiny_config(total_steps=600, checkpoint_every=600, eval_every=0, learning_starts=100)
    first = tmp_path / "new"
    dl.train(cfg, first, progress=False)
    saved = dl.store.load_checkpoint(first / "checkpoint.pt")
    full = cfg.buffer_size * (4 * 4 + 16)  # a CartPole slot: 4 float32s and 16 bytes of action, reward, flags
    assert (first / "replay.npz").stat().st_size < full / 4  # 600 of 5000 slots filled

    rb = dl.ReplayBuffer(cfg.buffer_size, 1, (4,), np.float32)
    rb.load(first / "replay.npz")
    assert len(rb) == 600
    shutil.copytree(first, tmp_path / "old")
    with open(tmp_path / "old" / "replay.npz", "wb") as f:  # the format of the old save: every slot
        np.savez(f, **{k: getattr(rb, k) for k in rb._ARRAYS + rb._PER_ENV}, meta=rb.state_dict()["meta"])
    assert (tmp_path / "old" / "replay.npz").stat().st_size > cfg.buffer_size * 4 * 4
    shutil.copytree(first, tmp_path / "cut")
    data = (first / "replay.npz").read_bytes()
    (tmp_path / "cut" / "replay.npz").write_bytes(data[:len(data) // 2])
    capsys.readouterr()

    longer = tiny_config(total_steps=900, checkpoint_every=600, eval_every=0, learning_starts=100)
    res = {name: dl.train(longer, tmp_path / name, progress=False) for name in ("new", "old", "cut")}
    updates = {name: dl.store.load_checkpoint(tmp_path / name / "checkpoint.pt")["updates"] - saved["updates"]
               for name in res}
    assert updates == {"new": 75, "old": 75, "cut": 50}  # cut: no updates before 700 (refilling)
    for k, v in res["new"].net.state_dict().items():
        assert torch.equal(res["old"].net.state_dict()[k], v), k
    said = [ln for ln in capsys.readouterr().err.splitlines() if "not resumed" in ln]
    assert len(said) == 1 and "replay.npz" in said[0] and "unreadable" in said[0]


def test_config_from_dict_refuses_unknown_keys_and_names_them():
    cfg = dl.DQNConfig.cartpole(seed=2)
    assert dl.DQNConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"\['lr_decay', 'totl_steps'\]") as e:
        dl.DQNConfig.from_dict({**cfg.to_dict(), "totl_steps": 10, "lr_decay": 0.5})
    assert "allowed" in str(e.value) and "total_steps" in str(e.value)


REPO = Path(__file__).resolve().parents[1]


def test_every_committed_dqn_config_and_run_file_still_loads(tmp_path):
    """The shipped agents' configs and the committed runs/*/resume.pt load with today's fields,
    and each run file passes the checks a resumed run makes (its network, env and seed)."""
    from deltalearn.rl.run_files import RunFiles

    manifest = json.loads((REPO / "deltalearn" / "agents" / "manifest.json").read_text())
    dense = {name: rec for name, rec in manifest.items() if "teacher" not in rec}  # pruned ones hold a distillation
    assert "CartPole-v1" in dense and len(dense) >= 7
    for name, rec in dense.items():
        assert dl.DQNConfig.from_dict(rec["config"]).env == rec["env"], name
    runs = sorted(p.parent for p in (REPO / "runs").glob("*/resume.pt"))
    assert runs
    for run in runs:
        cfg = dl.DQNConfig.from_dict(json.loads((run / "history.json").read_text())["config"])
        data = torch.load(run / "resume.pt", weights_only=True)
        spec = dl.core.NetworkSpec.from_dict(data["spec"])
        copy = tmp_path / run.name  # opening a run dir tidies it: leave the repository's alone
        copy.mkdir()
        shutil.copy(run / "resume.pt", copy)
        assert RunFiles(copy, cfg, spec, torch.device("cpu")).read("resume.pt")["step"] == data["step"], run
        other = dl.DQNConfig.from_dict({**cfg.to_dict(), "seed": cfg.seed + 1})
        with pytest.raises(dl.store.CheckpointError, match="seed"):
            RunFiles(copy, other, spec, torch.device("cpu")).read("resume.pt")


def test_warm_restart_refuses_a_resume_file_of_another_seed(tmp_path):
    dl.train(tiny_config(total_steps=300, checkpoint_every=300, eval_every=0), tmp_path, progress=False)
    (tmp_path / "checkpoint.pt").unlink()
    with pytest.raises(dl.store.CheckpointError, match="seed 3, not CartPole-v1 seed 4"):
        dl.train(tiny_config(total_steps=600, seed=4, eval_every=0), tmp_path, progress=False)


def test_pruning_schedule_is_cubic_and_ends_on_its_last_round():
    s = dl.rl.PruningSchedule(final=0.8, start=100, end=1100, every=300)
    assert [s.sparsity_at(t) for t in (0, 100, 1100, 5000)] == [0.0, 0.0, 0.8, 0.8]
    assert s.sparsity_at(600) == pytest.approx(0.8 * (1 - 0.5 ** 3))  # half way: 7/8 of the way there
    rounds, t = [], s.first_round()
    while t != float("inf"):
        rounds.append(t)
        t = s.next_round(t)
    assert rounds == [100, 300, 600, 900, 1100]  # the grid, and one exactly at the end
    assert s.first_round(650) == 900  # a run resumed mid-schedule continues on the grid
    assert s.first_round(2000) == float("inf")
    # the end defaults to three quarters of the run; no sparsity, no rounds
    cfg = dl.DQNConfig(total_steps=10_000, sparsity=0.5, prune_start=1000)
    assert dl.rl.PruningSchedule.from_config(cfg).end == 7_500
    assert dl.rl.PruningSchedule.from_config(dl.DQNConfig(sparsity=0.0)).first_round() == float("inf")


def two_state_batch(**kw):
    """Two transitions of a 2-action task; next states where the online and target nets disagree."""
    b = dict(obs=torch.tensor([[1.0, 0.0], [0.0, 1.0]]), actions=torch.tensor([0, 1]),
             returns=torch.tensor([1.0, 0.5]), next_obs=torch.tensor([[1.0, 1.0], [0.0, 1.0]]),
             discounts=torch.tensor([0.9, 0.0]))
    b.update(kw)
    return dl.rl.Batch(**b)


def linear_q(weight):
    net = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor(weight))
    return net


def test_double_dqn_update_values_the_online_choice_with_the_target_net():
    q = linear_q([[2.0, 0.0], [0.0, 1.0]])       # next state 1: online prefers action 0 (2 > 1)
    target = linear_q([[1.0, 1.0], [3.0, 3.0]])  # ...the target net values action 0 at 2, action 1 at 6
    before_target = target.weight.clone()
    batch = two_state_batch()
    # Double DQN: y = [1 + 0.9 * Q_target(s', argmax Q_online) = 1 + 0.9 * 2, 0.5 (terminal)]
    pred = torch.tensor([2.0, 1.0])  # Q(s, a) of the taken actions
    want = torch.nn.functional.smooth_l1_loss(pred, torch.tensor([2.8, 0.5])).item()
    plain_dqn = torch.nn.functional.smooth_l1_loss(pred, torch.tensor([1 + 0.9 * 6, 0.5])).item()
    opt = torch.optim.SGD(q.parameters(), lr=0.1)
    loss = dl.double_dqn_update(q, target, opt, batch, max_grad_norm=100.0)
    assert loss == pytest.approx(want) and loss != pytest.approx(plain_dqn)
    assert torch.equal(target.weight, before_target)  # the target net only values
    with torch.no_grad():  # one SGD step on that loss lowers it
        after = torch.nn.functional.smooth_l1_loss(q(batch.obs).gather(1, batch.actions[:, None]).squeeze(1),
                                                   torch.tensor([2.8, 0.5])).item()
    assert after < want


def test_double_dqn_update_clips_the_gradient_and_keeps_a_pruned_net_pruned():
    q = linear_q([[20.0, 0.0], [0.0, 10.0]])  # far from any target: a large gradient
    before = q.weight.detach().clone()
    dl.double_dqn_update(q, linear_q([[0.0, 0.0], [0.0, 0.0]]), torch.optim.SGD(q.parameters(), lr=1.0),
                         two_state_batch(), max_grad_norm=1e-3)
    assert float((q.weight.detach() - before).norm()) == pytest.approx(1e-3, rel=1e-2)  # not the full step

    torch.manual_seed(0)
    net = dl.prune_network(dl.mlp_qnet(2, 2, (16,)), 0.5)
    zeros = [m.weight == 0 for m in dl.weight_layers(net)]
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    for _ in range(3):
        dl.double_dqn_update(net, dl.core.plain_copy(net), opt, two_state_batch())
    for z, m in zip(zeros, dl.weight_layers(net)):
        assert (m.weight[z] == 0).all() and (m.weight[~z] != 0).any()
