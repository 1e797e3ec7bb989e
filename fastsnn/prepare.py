"""Rewriting a model's graph so that it can be quantized and converted: :func:`prepare_model`.

ReLUs written as functions and max pools between spiking layers are found in the model's
``torch.fx`` graph (docs/method.md §3) and rewritten before :func:`fastsnn.quantize.quantize_model`
swaps the quantized modules in:

* ReLUs written as functions in a ``forward`` become activation modules of their own;
* activation modules called at several places get one copy per call site (``split_shared``);
* max pools between spiking layers become average pools or :class:`PoolConv2d` (``max_pool``).

The activation tables (:data:`ACTIVATION_MODULES`, :func:`relu_like`) say which activations
become QuantReLUs and which are left alone.
"""

from __future__ import annotations

import copy
import operator
import warnings

import torch
from torch import fx, nn
from torch.nn import functional as F
from torch.nn.modules import activation as _activation

from .quantizers import QuantConv2d, QuantLinear, QuantReLU

MAX_POOL_MODES = (None, "avg", "conv")


class PoolConv2d(nn.Conv2d):
    """Depthwise convolution that replaces a max pool (``quantize_model(..., max_pool="conv")``).

    One ``k x k`` filter per channel with the pool's kernel, stride, padding and dilation, no
    bias, initialised to an average of its window: training starts from ``max_pool="avg"`` and
    learns the pooling weights from there (the paper replaces max pooling by strided convolution
    for detection). Its weights stay full precision whatever ``weight_bits`` says: they are a
    tiny share of the model, and standardising an initial kernel whose weights are all equal
    would quantize it to zero. A pool's ``ceil_mode`` becomes ``stride - 1`` extra zero rows
    and columns at the bottom and right, which gives the pool's output size unless PyTorch
    drops a last window that would start in the padding (ceil_mode with padding > 0).
    """

    def __init__(self, channels: int, kernel_size, stride, padding=0, dilation=1, ceil_mode: bool = False):
        super().__init__(channels, channels, kernel_size, stride, padding, dilation, groups=channels, bias=False)
        self.ceil_mode = ceil_mode
        with torch.no_grad():
            self.weight.fill_(1.0 / (self.kernel_size[0] * self.kernel_size[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ceil_mode:
            x = F.pad(x, (0, self.stride[1] - 1, 0, self.stride[0] - 1))
        return super().forward(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ceil_mode={self.ceil_mode}"


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        leaves = (QuantReLU, QuantConv2d, QuantLinear, PoolConv2d)
        return isinstance(m, leaves) or super().is_leaf_module(m, qualname)


def relu_like(m: nn.Module) -> bool:
    """Modules that quantize_model turns into a QuantReLU (or that already are one)."""
    if isinstance(m, QuantReLU) or type(m) is nn.ReLU:
        return True
    return isinstance(m, nn.Hardtanh) and m.min_val == 0 and m.max_val > 0  # ReLU6 is Hardtanh(0, 6)


# every activation module torch defines; the ones relu_like accepts are quantized, the rest left alone
# (the converter names the others when it refuses a model without QuantReLU)
ACTIVATION_MODULES = tuple(getattr(_activation, name) for name in _activation.__all__)
_OTHER_ACTIVATION_FUNCTIONS = {
    F.silu,
    F.gelu,
    F.hardswish,
    F.hardsigmoid,
    F.sigmoid,
    torch.sigmoid,
    F.tanh,
    torch.tanh,
    F.softmax,
    torch.softmax,
    F.softmin,
    F.log_softmax,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.celu,
    F.mish,
    F.softplus,
    F.glu,
    F.prelu,
    F.logsigmoid,
    F.scaled_dot_product_attention,
}
_OTHER_ACTIVATION_METHODS = {"sigmoid", "sigmoid_", "tanh", "tanh_", "softmax", "log_softmax", "exp"}


def _arg(node: fx.Node, index: int, name: str, default):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _functional_activation(node: fx.Node) -> tuple[nn.Module, bool] | None:
    """``(module, inplace)`` for a ReLU written as a function (``F.relu``, ``x.relu_()``, ...)."""
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return nn.ReLU(), node.target == "relu_"
    if node.op != "call_function" or not node.args:
        return None
    fn = node.target
    if fn in (F.relu, torch.relu):
        return nn.ReLU(), bool(_arg(node, 1, "inplace", False))
    if fn is torch.relu_:  # also F.relu_
        return nn.ReLU(), True
    if fn is F.relu6:
        return nn.ReLU6(), bool(_arg(node, 1, "inplace", False))
    if fn in (F.hardtanh, F.hardtanh_):
        low, high = _arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0)
        if isinstance(low, (int, float)) and isinstance(high, (int, float)) and low == 0 and high > 0:
            inplace = fn is F.hardtanh_ or bool(_arg(node, 3, "inplace", False))
            return nn.Hardtanh(0.0, float(high)), inplace
    return None


def _other_activation(node: fx.Node, gm: fx.GraphModule) -> str | None:
    """The name of an activation quantize_model leaves alone, if ``node`` is one."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        return type(m).__name__ if isinstance(m, ACTIVATION_MODULES) and not relu_like(m) else None
    if node.op == "call_method" and node.target in _OTHER_ACTIVATION_METHODS:
        return f"Tensor.{node.target}"
    if node.op == "call_function":
        if node.target in _OTHER_ACTIVATION_FUNCTIONS:
            return getattr(node.target, "__name__", str(node.target))
        if node.target in (F.hardtanh, F.hardtanh_) and _functional_activation(node) is None:
            return "hardtanh"
    return None


def _call_path(node: fx.Node) -> str:
    """Path of the module whose forward created ``node`` ('' for the top-level forward)."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _free_name(gm: fx.GraphModule, parent: str, base: str) -> str:
    owner = gm
    try:
        owner = gm.get_submodule(parent) if parent else gm
    except AttributeError:
        owner = None  # the parent is created by add_submodule
    name, i = base, 0
    while owner is not None and hasattr(owner, name):
        i += 1
        name = f"{base}_{i}"
    return f"{parent}.{name}" if parent else name


def _insert_module(gm: fx.GraphModule, node: fx.Node, module: nn.Module, base: str, args: tuple) -> fx.Node:
    """Replace ``node`` by a call of ``module``, registered next to the code that made ``node``."""
    parent = node.target.rpartition(".")[0] if node.op == "call_module" else _call_path(node)
    name = _free_name(gm, parent, base)
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, args)
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return new


_MAX_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_ADAPTIVE_MAX_POOL_MODULES = (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_MAX_POOL_FUNCTIONS = {
    F.max_pool1d: 1,
    F.max_pool2d: 2,
    F.max_pool3d: 3,
    torch.max_pool1d: 1,
    torch.max_pool2d: 2,
    torch.max_pool3d: 3,
}
_ADAPTIVE_MAX_POOL_FUNCTIONS = {F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3}
_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


def max_pool_settings(node: fx.Node, gm: fx.GraphModule) -> dict | None:
    """The settings of a max pool node (module or function), or None if it is none."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, _MAX_POOL_MODULES):
            dims = 1 + [isinstance(m, c) for c in _MAX_POOL_MODULES].index(True)
            keys = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
            return {"dims": dims, "adaptive": False, **{k: getattr(m, k) for k in keys}}
        if isinstance(m, _ADAPTIVE_MAX_POOL_MODULES):
            dims = 1 + [isinstance(m, c) for c in _ADAPTIVE_MAX_POOL_MODULES].index(True)
            return {"dims": dims, "adaptive": True, "output_size": m.output_size, "return_indices": m.return_indices}
        return None
    if node.op != "call_function":
        return None
    if node.target in _MAX_POOL_FUNCTIONS:
        defaults = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False}
        settings = {k: _arg(node, i, k, defaults.get(k)) for i, k in enumerate(_POOL_ARGS) if k != "input"}
        if not settings["stride"]:  # None or an empty list: the kernel size
            settings["stride"] = settings["kernel_size"]
        return {"dims": _MAX_POOL_FUNCTIONS[node.target], "adaptive": False, **settings}
    if node.target in _ADAPTIVE_MAX_POOL_FUNCTIONS:
        return {
            "dims": _ADAPTIVE_MAX_POOL_FUNCTIONS[node.target],
            "adaptive": True,
            "output_size": _arg(node, 1, "output_size", None),
            "return_indices": _arg(node, 2, "return_indices", False),
        }
    return None


_CHANNEL_PRESERVING_FUNCTIONS = {operator.add, torch.add, F.avg_pool2d, F.dropout, *_MAX_POOL_FUNCTIONS}
_CHANNEL_PRESERVING_METHODS = {"relu", "relu_", "contiguous", "clone", "add"}


def _channels(node, gm: fx.GraphModule) -> int | None:
    """Channels of ``node``'s output, followed back through channel-preserving layers."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, nn.modules.conv._ConvNd):
            return m.out_channels
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return m.num_features
        if isinstance(m, (nn.Linear, nn.Flatten, nn.Unflatten)):
            return None
        return _channels(node.args[0], gm) if node.args else None
    if node.op == "call_function" and node.target in (torch.cat, torch.concat):
        if _arg(node, 1, "dim", 0) != 1:
            return None
        parts = [_channels(a, gm) for a in node.args[0]]
        return None if None in parts else sum(parts)
    preserving = (node.op == "call_method" and node.target in _CHANNEL_PRESERVING_METHODS) or (
        node.op == "call_function"
        and (node.target in _CHANNEL_PRESERVING_FUNCTIONS or _functional_activation(node) is not None)
    )
    return _channels(node.args[0], gm) if preserving and node.args else None


def _pool_replacement(pool: dict, mode: str, channels: int | None, where: str) -> nn.Module:
    if pool["return_indices"]:
        raise ValueError(f"{where} returns max-pooling indices; it cannot be replaced by max_pool={mode!r}")
    if pool["adaptive"]:  # no window to learn: an adaptive average in both modes
        return (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)[pool["dims"] - 1](pool["output_size"])
    k, s, p, d, ceil = (pool[key] for key in ("kernel_size", "stride", "padding", "dilation", "ceil_mode"))
    if mode == "conv":
        if pool["dims"] != 2:
            raise ValueError(f"{where}: max_pool='conv' replaces 2-d max pooling only; use max_pool='avg'")
        if channels is None:
            raise ValueError(
                f"{where}: max_pool='conv' could not find the number of channels of its input (not after a "
                "conv, batch norm or concatenation of those); use max_pool='avg'"
            )
        return PoolConv2d(channels, k, s, p, d, ceil)
    if d not in (1, (1,), (1, 1), (1, 1, 1), [1, 1]):
        raise ValueError(f"{where} is a dilated max pool, which average pooling cannot mimic; use max_pool='conv'")
    # count_include_pad=False: max pooling never picks the padding, so the average leaves it out too
    avg = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[pool["dims"] - 1]
    return avg(k, s, p, ceil_mode=ceil, count_include_pad=False)


def prepare_with_others(model: nn.Module, max_pool: str | None, split_shared: bool) -> tuple[nn.Module, list[str]]:
    """:func:`prepare_model`, plus the names of the activations it left alone."""
    if max_pool not in MAX_POOL_MODES:
        raise ValueError(f"max_pool must be one of {MAX_POOL_MODES}, got {max_pool!r}")
    gm = _trace_for_rewrites(model, needed=max_pool is not None or split_shared)
    if gm is None:
        return model, []
    others = sorted({name for node in gm.graph.nodes if (name := _other_activation(node, gm))})
    changed = _modularise_functional_relus(gm)
    if split_shared:
        changed |= _split_shared_sites(gm)
    replaced_modules: dict[str, nn.Module] = {}
    if max_pool is not None:
        replaced, inserted = _replace_max_pools(gm, max_pool)
        replaced_modules, changed = replaced, changed | inserted
    if not changed:
        for target, new in replaced_modules.items():
            set_submodule(model, target, new)
        return model, others
    for target, new in replaced_modules.items():
        set_submodule(gm, target, new)
    gm.graph.lint()
    gm.graph.eliminate_dead_code()
    # rebuilt so that the modules are registered in the order the forward uses them
    out = fx.GraphModule(gm, gm.graph, class_name=type(model).__name__)
    out.training = model.training
    return out, others


def _trace_for_rewrites(model: nn.Module, needed: bool) -> fx.GraphModule | None:
    """The model's fx graph; None (with a warning) when it cannot be traced and nothing needs it."""
    try:
        return fx.GraphModule(model, _Tracer().trace(model), class_name=type(model).__name__)
    except Exception as err:  # fx raises many types; all mean "cannot see the graph"
        if needed:
            raise ValueError(
                f"max_pool / split_shared need a model torch.fx can trace; {type(model).__name__} is not "
                f"({type(err).__name__}: {err})"
            ) from err
        warnings.warn(
            f"could not trace {type(model).__name__} with torch.fx ({type(err).__name__}: {err}); only "
            "activation modules (nn.ReLU, nn.ReLU6) were quantized, ReLUs written as functions were not looked for",
            stacklevel=4,
        )
        return None


def _modularise_functional_relus(gm: fx.GraphModule) -> bool:
    """ReLUs written as functions -> one activation module per call site; in-place forms
    (F.relu(x, inplace=True), x.relu_(), nn.ReLU(inplace=True)) also change x for later users."""
    graph, changed = gm.graph, False
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        site = _functional_activation(node)
        if site is not None:
            module, inplace = site
            inp = node.args[0]
            base = {nn.ReLU: "relu", nn.ReLU6: "relu6"}.get(type(module), "hardtanh")
            position = order[node]
            node = _insert_module(gm, node, module, base, (inp,))
            order[node] = position
            changed = True
        elif node.op == "call_module" and relu_like(gm.get_submodule(node.target)):
            inplace, inp = getattr(gm.get_submodule(node.target), "inplace", False), node.args[0]
        else:
            continue
        if inplace and isinstance(inp, fx.Node):
            later = [u for u in inp.users if u is not node and order.get(u, -1) > order[node]]
            for user in later:
                user.replace_input_with(inp, node)
                changed = True
    return changed


def _split_shared_sites(gm: fx.GraphModule) -> bool:
    """One module per call site of a shared activation module (each gets its own clip)."""
    seen: set[str] = set()
    changed = False
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and relu_like(gm.get_submodule(node.target)):
            if node.target in seen:
                base = node.target.rpartition(".")[2]
                _insert_module(gm, node, copy.deepcopy(gm.get_submodule(node.target)), base, node.args)
                changed = True
            seen.add(node.target)
    return changed


def _replace_max_pools(gm: fx.GraphModule, mode: str) -> tuple[dict[str, nn.Module], bool]:
    """Replace the max pools after an activation, except those right after an activation of the
    analog input, which the converter moves in front of it (exact). Returns the pool modules to
    swap in place (every call of them replaced) and whether new call sites were inserted."""
    graph = gm.graph
    acts = {n for n in graph.nodes if n.op == "call_module" and relu_like(gm.get_submodule(n.target))}
    after: set[fx.Node] = set()
    for node in graph.nodes:
        if any(a in after or a in acts for a in node.all_input_nodes):
            after.add(node)
    calls: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls.setdefault(node.target, []).append(node)
    to_replace = []
    for node in graph.nodes:
        pool = max_pool_settings(node, gm)
        if pool is None or node not in after:
            continue  # not a max pool, or one on the analog input (exact as it is)
        inp = node.args[0]
        if inp in acts and inp.args and inp.args[0] not in after and inp.args[0] not in acts:
            continue  # stem max pool: the converter moves it in front of the activation
        to_replace.append((node, pool))
    chosen = {n for n, _ in to_replace}
    replaced, inserted = {}, False
    for node, pool in to_replace:
        where = f"module '{node.target}'" if node.op == "call_module" else f"a max pool in '{_call_path(node)}'"
        new = _pool_replacement(pool, mode, _channels(node.args[0], gm), where)
        if node.op == "call_module" and all(n in chosen for n in calls[node.target]):
            replaced[node.target] = new  # same path: same place in the model
        else:
            _insert_module(gm, node, new, "pool", (node.args[0],))
            inserted = True
    return replaced, inserted


def prepare_model(model: nn.Module, max_pool: str | None = None, split_shared: bool = False) -> nn.Module:
    """Rewrite ``model`` so that every ReLU is a module and no max pool sits between spiking layers.

    * every ReLU written as a function in a ``forward`` (``F.relu``, ``torch.relu``, ``F.relu6``,
      ``F.hardtanh(x, 0, c)``, and the in-place forms ``F.relu(x, inplace=True)``, ``torch.relu_``,
      ``x.relu()``, ``x.relu_()``) becomes an ``nn.ReLU`` / ``nn.ReLU6`` / ``nn.Hardtanh(0, c)``
      module of its own, registered next to the code that called it (``conv1.relu`` for a call
      in ``conv1``'s forward);
    * ``max_pool="avg"`` replaces every max pool that follows an activation by an average pool
      of the same window (``count_include_pad=False``: max pooling never picks the padding;
      ``ceil_mode`` kept; adaptive max pools become adaptive average pools); ``"conv"`` by a
      :class:`PoolConv2d` (depthwise, same stride, initialised to the average). A max pool
      right after an activation of the analog input (the stem of ResNet-like models:
      conv -> bn -> relu -> maxpool) is kept: the converter moves it in front of that
      activation, where it is exact. Max pools on the input itself are kept too;
    * ``split_shared=True`` gives every call of an activation module used at several places
      (torchvision's ResNet blocks call ``self.relu`` twice) a copy of its own, so that each
      site learns its own clip.

    The model is traced with ``torch.fx``. When only modules had to be swapped it is changed
    in place and returned; when the graph changed the result is a ``torch.fx.GraphModule``
    with the same parameters and the same module paths (plus the new ones), whose forward is
    the traced graph: use the returned model. Python branches of the forward (``if
    self.training``) are fixed at trace time.
    """
    return prepare_with_others(model, max_pool, split_shared)[0]


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at the dotted module path ``name`` of ``model``."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
