import pytest

from tasks.pipeline import _settings
from tasks.settings import DEFAULT_BITS, SettingsError, resolve
from tests import helpers

ALL = ["train", "convert", "finetune"]


@pytest.mark.parametrize(
    "bits, timesteps, expected",
    [
        (3, None, (3, 7)),
        (None, 7, (3, 7)),
        (None, 3, (2, 3)),
        (None, 15, (4, 15)),
        (2, 3, (2, 3)),
        (None, None, (DEFAULT_BITS, 2**DEFAULT_BITS - 1)),
        (1, None, (1, 1)),
    ],
)
def test_one_of_bits_and_timesteps_selects_the_other(bits, timesteps, expected):
    s = resolve(bits, timesteps, ALL)
    assert (s.bits, s.timesteps) == expected


def test_inconsistent_bits_and_timesteps_are_an_error_when_training():
    with pytest.raises(
        SettingsError, match=r"bits=3 gives T=7 time steps but timesteps=15.*stages=\[convert,finetune\]"
    ):
        resolve(3, 15, ALL)


def test_another_timestep_count_is_allowed_when_converting_a_checkpoint():
    s = resolve(None, 15, ["convert", "finetune"], checkpoint_bits=3)
    assert (s.bits, s.timesteps) == (3, 15)
    s = resolve(3, 5, ["convert"], checkpoint_bits=3)
    assert (s.bits, s.timesteps) == (3, 5)


def test_timesteps_that_select_no_bit_width_need_bits():
    with pytest.raises(SettingsError, match=r"timesteps=5 is not 2\*\*b - 1"):
        resolve(None, 5, ALL)


def test_checkpoint_bits_win_unless_contradicted():
    assert resolve(None, None, ["convert"], checkpoint_bits=4).timesteps == 15
    with pytest.raises(SettingsError, match="checkpoint holds a 4-bit model but bits=2"):
        resolve(2, None, ["convert"], checkpoint_bits=4)


def test_full_precision_needs_timesteps_to_convert():
    assert resolve(32, None, ["train"]).bits is None
    with pytest.raises(SettingsError, match="full-precision"):
        resolve(32, None, ALL)
    assert resolve(32, 31, ALL).timesteps == 31


@pytest.mark.parametrize(
    "stages, pattern",
    [
        (["finetune"], "convert"),
        (["convert", "train"], "order"),
        (["eval"], "subset"),
        ([], "subset"),
    ],
)
def test_bad_stage_lists(stages, pattern):
    with pytest.raises(SettingsError, match=pattern):
        resolve(2, None, stages)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ([], (DEFAULT_BITS, 2**DEFAULT_BITS - 1)),  # the config's default_bits is DEFAULT_BITS
        (["experiment=voc_yolo"], (4, 15)),  # a recipe's own default
        (["experiment=voc_yolo", "timesteps=7"], (3, 7)),  # T chooses the bits, not the recipe
        (["experiment=voc_yolo", "bits=2"], (2, 3)),
    ],
)
def test_a_recipe_default_bits_give_way_to_bits_or_timesteps(tmp_path, overrides, expected):
    cfg = helpers.compose_config(tmp_path, *overrides)
    settings = _settings(cfg, None)
    assert (settings.bits, settings.timesteps) == expected
