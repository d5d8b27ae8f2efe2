"""Continuing a distillation from an already pruned student, with a decaying rate and teacher states."""
from __future__ import annotations

import pytest
import torch

import deltalearn as dl
from deltalearn.rl.distill import DistillConfig, prune_and_distill


def small(**kw):
    base = dict(stages=(0.8,), rounds=2, episodes=2, max_steps=200, updates=40, batch_size=64, lr=1e-3,
                seed=0, threads=1)
    base.update(kw)
    return DistillConfig(**base)


def test_default_config_reads_as_before_the_new_fields():
    d = DistillConfig().to_dict()
    assert "lr_end" not in d and "teacher_episodes" not in d  # shipped records and checkpoints stay equal
    cfg = DistillConfig(lr_end=1e-5, teacher_episodes=2)
    assert cfg.to_dict()["lr_end"] == 1e-5 and DistillConfig.from_dict(cfg.to_dict()) == cfg
    assert DistillConfig.from_dict(d) == DistillConfig()


@pytest.mark.parametrize("bad, msg", [(dict(lr_end=1.0), "lr_end"), (dict(teacher_episodes=-1), "teacher_episodes")])
def test_bad_new_fields(bad, msg):
    with pytest.raises(ValueError, match=msg):
        DistillConfig(**bad).validate()


def test_a_distillation_starts_from_a_given_student_and_resumes_only_from_it(tmp_path):
    teacher = dl.load_agent("CartPole-v1")
    start = dl.make_permanent(dl.prune_network(dl.core.plain_copy(teacher), 0.8))
    before = [p.clone() for p in start.parameters()]
    obs = torch.as_tensor(dl.load_trajectory("CartPole-v1")["observations"])
    cfg = small(lr_end=1e-4, teacher_episodes=1)
    snaps, hist = prune_and_distill(teacher, "CartPole-v1", cfg, run_dir=tmp_path, progress=False, student=start)
    assert all(torch.equal(a, b) for a, b in zip(before, start.parameters()))  # the start is not modified
    rep = dl.sparsity_report(snaps[0.8])
    assert rep.zeros == [round(0.8 * n) for n in rep.sizes]
    with torch.no_grad():
        agree = lambda n: (n(obs).argmax(1) == teacher(obs).argmax(1)).float().mean().item()  # noqa: E731
        assert agree(snaps[0.8]) > agree(start)  # distillation moved the one-shot student towards the teacher
    assert dl.store.load_checkpoint(tmp_path / "distill.pt")["start"]
    again, _ = prune_and_distill(teacher, "CartPole-v1", cfg, run_dir=tmp_path, progress=False, student=start)
    resumed, made = again[0.8].state_dict(), snaps[0.8].state_dict()
    assert sorted(resumed) == sorted(made) and all(torch.equal(resumed[k], made[k]) for k in made)
    with pytest.raises(dl.store.CheckpointError, match="another student"):
        prune_and_distill(teacher, "CartPole-v1", cfg, run_dir=tmp_path, progress=False)
