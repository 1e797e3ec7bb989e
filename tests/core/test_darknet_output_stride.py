"""DarknetTiny(output_stride=16) is the stride-32 trunk with its 512-channel conv at stride 1, as
TinyYOLO used to build it by editing the conv afterwards: the same modules, the same state dict."""

import pytest
import torch

from fastsnn.backbones.darknet import DarknetTiny
from tasks.detection.yolo import TinyYOLO


def _edited_trunk() -> DarknetTiny:
    """What TinyYOLO(output_stride=16) built before: a stride-32 trunk, one conv edited."""
    torch.manual_seed(0)
    trunk = DarknetTiny(width=0.25)
    trunk.features[5][0].stride = (1, 1)
    return trunk


def test_output_stride_16_gives_the_edited_trunk():
    torch.manual_seed(0)
    trunk = DarknetTiny(width=0.25, output_stride=16)
    old = _edited_trunk()
    assert repr(trunk) == repr(old)
    new_state, old_state = trunk.state_dict(), old.state_dict()
    assert list(new_state) == list(old_state)
    assert all(torch.equal(new_state[k], old_state[k]) for k in old_state)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert trunk(x).shape[-1] == 64 // 16 and torch.equal(trunk(x), old(x))
    assert DarknetTiny(width=0.25)(x).shape[-1] == 64 // 32
    with pytest.raises(ValueError, match="output_stride must be 16 or 32"):
        DarknetTiny(output_stride=8)


def test_tiny_yolo_checkpoints_load_across_output_strides():
    coarse, fine = TinyYOLO(5, width=0.25), TinyYOLO(5, width=0.25, output_stride=16)
    fine.load_state_dict(coarse.state_dict())  # same keys and shapes: strict loading works
    assert fine.backbone.features[5][0].stride == (1, 1) and coarse.backbone.features[5][0].stride == (2, 2)
    assert fine.output_stride == 16
