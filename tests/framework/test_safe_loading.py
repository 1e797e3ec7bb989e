"""Checkpoints open with weights_only=True: a file carrying a pickled payload is refused and nothing in it runs."""

import pickle

import pytest
import torch

from tasks.checkpoints import load_checkpoint
from tasks.settings import SettingsError

RAN = []


class Payload:
    def __reduce__(self):  # what a malicious file would do on unpickling
        return (RAN.append, ("payload ran",))


def test_a_pickled_payload_is_refused_and_never_runs(tmp_path):
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "x": Payload()}, f)
    with pytest.raises(SettingsError, match="refused to open .*could run code.*weights_only set to False"):
        load_checkpoint(str(path), lightning=True)
    assert RAN == []


def test_tensors_and_plain_data_load(tmp_path):
    path = tmp_path / "ok.ckpt"
    torch.save({"state_dict": {"net.w": torch.ones(2)}, "fastsnn": {"bits": 2}, "reports": [{"index": 1}]}, path)
    ckpt = load_checkpoint(str(path), lightning=True)
    assert torch.equal(ckpt["state_dict"]["net.w"], torch.ones(2)) and ckpt["fastsnn"]["bits"] == 2
