"""A detailer pass per LoRA (lib_loratorio/webui/detailer.py) with ADetailer's passes (tests/adetailer_standin.py), on
both WebUI stand-ins: which LoRA's rows ran in which pass, the infotext, ADetailer's own prompts, and the feature off
or LoRAtorio left out of ADetailer's scripts (today's behaviour)."""

import re

import numpy as np
import pytest
from PIL import Image

from lib_loratorio.branches import MIXED, lora_of
from tests.adetailer_standin import SCRIPT_DEFAULT, adetailer_script
from tests.extension_helpers import on

WITH_LORATORIO = SCRIPT_DEFAULT + ",loratorio"


@pytest.fixture
def runner(webui):
    with webui.script_runner() as runner:
        yield runner


@pytest.fixture
def runs(monkeypatch):
    """Per sampling run so far (the generation's first, then one per ADetailer pass): [runner, the LoRAs whose rows
    ran, the least weight a mixed row's map gave a LoRA (1.0: every LoRA everywhere at full strength)]."""
    from lib_loratorio.branch_runner import BranchRunner

    runs: list[list] = []  # the runners are kept: a freed one's id may come again
    original = BranchRunner.rows

    def rows(self, branches, active=None, maps=None, tokens=None):
        if not runs or runs[-1][0] is not self:
            runs.append([self, set(), 1.0])
        if maps is not None:
            runs[-1][2] = min(runs[-1][2], float(maps.min()))
        names = runs[-1][1]
        for j, branch in enumerate(branches.tolist()):
            loras = range(self.n_loras) if branch == MIXED else [lora_of(branch)] if lora_of(branch) is not None else []
            if active is not None:
                loras = [i for i in range(self.n_loras) if bool(active[j, i])]
            names.update(re.match(r"LoRA '([^']+)'", self.labels[i]).group(1) for i in loras)
        return original(self, branches, active, maps, tokens)

    monkeypatch.setattr(BranchRunner, "rows", rows)
    return runs


@pytest.fixture
def rows_of_passes(runs):
    """Per sampling run so far, the LoRAs whose rows ran."""
    return lambda: [names for _, names, _ in runs]


def leading_regions(p):
    """The detector of the stand-in ADetailer: for the image being detailed, the pixels where alice leads, then those
    where hat leads, from the generation's weight maps (two regions owned by different LoRAs)."""
    from lib_loratorio.webui import weight_map_api

    def regions(image):
        maps = weight_map_api.of_generation(p)[p.iteration * p.batch_size + p.batch_index]
        masks = maps.masks(*image.size)
        alice = masks["alice"] >= masks["hat"]
        return [Image.fromarray((m * 255).astype(np.uint8)) for m in (alice, ~alice)]

    return regions


