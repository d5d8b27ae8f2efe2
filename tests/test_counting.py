"""Counting multiplications: significant products against brute force, dense counts
against torch's FlopCounterMode and the Nature DQN numbers of DESIGN.md."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import deltalearn as dl
from _helpers import brute_conv_pairs, brute_linear_pairs, brute_pairs, small_conv_net


def sparse_randn(shape, zero_frac, gen):
    x = torch.randn(shape, generator=gen)
    return x * (torch.rand(shape, generator=gen) >= zero_frac)


CONVS = {
    # name: (Conv2d kwargs, input (C, H, W))
    "s2-p1": (dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1), (3, 7, 6)),
    "s1-p0": (dict(in_channels=3, out_channels=5, kernel_size=3, stride=1, padding=0), (3, 6, 5)),
    "rect-kernel": (dict(in_channels=2, out_channels=3, kernel_size=(4, 3), stride=(2, 3), padding=(1, 2)), (2, 9, 8)),
    "groups-dilation": (dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=2, groups=2,
                             dilation=2), (4, 8, 8)),
}


@pytest.mark.parametrize("name", sorted(CONVS))
@pytest.mark.parametrize("pruned", [False, True])
def test_conv_significant_products_equal_brute_force(name, pruned):
    kw, in_shape = CONVS[name]
    gen = torch.Generator().manual_seed(11)
    layer = nn.Conv2d(**kw)
    with torch.no_grad():
        layer.weight.copy_(sparse_randn(layer.weight.shape, 0.3, gen))  # zeros in the weights
    if pruned:
        dl.prune_network(nn.Sequential(layer), 0.6)
        assert hasattr(layer, "weight_mask")
        assert int((layer.weight == 0).sum()) >= round(0.6 * layer.weight.numel())
    x = sparse_randn((3, *in_shape), 0.4, gen)  # zeros in the inputs
    x[2] = 0  # an all-zero sample
    got = dl.core.significant_products(layer, x != 0)
    want = brute_conv_pairs(layer, x)
    assert got.dtype == torch.int64 and got.shape == (3,)
    assert got.tolist() == want
    assert want[2] == 0 and want[0] > 0
    # an explicit weight overrides the layer's
    w2 = layer.weight.detach().clone()
    w2[0] = 0
    assert dl.core.significant_products(layer, x != 0, weight=w2).tolist() == brute_conv_pairs(layer, x, w2)


@pytest.mark.parametrize("pruned", [False, True])
def test_linear_significant_products_equal_brute_force(pruned):
    gen = torch.Generator().manual_seed(12)
    layer = nn.Linear(13, 7)
    with torch.no_grad():
        layer.weight.copy_(sparse_randn(layer.weight.shape, 0.3, gen))
    if pruned:
        dl.prune_network(nn.Sequential(layer), 0.5)
        assert hasattr(layer, "weight_mask")
    x = sparse_randn((4, 13), 0.4, gen)
    x[3] = 0
    got = dl.core.significant_products(layer, x != 0)
    assert got.tolist() == brute_linear_pairs(layer, x)
    assert got[3] == 0


def test_count_significant_equals_brute_force_layer_by_layer():
    torch.manual_seed(13)
    net = small_conv_net(3, input_scale=0.5).eval()
    dl.prune_network(net, 0.4)
    gen = torch.Generator().manual_seed(14)
    obs = sparse_randn((2, 2, 10, 10), 0.3, gen)
    out, counts = dl.core.forward_with_counts(net, obs)
    torch.testing.assert_close(out, net(obs))
    assert counts.shape == (2, 4) and counts.dtype == torch.int64
    report = dl.count_significant(net, obs, label="two rows")
    assert report.steps == 2 and report.label == "two rows"
    assert report.per_step.tolist() == counts.tolist()
    assert [l.significant for l in report.layers] == counts.sum(0).tolist()
    assert [l.dense for l in report.layers] == [2 * d for d in dl.core.dense_counts(net)]
    # walk the layers by hand: the input of each weight layer is what the previous layers give
    x = obs.float() * 0.5
    want = []
    with torch.no_grad():
        for m in net.body:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                want.append(brute_pairs(m, x))
            x = m(x)
    assert counts.T.tolist() == want
    # ReLU zeros are skipped: the deeper layers do fewer significant products than dense ones
    dense = dl.core.dense_counts(net)
    assert all(c < d for c, d in zip(counts[0].tolist(), dense))


@pytest.mark.parametrize("name", sorted(CONVS))
def test_dense_products_equal_flop_counter_for_small_convs(name):
    kw, in_shape = CONVS[name]
    layer = nn.Conv2d(**kw)
    with FlopCounterMode(display=False) as fc:
        layer(torch.zeros(1, *in_shape))
    assert dl.core.dense_products(layer, in_shape) == fc.get_total_flops() // 2


@pytest.mark.parametrize("n_actions", [4, 6])
def test_dense_counts_equal_flop_counter_for_nature_dqn(n_actions):
    net = dl.nature_dqn(n_actions)
    with FlopCounterMode(display=False) as fc:
        net(torch.zeros(1, 4, 84, 84))
    assert sum(dl.core.dense_counts(net)) * 2 == fc.get_total_flops()
    per_module = fc.get_flop_counts()
    idx = [i for i, m in enumerate(net.body) if isinstance(m, (nn.Conv2d, nn.Linear))]
    flops = [sum(per_module[f"QNetwork.body.{i}"].values()) for i in idx]
    assert [2 * d for d in dl.core.dense_counts(net)] == flops
    rep = dl.count_dense(net)
    assert [l.dense for l in rep.layers] == [f // 2 for f in flops]
    assert rep.total_dense == rep.total_significant == fc.get_total_flops() // 2


@pytest.mark.parametrize("n_actions", [4, 6, 18])
def test_nature_dqn_dense_counts_match_design_numbers(n_actions):
    net = dl.nature_dqn(n_actions)
    rep = dl.count_dense(net)
    assert [l.name for l in rep.layers] == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    assert [l.dense for l in rep.layers] == [3_276_800, 2_654_208, 1_806_336, 1_605_632, 512 * n_actions]
    assert rep.total_dense == 9_345_024 - 512 * 4 + 512 * n_actions
    if n_actions == 4:
        assert rep.total_dense == 9_345_024
    # count_weights on an unpruned network: every product is significant
    assert dl.count_weights(net).total_significant == rep.total_dense


def test_count_weights_after_pruning_counts_only_kept_weights():
    torch.manual_seed(15)
    net = small_conv_net(3)
    dl.prune_network(net, 0.75)
    rep = dl.count_weights(net)
    # every input non-zero: each kept weight meets as many inputs as a dense one would
    ones = torch.ones(1, *net.input_shape)
    x = ones * net.input_scale
    want = []
    with torch.no_grad():
        for m in net.body:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                want.append(brute_pairs(m, x)[0])
            x = torch.ones_like(m(x))  # all non-zero inputs for the next layer
    assert [l.significant for l in rep.layers] == want
    assert rep.total_significant < 0.3 * rep.total_dense


def test_report_totals_and_combine():
    names = ["conv1", "fc1"]
    a = dl.MultiplicationReport.from_counts(names, [10, 4], [[3, 1], [5, 2]], label="a")
    b = dl.MultiplicationReport.from_counts(names, [10, 4], [[1, 0]], label="a")
    assert a.steps == 2 and a.total_dense == 28 and a.total_significant == 11
    assert a.reduction == pytest.approx(28 / 11)
    c = dl.core.combine([a, b])
    assert c.steps == 3 and c.total_dense == 42 and c.total_significant == 12
    assert c.per_step.tolist() == [[3, 1], [5, 2], [1, 0]]
    d = a.to_dict()
    assert d["layers"] == [{"name": "conv1", "dense": 20, "significant": 8},
                           {"name": "fc1", "dense": 8, "significant": 3}]
    with pytest.raises(ValueError):
        dl.core.combine([])
