"""The one rule for "the agent at sparsity s": shipped distilled agent, else one-shot pruning."""

import pytest
import torch

import deltalearn as dl

BOOK_PRUNED = dl.study.book_data("pruned")


def test_a_shipped_distilled_agent_is_preferred_and_named():
    a = dl.study.agent_at("Breakout", 0.79)
    assert a.name == "Breakout-pruned-0.79" and a.fine_tuned
    shipped = dl.load_agent("Breakout-pruned-0.79")
    for p, q in zip(a.net.parameters(), shipped.parameters()):
        assert torch.equal(p, q)


def test_without_a_shipped_agent_the_dense_one_is_pruned_one_shot():
    a = dl.study.agent_at("Breakout", 0.6)
    assert a.name is None and not a.fine_tuned and "one-shot" in a.source
    assert dl.sparsity_report(a.net).total == pytest.approx(0.6, abs=1e-3)
    forced = dl.study.agent_at("Breakout", 0.79, one_shot=True)
    assert forced.name is None
    dense = dl.load_agent("Breakout")
    expect = dl.make_permanent(dl.prune_network(dl.core.plain_copy(dense), 0.79))
    for p, q in zip(forced.net.parameters(), expect.parameters()):
        assert torch.equal(p, q)


def test_sparsity_zero_is_the_dense_agent_and_a_bad_sparsity_is_refused():
    a = dl.study.agent_at("Pong", 0.0)
    assert a.name == "Pong" and not a.fine_tuned
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dl.study.agent_at("Pong", 1.0)
    with pytest.raises(ValueError, match="no shipped agent"):
        dl.study.agent_at("Pongg", 0.5)


def test_a_directory_of_pruned_agents_falls_back_to_the_packaged_dense_agent():
    a = dl.study.agent_at("CartPole-v1", 0.5, directory=BOOK_PRUNED)
    assert a.name == "CartPole-v1-pruned-0.5"
    b = dl.study.agent_at("CartPole-v1", 0.0, directory=BOOK_PRUNED)
    assert b.name == "CartPole-v1"
