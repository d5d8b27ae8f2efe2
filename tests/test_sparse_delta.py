"""The sparse backend of DeltaNetwork gives the dense-backed path's outputs and counts."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import deltalearn as dl
from _helpers import small_conv_net
from test_delta import random_walk

STEPS = 60


def dilated_pool_net() -> nn.Sequential:
    """Conv layers with dilation, padding 2, no bias and a max-pool between them: the scatter's
    geometry beyond the Nature DQN's (and a chain that is not a QNetwork)."""
    body = nn.Sequential(
        nn.Conv2d(3, 5, kernel_size=3, stride=1, padding=2, dilation=2, bias=False), nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Conv2d(5, 4, kernel_size=(2, 3), stride=(1, 2), padding=(1, 0)), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 7 * 2, 5),
    )
    body.input_shape = (3, 12, 12)
    return body


NETS = {
    "conv": lambda: small_conv_net(3),
    "mlp": lambda: dl.mlp_qnet(6, 3, hidden=(32, 24)),
    "dilated-pool": dilated_pool_net,
}


def pruned(net: nn.Module, sparsity: float = 0.6, seed: int = 0) -> nn.Module:
    """Zero a random share of every weight layer's weights, so fan-outs differ per input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(torch.rand(m.weight.shape, generator=g) >= sparsity)
    return net


def replay(net: nn.Module, seq, threshold, backend: str, reset_at: int | None = None,
           rows=None, fused: bool = True, **kw) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Q-values per step and the summed counts (batch, layers) of one backend over ``seq``;
    ``fused=False`` makes the sparse backend replay the chain layer by layer (its general path)."""
    delta = dl.DeltaNetwork(net, threshold, backend=backend, **kw)
    if backend == "sparse":
        delta._engine.use_fused = fused
    outs, total = [], 0
    for t, obs in enumerate(seq):
        if t == reset_at:
            delta.reset(rows)
        outs.append(delta(obs))
        total = total + delta.last_counts
    return outs, total


def assert_same(net, seq, threshold, atol, reset_at=None, rows=None, **kw) -> None:
    ref, ref_counts = replay(net, seq, threshold, "dense", reset_at, rows)
    out, counts = replay(net, seq, threshold, "sparse", reset_at, rows, **kw)
    assert counts.dtype == torch.int64 and counts.shape == ref_counts.shape
    for t, (a, b) in enumerate(zip(out, ref)):
        assert torch.allclose(a, b, atol=atol, rtol=0), f"step {t}: max |dQ| {float((a - b).abs().max()):.2e}"
    for row in range(counts.shape[0]):
        assert dl.counts_close(counts[row].tolist(), ref_counts[row].tolist()), (counts[row], ref_counts[row])


@pytest.mark.parametrize("kind", sorted(NETS))
@pytest.mark.parametrize("batch", [1, 4])
def test_threshold_zero_matches_dense_backend(kind, batch):
    torch.manual_seed(1)
    net = pruned(NETS[kind]().eval())
    seq = random_walk((batch, *net.input_shape), STEPS, 0.05, frac_changing=0.3, seed=2)
    assert_same(net, seq, 0.0, atol=1e-4, reset_at=STEPS // 2, rows=[0] if batch == 1 else [1, 3])


@pytest.mark.parametrize("kind", ["conv", "mlp"])
def test_fused_and_general_paths_agree(kind):
    """The whole-step compiled path and the layer-by-layer chain replay: same outputs, same counts."""
    net = pruned(NETS[kind]().eval(), seed=3)
    seq = random_walk((4, *net.input_shape), STEPS, 0.05, frac_changing=0.4, seed=7)
    ths = [0.01 * (k + 1) for k in range(len(dl.layer_names(net)))]
    fused, fused_counts = replay(net, seq, ths, "sparse", reset_at=25, rows=[2])
    general, general_counts = replay(net, seq, ths, "sparse", reset_at=25, rows=[2], fused=False)
    for a, b in zip(fused, general):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)
    assert torch.equal(fused_counts, general_counts)
    assert_same(net, seq, ths, atol=1e-4, reset_at=25, rows=[2], fused=False)


