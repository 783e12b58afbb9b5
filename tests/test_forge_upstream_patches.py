"""On Forge (dfdcbab stand-in) too, NaN in the base model's prediction names the patches other extensions set on the
UNet patcher before LoRAtorio's clone (lib_loratorio/model_patches.py)."""

import pytest

from lib_loratorio.errors import NonFiniteError
from tests.extension_helpers import on


@pytest.fixture
def runner(forge):
    with forge.script_runner() as runner:
        yield runner


def nan_freeu(unet):
    """A FreeU-like extension gone wrong: its patch on the UNet patcher makes every prediction NaN."""
    def model_function_wrapper(apply_model, args):
        return apply_model(args["input"], args["timestep"], **args["c"]) * float("nan")

    patched = unet.clone()
    patched.set_model_unet_function_wrapper(model_function_wrapper)
    return patched


def test_nan_in_the_base_model_names_the_patches_set_before_loratorio(forge, runner):
    objects = forge.sd15.forge_objects_after_applying_lora
    before = objects.unet
    objects.unet = nan_freeu(before)   # what Forge's sample() copies into forge_objects before the scripts' hook
    try:
        with pytest.raises(NonFiniteError, match=(
                r"^The base model produced NaN or inf in its conditional prediction\. .* Patches set on the model "
                r"before LoRAtorio act on every branch and may cause it: nan_freeu in test_forge_upstream_patches "
                r"\(model_function_wrapper\)\. Try the model without them\.$")):
            forge.run(runner, on())
    finally:
        objects.unet = before
        forge.sd15.forge_objects = forge.sd15.forge_objects_original.shallow_copy()  # sample() copied the patched one
