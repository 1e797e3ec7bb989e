"""The run's CSV file under a spawn strategy (``trainer=ddp_cpu``): every stage's processes start
from a copy of the run's logger, so each writer knows only its own columns. Lightning's own
writer then deletes the file when a fresh copy starts, or fails to rewrite it when the copies
share a writer made before; ours keeps every stage's rows and columns."""

import copy
import csv

import pytest

from tasks.loggers import CSVLogger, _SharedFileWriter

STAGES = ({"train/loss": 0.5}, {"ann/test_acc": 0.9}, {"snn/test_acc": 0.8})


def rows(path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.parametrize("made_before", [False, True], ids=["fresh-writers", "copies-of-one-writer"])
def test_writers_that_each_know_their_own_columns_share_one_file(tmp_path, made_before):
    first = _SharedFileWriter(log_dir=str(tmp_path)) if made_before else None
    for metrics in STAGES:
        writer = copy.deepcopy(first) if made_before else _SharedFileWriter(log_dir=str(tmp_path))
        writer.log_metrics(metrics, step=0)
        writer.save()
    table = rows(tmp_path / "metrics.csv")
    assert [r["train/loss"] for r in table] == ["0.5", "", ""]
    assert [r["ann/test_acc"] for r in table] == ["", "0.9", ""]
    assert [r["snn/test_acc"] for r in table] == ["", "", "0.8"]


def test_the_logger_uses_it(tmp_path):
    logger = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    assert isinstance(logger.experiment, _SharedFileWriter)
    logger.log_metrics({"snn/test_acc": 0.7}, step=1)
    logger.save()
    assert rows(tmp_path / "csv" / "metrics.csv") == [{"snn/test_acc": "0.7", "step": "1"}]