def halves(p):
    """A detector finding the image's left and right halves (two figures side by side)."""
    def regions(image):
        left = np.zeros((image.size[1], image.size[0]), dtype=np.uint8)
        left[:, : image.size[0] // 2] = 255
        return [Image.fromarray(left), Image.fromarray(255 - left)]

    return regions


def generate(webui, runner, args, *, script_names=WITH_LORATORIO, ad_prompt="", detector=leading_regions, **kw):
    """A txt2img with the stand-in ADetailer (first, as "!adetailer" sorts) and LoRAtorio; returns (result, p)."""
    p_box = []
    ad = adetailer_script(webui.scripts, webui.processing, lambda image: detector(p_box[0])(image),
                          script_names=script_names, ad_prompt=ad_prompt)
    both = webui.scripts.ScriptRunner()
    both.initialize_scripts(False, [ad] + [type(s) for s in runner.alwayson_scripts])
    both.alwayson_scripts[1].filename = runner.alwayson_scripts[0].filename  # scripts/loratorio.py, as loaded
    both.setup_ui()
    p = webui.txt2img(both, **{"steps": 2, **kw})
    p.script_args = tuple([0] * both.alwayson_scripts[1].args_from + args)
    p_box.append(p)
    return webui.processing.process_images(p), p


def infotext_value(webui, text, key="LoRAtorio ADetailer"):
    return webui.infotext_utils.parse_generation_parameters(text).get(key)


HINTED = "a cat <loratorio:alice:0.8:left> <loratorio:hat:1:right>"


def test_stack_without_hints_every_pass_applies_every_lora(webui, runner, runs, rows_of_passes):
    """The default mode's maps are uniform: no LoRA leads a region, so every LoRA owns each (today's passes)."""
    result, _ = generate(webui, runner, on(mode="Stack", detailer=True), detector=halves)
    assert rows_of_passes() == [{"alice", "hat"}] * 3
    assert infotext_value(webui, result.infotexts[result.index_of_first_image]) == (
        "region 1: alice+hat; region 2: alice+hat")


def test_stack_with_region_hints_each_pass_applies_its_hinted_lora(webui, runner, runs, rows_of_passes):
    result, _ = generate(webui, runner, on(mode="Stack", detailer=True), detector=halves, prompt=HINTED)
    assert rows_of_passes() == [{"alice", "hat"}, {"alice"}, {"hat"}]
    assert runs[0][2] < 1e-3 and [least for *_, least in runs[1:]] == [1.0, 1.0]  # the passes drop the hints
    assert infotext_value(webui, result.infotexts[result.index_of_first_image]) == "region 1: alice; region 2: hat"


def test_hints_with_the_feature_off_act_in_every_pass_as_written(webui, runner, runs, rows_of_passes):
    generate(webui, runner, on(mode="Stack"), detector=halves, prompt=HINTED)
    assert rows_of_passes() == [{"alice", "hat"}] * 3 and all(least < 1e-3 for *_, least in runs)


def test_each_regions_pass_applies_the_loras_that_own_it(webui, runner, rows_of_passes):
    result, _ = generate(webui, runner, on(mode="LoRAtorio Fast", detailer=True, detailer_share=1.0), batch_size=2)
    generation, *passes = rows_of_passes()
    assert generation == {"alice", "hat"}
    assert passes == [{"alice"}, {"hat"}] * 2             # two images, a pass per region, each with its owner only
    first = result.index_of_first_image
    for i in range(2):
        assert infotext_value(webui, result.infotexts[first + i]) == "region 1: alice; region 2: hat"
    assert infotext_value(webui, result.infotexts[first], "LoRAtorio adetailer per lora") == "True"


def test_a_lower_owner_share_lets_the_second_lora_act_too(webui, runner, rows_of_passes):
    generate(webui, runner, on(mode="LoRAtorio Fast", detailer=True, detailer_share=0.0))
    assert rows_of_passes()[1:] == [{"alice", "hat"}] * 2


def test_an_adetailer_prompt_with_its_own_tags_keeps_them(webui, runner, rows_of_passes):
    result, _ = generate(webui, runner, on(mode="LoRAtorio Fast", detailer=True, detailer_share=1.0),
                         ad_prompt="a face <loratorio:styles/ink:1> <loratorio:hat:0.5>")
    # ink is the prompt's own (the generation did not compose it): in every pass; hat only where it owns the region
    assert rows_of_passes()[1:] == [{"styles/ink"}, {"styles/ink", "hat"}]
    assert infotext_value(webui, result.infotexts[result.index_of_first_image]) == (
        "region 1: styles/ink; region 2: styles/ink+hat")


def test_off_every_pass_composes_the_prompts_loras_as_before(webui, runner, rows_of_passes):
    result, _ = generate(webui, runner, on(mode="LoRAtorio Fast"))
    assert rows_of_passes()[1:] == [{"alice", "hat"}] * 2
    assert infotext_value(webui, result.infotexts[result.index_of_first_image]) is None


@pytest.mark.parametrize("detailer", [True, False])
def test_without_loratorio_in_adetailers_scripts_the_passes_go_without_it(webui, runner, rows_of_passes, capsys,
                                                                          detailer):
    generate(webui, runner, on(mode="LoRAtorio Fast", detailer=detailer), script_names=SCRIPT_DEFAULT)
    assert len(rows_of_passes()) == 1                        # the generation's run only
    out = capsys.readouterr().out
    assert ("add loratorio to ADetailer's 'Script names to apply to ADetailer'" in out) is detailer
    assert ("tags are ignored while LoRAtorio is off" in out) is not detailer   # today's note


def test_the_python_api_keeps_the_generation_not_its_passes(webui, runner):
    from lib_loratorio.webui import weight_map_api

    _, p = generate(webui, runner, on(mode="LoRAtorio Fast", detailer=True), width=128, height=64)
    (maps,) = weight_map_api.last_generation()
    assert maps.size == (128, 64) and maps.names == ("alice", "hat")
    assert np.array_equal(maps.maps.numpy(), weight_map_api.of_generation(p)[0].maps.numpy())
