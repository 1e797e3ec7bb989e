"""Structural and shape tests for fastsnn.backbones.

The converter relies on: one nn.ReLU instance per activation site, no max
pooling, fx-traceable forwards, bias-free convs before BN and modules registered
in forward order. Every rule is checked for every registered backbone.
"""

from __future__ import annotations

import pytest
import torch
import torch.fx
import torch.nn as nn

from fastsnn.backbones import create_backbone, list_backbones, register_backbone

WIDTH = 0.125
NUM_CLASSES = 7

# Classification nets: name -> (extra kwargs, input size).
CLASSIFIERS = {
    "alexnet": ({}, 32),
    "vgg11": ({}, 32),
    "vgg16": ({}, 64),
    "resnet18": ({}, 32),
    "resnet34": ({}, 32),
    "resnet20": ({}, 32),
}
# Extra classifier configurations beyond the defaults.
CLASSIFIER_VARIANTS = {
    "resnet18-imagenet": ("resnet18", {"stem": "imagenet"}, 64),
    "resnet34-imagenet": ("resnet34", {"stem": "imagenet"}, 64),
}
# Feature trunks: name -> (extra kwargs, input size, output stride).
FEATURES = {
    "resnet34_features": ({}, 64, 32),
    "darknet_tiny": ({}, 64, 32),
    "vgg9_dilated": ({}, 32, 8),
}

# Every module type a backbone may contain besides the package's own containers.
ALLOWED_LEAVES = (
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Linear,
    nn.Dropout,
    nn.Identity,
)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # The models are tiny: one thread avoids oversubscription on shared CI cores.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _all_configs():
    for name, (kw, size) in CLASSIFIERS.items():
        yield name, name, kw, size
    for vid, (name, kw, size) in CLASSIFIER_VARIANTS.items():
        yield vid, name, kw, size
    for name, (kw, size, _) in FEATURES.items():
        yield name, name, kw, size


CONFIGS = {cid: (name, kw, size) for cid, name, kw, size in _all_configs()}


def _build(name, in_channels=3, **kw):
    torch.manual_seed(0)
    if name in CLASSIFIERS:
        kw = {"num_classes": NUM_CLASSES, **kw}
    return create_backbone(name, in_channels=in_channels, width=WIDTH, **kw)


def _input(size, channels=3):
    return torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(1))


def test_registry_covers_all_tested_names():
    # A newly registered backbone must be added to this file's tables.
    assert list_backbones() == sorted(set(CLASSIFIERS) | set(FEATURES))


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError) as err:
        create_backbone("resnet9000")
    for name in list_backbones():
        assert name in str(err.value)


def test_duplicate_registration_rejected():
    with pytest.raises(ValueError):
        register_backbone("vgg11")(lambda: nn.Identity())


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_classifier_logits_shape(name):
    kw, size = CLASSIFIERS[name]
    out = _build(name, **kw)(_input(size))
    assert out.shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("vid", sorted(CLASSIFIER_VARIANTS))
def test_imagenet_stem_logits_shape(vid):
    name, kw, size = CLASSIFIER_VARIANTS[vid]
    model = _build(name, **kw)
    assert model(_input(size)).shape == (2, NUM_CLASSES)
    # The stem ends with a stride-2 conv in place of the max pool (total stride 4).
    convs = [m for m in model.stem if isinstance(m, nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (2, 2)]
    assert convs[0].kernel_size == (7, 7)


def test_classifiers_accept_other_input_sizes():
    # Adaptive pooling before the classifier makes the head size-independent.
    for name in ("alexnet", "vgg11", "resnet20"):
        assert _build(name)(_input(48)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("cid", sorted(CONFIGS))
def test_only_allowed_modules_and_no_max_pool(cid):
    name, kw, _ = CONFIGS[cid]
    model = _build(name, **kw)
    n_relu = 0
    for mod_name, m in model.named_modules():
        assert not isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.MaxPool1d)), mod_name
        if len(list(m.children())) == 0:
            assert isinstance(m, ALLOWED_LEAVES), f"{mod_name}: {type(m).__name__}"
        if isinstance(m, nn.ReLU):
            assert not m.inplace, mod_name
            n_relu += 1
    assert n_relu > 0


@pytest.mark.parametrize("cid", sorted(CONFIGS))
def test_each_relu_called_exactly_once(cid):
    name, kw, size = CONFIGS[cid]
    model = _build(name, **kw)
    counts = {}
    for mod_name, m in model.named_modules():
        if isinstance(m, nn.ReLU):
            counts[mod_name] = 0
            m.register_forward_hook(lambda mod, i, o, n=mod_name: counts.__setitem__(n, counts[n] + 1))
    model(_input(size))
    assert counts and all(c == 1 for c in counts.values()), counts


