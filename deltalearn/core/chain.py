"""Any network as a chain: the straight line of operations that counting, pruning and delta walk.

Counting, pruning and :class:`~deltalearn.core.delta.DeltaNetwork` need to know, for every
Conv2d / Linear layer, the tensor that goes into it; a delta network also has to replace each
such layer by its own update. That is easy when a network's forward is a chain: every operation
takes the previous one's output and nothing else. :func:`trace_chain` reads that chain from a
module's ``forward`` with ``torch.fx`` (our :class:`~deltalearn.core.nets.QNetwork` is read
directly, since its input check cannot be traced), checks that every operation is one we can
reason about, and :meth:`Chain.run` replays it, handing each weight layer's input to a callback.

Supported: Conv2d and Linear (the layers that multiply and are counted), elementwise activations,
pooling, flattening the batch to ``(batch, features)``, and scaling or shifting by constants
(``x / 255.0``, ``x.float()``). A branch, a merge of two tensors (a residual ``+``, ``torch.cat``),
a recurrent layer or a normalisation layer is refused with an error naming it.
"""
from __future__ import annotations

import operator
import weakref
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from .nets import QNetwork

__all__ = ["Chain", "trace_chain", "UnsupportedNetwork"]

WeightCall = Callable[[int, nn.Module, torch.Tensor], torch.Tensor]
"""``(k, layer, x) -> output``: what a :class:`Chain` does at its ``k``-th weight layer."""

WEIGHT_MODULES = (nn.Conv2d, nn.Linear)
ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                      nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Identity)
POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)
ACTIVATION_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
                        F.softplus, F.hardtanh, F.hardswish, F.hardsigmoid, torch.tanh, F.tanh, torch.sigmoid,
                        F.sigmoid}
POOL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d, F.adaptive_max_pool2d, F.adaptive_avg_pool2d}
FLATTEN_FUNCTIONS = {torch.flatten, torch.reshape}
SCALE_FUNCTIONS = {operator.truediv, operator.mul, operator.add, operator.sub, torch.div, torch.true_divide,
                   torch.mul, torch.add, torch.sub}
ACTIVATION_METHODS = {"relu", "tanh", "sigmoid"}
FLATTEN_METHODS = {"flatten", "view", "reshape"}
SCALE_METHODS = {"div", "true_divide", "mul", "add", "sub"}
KEEP_METHODS = {"float", "to", "contiguous"}
SHAPE_METHODS = {"size", "dim"}

SUPPORTED = (
    "Conv2d and Linear (the layers that multiply); elementwise activations (modules "
    + ", ".join(c.__name__ for c in ACTIVATION_MODULES)
    + ", their torch.nn.functional forms and x.relu()/.tanh()/.sigmoid()); pooling ("
    + ", ".join(c.__name__ for c in POOL_MODULES)
    + " and F.max_pool2d/F.avg_pool2d); Flatten, torch.flatten or .view/.reshape to (batch, features); "
    "scaling or shifting by a constant number (x / 255.0, x * c, x - c); x.float() and x.to(torch.float32)"
)


class UnsupportedNetwork(TypeError):
    """A network whose forward is not a chain of operations deltalearn can count and delta-ize."""


