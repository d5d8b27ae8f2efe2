"""Counting, pruning and delta networks on a reader's own Q-network, not only our QNetwork.

The networks are written here as their authors would: a CleanRL-style DQN (a Sequential inside a
module that divides the frames by 255), a Stable-Baselines3-style NatureCNN feature extractor with
a separate linear head, an MLP with Tanh written with functional calls, and a small conv net with
pooling and ``x.view(x.size(0), -1)``. Dense counts are checked against torch's FlopCounterMode,
significant counts against counts of the products themselves, on the inputs each layer receives in
the network's own forward (caught with hooks, independent of deltalearn's tracing).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import deltalearn as dl
from deltalearn.core.chain import UnsupportedNetwork
from _helpers import brute_pairs


def conv_side(frame: int) -> int:
    """Side of the Nature DQN's last feature map for square frames of side ``frame``."""
    return ((frame - 8) // 4 + 1 - 4) // 2 + 1 - 2


class CleanRLQNetwork(nn.Module):
    """As in CleanRL's dqn_atari.py: the whole net in ``self.network``, frames scaled in forward."""

    def __init__(self, n_actions: int, frame: int = 84) -> None:
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * conv_side(frame) ** 2, 512), nn.ReLU(),
            nn.Linear(512, n_actions),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x / 255.0)


class NatureCNN(nn.Module):
    """As Stable-Baselines3's feature extractor: convolutions, then a linear layer to 512 features."""

    def __init__(self, frame: int = 84, features_dim: int = 512) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(4, 32, kernel_size=8, stride=4, padding=0), nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2, padding=0), nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=3, stride=1, padding=0), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            n_flatten = self.cnn(torch.zeros(1, 4, frame, frame)).shape[1]
        self.linear = nn.Sequential(nn.Linear(n_flatten, features_dim), nn.ReLU())

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.linear(self.cnn(observations))


class SB3QNetwork(nn.Module):
    """As Stable-Baselines3's DQN QNetwork: a feature extractor and a separate ``q_net`` head."""

    def __init__(self, n_actions: int, frame: int = 84) -> None:
        super().__init__()
        self.features_extractor = NatureCNN(frame)
        self.q_net = nn.Sequential(nn.Linear(512, n_actions))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.q_net(self.features_extractor(obs.float() / 255.0))


