"""The conversion callback on its own: an SNN test pass without an SNN converts the ANN first."""

from fastsnn import SpikingModel
from tasks.pipeline import build, evaluate


def test_a_test_pass_converts_lazily_into_normal_tensors(make_config):
    exp = build(make_config("snn.integer_kernels=true"))
    assert exp.module.snn is None
    metrics = evaluate(exp, "snn")  # Lightning tests under inference mode: the SNN must not inherit it
    assert isinstance(exp.module.snn, SpikingModel) and "snn/test_acc" in metrics
    assert not any(t.is_inference() for t in exp.module.snn.state_dict().values())
    assert evaluate(exp, "snn")["snn/test_acc"] == metrics["snn/test_acc"]  # integer weights reused, same result