class Chain:
    """A network's forward as a straight line of operations, with its weight layers marked.

    Built by :func:`trace_chain`. ``weights`` are the Conv2d / Linear modules in the order the
    forward calls them, ``names`` their short names (``conv1, ..., fc1, ...``).
    """

    def __init__(self, net: nn.Module, graph: fx.Graph, modules: dict[str, nn.Module],
                 flattens: set[fx.Node]) -> None:
        self.net_type = type(net).__name__
        nodes = list(graph.nodes)
        if nodes[0].op != "placeholder" or nodes[-1].op != "output":
            raise AssertionError("a chain's graph starts with its input and ends with its output")
        slot = {n: i for i, n in enumerate(nodes)}
        self._out = slot[nodes[-1].args[0]]
        self._slots = len(nodes)
        self.weights: list[nn.Module] = []
        # one entry per operation, its inputs resolved to slots once: replaying the chain is on
        # the hot path of every decision, and fx's generic argument mapping costs more than a layer
        self._program: list[tuple] = []
        for i, n in enumerate(nodes[1:-1], start=1):
            k = None
            if n.op == "call_module":
                fn = modules[n.target]
                if isinstance(fn, WEIGHT_MODULES):
                    k = len(self.weights)
                    self.weights.append(fn)
            elif n.op == "call_function":
                fn = n.target
            else:
                fn = _method_caller(n.target)
            refs = [(pos, slot[a]) for pos, a in enumerate(n.args) if isinstance(a, fx.Node)]
            kwrefs = [(key, slot[a]) for key, a in n.kwargs.items() if isinstance(a, fx.Node)]
            nested = len(refs) + len(kwrefs) != len(n.all_input_nodes)  # nodes inside a tuple or list
            self._program.append((i, fn, n, refs, kwrefs, nested, k, n in flattens, slot))
        self.names = _short_names(self.weights)

    def run(self, x: torch.Tensor, on_weight: WeightCall | None = None) -> torch.Tensor:
        """The network's output for ``x``; at weight layer ``k``, ``on_weight(k, layer, input)``
        gives the layer's output instead of ``layer(input)`` when a callback is given."""
        vals: list[Any] = [None] * self._slots
        vals[0] = x
        for i, fn, node, refs, kwrefs, nested, k, flat, slot in self._program:
            if nested:
                args = fx.node.map_arg(node.args, lambda a: vals[slot[a]])
                kwargs = fx.node.map_arg(node.kwargs, lambda a: vals[slot[a]])
            else:
                args = list(node.args)
                for pos, j in refs:
                    args[pos] = vals[j]
                kwargs = node.kwargs
                if kwrefs:
                    kwargs = dict(kwargs)
                    for key, j in kwrefs:
                        kwargs[key] = vals[j]
            if k is None:
                out = fn(*args, **kwargs)
            else:
                _check_rank(fn, args[0], node)
                out = fn(args[0]) if on_weight is None else on_weight(k, fn, args[0])
            if flat:
                _check_flatten(args[0], out, node, self.net_type)
            vals[i] = out
        return vals[self._out]

    def input_shapes(self, example: torch.Tensor) -> list[tuple[int, ...]]:
        """Per weight layer, the shape (without batch) of its input when the net runs ``example``."""
        shapes: list[tuple[int, ...]] = []

        def record(k: int, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
            shapes.append(tuple(x.shape[1:]))
            return m(x)

        with torch.no_grad():
            self.run(example, record)
        return shapes


def _method_caller(name: str) -> Callable[..., Any]:
    def call(obj: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(obj, name)(*args, **kwargs)
    return call


def _short_names(layers: list[nn.Module]) -> list[str]:
    names, n_conv, n_fc = [], 0, 0
    for m in layers:
        if isinstance(m, nn.Conv2d):
            n_conv += 1
            names.append(f"conv{n_conv}")
        else:
            n_fc += 1
            names.append(f"fc{n_fc}")
    return names


def _check_rank(m: nn.Module, x: torch.Tensor, node: fx.Node) -> None:
    want = 4 if isinstance(m, nn.Conv2d) else 2
    if x.dim() != want:
        raise UnsupportedNetwork(
            f"{type(m).__name__} {node.target!r} gets an input of shape {tuple(x.shape)}; counting needs "
            f"{'(batch, channels, height, width)' if want == 4 else '(batch, features)'}")


def _check_flatten(x: torch.Tensor, out: torch.Tensor, node: fx.Node, net_type: str) -> None:
    if out.dim() != 2 or out.shape[0] != x.shape[0]:
        raise UnsupportedNetwork(
            f"{net_type}.forward: {_describe(node)} turns shape {tuple(x.shape)} into {tuple(out.shape)}; "
            f"only flattening each row of the batch to (batch, features) is supported")


_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Chain]]" = weakref.WeakKeyDictionary()


