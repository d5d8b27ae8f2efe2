"""Delta networks: exact at threshold 0, bounded error (no drift) at threshold > 0."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import deltalearn as dl
from _helpers import small_conv_net

STEPS = 200


def random_walk(shape, steps, step_size, frac_changing=1.0, seed=0, drift=0.0):
    """A seeded random walk: each step moves a random ``frac_changing`` of the elements."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    out = [x.clone()]
    for _ in range(steps - 1):
        move = torch.randn(shape, generator=g) * step_size + drift
        if frac_changing < 1.0:
            move = move * (torch.rand(shape, generator=g) < frac_changing)
        x = x + move
        out.append(x.clone())
    return out


def layer_inputs(delta: dl.DeltaNetwork, obs: torch.Tensor) -> list[torch.Tensor]:
    """The input each weight layer of ``delta`` currently sees: the preprocessed observation
    for layer 0, and the delta net's own propagated activation (e.g. relu(z) of the previous
    layer, flattened where the network flattens) for deeper layers."""
    ins = []

    def record(k, m, x):
        ins.append(x)
        return delta.z[k]

    delta.chain.run(obs, record)
    return ins


NETS = {
    "conv": lambda: small_conv_net(3),
    "mlp": lambda: dl.mlp_qnet(6, 3, hidden=(32, 24)),
    "sequential": lambda: _plain(small_conv_net(3, input_scale=1.0).body, (2, 10, 10)),
}


def _plain(body: nn.Sequential, input_shape) -> nn.Sequential:
    body.input_shape = input_shape  # only for the tests' bookkeeping
    return body


@pytest.mark.parametrize("kind", sorted(NETS))
@pytest.mark.parametrize("frac_changing", [1.0, 0.3])
def test_threshold_zero_equals_dense_with_row_reset(kind, frac_changing):
    torch.manual_seed(1)
    net = NETS[kind]().eval()
    batch = 3
    seq = random_walk((batch, *net.input_shape), STEPS, 0.05, frac_changing, seed=2)
    delta = dl.DeltaNetwork(net, threshold=0.0)
    new_episode = torch.randn(net.input_shape, generator=torch.Generator().manual_seed(3)) * 2
    worst = 0.0
    totals = [0, 0]
    with torch.no_grad():
        for t, obs in enumerate(seq):
            if t >= STEPS // 2:
                # row 1 started a new episode at STEPS//2: far away from its old stream
                obs = obs.clone()
                obs[1] = obs[1] + new_episode
            if t == STEPS // 2:
                delta.reset([1])
            q_delta = delta(obs)
            q_dense = net(obs)
            worst = max(worst, float((q_delta - q_dense).abs().max()))
            torch.testing.assert_close(q_delta, q_dense, rtol=1e-4, atol=1e-4,
                                       msg=f"step {t}: delta output differs from dense")
            dense_counts = torch.as_tensor(dl.count_significant(net, obs).per_step)
            if t == 0:
                # the first step is a dense pass: counts equal the dense network's significant ones
                assert torch.equal(delta.last_counts, dense_counts)
            elif t == STEPS // 2:
                # the reset row does a dense pass, the others only send changes
                assert torch.equal(delta.last_counts[1], dense_counts[1])
                if frac_changing < 1.0:
                    assert (delta.last_counts[[0, 2], 0] < dense_counts[[0, 2], 0]).all()
            totals[0] += int(delta.last_counts[:, 0].sum())
            totals[1] += int(dense_counts[:, 0].sum())
    assert worst < 1e-4
    if frac_changing < 1.0:
        # only ~30% of the inputs change per step: the first layer does ~30% of the dense work
        assert totals[0] < 0.4 * totals[1]