def test_which_chains_take_the_fused_path():
    """Conv/Linear/ReLU/Flatten chains (a QNetwork or a plain Sequential) run fused; pooling or
    another activation falls back to the general path."""
    assert dl.DeltaNetwork(small_conv_net(3), 0.0, backend="sparse")._engine.plan is not None
    plain = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    assert dl.DeltaNetwork(plain, 0.0, backend="sparse")._engine.plan == (None, [(False, False), (True, True)])
    assert dl.DeltaNetwork(dilated_pool_net(), 0.0, backend="sparse")._engine.plan is None
    tanh = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    assert dl.DeltaNetwork(tanh, 0.0, backend="sparse")._engine.plan is None


def test_fused_path_takes_any_observation_dtype_the_network_does():
    """Integer frames other than uint8 are cast as the QNetwork's preprocessing casts them."""
    net = pruned(small_conv_net(3).eval())
    frames = [torch.randint(0, 200, (2, *net.input_shape)) for _ in range(5)]
    for dtype in (torch.uint8, torch.int16):
        seq = [f.to(dtype) for f in frames]
        assert_same(net, seq, 0.0, atol=1e-4)


def test_fused_plain_sequential_matches_and_needs_float32():
    torch.manual_seed(5)
    plain = pruned(nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 2, stride=2), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(4 * 3 * 3, 5), nn.ReLU(), nn.Linear(5, 2)).eval())
    seq = random_walk((2, 2, 6, 6), 30, 0.05, frac_changing=0.3, seed=8)
    assert_same(plain, seq, 0.0, atol=1e-4, reset_at=10, rows=[1])
    delta = dl.DeltaNetwork(plain, 0.0, backend="sparse")
    delta(seq[0])
    with pytest.raises(TypeError, match='float32.*backend="dense"'):
        delta(seq[1].double())


@pytest.mark.parametrize("kind", sorted(NETS))
@pytest.mark.parametrize("crossover", [0.0, 1.0])
def test_per_layer_thresholds_both_kernels(kind, crossover):
    """crossover 0 sends every layer's delta through the dense fallback, 1 through the scatter."""
    torch.manual_seed(3)
    net = pruned(NETS[kind]().eval(), seed=1)
    n = len(dl.layer_names(net))
    seq = random_walk((4, *net.input_shape), STEPS, 0.05, frac_changing=0.5, seed=4)
    ths = [0.02 * (k + 1) for k in range(n)]
    for fused in (True, False):
        assert_same(net, seq, ths, atol=1e-4, reset_at=20, rows=torch.tensor([True, False, False, True]),
                    crossover=crossover, fused=fused)


def test_naive_variant_matches():
    net = pruned(small_conv_net(3).eval())
    seq = random_walk((2, *net.input_shape), STEPS, 0.05, frac_changing=0.3, seed=5)
    dense = dl.DeltaNetwork(net, 0.05, drift_free=False)
    sparse = dl.DeltaNetwork(net, 0.05, drift_free=False, backend="sparse")
    for obs in seq:
        assert torch.allclose(dense(obs), sparse(obs), atol=1e-4, rtol=0)
        assert dl.counts_close(dense.last_counts.sum(0).tolist(), sparse.last_counts.sum(0).tolist())


@pytest.fixture(scope="module")
def breakout():
    net = dl.agent_at("Breakout", 0.79).net.eval()
    obs = torch.as_tensor(dl.load_trajectory("Breakout")["observations"][:103])
    return net, obs


