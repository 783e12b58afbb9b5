"""LoRAtorio Weight Maps' MASK outputs in the ComfyUI (3cd7b32) stand-in: the masks themselves, and the example
workflow (docs/comfyui/loratorio_masks_inpaint*.json) whose masks drive an inpaint pass per LoRA."""

import json
import os

import torch

from lib_loratorio.params import LoratorioParams
from tests.test_comfyui_nodes import LDM_TARGETS, ROOT, C, env, untouched, write_comfy_lora  # noqa: F401 - fixtures

EXAMPLE = os.path.join(ROOT, "docs", "comfyui", "loratorio_masks_inpaint.json")
LORAS = ("sub/comfy_style.safetensors", "sub/comfy_detail.safetensors")  # ComfyUI-named: its own loader reads them


def weight_maps_node():
    return C.nodes.NODE_CLASS_MAPPINGS["LoratorioWeightMaps"]()


def composed_run(steps=3, mode="LoRAtorio Fast"):
    """A two-LoRA LoRAtorio run sampled through the nodes' code: (its MODEL, its decoded images)."""
    from lib_loratorio.comfyui.composing import apply_loratorio
    from lib_loratorio.comfyui.stack import StackEntry

    model, clip, vae = C.models.load_checkpoint("standin-sd15")
    stack = tuple(StackEntry(n, C.folder_paths.get_full_path("loras", n), 1.0) for n in ("alice.safetensors",
                                                                                         "hat.safetensors"))
    composed = apply_loratorio(model, stack, LoratorioParams(mode=mode, show_weight_maps=True,
                                                                     text_encoder="UNet only"))
    positive = C.nodes.CLIPTextEncode().encode(clip, "a cat")[0]
    negative = C.nodes.CLIPTextEncode().encode(clip, "blurry")[0]
    latent = {"samples": torch.zeros(2, 4, 16, 8)}
    samples = C.nodes.common_ksampler(composed, 1, steps, 5.0, "euler", "simple", positive, negative, latent)[0]
    return composed, vae.decode(samples["samples"])


def test_a_mask_per_lora_at_the_images_size():
    model, images = composed_run()
    node = weight_maps_node()
    heatmaps, *masks = node.render(model, images)
    assert heatmaps.shape == (4, 128, 64, 3) and len(masks) == 6 == len(node.RETURN_TYPES) - 1
    assert node.RETURN_TYPES[1:] == ("MASK",) * 6 and node.RETURN_NAMES[1] == "mask_1"
    assert all(m.shape == (2, 128, 64) for m in masks)
    assert torch.allclose(masks[0] + masks[1], torch.ones(2, 128, 64), atol=1e-5)  # each pixel's weights sum to 1
    assert all(not m.any() for m in masks[2:])                                    # past the stack: empty
    # the run's maps at pixel size, image by image: a latent pixel covers 8x8 pixels
    maps = model.get_attachment("loratorio").last_run_maps
    assert torch.equal(masks[0][1, ::8, ::8], maps[1][0][1][0])
    _, *binary = node.render(model, images, threshold=0.5)
    assert torch.equal(binary[0], (masks[0] >= 0.5).float())
    _, *feathered = node.render(model, images, threshold=0.5, blur=3.0)
    assert torch.allclose(feathered[0].mean(), binary[0].mean(), atol=0.02) and not torch.equal(feathered[0], binary[0])


def test_in_stack_without_hints_every_mask_is_white():
    """The default mode acts with every LoRA everywhere: its masks say so (no LoRA owns a part of the image)."""
    model, images = composed_run(mode="Stack")
    _, *masks = weight_maps_node().render(model, images)
    assert all(torch.equal(m, torch.ones(2, 128, 64)) for m in masks[:2])


def example(threshold=0.5, blur=0.0):
    """The example, small: 128x64, 3 steps, the stand-in's checkpoint; the LoRAtorio LoRAs and the detail passes' are
    ComfyUI-named files; the first pass's image and the masks previewed too."""
    with open(EXAMPLE) as f:
        prompt = json.load(f)
    prompt["1"]["inputs"]["ckpt_name"] = "standin-sd15.safetensors"
    prompt["2"]["inputs"]["lora_name"], prompt["3"]["inputs"]["lora_name"] = LORAS
    prompt["13"]["inputs"]["lora_name"], prompt["19"]["inputs"]["lora_name"] = LORAS
    prompt["7"]["inputs"].update(width=128, height=64)
    prompt["11"]["inputs"].update(threshold=threshold, blur=blur)
    for sampler in ("8", "16", "22"):
        prompt[sampler]["inputs"].update(steps=3, cfg=5.0)
    for node_id, source in (("90", ["9", 0]), ("91", ["11", 1]), ("92", ["11", 2]), ("93", ["17", 0]),
                            ("94", ["23", 0])):
        prompt[node_id] = {"class_type": "PreviewImage", "inputs": {"images": source}}
    return prompt


def test_the_example_details_each_loras_region_with_that_lora():
    from tests.test_comfyui_nodes import image, run

    sd15 = C.models.load_checkpoint("standin-sd15")[0].model.diffusion_model
    write_comfy_lora(os.path.join(os.path.dirname(C.folder_paths.get_full_path("loras", LORAS[0])),
                                  "comfy_detail.safetensors"), sd15, LDM_TARGETS, seed=4)
    result = run(example())
    assert result["status"]["status_str"] == "success", result["status"]
    first, final = image(result, "90"), image(result, "10")
    mask_1, mask_2 = image(result, "91")[..., None], image(result, "92")[..., None]
    detail_1, detail_2 = image(result, "93"), image(result, "94")
    assert bool(mask_1.any()) and bool(mask_2.any())
    # pass 2 pastes its LoRA's region over pass 1's result, which pasted the first LoRA's over the first image
    only_1 = (mask_1 > 0) & (mask_2 == 0)
    assert torch.equal(final[only_1.expand_as(final)], detail_1[only_1.expand_as(final)])
    assert torch.equal(final[(mask_2 > 0).expand_as(final)], detail_2[(mask_2 > 0).expand_as(final)])
    assert not torch.equal(final, first)
    # a higher threshold leaves pixels no LoRA leads that much: there the first image stays
    strict = run(example(threshold=0.52))  # the exact mode's maps stay near 0.5 on the stand-in
    neither = (image(strict, "91") == 0) & (image(strict, "92") == 0)
    assert bool(neither.any()) and not bool(neither.all())
    assert torch.equal(image(strict, "10")[neither], image(strict, "90")[neither])
    assert not torch.equal(image(strict, "10")[~neither], image(strict, "90")[~neither])
