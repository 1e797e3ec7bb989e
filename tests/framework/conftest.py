"""Compose the real Hydra config, shrunk to seconds, for in-process pipeline runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import helpers

# the tiny debug run with a narrow VGG-11: a whole run takes seconds
TINY = [*helpers.TINY, *helpers.NARROW]


def compose_config(out_dir: Path, *overrides: str, tiny: bool = True):
    return helpers.compose_config(out_dir, *(TINY if tiny else []), *overrides)


@pytest.fixture
def make_config(tmp_path):
    def make(*overrides: str, name: str = "run", tiny: bool = True):
        return compose_config(tmp_path / name, *overrides, tiny=tiny)

    return make


@pytest.fixture
def tiny() -> list[str]:
    """The overrides that shrink a run to seconds, for command lines."""
    return list(TINY)
