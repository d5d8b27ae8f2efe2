"""Q-networks: the Nature DQN for Atari frames and a small MLP for vector observations.

Both are a fixed input scaling followed by an ``nn.Sequential`` of Conv2d / Linear /
ReLU / Flatten layers, a :class:`QNetwork` that knows its input shape. Counting, pruning and
delta networks also take a reader's own module (see :mod:`deltalearn.core.chain`); the copying
and loading helpers here work on any module.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["QNetwork", "NetworkSpec", "nature_dqn", "mlp_qnet", "build_network", "MODELS", "copy_weights",
           "plain_copy", "load_state", "WeightsMismatch"]

MODELS = ("nature-dqn", "mlp")


@dataclass(frozen=True)
class NetworkSpec:
    """Everything needed to rebuild a network; stored in checkpoints to catch mismatches."""

    model: str
    """``"nature-dqn"`` or ``"mlp"``."""
    n_actions: int
    """Number of Q-values (one per discrete action)."""
    obs_dim: int = 0
    """Observation length for the MLP (unused by the Nature DQN)."""
    hidden: tuple[int, ...] = ()
    """Hidden layer widths for the MLP (unused by the Nature DQN)."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NetworkSpec":
        return cls(model=str(d["model"]), n_actions=int(d["n_actions"]),
                   obs_dim=int(d.get("obs_dim", 0)), hidden=tuple(int(h) for h in d.get("hidden", ())))


class QNetwork(nn.Module):
    """``Q(s) = body(s * input_scale)``; ``body`` is a plain Sequential of supported layers.

    Keeping the scaling outside ``body`` lets uint8 frames be stored and fed as-is while
    the delta and counting code see exactly the float input of the first layer.
    """

    def __init__(self, spec: NetworkSpec, body: nn.Sequential, input_shape: tuple[int, ...],
                 input_scale: float = 1.0) -> None:
        super().__init__()
        self.spec = spec
        self.body = body
        self.input_shape = tuple(input_shape)
        self.input_scale = float(input_scale)

    def preprocess(self, obs: torch.Tensor) -> torch.Tensor:
        """Convert raw observations (any dtype, batched) to the float input of ``body``."""
        if tuple(obs.shape[1:]) != self.input_shape:
            raise ValueError(
                f"observation batch has shape {tuple(obs.shape)}; expected (batch, "
                f"{', '.join(map(str, self.input_shape))}) for {self.spec.model}")
        x = obs.to(dtype=torch.float32)
        return x * self.input_scale if self.input_scale != 1.0 else x

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.body(self.preprocess(obs))

    @property
    def n_actions(self) -> int:
        return self.spec.n_actions


def nature_dqn(n_actions: int) -> QNetwork:
    """The network of Mnih et al. (2015): 3 conv + 2 dense layers on 4 stacked 84x84 frames."""
    if n_actions < 1:
        raise ValueError(f"n_actions must be >= 1, got {n_actions}")
    body = nn.Sequential(
        nn.Conv2d(4, 32, kernel_size=8, stride=4), nn.ReLU(),
        nn.Conv2d(32, 64, kernel_size=4, stride=2), nn.ReLU(),
        nn.Conv2d(64, 64, kernel_size=3, stride=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 512), nn.ReLU(),
        nn.Linear(512, n_actions),
    )
    return QNetwork(NetworkSpec("nature-dqn", n_actions), body, (4, 84, 84), input_scale=1 / 255)


def mlp_qnet(obs_dim: int, n_actions: int, hidden: tuple[int, ...] = (128, 128)) -> QNetwork:
    """A ReLU MLP Q-network for vector observations such as CartPole's 4 numbers."""
    if obs_dim < 1 or n_actions < 1 or any(h < 1 for h in hidden):
        raise ValueError(f"sizes must be positive: obs_dim={obs_dim}, n_actions={n_actions}, hidden={hidden}")
    layers: list[nn.Module] = []
    width = obs_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, n_actions))
    spec = NetworkSpec("mlp", n_actions, obs_dim=obs_dim, hidden=tuple(hidden))
    return QNetwork(spec, nn.Sequential(*layers), (obs_dim,))


def build_network(spec: NetworkSpec) -> QNetwork:
    """Rebuild an (untrained) network from its spec."""
    if spec.model == "nature-dqn":
        return nature_dqn(spec.n_actions)
    if spec.model == "mlp":
        return mlp_qnet(spec.obs_dim, spec.n_actions, spec.hidden)
    raise ValueError(f"unknown model {spec.model!r}; known models: {', '.join(MODELS)}")


def _effective_names(m: nn.Module) -> list[str]:
    """The parameters and buffers of ``m`` itself as its forward sees them: a pruned ``weight``
    (stored as ``weight_orig`` and ``weight_mask``) counts as ``weight``."""
    params = [n[:-len("_orig")] if n.endswith("_orig") else n for n, p in m._parameters.items() if p is not None]
    return params + [n for n, b in m._buffers.items() if b is not None and not n.endswith("_mask")]


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy the effective (masked, if pruned) weights, biases and buffers of ``src`` into ``dst``,
    a network of the same structure (any module: they are matched by name)."""
    dst_modules = dict(dst.named_modules())
    with torch.no_grad():
        for name, a in src.named_modules():
            b = dst_modules.get(name)
            if b is None or type(a) is not type(b):
                raise WeightsMismatch(f"cannot copy weights: {type(src).__name__} has {name or 'the root'} "
                                      f"({type(a).__name__}) where {type(dst).__name__} has "
                                      f"{'nothing' if b is None else type(b).__name__}")
            for p in _effective_names(a):
                getattr(b, p).copy_(getattr(a, p))


def plain_copy(net: nn.Module) -> nn.Module:
    """An independent copy with plain (unpruned-structure) weights of the same effective values,
    in eval mode, its parameters trainable.

    Any module works. ``copy.deepcopy`` alone fails on a pruned module after a forward pass with
    gradients (its ``weight`` is then a computed tensor), so such tensors are copied detached, and
    the copy's pruning masks are folded into its weights.
    """
    import copy

    from torch.nn.utils import prune

    memo: dict[int, Any] = {}
    for m in net.modules():
        for v in vars(m).values():
            if isinstance(v, torch.Tensor) and not v.is_leaf:
                memo[id(v)] = v.detach().clone()
    out = copy.deepcopy(net, memo)
    for m in out.modules():
        for name in [n[:-len("_mask")] for n in list(m._buffers) if n.endswith("_mask")]:
            if f"{name}_orig" in m._parameters:
                prune.remove(m, name)
    for p in out.parameters():
        p.grad = None
    return out.requires_grad_(True).eval()


class WeightsMismatch(ValueError):
    """A state dict whose tensors do not fit the network it is loaded into."""


def load_state(net: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load a state dict, pruned (``weight_orig``/``weight_mask``) or plain, into ``net`` (any module)."""
    from torch.nn.utils import prune

    for key in state:
        if key.endswith("_mask"):
            path, _, param = key[:-len("_mask")].rpartition(".")
            try:
                m = net.get_submodule(path)
            except AttributeError:
                continue  # load_state_dict names the missing module below
            if not hasattr(m, f"{param}_mask") and isinstance(m._parameters.get(param), nn.Parameter):
                prune.identity(m, param)
    try:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as e:
        what = net.spec if isinstance(net, QNetwork) else type(net).__name__
        raise WeightsMismatch(f"weights do not fit network {what}: {str(e).splitlines()[0]}") from None
    return net