@pytest.mark.parametrize("threshold", [0.0, 0.001])
@pytest.mark.parametrize("batch", [1, 4])
def test_breakout_episode(breakout, threshold, batch):
    """The shipped agent on its recorded episode; batch 4 = four streams shifted by one step."""
    net, obs = breakout
    seq = [obs[t:t + batch] for t in range(100)]
    ref, ref_counts = replay(net, seq, threshold, "dense", reset_at=50, rows=[batch - 1])
    out, counts = replay(net, seq, threshold, "sparse", reset_at=50, rows=[batch - 1])
    worst = max(float((a - b).abs().max()) for a, b in zip(out, ref))
    assert worst < 1e-4
    assert all(torch.equal(a.argmax(1), b.argmax(1)) for a, b in zip(out, ref))
    for row in range(batch):
        assert dl.counts_close(counts[row].tolist(), ref_counts[row].tolist()), (counts[row], ref_counts[row])


def test_count_false_leaves_no_counts_and_same_output(breakout):
    net, obs = breakout
    a, b = dl.DeltaNetwork(net, 0.001, backend="sparse"), dl.DeltaNetwork(net, 0.001, backend="sparse")
    for t in range(5):
        assert torch.equal(a(obs[t:t + 1], count=False), b(obs[t:t + 1]))
    assert a.last_counts is None and b.last_counts.shape == (1, 5)


@pytest.mark.parametrize("make, layer", [
    (lambda: nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)), "conv1"),
    (lambda: nn.Sequential(nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).half(), "conv1"),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(144, 8), nn.ReLU(), nn.Linear(8, 2)).double(), "fc1"),
])
def test_unsupported_layer_fails_in_one_line(make, layer):
    with pytest.raises(TypeError) as e:
        dl.DeltaNetwork(make(), 0.01, backend="sparse")
    msg = str(e.value)
    assert "\n" not in msg and f"layer {layer}" in msg and 'backend="dense"' in msg
    dl.DeltaNetwork(make(), 0.01, backend="dense")  # the reference path still serves it


def test_bad_backend_and_crossover():
    net = small_conv_net(3)
    with pytest.raises(ValueError, match="backend must be 'dense' or 'sparse'"):
        dl.DeltaNetwork(net, 0.0, backend="numba")
    with pytest.raises(ValueError, match="crossover"):
        dl.DeltaNetwork(net, 0.0, backend="sparse", crossover=1.5)
    with pytest.raises(ValueError, match="only applies to backend='sparse'"):
        dl.DeltaNetwork(net, 0.0, crossover=0.5)


def test_input_memory_layout_may_change_between_steps():
    """A conv layer keeps its references in the layout of its first input; later inputs in the
    other layout (channels_last vs contiguous) are read correctly."""
    net = pruned(dilated_pool_net().eval())
    seq = random_walk((2, *net.input_shape), 20, 0.05, frac_changing=0.3, seed=6)
    seq = [x.contiguous(memory_format=torch.channels_last) if t % 3 == 0 else x for t, x in enumerate(seq)]
    assert_same(net, seq, 0.0, atol=1e-4)


