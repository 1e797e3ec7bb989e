"""Max pooling that the SNN can compute exactly: moved in front of the first activation.

The quantized ReLU ``q`` is monotone, so ``maxpool(q(x)) == q(maxpool(x))`` for every input,
bit for bit (max pooling's padding is ``-inf``, which ``q`` maps below every value it takes).
Where the activation's input ``x`` is still analog (the stem of most ImageNet CNNs:
conv -> bn -> relu -> maxpool) the pool can run on ``x``: it is then computed once on the
static input and the first neurons receive the pooled value, which they reproduce exactly
(docs/method.md §3). Max pools anywhere else stay where they are and are refused by the rules.
"""

from __future__ import annotations

from torch import fx

from ..prepare import max_pool_settings
from ..quantizers import QuantReLU


def move_stem_max_pools(gm: fx.GraphModule) -> list[str]:
    """Rewrite ``maxpool(q(x))`` as ``q(maxpool(x))`` where ``x`` depends on the analog input only.

    ``q`` is a ``QuantReLU`` call; the max pool may be a module or a function (not one that
    returns indices). If ``q(x)`` has other users they keep it: the QuantReLU is then called
    twice, and the converter gives each call its own neuron. Returns the names of the moved
    pool nodes; ``gm`` is changed in place (and recompiled when something moved).
    """
    after_neuron: set[fx.Node] = set()  # nodes that depend on some QuantReLU output
    for node in gm.graph.nodes:
        if any(a in after_neuron or _is_quant_relu(a, gm) for a in node.all_input_nodes):
            after_neuron.add(node)
    moved = []
    for node in list(gm.graph.nodes):
        pool = max_pool_settings(node, gm)
        if pool is None or pool["return_indices"] or not node.args:
            continue
        act = node.args[0]
        if not (isinstance(act, fx.Node) and _is_quant_relu(act, gm)) or len(act.args) != 1:
            continue
        x = act.args[0]
        if not isinstance(x, fx.Node) or x in after_neuron or _is_quant_relu(x, gm):
            continue  # the activation's input carries spikes: the pool cannot move
        with gm.graph.inserting_before(node):
            pooled = gm.graph.create_node(node.op, node.target, (x, *node.args[1:]), dict(node.kwargs))
            pooled.meta = dict(node.meta)
            spikes = gm.graph.call_module(act.target, (pooled,))
            spikes.meta = dict(act.meta)
        node.replace_all_uses_with(spikes)
        gm.graph.erase_node(node)
        if not act.users:
            gm.graph.erase_node(act)
        moved.append(node.name)
    if moved:
        gm.graph.lint()
        gm.recompile()
    return moved


def _is_quant_relu(node: fx.Node, gm: fx.GraphModule) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), QuantReLU)