def test_reset_all_rows_restarts_and_batch_mismatch_is_an_error():
    net = dl.mlp_qnet(4, 2, hidden=(8,)).eval()
    delta = dl.DeltaNetwork(net, 0.0)
    x = torch.randn(2, 4)
    delta(x)
    with pytest.raises(ValueError, match="batch of 3 observations"):
        delta(torch.randn(3, 4))
    delta.reset()
    q = delta(torch.randn(3, 4) + 1)
    assert q.shape == (3, 2) and delta.batch_size == 3


@pytest.mark.parametrize("kind", sorted(NETS))
@pytest.mark.parametrize("threshold", [0.05, [0.1, 0.02, 0.03, 0.01]])
def test_reference_stays_within_threshold(kind, threshold):
    torch.manual_seed(4)
    net = NETS[kind]().eval()
    n_layers = len(dl.weight_layers(net))
    if isinstance(threshold, list):
        threshold = threshold[:n_layers]
    ths = threshold if isinstance(threshold, list) else [threshold] * n_layers
    seq = random_walk((2, *net.input_shape), STEPS, 0.02, seed=5)
    delta = dl.DeltaNetwork(net, threshold=threshold)
    assert delta.thresholds == pytest.approx(ths)
    max_gap = [0.0] * n_layers
    with torch.no_grad():
        for obs in seq:
            q = delta(obs)
            ins = layer_inputs(delta, obs)
            assert len(ins) == n_layers == len(delta.x_ref)
            # layer 0 against the true (preprocessed) input, exactly as the network scales it
            for k, (true_in, ref) in enumerate(zip(ins, delta.x_ref)):
                gap = float((true_in - ref).abs().max())
                assert gap <= ths[k] + 1e-5, f"layer {k}: |input - x_ref| = {gap} > threshold {ths[k]}"
                max_gap[k] = max(max_gap[k], gap)
            # the output is the last layer's accumulated pre-activation
            torch.testing.assert_close(q, delta.z[-1])
    # the bound is not trivially met by a dense pass: references really lag behind
    assert max_gap[0] > ths[0] / 2


def seen_input(delta: dl.DeltaNetwork) -> torch.Tensor:
    """The input the first (Linear, tall) layer has effectively received, recovered from its
    accumulated pre-activation: z0 = W @ seen + b, solved by least squares in float64."""
    w = delta.weights[0].double()
    rhs = (delta.z[0].double() - delta.biases[0].double()).T
    return torch.linalg.lstsq(w, rhs).solution.T.float()


def test_drift_free_does_not_drift_but_naive_does():
    """Slow random walk: every single step's change is below the threshold. The naive variant
    compares with the previous input, so sub-threshold changes are lost for good and the
    first layer's view of the input drifts away; the drift-free variant keeps it within t."""
    torch.manual_seed(6)
    net = dl.mlp_qnet(6, 3, hidden=(32, 32)).eval()
    t = 0.05
    seq = random_walk((2, 6), 300, 0.005, seed=7, drift=0.003)
    steps = torch.stack([b - a for a, b in zip(seq, seq[1:])])
    assert steps.abs().max() < t  # no single step is above the threshold
    free = dl.DeltaNetwork(net, t, drift_free=True)
    naive = dl.DeltaNetwork(net, t, drift_free=False)
    free_gap, naive_gap, naive_out_err, free_out_err = [], [], [], []
    with torch.no_grad():
        for obs in seq:
            q_dense = net(obs)
            q_free, q_naive = free(obs), naive(obs)
            free_gap.append(float((seen_input(free) - obs).abs().max()))
            naive_gap.append(float((seen_input(naive) - obs).abs().max()))
            free_out_err.append(float((q_free - q_dense).abs().max()))
            naive_out_err.append(float((q_naive - q_dense).abs().max()))
    assert max(free_gap) <= t + 1e-4, "drift-free delta net drifted beyond the threshold"
    assert naive_gap[-1] > 4 * t, "naive delta net was expected to drift"
    # the naive error grows with time; the drift-free one stays bounded
    assert naive_gap[-1] > 3 * naive_gap[50]
    assert max(naive_out_err[-50:]) > 3 * max(free_out_err)