@pytest.mark.parametrize("cid", sorted(CONFIGS))
def test_fx_trace_matches_and_is_converter_friendly(cid):
    name, kw, size = CONFIGS[cid]
    model = _build(name, **kw).eval()
    traced = torch.fx.symbolic_trace(model)
    x = _input(size)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))

    modules = dict(model.named_modules())
    called = []
    for node in traced.graph.nodes:
        if node.op == "call_module":
            called.append(node.target)
            # Convs feeding a BatchNorm carry no bias (BN supplies it).
            if isinstance(modules[node.target], nn.BatchNorm2d):
                src = node.args[0]
                assert src.op == "call_module" and isinstance(modules[src.target], nn.Conv2d)
                assert modules[src.target].bias is None, src.target
        elif node.op in ("call_function", "call_method"):
            # Only the residual add and flatten may happen outside modules (no F.relu etc.).
            fname = getattr(node.target, "__name__", str(node.target))
            assert fname in {"add", "flatten"}, fname

    # Leaf modules are registered in exactly the order forward calls them, so the
    # first registered conv is the input layer and the last Linear/Conv the output.
    leaves = [n for n, m in model.named_modules() if n and len(list(m.children())) == 0]
    assert called == leaves


@pytest.mark.parametrize("cid", sorted(CONFIGS))
def test_single_channel_input(cid):
    name, kw, size = CONFIGS[cid]
    model = _build(name, in_channels=1, **kw)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 1
    out = model(_input(size, channels=1))
    assert out.shape[0] == 2 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_feature_output_stride_and_channels(name):
    kw, size, stride = FEATURES[name]
    model = _build(name, **kw)
    out = model(_input(size))
    assert out.shape == (2, model.out_channels, size // stride, size // stride)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_resnet34_features_dilation(output_stride):
    model = _build("resnet34_features", output_stride=output_stride)
    out = model(_input(64))
    assert out.shape == (2, model.out_channels, 64 // output_stride, 64 // output_stride)
    # Dilation only replaces strides: the weights stay loadable from the stride-32 trunk.
    reference = _build("resnet34_features")
    model.load_state_dict(reference.state_dict())
    assert {n: p.shape for n, p in model.state_dict().items()} == {
        n: p.shape for n, p in reference.state_dict().items()
    }
    dilations = {m.dilation for m in model.layers[-1].modules() if isinstance(m, nn.Conv2d)}
    assert max(d[0] for d in dilations) == 32 // output_stride


@pytest.mark.parametrize("stem, natural", [("cifar", 8), ("small", 16), ("imagenet", 32)])
def test_resnet34_features_stems_set_the_stride_and_dilate_the_last_stage(stem, natural):
    """Each stem's stride, times 8 for the later stages, is the natural output stride; half of it
    dilates the last stage instead of striding."""
    for output_stride, dilation in ((natural, 1), (natural // 2, 2)):
        model = _build("resnet34_features", stem=stem, output_stride=output_stride)
        out = model(_input(64))
        assert out.shape[-1] == 64 // output_stride
        assert max(m.dilation[0] for m in model.layers[-1].modules() if isinstance(m, nn.Conv2d)) == dilation


def test_resnet_bad_arguments():
    with pytest.raises(ValueError):
        create_backbone("resnet34_features", output_stride=4)
    with pytest.raises(ValueError):
        create_backbone("resnet18", stem="bogus")


def test_resnet20_layout():
    model = _build("resnet20")
    assert len(model.layers) == 3 and all(len(stage) == 3 for stage in model.layers)
    block = model.layers[1][0]
    # Down-sampling block: own relu1/relu2 and a 1x1 conv + BN shortcut.
    assert block.relu1 is not block.relu2
    conv, bn = block.shortcut
    assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and isinstance(bn, nn.BatchNorm2d)
    assert isinstance(model.layers[1][1].shortcut, nn.Identity)


def test_residual_connection_is_used():
    # Zeroing the branch's last BN leaves the block as relu(shortcut(x)).
    model = _build("resnet20").eval()
    block = model.layers[0][0]
    nn.init.zeros_(block.bn2.weight)
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(x))


def test_width_scaling():
    assert _build("vgg11").features[0][0].out_channels == 8  # max(8, round(64 * 0.125))
    assert create_backbone("vgg11", width=0.5).features[0][0].out_channels == 32
    assert create_backbone("darknet_tiny", width=0.01).out_channels == 10  # round(1024 * 0.01)


def test_weight_init():
    model = _build("vgg16")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
        elif isinstance(m, nn.Linear):
            assert torch.all(m.bias == 0) and m.weight.std() < 0.02
        elif isinstance(m, nn.Conv2d):
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            assert abs(m.weight.std().item() / (2.0 / fan_out) ** 0.5 - 1) < 0.3