class TanhMLP(nn.Module):
    """An MLP with Tanh, written with functional calls."""

    def __init__(self, obs_dim: int = 8, n_actions: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(obs_dim, 64)
        self.fc2 = nn.Linear(64, 64)
        self.out = nn.Linear(64, n_actions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.fc1(x))
        x = torch.tanh(self.fc2(x))
        return self.out(x)


class PooledNet(nn.Module):
    """Pooling, LeakyReLU and an old-style ``view`` of the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.head = nn.Linear(8 * 2 * 2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.leaky_relu(self.conv(x), 0.1))
        x = F.avg_pool2d(torch.relu(self.conv2(x)), 2)
        return self.head(x.view(x.size(0), -1))


def frames(batch: int, frame: int, gen: torch.Generator, zero_frac: float = 0.7) -> torch.Tensor:
    """uint8 frames with many black (zero) pixels, as on an Atari screen."""
    x = torch.randint(1, 256, (batch, 4, frame, frame), generator=gen, dtype=torch.uint8)
    return x * (torch.rand(x.shape, generator=gen) >= zero_frac)


def sparse_floats(shape, gen: torch.Generator, zero_frac: float = 0.3) -> torch.Tensor:
    return torch.randn(shape, generator=gen) * (torch.rand(shape, generator=gen) >= zero_frac)


# name: (network at its true size, an input batch; small version for brute force, its input batch)
NETS = {
    "cleanrl": (lambda: CleanRLQNetwork(4), lambda g, b: frames(b, 84, g),
                lambda: CleanRLQNetwork(4, frame=36), lambda g, b: frames(b, 36, g)),
    "sb3": (lambda: SB3QNetwork(6), lambda g, b: frames(b, 84, g),
            lambda: SB3QNetwork(6, frame=36), lambda g, b: frames(b, 36, g)),
    "tanh-mlp": (TanhMLP, lambda g, b: sparse_floats((b, 8), g), TanhMLP, lambda g, b: sparse_floats((b, 8), g)),
    "pooled": (PooledNet, lambda g, b: sparse_floats((b, 3, 12, 12), g),
               PooledNet, lambda g, b: sparse_floats((b, 3, 12, 12), g)),
}


def make(kind: str, small: bool = False, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    big_net, big_obs, small_net, small_obs = NETS[kind]
    gen = torch.Generator().manual_seed(seed + 1)
    net, obs = (small_net, small_obs) if small else (big_net, big_obs)
    return net().eval(), obs(gen, 2)


def layer_inputs(net: nn.Module, obs: torch.Tensor) -> dict[nn.Module, torch.Tensor]:
    """The input of every Conv2d / Linear in the network's own forward, caught by hooks."""
    seen: dict[nn.Module, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.__setitem__(m, args[0].detach().clone()))
             for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            net(obs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def unfold_pairs(layer: nn.Module, x: torch.Tensor) -> list[int]:
    """(non-zero weight, non-zero input) pairs per sample through im2col, in float64: another
    route to the same number than deltalearn's convolution of masks."""
    wm = (layer.weight != 0).double()
    xm = (x != 0).double()
    if isinstance(layer, nn.Linear):
        return [int((wm * xm[b]).sum()) for b in range(x.shape[0])]
    cols = F.unfold(xm, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
    return [int((wm.flatten(1) @ cols[b]).sum()) for b in range(x.shape[0])]


@pytest.mark.parametrize("kind", sorted(NETS))
def test_dense_counts_equal_flop_counter(kind):
    net, obs = make(kind)
    example = obs[:1]
    with FlopCounterMode(display=False) as fc:
        net(example)
    per_module = fc.get_flop_counts()
    name_of = {m: n for n, m in net.named_modules()}
    root = type(net).__name__
    flops = [sum(per_module[f"{root}.{name_of[m]}"].values()) for m in dl.weight_layers(net)]
    assert dl.core.dense_counts(net, example) == [f // 2 for f in flops]
    report = dl.count_dense(net, example)
    assert report.total_dense == fc.get_total_flops() // 2 == report.total_significant
    assert [l.dense for l in report.layers] == [f // 2 for f in flops]
    weights_only = dl.count_weights(net, example).total_significant  # no zero weights yet
    if kind == "pooled":  # its first conv pads: products with the zero padding count as dense only
        assert weights_only < report.total_dense
    else:
        assert weights_only == report.total_dense
    assert report.steps == 1 and all(f > 0 for f in flops)


@pytest.mark.parametrize("kind", ["cleanrl", "sb3"])
def test_atari_style_nets_count_like_the_nature_dqn(kind):
    net, obs = make(kind)
    n_actions = 4 if kind == "cleanrl" else 6
    ours = dl.count_dense(dl.nature_dqn(n_actions))
    theirs = dl.count_dense(net, obs[:1])
    assert dl.layer_names(net) == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    assert [l.dense for l in theirs.layers] == [l.dense for l in ours.layers]


@pytest.mark.parametrize("kind", sorted(NETS))
def test_significant_counts_equal_brute_force_on_small_inputs(kind):
    net, obs = make(kind, small=True)
    dl.prune_network(net, 0.5)  # zero weights as well as zero inputs
    report = dl.count_significant(net, obs)
    seen = layer_inputs(net, obs)
    want = [brute_pairs(m, seen[m]) for m in dl.weight_layers(net)]
    assert report.per_step.T.tolist() == want
    assert report.steps == 2 and [l.significant for l in report.layers] == [sum(w) for w in want]
    out, counts = dl.core.forward_with_counts(net, obs)
    with torch.no_grad():
        assert torch.equal(out, net(obs))
    assert counts.tolist() == report.per_step.tolist()
    # zeros were skipped somewhere: fewer significant than dense products
    assert report.total_significant < report.total_dense


@pytest.mark.parametrize("kind", ["cleanrl", "sb3"])
def test_significant_counts_of_full_size_nets(kind):
    """On (1, 4, 84, 84) uint8 frames: every layer through im2col, the last one product by product."""
    net, obs = make(kind)
    dl.prune_network(net, 0.5)
    report = dl.count_significant(net, obs[:1])
    seen = layer_inputs(net, obs[:1])
    layers = dl.weight_layers(net)
    assert report.per_step[0].tolist() == [unfold_pairs(m, seen[m])[0] for m in layers]
    assert report.per_step[0, -1] == brute_pairs(layers[-1], seen[layers[-1]])[0]


@pytest.mark.parametrize("kind", sorted(NETS))
def test_delta_network_at_threshold_zero_equals_the_forward(kind):
    net, obs = make(kind)
    delta = dl.DeltaNetwork(net, threshold=0.0, example_input=obs[:1])
    gen = torch.Generator().manual_seed(7)
    x = obs.clone()
    with torch.no_grad():
        for t in range(8):
            q = delta(x)
            torch.testing.assert_close(q, net(x), rtol=1e-5, atol=1e-5, msg=f"step {t}")
            if t == 0:  # a dense pass: the counts of the network itself
                assert delta.last_counts.tolist() == dl.count_significant(net, x).per_step.tolist()
            # change a few inputs for the next step
            change = torch.rand(x.shape, generator=gen) < 0.05
            if x.dtype == torch.uint8:
                new = torch.randint(0, 256, x.shape, generator=gen, dtype=torch.uint8)
            else:
                new = x + torch.randn(x.shape, generator=gen)
            x = torch.where(change, new, x)
    assert delta.names == dl.layer_names(net)


@pytest.mark.parametrize("kind", sorted(NETS))
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_pruning_reaches_the_sparsity(kind, scope):
    net, obs = make(kind)
    dl.prune_network(net, 0.7, scope=scope)
    rep = dl.sparsity_report(net)
    if scope == "layer":
        assert rep.zeros == [round(0.7 * n) for n in rep.sizes]
    else:
        assert abs(sum(rep.zeros) - round(0.7 * sum(rep.sizes))) <= 1
    with torch.no_grad():
        before = net(obs)
    dl.make_permanent(net)
    assert not dl.core.is_pruned(net)
    with torch.no_grad():
        torch.testing.assert_close(net(obs), before)
    left = dl.count_weights(net, obs[:1]).total_significant / dl.count_dense(net, obs[:1]).total_dense
    # each layer keeps 30% of its weights, so about 30% of its products; one global cut spares some layers
    assert left < 0.31 if scope == "layer" else left < 0.9


@pytest.mark.parametrize("kind", ["cleanrl", "tanh-mlp"])
def test_copies_and_state_of_a_pruned_custom_net(kind):
    net, obs = make(kind)
    dl.prune_network(net, 0.6, include_last=False)
    net(obs).sum().backward()  # a forward with gradients: the pruned weights are computed tensors
    copy = dl.core.plain_copy(net)
    assert not dl.core.is_pruned(copy) and dl.core.is_pruned(net)
    assert all(p.requires_grad and p.grad is None for p in copy.parameters())
    with torch.no_grad():
        torch.testing.assert_close(copy(obs), net(obs), rtol=0, atol=0)
        dl.weight_layers(copy)[0].weight.zero_()  # independent of the original
        assert dl.weight_layers(net)[0].weight.abs().sum() > 0
    fresh = make(kind, seed=5)[0]
    dl.core.copy_weights(net, fresh)
    loaded = dl.core.load_state(make(kind, seed=6)[0], net.state_dict())
    assert dl.core.is_pruned(loaded)
    with torch.no_grad():
        torch.testing.assert_close(fresh(obs), net(obs), rtol=0, atol=0)
        torch.testing.assert_close(loaded(obs), net(obs), rtol=0, atol=0)
    with pytest.raises(dl.core.WeightsMismatch, match="TanhMLP|CleanRLQNetwork"):
        dl.core.load_state(make(kind)[0], {k: v[:1] for k, v in net.state_dict().items()})


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)) + x)


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(6, 2)

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.cat([h, h], dim=1))


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.fc = nn.LSTM(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.lstm(x)[0])


class Normalised(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(2 * 3 * 3, 2)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.fc(x)))


class NotAFlatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 2, 3), nn.Linear(9, 2)

    def forward(self, x):
        return self.fc(self.conv(x).reshape(-1, 9))


@pytest.mark.parametrize("cls, named", [
    (Residual, "operator.add"), (Concat, "torch.cat"), (Recurrent, "LSTM"), (Normalised, "BatchNorm2d"),
    (Shared, "'fc' twice"),
])
def test_unsupported_networks_are_refused_naming_the_operation(cls, named):
    net = cls()
    for call in (lambda: dl.weight_layers(net), lambda: dl.DeltaNetwork(net),
                 lambda: dl.prune_network(net, 0.5)):
        with pytest.raises(UnsupportedNetwork) as e:
            call()
        msg = str(e.value)
        assert named in msg and cls.__name__ in msg
    if cls is not Shared:
        assert "Supported:" in msg and "Conv2d and Linear" in msg
    assert not any(hasattr(m, "weight_mask") for m in net.modules())  # refused before pruning


def test_a_reshape_that_is_not_a_flatten_is_refused_when_run():
    net = NotAFlatten()
    assert dl.layer_names(net) == ["conv1", "fc1"]  # the structure traces
    with pytest.raises(UnsupportedNetwork, match=r"method \.reshape\(\).*\(2, 2, 3, 3\) into \(4, 9\)"):
        dl.count_significant(net, torch.randn(2, 1, 5, 5))


def test_a_custom_net_needs_an_example_input_for_dense_counts():
    with pytest.raises(ValueError, match="example_input .* TanhMLP, which has no input_shape"):
        dl.count_dense(TanhMLP())
    assert dl.count_dense(TanhMLP(), torch.zeros(1, 8)).total_dense == 8 * 64 + 64 * 64 + 64 * 3
