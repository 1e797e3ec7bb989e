"""Graph passes on the quantized ANN and on the converted graph.

Tracing (quantized layers kept as leaves), freezing quantized weights, folding eval batch
norm into the layer before it, and splitting a converted graph into its analog-input part
and one time step (streaming mode). :func:`frozen_ann` applies the first three to a copy of
a quantized ANN: the ANN as the converted SNN's layers compute it (e.g. a fair baseline).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from ..quantizers import QuantConv2d, QuantLinear, QuantReLU
from .rules import ConversionError, declared_linear


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (QuantReLU, QuantConv2d, QuantLinear)) or declared_linear(m):
            return True  # converted as a whole: quantized layers, and modules declared linear
        return super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx`` trace of ``model`` that keeps the quantized layers as leaves."""
    try:
        graph = _Tracer().trace(model)
    except Exception as err:  # fx raises many types; all mean the same thing to the user
        raise ConversionError(
            f"could not trace {type(model).__name__} with torch.fx ({type(err).__name__}: {err}). "
            "The converter needs a forward without Python control flow on tensor values or "
            "shapes; move such logic (e.g. decoding, loss) out of forward()."
        ) from err
    return fx.GraphModule(model, graph, class_name=type(model).__name__)


def freeze_quantized_weights(model: nn.Module) -> None:
    """QuantConv2d / QuantLinear -> plain layers holding their quantized weights."""
    for name, m in list(model.named_modules()):
        if isinstance(m, (QuantConv2d, QuantLinear)):
            if isinstance(m, QuantConv2d):
                new = nn.Conv2d(
                    m.in_channels,
                    m.out_channels,
                    m.kernel_size,
                    m.stride,
                    m.padding,
                    m.dilation,
                    m.groups,
                    m.bias is not None,
                    m.padding_mode,
                )
            else:
                new = nn.Linear(m.in_features, m.out_features, m.bias is not None)
            new = new.to(device=m.weight.device, dtype=m.weight.dtype)
            with torch.no_grad():
                new.weight.copy_(m.quantized_weight())
                if m.bias is not None:
                    new.bias.copy_(m.bias)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)


def fold_batch_norms(gm: fx.GraphModule) -> None:
    """Fold eval batch norm into the conv / linear layer before it, in place (exact, saves T passes)."""
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        prev = node.args[0]
        if not (
            isinstance(prev, fx.Node)
            and prev.op == "call_module"
            and len(prev.users) == 1
            and calls[prev.target] == 1
            and calls[node.target] == 1
        ):
            continue
        layer, bn = gm.get_submodule(prev.target), gm.get_submodule(node.target)
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        if type(layer) is nn.Conv2d or type(layer) is nn.Conv1d or type(layer) is nn.Conv3d:
            fused = fuse_conv_bn_eval(layer.eval(), bn.eval())
        elif type(layer) is nn.Linear and isinstance(bn, nn.BatchNorm1d):
            fused = fuse_linear_bn_eval(layer.eval(), bn.eval())
        else:
            continue
        parent, _, child = prev.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, child, fused)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
    gm.delete_all_unused_submodules()


def store_channels_last(gm: fx.GraphModule) -> None:
    """Store ``gm``'s 4-d weights channels-last, so that its convs take and give channels-last tensors
    (faster on CPUs, most of all on narrow layers), and make its ``view`` calls ``reshape``: a view
    that merges the channel dimension with the spatial ones (``x.view(n, -1)``) fails on such
    tensors, while a reshape gives the same values (a converted graph never writes through a view).
    """
    gm.to(memory_format=torch.channels_last)
    for node in gm.graph.nodes:
        if node.op == "call_method" and node.target == "view":
            node.target = "reshape"
        elif node.op == "call_function" and node.target is torch.Tensor.view:
            node.target = torch.Tensor.reshape


def frozen_ann(qmodel: nn.Module) -> fx.GraphModule:
    """A traced copy of ``qmodel`` in eval mode, quantized weights frozen, eval batch norm folded."""
    model = copy.deepcopy(qmodel).eval()
    freeze_quantized_weights(model)
    gm = trace(model)
    fold_batch_norms(gm)
    gm.recompile()
    return gm.eval()


def dependents(gm: fx.GraphModule, is_source: Callable[[fx.Node], bool]) -> set[fx.Node]:
    """The nodes for which ``is_source`` holds and all nodes that depend on one of them."""
    found: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if is_source(node) or any(a in found for a in node.all_input_nodes):
            found.add(node)
    return found


def split_static(net: fx.GraphModule, temporal: set[fx.Node]) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Split a converted graph into the analog-input part (run once) and one time step.

    ``temporal`` are the nodes that depend on some neuron; the step graph takes the static
    values that they use as its inputs.
    """
    static_nodes = [n for n in net.graph.nodes if n not in temporal and n.op not in ("output", "get_attr")]
    boundary = [n for n in static_nodes if any(u in temporal or u.op == "output" for u in n.users)]

    static_graph, env = fx.Graph(), {}
    for node in net.graph.nodes:
        if node.op == "get_attr" or node in static_nodes:
            env[node] = static_graph.node_copy(node, env.__getitem__)
    static_graph.output(tuple(env[n] for n in boundary))

    step_graph, step_env = fx.Graph(), {}
    for node in boundary:
        step_env[node] = step_graph.placeholder(node.name)
    for node in net.graph.nodes:
        if node.op == "get_attr" or node in temporal or node.op == "output":
            step_env[node] = step_graph.node_copy(node, step_env.__getitem__)
    return fx.GraphModule(net, static_graph), fx.GraphModule(net, step_graph)


def static_linear_modules(net: fx.GraphModule, temporal: set[fx.Node]) -> frozenset[str]:
    """Conv / linear modules of ``net`` outside ``temporal``: they run on the analog input."""
    return frozenset(
        node.target
        for node in net.graph.nodes
        if node.op == "call_module"
        and node not in temporal
        and isinstance(net.get_submodule(node.target), (nn.Linear, nn.modules.conv._ConvNd))
    )
