"""Magnitude pruning: exact sparsity, iterative pruning, zeros survive training."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import deltalearn as dl
from _helpers import small_conv_net


def zeros_per_layer(net):
    return [int((m.weight == 0).sum()) for m in dl.weight_layers(net)]


def sizes_per_layer(net):
    return [m.weight.numel() for m in dl.weight_layers(net)]


@pytest.mark.parametrize("sparsity", [0.3, 0.79, 0.9])
def test_layer_scope_reaches_sparsity_in_every_layer_of_nature_dqn(sparsity):
    torch.manual_seed(20)
    net = dl.nature_dqn(4)
    dl.prune_network(net, sparsity, scope="layer")
    for name, z, n in zip(dl.layer_names(net), zeros_per_layer(net), sizes_per_layer(net)):
        assert z == round(sparsity * n), f"{name}: {z} zeros of {n}, expected {round(sparsity * n)}"
    # the smallest magnitudes went: every kept weight is at least as large as every pruned one
    for m in dl.weight_layers(net):
        orig = m.weight_orig.detach().abs()
        kept, gone = orig[m.weight_mask.bool()], orig[~m.weight_mask.bool()]
        assert kept.min() >= gone.max()


@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_global_scope_reaches_sparsity_overall(sparsity):
    torch.manual_seed(21)
    net = small_conv_net(3)
    dl.prune_network(net, sparsity, scope="global")
    zeros, sizes = zeros_per_layer(net), sizes_per_layer(net)
    assert abs(sum(zeros) - round(sparsity * sum(sizes))) <= 1
    # one magnitude cut for all layers
    orig = [m.weight_orig.detach().abs() for m in dl.weight_layers(net)]
    masks = [m.weight_mask.bool() for m in dl.weight_layers(net)]
    kept_min = min(float(o[k].min()) for o, k in zip(orig, masks))
    gone_max = max(float(o[~k].max()) for o, k in zip(orig, masks) if (~k).any())
    assert kept_min >= gone_max
    rep = dl.sparsity_report(net)
    assert rep.total == pytest.approx(sum(zeros) / sum(sizes))


def test_include_last_false_spares_the_output_layer():
    torch.manual_seed(22)
    net = small_conv_net(3)
    dl.prune_network(net, 0.6, include_last=False)
    zeros, sizes = zeros_per_layer(net), sizes_per_layer(net)
    assert zeros[-1] == 0
    assert all(z == round(0.6 * n) for z, n in zip(zeros[:-1], sizes[:-1]))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_iterative_pruning_ends_at_the_last_sparsity(scope):
    torch.manual_seed(23)
    net = dl.nature_dqn(6) if scope == "layer" else small_conv_net(3)
    dl.prune_network(net, 0.5, scope=scope)
    first = [m.weight_mask.clone() for m in dl.weight_layers(net)]
    dl.prune_network(net, 0.8, scope=scope)
    zeros, sizes = zeros_per_layer(net), sizes_per_layer(net)
    if scope == "layer":
        for z, n in zip(zeros, sizes):
            assert abs(z - round(0.8 * n)) <= 1
    else:
        assert abs(sum(zeros) - round(0.8 * sum(sizes))) <= 1
    # masks multiply: what was pruned stays pruned
    for m, f in zip(dl.weight_layers(net), first):
        assert (m.weight_mask[f == 0] == 0).all()
    # asking for less sparsity never revives weights
    dl.prune_network(net, 0.3, scope=scope)
    assert zeros_per_layer(net) == zeros


def test_pruned_weights_stay_zero_during_training_and_after_make_permanent():
    torch.manual_seed(24)
    net = small_conv_net(3)
    dl.prune_network(net, 0.7)
    assert dl.core.is_pruned(net)
    masks = [m.weight_mask.clone() for m in dl.weight_layers(net)]
    before = [m.weight.detach().clone() for m in dl.weight_layers(net)]
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.randn(8, 2, 10, 10)
    target = torch.randn(8, 3)
    for _ in range(5):
        loss = ((net(x) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = net(x)  # the forward recomputes weight = weight_orig * mask
    for m, mask, b in zip(dl.weight_layers(net), masks, before):
        assert (m.weight[mask == 0] == 0).all()
        assert torch.equal(m.weight_mask, mask)
        assert not torch.allclose(m.weight[mask == 1], b[mask == 1])  # the kept weights did train
    report_before = dl.sparsity_report(net)
    dl.make_permanent(net)
    assert not dl.core.is_pruned(net)
    for m, mask in zip(dl.weight_layers(net), masks):
        assert not hasattr(m, "weight_mask") and not hasattr(m, "weight_orig")
        assert isinstance(m.weight, nn.Parameter)
        assert (m.weight[mask == 0] == 0).all()
        assert (m.weight[mask == 1] != 0).all()
        assert "weight_orig" not in dict(m.named_parameters())
    assert dl.sparsity_report(net).zeros == report_before.zeros
    with torch.no_grad():
        torch.testing.assert_close(net(x), out)
    # a permanent network saves as a plain one
    assert not any(k.endswith(("weight_orig", "weight_mask")) for k in net.state_dict())


def test_sparsity_report_matches_masks():
    torch.manual_seed(25)
    net = dl.nature_dqn(4)
    dl.prune_network(net, 0.79)
    rep = dl.sparsity_report(net)
    assert rep.names == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    assert rep.sizes == [8192, 32768, 36864, 1605632, 2048]
    assert rep.zeros == [int((m.weight_mask == 0).sum()) for m in dl.weight_layers(net)]
    d = rep.as_dict()
    for name, z, n in zip(rep.names, rep.zeros, rep.sizes):
        assert d[name] == pytest.approx(z / n)
        assert d[name] == pytest.approx(0.79, abs=1e-3)
    assert d["total"] == pytest.approx(sum(rep.zeros) / sum(rep.sizes))
    dense = dl.sparsity_report(dl.nature_dqn(4))
    assert dense.zeros == [0] * 5 and dense.total == 0.0


def test_prune_zero_sparsity_is_a_no_op():
    net = small_conv_net(3)
    w = [m.weight.detach().clone() for m in dl.weight_layers(net)]
    dl.prune_network(net, 0.0)
    assert not dl.core.is_pruned(net)
    assert all(torch.equal(a, m.weight) for a, m in zip(w, dl.weight_layers(net)))