def trace_chain(net: nn.Module) -> Chain:
    """The chain of operations of ``net``'s forward, checked; raises :class:`UnsupportedNetwork`.

    The result is cached per network and rebuilt when its submodules change.
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(net).__name__}")
    key = tuple((name, id(m)) for name, m in net.named_modules())
    hit = _CACHE.get(net)
    if hit is not None and hit[0] == key:
        return hit[1]
    if isinstance(net, QNetwork) and type(net).forward is QNetwork.forward:
        chain = _qnetwork_chain(net)
    else:
        chain = _traced_chain(net)
    if not chain.weights:
        raise UnsupportedNetwork(f"{type(net).__name__} has no Conv2d or Linear layer: nothing to count")
    _CACHE[net] = (key, chain)
    return chain


class _Preprocess:
    """``net.preprocess`` without a strong reference, so a cached chain does not keep its net alive."""

    def __init__(self, net: QNetwork) -> None:
        self._net = weakref.ref(net)

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        net = self._net()
        if net is None:
            raise RuntimeError("the network of this chain no longer exists")
        return net.preprocess(obs)


def _qnetwork_chain(net: QNetwork) -> Chain:
    """Our QNetwork: ``preprocess`` (its shape check cannot be traced), then the body's layers."""
    g = fx.Graph()
    h = g.call_function(_Preprocess(net), (g.placeholder("obs"),), name="preprocess")
    modules, flattens = {}, set()
    for name, m in net.body.named_children():
        target = f"body.{name}"
        if not isinstance(m, WEIGHT_MODULES + ACTIVATION_MODULES + POOL_MODULES + (nn.Flatten,)):
            raise UnsupportedNetwork(f"{type(net).__name__}.body: unsupported layer {target!r} "
                                     f"({type(m).__name__}). Supported: {SUPPORTED}")
        _check_module(m, target, type(net).__name__)
        modules[target] = m
        h = g.call_module(target, (h,))
        if isinstance(m, nn.Flatten):
            flattens.add(h)
    g.output(h)
    return Chain(net, g, modules, flattens)


def _traced_chain(net: nn.Module) -> Chain:
    where = f"{type(net).__name__}.forward"
    try:
        graph = fx.Tracer().trace(net)
    except Exception as e:  # fx raises many types; the cause is in the message
        raise UnsupportedNetwork(
            f"torch.fx could not trace {where} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            f"Counting and delta networks need a forward without data-dependent Python control flow, "
            f"made of: {SUPPORTED}") from e
    modules = dict(net.named_modules())
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise UnsupportedNetwork(f"{where} takes {len(inputs)} inputs ({', '.join(n.name for n in inputs)}); "
                                 f"only a forward of one observation batch is supported")
    current, helpers, flattens, seen = inputs[0], set(), set(), set()
    for node in graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            if node.args[0] is not current:
                raise UnsupportedNetwork(f"{where} must return the last operation's tensor alone, "
                                         f"got {node.args[0]!r}")
            break
        if _is_shape_helper(node, helpers):
            helpers.add(node)
            continue
        tensors = [a for a in node.all_input_nodes if a not in helpers]
        if node.op == "get_attr" or not tensors:
            raise _unsupported(node, where, " (a tensor that is not computed from the input)")
        if len(tensors) != 1:
            raise UnsupportedNetwork(
                f"{where}: unsupported operation {_describe(node)}, which combines {len(tensors)} tensors "
                f"({', '.join(a.name for a in tensors)}): a residual connection or merge. Each operation must "
                f"take the output of the one before it and nothing else. Supported: {SUPPORTED}")
        if tensors[0] is not current:
            raise UnsupportedNetwork(
                f"{where}: {_describe(node)} takes {tensors[0].name!r}, not the output of the operation "
                f"before it ({current.name!r}): a branch or skip connection. Only a chain is supported")
        _check_node(node, modules, where)
        if node.op == "call_module" and isinstance(modules[node.target], WEIGHT_MODULES):
            if node.target in seen:
                raise UnsupportedNetwork(f"{where} calls {node.target!r} twice (shared weights); "
                                         f"each weight layer may appear once")
            seen.add(node.target)
        if _is_flatten(node, modules):
            flattens.add(node)
        current = node
    return Chain(net, graph, {n.target: modules[n.target] for n in graph.nodes if n.op == "call_module"},
                 flattens)


def _is_shape_helper(node: fx.Node, helpers: set[fx.Node]) -> bool:
    """``x.size(0)``, ``x.shape[0]`` and friends: values that feed a reshape, not tensors."""
    if node.op == "call_method" and node.target in SHAPE_METHODS:
        return True
    if node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",):
        return True
    return node.op == "call_function" and node.target is operator.getitem and node.args[0] in helpers


