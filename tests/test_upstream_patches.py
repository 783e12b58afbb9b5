"""Patches set on the model before LoRAtorio (lib_loratorio/model_patches.py): named for a user, and named as a
possible cause when the base model's prediction turns NaN, end to end in the ComfyUI (3cd7b32) stand-in."""

import pytest

from lib_loratorio.model_patches import describe_patches, origin
from lib_loratorio.params import LoratorioParams
from tests.test_comfyui_nodes import C, env, sample, untouched  # noqa: F401 - fixtures


class FreeU_V2:  # named as ComfyUI's node, whose closures the message names
    """A node whose patch functions are closures of its method, as ComfyUI's FreeU_V2 makes them."""

    @classmethod
    def execute(cls, patcher, make_nan=False):
        def output_block_patch(h, hsp, transformer_options):
            return h, hsp

        def model_function_wrapper(apply_model, args):
            out = apply_model(args["input"], args["timestep"], **args["c"])
            return out * float("nan") if make_nan else out

        clone = patcher.clone()
        options = clone.model_options["transformer_options"]
        options.setdefault("patches", {}).setdefault("output_block_patch", []).append(output_block_patch)
        clone.set_model_unet_function_wrapper(model_function_wrapper)
        return clone


class AttnReplacement:
    def __call__(self, q, k, v, extra_options):
        return q


def patch_freeu_v2(patcher):
    """As Forge's built-in FreeU: a module-level function whose closure is the patch."""
    def output_block_patch(h, hsp, transformer_options):
        return h, hsp
    return output_block_patch


def test_patches_are_named_by_who_made_them():
    assert origin(FreeU_V2.execute(C.models.load_checkpoint("standin-sd15")[0]).model_options[
        "model_function_wrapper"]) == "FreeU_V2"
    assert origin(patch_freeu_v2(None)) == "patch_freeu_v2 in test_upstream_patches"
    assert origin(AttnReplacement()) == "AttnReplacement in test_upstream_patches"
    patcher = FreeU_V2.execute(C.models.load_checkpoint("standin-sd15")[0])
    replace = patcher.model_options["transformer_options"].setdefault("patches_replace", {})
    replace["attn2"] = {("input", 1, 0): AttnReplacement(), ("input", 2, 0): AttnReplacement()}
    patcher.add_wrapper_with_key("outer_sample", "loratorio", lambda *a: None)
    patcher.add_wrapper_with_key("outer_sample", "other_node", lambda *a: None)
    patcher.patches = {"diffusion_model.out.2.weight": []}
    assert describe_patches(patcher, skip=["loratorio"]) == [
        "FreeU_V2 (model_function_wrapper)", "FreeU_V2 (output_block_patch)",
        "AttnReplacement in test_upstream_patches (attn2 replacement) x2", "other_node (outer_sample wrapper)",
        "weight patches on 1 weights (LoRAs or merges loaded before)"]
    forge_like = type("UnetPatcher", (), {"model_options": {}, "lora_patches": {
        ("/models/Lora/style.safetensors", 1.0, 1.0, False): {}}})()
    assert describe_patches(forge_like) == ["LoRA files merged by the WebUI: style.safetensors"]
    assert describe_patches(C.models.load_checkpoint("standin-sd15")[0]) == []


def loratorio_on(patcher, params):
    from lib_loratorio.comfyui.composing import apply_loratorio
    from lib_loratorio.comfyui.stack import StackEntry

    entry = StackEntry("alice.safetensors", C.folder_paths.get_full_path("loras", "alice.safetensors"), 1.0)
    return apply_loratorio(patcher, (entry,), params)


@pytest.mark.parametrize("mode", ["LoRAtorio", "LoRAtorio Fast"])
def test_nan_in_the_base_model_names_the_patches_set_before_loratorio(mode):
    from lib_loratorio.errors import NonFiniteError

    patched = FreeU_V2.execute(C.models.load_checkpoint("standin-sd15")[0], make_nan=True)
    with pytest.raises(NonFiniteError) as caught:
        sample(loratorio_on(patched, LoratorioParams(mode=mode, text_encoder="UNet only")), steps=2)
    message = str(caught.value)
    assert message.startswith("The base model produced NaN or inf in its conditional prediction.")
    assert message.endswith("Patches set on the model before LoRAtorio act on every branch and may cause it: "
                            "FreeU_V2 (model_function_wrapper); FreeU_V2 (output_block_patch). Try the model "
                            "without them.")


@pytest.mark.parametrize("who, patches, named", [("The base model", ["FreeU_V2 (output_block_patch)"], True),
                                                 ("LoRA 'alice'", ["FreeU_V2 (output_block_patch)"], False),
                                                 ("The base model", [], False)])
def test_only_the_base_models_nan_names_the_patches(who, patches, named):
    from lib_loratorio.composing_session import ComposingSession
    from lib_loratorio.errors import NonFiniteError

    session = ComposingSession(LoratorioParams())
    session.upstream_patches = patches
    with pytest.raises(NonFiniteError) as caught, session.sampling_run():
        raise NonFiniteError(f"{who} produced NaN or inf in its conditional prediction.", who=who)
    assert ("Patches set on the model before LoRAtorio" in str(caught.value)) is named
    assert caught.value.who == who and session.runner is None
