"""chain=[...]: progressive training from one command, each bit width started from the previous one's best checkpoint."""

import json

import pytest

from tasks import chain as chain_module
from tasks.chain import check_chain, run_chain
from tasks.settings import SettingsError


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["chain=[32,4,40]"], "chain must list bit widths"),
        (["chain=[4,2]", "timesteps=3"], "drop timesteps="),
        (["chain=[4,2]", "ckpt_path=x.ckpt"], "drop timesteps= and ckpt_path="),
        (["chain=[4,2]", "stages=[convert]"], "stages must include train"),
    ],
)
def test_bad_chains_are_refused_with_what_to_change(make_config, overrides, message):
    with pytest.raises(SettingsError, match=message):
        check_chain(make_config(*overrides))


@pytest.mark.slow
def test_a_chain_runs_each_bit_width_from_the_previous_checkpoint(make_config, monkeypatch):
    cfg = make_config("chain=[32,3,2]")
    calls = []

    def spy(stage_cfg):
        calls.append((stage_cfg.bits, stage_cfg.init_from, list(stage_cfg.stages), stage_cfg.paths.output_dir))
        return real(stage_cfg)

    real = chain_module.run
    monkeypatch.setattr(chain_module, "run", spy)
    last = run_chain(cfg)
    base = cfg.paths.output_dir
    assert [c[0] for c in calls] == [32, 3, 2] and [c[3] for c in calls] == [f"{base}/b{b}" for b in (32, 3, 2)]
    assert calls[0][1] is None and calls[0][2] == ["train"]  # full precision: trained only
    results = [json.loads(open(f"{base}/b{b}/results.json").read()) for b in (32, 3, 2)]
    assert calls[1][1] == results[0]["checkpoint"] and calls[2][1] == results[1]["checkpoint"]
    assert [r["bits"] for r in results] == [32, 3, 2] and [r["timesteps"] for r in results[1:]] == [7, 3]
    assert results[0].get("snn") is None and last["snn_finetuned"] == results[2]["snn_finetuned"] is not None