def _is_flatten(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], nn.Flatten)
    return (node.op == "call_function" and node.target in FLATTEN_FUNCTIONS) or (
        node.op == "call_method" and node.target in FLATTEN_METHODS)


def _describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.target!r}"
    if node.op == "call_method":
        return f"method .{node.target}() (fx node {node.name!r})"
    if node.op == "get_attr":
        return f"attribute self.{node.target} (fx node {node.name!r})"
    t = node.target
    name = f"{getattr(t, '__module__', None) or 'builtins'}.{getattr(t, '__name__', repr(t))}"
    return f"{name.replace('_operator.', 'operator.')} (fx node {node.name!r})"


def _unsupported(node: fx.Node, where: str, why: str = "") -> UnsupportedNetwork:
    return UnsupportedNetwork(f"{where}: unsupported operation {_describe(node)}{why}. Supported: {SUPPORTED}")


def _check_node(node: fx.Node, modules: dict[str, nn.Module], where: str) -> None:
    """Raise unless ``node`` is one of the supported operations (its inputs are checked apart)."""
    if node.op == "call_module":
        m = modules[node.target]
        if not isinstance(m, WEIGHT_MODULES + ACTIVATION_MODULES + POOL_MODULES + (nn.Flatten,)):
            raise _unsupported(node, where, f" ({type(m).__name__})")
        _check_module(m, node.target, where)
    elif node.op == "call_function":
        t = node.target
        if t in POOL_FUNCTIONS and node.kwargs.get("return_indices"):
            raise _unsupported(node, where, " with return_indices=True")
        if t in SCALE_FUNCTIONS and not _by_a_number(node):
            raise _unsupported(node, where, " (not by a constant number)")
        if t not in ACTIVATION_FUNCTIONS | POOL_FUNCTIONS | FLATTEN_FUNCTIONS | SCALE_FUNCTIONS:
            raise _unsupported(node, where)
    elif node.op == "call_method":
        t = node.target
        if t in SCALE_METHODS and not _by_a_number(node):
            raise _unsupported(node, where, " (not by a constant number)")
        if t == "to" and not _to_float32(node):
            raise _unsupported(node, where, " (only x.to(torch.float32) is supported)")
        if t not in ACTIVATION_METHODS | FLATTEN_METHODS | SCALE_METHODS | KEEP_METHODS:
            raise _unsupported(node, where)
    else:
        raise _unsupported(node, where)


def _by_a_number(node: fx.Node) -> bool:
    """``x op c`` with a plain number ``c`` (``c / x`` is not a scaling of ``x``)."""
    args = list(node.args) + list(node.kwargs.values())
    if len(node.args) != 2 or any(k not in ("alpha",) for k in node.kwargs):
        return False
    numbers = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
    if len(numbers) != len(args) - 1:
        return False
    divides = node.target in (operator.truediv, torch.div, torch.true_divide, "div", "true_divide")
    return not divides or isinstance(node.args[0], fx.Node)


def _to_float32(node: fx.Node) -> bool:
    dtypes = list(node.args[1:]) + [v for k, v in node.kwargs.items() if k == "dtype"]
    return dtypes == [torch.float32] and set(node.kwargs) <= {"dtype"}


def _check_module(m: nn.Module, name: str, where: str) -> None:
    if isinstance(m, nn.Conv2d) and (isinstance(m.padding, str) or m.padding_mode != "zeros"):
        raise UnsupportedNetwork(f"{where}: Conv2d {name!r} has padding={m.padding!r}, "
                                 f"padding_mode={m.padding_mode!r}; only numeric zero padding is supported")
    if isinstance(m, nn.Flatten) and (m.start_dim != 1 or m.end_dim != -1):
        raise UnsupportedNetwork(f"{where}: Flatten {name!r} flattens dims {m.start_dim}..{m.end_dim}; "
                                 f"only Flatten() of each row of the batch (dims 1..-1) is supported")
    if isinstance(m, POOL_MODULES) and getattr(m, "return_indices", False):
        raise UnsupportedNetwork(f"{where}: {type(m).__name__} {name!r} returns indices; not supported")