def byte_frames(batch: int, steps: int, seed: int, shape=(4, 8, 8), frac: float = 0.05) -> list[torch.Tensor]:
    """uint8 frames where a few bytes change per step, some by one level, some jump (as in Atari frames)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (batch, *shape), generator=g, dtype=torch.uint8)
    out = [x.clone()]
    for _ in range(steps - 1):
        x = x.clone()
        change = torch.rand(x.shape, generator=g) < frac
        new = torch.where(torch.rand(x.shape, generator=g) < 0.5, x.long() + 1, torch.randint(0, 256, x.shape, generator=g))
        x[change] = new[change].clamp(0, 255).to(torch.uint8)
        out.append(x)
    return out


def byte_net(hw: int) -> nn.Module:
    body = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2), nn.ReLU(), nn.Conv2d(6, 8, 2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * ((hw - 3) // 2) ** 2, 5), nn.ReLU(), nn.Linear(5, 3))
    return pruned(dl.QNetwork(dl.core.NetworkSpec("bytes", 3), body, (4, hw, hw), input_scale=1 / 255).eval(), seed=4)


@pytest.mark.parametrize("hw", [8, 9])  # 8x8: the frame is compared eight bytes at a time; 9x9: byte by byte
@pytest.mark.parametrize("threshold", [0.0, [0.003, 0.01, 0.0, 0.02]])
def test_uint8_frames_compare_changed_bytes_only(hw, threshold):
    """The first layer's uint8 shortcut (only changed or not exactly referenced bytes are tested)
    gives the dense path's outputs and counts, at batch 4, with per-layer thresholds and reset(rows)."""
    torch.manual_seed(0)
    net = byte_net(hw)
    seq = byte_frames(4, STEPS, seed=hw, shape=(4, hw, hw))
    assert dl.DeltaNetwork(net, 0.0, backend="sparse")._engine.plan is not None
    assert_same(net, seq, threshold, atol=1e-4, reset_at=30, rows=[1, 3])
    # a float frame midway turns the shortcut off for good; the results stay the dense path's
    mixed = [x.float() if t == 20 else x for t, x in enumerate(seq)]
    assert_same(net, mixed, threshold, atol=1e-4, reset_at=30, rows=[0])


def test_full_reset_keeps_the_packed_pools_and_starts_over():
    """reset() keeps the packed weights (packing a Nature DQN took ~20 ms, once per episode before);
    the steps after it equal a new network's exactly, the uint8 shortcut a float frame turned off
    is back, and a batch of another size gets new pools."""
    net = byte_net(8)
    seq = byte_frames(4, 40, seed=3)
    ths = [0.003, 0.01, 0.0, 0.02]
    d = dl.DeltaNetwork(net, ths, backend="sparse")
    for t, x in enumerate(seq[:20]):
        d(x.float() if t == 10 else x)
    pools = d._engine.fused
    assert not pools.u8
    d.reset()
    new = dl.DeltaNetwork(net, ths, backend="sparse")
    for x in seq[20:]:
        assert torch.equal(d(x), new(x))
        assert torch.equal(d.last_counts, new.last_counts)
    assert d._engine.fused is pools and pools.u8
    d.reset()
    assert torch.equal(d(seq[0][:2]), dl.DeltaNetwork(net, ths, backend="sparse")(seq[0][:2]))
    assert d._engine.fused is not pools and d.batch_size == 2


@pytest.mark.parametrize("game", dl.study.SIX_GAMES)
def test_every_games_table_agent_on_its_recorded_episode(game):
    """Each of the six games' table agent, on the first 60 steps of its recorded episode, two streams
    (the second 30 steps ahead) and a reset of one midway: threshold 0 gives the dense-backed path's
    outputs within 1e-4; at the table threshold the greedy actions agree (or the top two Q-values are
    within 1e-3) and Q within 1e-3. Counts match within ``counts_close`` in both."""
    sparsity, threshold = dl.study.table_setting(game)
    net = dl.agent_at(game, sparsity).net.eval()
    obs = torch.as_tensor(dl.load_trajectory(game)["observations"][:90])
    seq = [obs[[t, t + 30]] for t in range(60)]
    for th in (0.0, threshold):
        ref, ref_counts = replay(net, seq, th, "dense", reset_at=40, rows=[1])
        out, counts = replay(net, seq, th, "sparse", reset_at=40, rows=[1])
        worst = max(float((a - b).abs().max()) for a, b in zip(out, ref))
        assert worst < (1e-4 if th == 0 else 1e-3), (game, th, worst)
        for a, b in zip(out, ref):
            differ = a.argmax(1) != b.argmax(1)
            top2 = b.topk(2, dim=1).values
            assert bool(((top2[:, 0] - top2[:, 1])[differ] <= 1e-3).all()), (game, th)
        for row in range(2):
            assert dl.counts_close(counts[row].tolist(), ref_counts[row].tolist()), (game, th, counts[row])
