"""Gradual pruning with policy distillation: exact sparsities, a real recovery, and resumable stages."""
from __future__ import annotations

import pytest
import torch

import deltalearn as dl
from deltalearn.rl.distill import DistillConfig, prune_and_distill


class Killed(RuntimeError):
    pass


def small(**kw):
    base = dict(stages=(0.5, 0.8), rounds=2, episodes=2, max_steps=300, updates=150, batch_size=128, lr=1e-3,
                seed=0, threads=1)
    base.update(kw)
    return DistillConfig(**base)


def agreement(net, teacher, obs):
    with torch.no_grad():
        return (net(obs).argmax(1) == teacher(obs).argmax(1)).float().mean().item()


def test_distillation_recovers_what_one_shot_pruning_loses():
    teacher = dl.load_agent("CartPole-v1")
    obs = torch.as_tensor(dl.load_trajectory("CartPole-v1")["observations"])
    snaps, hist = prune_and_distill(teacher, "CartPole-v1", small(), progress=False)
    assert sorted(snaps) == [0.5, 0.8] and [h["sparsity"] for h in hist] == [0.5, 0.8]
    for s, net in snaps.items():
        rep = dl.sparsity_report(net)
        assert rep.zeros == [round(s * n) for n in rep.sizes]
    one_shot = dl.make_permanent(dl.prune_network(dl.core.plain_copy(teacher), 0.8))
    # on the teacher's own recorded episode, unseen by the distillation
    assert agreement(snaps[0.8], teacher, obs) > agreement(one_shot, teacher, obs) + 0.1


def test_a_killed_distillation_resumes_after_its_last_stage(tmp_path):
    teacher = dl.load_agent("CartPole-v1")
    cfg = small(updates=20)

    def kill(s, rec):
        raise Killed

    with pytest.raises(Killed):
        prune_and_distill(teacher, "CartPole-v1", cfg, run_dir=tmp_path, progress=False, callback=kill)
    first = dl.store.load_checkpoint(tmp_path / "distill.pt")
    assert first["done"] == [0.5]
    seen = []
    snaps, hist = prune_and_distill(teacher, "CartPole-v1", cfg, run_dir=tmp_path, progress=False,
                                    callback=lambda s, r: seen.append(s))
    assert seen == [0.8] and len(hist) == 2
    w = dl.core.build_network(teacher.spec)
    w.load_state_dict(first["snapshots"][0])
    for a, b in zip(w.parameters(), snaps[0.5].parameters()):
        assert torch.equal(a, b)
    with pytest.raises(dl.store.CheckpointError, match="another distillation"):
        prune_and_distill(teacher, "CartPole-v1", small(updates=21), run_dir=tmp_path, progress=False)
    other = dl.core.plain_copy(teacher)  # a retrained teacher must not inherit the old one's stages
    with torch.no_grad():
        next(other.parameters())[0, 0] += 1e-3
    with pytest.raises(dl.store.CheckpointError, match="another teacher"):
        prune_and_distill(other, "CartPole-v1", cfg, run_dir=tmp_path, progress=False)


@pytest.mark.parametrize("bad, msg", [(dict(stages=(0.8, 0.5)), "increasing"), (dict(stages=(0.5, 1.0)), "sparsity"),
                                      (dict(updates=0), "updates"), (dict(epsilon=1.5), "epsilon"),
                                      (dict(temperature=0.0), "temperature")])
def test_bad_distill_config(bad, msg):
    with pytest.raises(ValueError, match=msg):
        small(**bad).validate()
