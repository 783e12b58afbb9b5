"""What only A1111 1.10.1 has, end to end in its stand-in: the CFG denoiser's call patterns, the DDIM path, the
refiner switch, SDXL. What A1111 and Forge share: test_webui_extension.py."""

import numpy as np
import pytest

from lib_loratorio.errors import LoratorioError
from tests.extension_helpers import close, hook_ids, merged_run, on, pixels, unet_rows


@pytest.fixture
def runner(a1111):
    with a1111.script_runner() as runner:
        yield runner


@pytest.mark.parametrize("pattern", ["chunks", "separate uncond", "separate uncond chunked"])
def test_every_call_pattern_composes_the_same(a1111, runner, pattern):
    kw = dict(prompt="a cat AND a dog <loratorio:alice:0.8> <loratorio:hat:1>", batch_size=2)
    if pattern == "chunks":
        reference = a1111.run(runner, on(), **kw)
        a1111.shared.opts.batch_cond_uncond = False
        other = a1111.run(runner, on(), **kw)
    else:
        kw["negative_prompt"] = "word " * 80       # longer than 75 tokens: cond and uncond called apart
        reference = a1111.run(runner, on(), **kw)
        a1111.shared.opts.batch_cond_uncond = pattern == "separate uncond"
        other = a1111.run(runner, on(), **kw)
    for i in range(1, 3):
        assert close(pixels(reference, i), pixels(other, i))


def test_skip_uncond_steps_and_ddim(a1111, runner):
    skipped = a1111.run(runner, on(), s_min_uncond=100.0, steps=4)
    assert np.isfinite(pixels(skipped)).all() and "NGMS: 100.0" in skipped.infotexts[0]
    # DDIM's model returns eps: one LoRA without re-centring is still the merged model
    ddim = a1111.run(runner, on(recenter=0.0), prompt="a cat <loratorio:alice:0.8>", sampler_name="DDIM", steps=4)
    assert close(pixels(ddim), pixels(merged_run(a1111, runner, {"alice": 0.8}, sampler_name="DDIM", steps=4)))


def test_refiner_steps_run_the_refiner_alone(a1111, runner):
    """A refiner (a model object of its own, or one of the base's architecture that A1111 loads into the loaded
    model object, "Reusing loaded model"): its steps run without LoRAtorio, the same image either way."""
    refiner = a1111.standin_models.make_sd15_model("refiner", seed=1)
    hooks = hook_ids(refiner)
    own_object = a1111.run(runner, on(), steps=4, refiner_switch_at=0.5, refiner_model=refiner)
    assert hook_ids(refiner) == hooks and "Refiner: refiner" in own_object.infotexts[0]
    p = a1111.txt2img(runner, on(), steps=4, refiner_switch_at=0.5)
    p.refiner_checkpoint_info = a1111.standin_models.checkpoint_file("refiner", refiner.state_dict())
    seen, handle = unet_rows(a1111)
    try:
        same_object = a1111.processing.process_images(p)
    finally:
        handle.remove()
    assert a1111.shared.sd_model is a1111.sd15 and "Refiner: refiner" in same_object.infotexts[0]
    assert seen == [6, 6, 2, 2]         # composed (3 branches x 2 rows), then the refiner: its 2 rows, alone
    assert np.array_equal(pixels(same_object), pixels(own_object))


def test_sdxl_model(a1111, runner):
    xl = a1111.sdxl
    base = a1111.run(runner, prompt="a cat", model=xl)
    opposite = a1111.run(runner, on(), prompt="a cat <loratorio:xl_lora:1> <loratorio:xl_lora:-1>", model=xl)
    assert not np.array_equal(pixels(base), pixels(opposite))
    one = a1111.run(runner, on(recenter=0.0), prompt="a cat <loratorio:xl_lora:1>", model=xl)
    assert close(pixels(one), pixels(merged_run(a1111, runner, {"xl_lora": 1.0}, base=xl)))  # that LoRA merged
    with pytest.raises(LoratorioError, match=r"LoRA 'xl_lora' does not fit the loaded model"):
        a1111.run(runner, on(), prompt="a cat <loratorio:xl_lora:1>")     # an SDXL LoRA on the SD1.5 model
