"""The rules that turn the user's ``bits`` / ``timesteps`` / ``stages`` into a run's settings.

* ``bits=b`` alone: the ANN has b-bit activations, the SNN runs ``T = 2**b - 1`` steps.
* ``timesteps=T`` alone: ``T`` must be ``2**b - 1`` (1, 3, 7, 15, 31, ...), which selects b.
* both: they must agree when the run trains. Without the ``train`` stage (converting an
  existing checkpoint) they may differ: the b-bit model's SNN is evaluated at T steps.
* ``bits=32``: a full-precision (clipped-ReLU) ANN, the first step of progressive training;
  it has no natural T, so converting it needs ``timesteps``.
* neither: the bit width of the checkpoint when one is given, else ``default_bits`` (the
  config's ``default_bits``: 2, or a recipe's own).
* ``stages=[evaluate]``: a saved SNN (``snn_path``) on the test set; bits and T are the file's,
  unless ``timesteps`` asks for another T.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_BITS = 2
FULL_PRECISION = 32
# compare: optional, SpikingJelly's SNNs (tasks/compare.py); evaluate: a saved SNN, alone
STAGES = ("train", "convert", "compare", "finetune", "evaluate")


class SettingsError(ValueError):
    """A configuration that would not do what the user expects; the message says why."""


@dataclass(frozen=True)
class RunSettings:
    bits: int | None  # activation bits of the ANN; None for full precision
    timesteps: int | None  # T of the SNN; None when no SNN is made
    stages: tuple[str, ...]


def resolve(
    bits: int | None,
    timesteps: int | None,
    stages,
    checkpoint_bits: int | None = None,
    default_bits: int = DEFAULT_BITS,
) -> RunSettings:
    stages = tuple(stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise SettingsError(f"stages must be a non-empty subset of {list(STAGES)}, got {list(stages)}")
    if list(stages) != sorted(stages, key=STAGES.index):
        raise SettingsError(f"stages run in the order {list(STAGES)}; got {list(stages)}")
    if "evaluate" in stages and len(stages) > 1:
        raise SettingsError(
            f"stages=[evaluate] tests a saved SNN (snn_path=...) and runs alone; got stages={list(stages)}"
        )
    if "finetune" in stages and "convert" not in stages:
        raise SettingsError(
            "the finetune stage fine-tunes a converted SNN: use stages=[convert,finetune] "
            "(with ckpt_path=... for a trained checkpoint)"
        )
    if "compare" in stages and "convert" not in stages:
        raise SettingsError(
            "the compare stage compares SpikingJelly's SNNs with the converted one: use stages=[convert,compare] "
            "(after train, or with ckpt_path=... for a trained checkpoint)"
        )
    if timesteps is not None and timesteps < 1:
        raise SettingsError(f"timesteps must be >= 1, got {timesteps}")
    if bits is not None and not (1 <= bits <= 16 or bits == FULL_PRECISION):
        raise SettingsError(f"bits must be 1..16, or {FULL_PRECISION} for full precision; got {bits}")
    if bits is None and checkpoint_bits is not None and "train" not in stages:
        bits = checkpoint_bits
    if bits is not None and checkpoint_bits is not None and "train" not in stages and bits != checkpoint_bits:
        raise SettingsError(
            f"the checkpoint holds a {_describe(checkpoint_bits)} model but bits={bits}; "
            "drop bits= (it is read from the checkpoint) or pass the matching checkpoint"
        )
    if bits is None:
        if timesteps is None:
            bits = default_bits
        else:
            bits = (timesteps + 1).bit_length() - 1
            if 2**bits - 1 != timesteps:
                raise SettingsError(
                    f"timesteps={timesteps} is not 2**b - 1 (1, 3, 7, 15, 31, ...), so it selects no bit width; "
                    f"give bits too, e.g. bits={bits} timesteps={timesteps}, to evaluate a {bits}-bit model's SNN "
                    f"at T={timesteps} (allowed when converting an existing checkpoint, stages=[convert,...])"
                )
    converts = "convert" in stages
    if bits == FULL_PRECISION:
        if converts and timesteps is None:
            raise SettingsError(
                "a full-precision model (bits=32) has no natural number of time steps: "
                "give timesteps=..., or run stages=[train] and quantize it next with init_from=..."
            )
        return RunSettings(None, timesteps if converts else None, stages)
    natural = 2**bits - 1
    if timesteps is None:
        timesteps = natural
    elif timesteps != natural and "train" in stages:
        raise SettingsError(
            f"bits={bits} gives T={natural} time steps but timesteps={timesteps}. Train at bits={bits} with "
            f"timesteps={natural} (or leave one of them out); to evaluate the trained model's SNN at "
            f"T={timesteps}, run stages=[convert,finetune] ckpt_path=<its checkpoint> timesteps={timesteps}"
        )
    return RunSettings(bits, timesteps, stages)


def _describe(bits: int | None) -> str:
    return "full-precision" if bits in (None, FULL_PRECISION) else f"{bits}-bit"
