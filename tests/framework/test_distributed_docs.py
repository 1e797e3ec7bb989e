"""docs/distributed.md: every launch line composes, and its trainer matches what the launcher starts."""

import re
import shlex
from pathlib import Path

import pytest

from tests import helpers

DOC = Path(__file__).resolve().parents[2] / "docs" / "distributed.md"


def _launch_lines() -> list[tuple[str, dict]]:
    """(the run.py command line, the processes the launcher starts: per node and nodes)."""
    text = DOC.read_text()
    nodes = int(re.search(r"#SBATCH --nodes=(\d+)", text).group(1))
    lines = []
    for line in re.findall(r"^(?:srun |torchrun |python ).*run\.py.*$", text, flags=re.M):
        per_node = re.search(r"--(?:nproc_per_node|ntasks-per-node)=(\d+)", line)
        expected = {"devices": 4, "num_nodes": nodes if line.startswith("srun") else 1}
        if per_node:
            expected["devices"] = int(per_node.group(1))
        lines.append((line, expected))
    return lines


def test_the_doc_has_the_three_launchers():
    starts = [line.split()[0] for line, _ in _launch_lines()]
    assert sorted(starts) == ["python", "srun", "torchrun"]


@pytest.mark.parametrize("line,expected", _launch_lines(), ids=lambda v: v.split()[0] if isinstance(v, str) else "")
def test_each_launch_line_composes_a_ddp_trainer_for_its_processes(tmp_path, line, expected):
    args = shlex.split(line)
    overrides = [a for a in args[args.index("run.py") + 1 :] if not a.startswith("hydra.")]
    cfg = helpers.compose_config(tmp_path, *overrides)
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.accelerator == "gpu"
    assert (cfg.trainer.devices, cfg.trainer.num_nodes) == (expected["devices"], expected["num_nodes"])
    assert any(a.startswith("hydra.run.dir=") for a in args)  # every process writes to one folder
