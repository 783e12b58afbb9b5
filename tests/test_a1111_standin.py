"""Fast checks of the A1111 v1.10.1 stand-in (tests/a1111_standin) itself."""

import types

import numpy as np
import pytest
import torch

from tests.standins import A1111, imported

W = types.SimpleNamespace()  # the stand-in's modules, imported inside its environment


@pytest.fixture(scope="module", autouse=True)
def env(one_thread):
    with A1111.active():
        W.__dict__.update(vars(imported(["gradio", "standin_models", "modules.errors", "modules.extra_networks",
                                         "modules.infotext_utils", "modules.processing", "modules.script_callbacks",
                                         "modules.scripts", "modules.shared", "modules.api.api",
                                         "modules.ui_components"])))
        yield W


@pytest.fixture(scope="module")
def sd15(env):
    return W.standin_models.make_sd15_model()


@pytest.fixture(autouse=True)
def clean_state(sd15):
    W.shared.opts.reset()
    W.shared.state.begin()
    W.shared.sd_model = sd15
    W.script_callbacks.clear_callbacks()
    W.extra_networks.initialize()
    W.errors.reported.clear()
    W.processing.StableDiffusionProcessing.cached_c[:] = [None, None]
    W.processing.StableDiffusionProcessing.cached_uc[:] = [None, None]
    yield
    W.script_callbacks.clear_callbacks()
    W.shared.state.begin()


class Spy(torch.nn.Module):
    """Wraps ``denoiser.model_wrap`` (the recipe of docs/research/a1111-1.10.1.md §1.8) and records every inner call."""

    def __init__(self, inner, log, fail=False):
        super().__init__()
        self.inner = inner
        self.log = log
        self.fail = fail

    def __getattr__(self, item):
        try:
            return super().__getattr__(item)
        except AttributeError:
            return getattr(self.inner, item)

    def forward(self, x, sigma, cond):
        if self.fail:
            raise RuntimeError("boom in sampling")
        c = cond["c_crossattn"][0] if "c_crossattn" in cond else cond["crossattn"]
        self.log.append({"rows": x.shape[0], "cond_rows": c.shape[0], "tokens": c.shape[1], "keys": sorted(cond),
                         "x": x.clone()})
        return self.inner(x, sigma, cond=cond)


def install_spy(log, params_log=None, fail=False):
    def on_denoiser(params):
        if params_log is not None:
            params_log.append(params)
        d = params.denoiser
        if not isinstance(d.inner_model, Spy):
            d.model_wrap = Spy(d.inner_model, log, fail)
    W.script_callbacks.on_cfg_denoiser(on_denoiser)


def txt2img(**kw):
    args = dict(prompt="a cat", negative_prompt="", steps=1, width=64, height=64, batch_size=2, sampler_name="Euler",
                seed=3)
    args.update(kw)
    return W.processing.StableDiffusionProcessingTxt2Img(**args)


@pytest.mark.parametrize("batch_cond_uncond,negative,expected", [
    (True, "", [(6, 6, 77)]),                                   # one call: 4 cond rows (2 AND each) + 2 uncond
    (False, "", [(2, 2, 77)] * 3),                              # fixed B-row chunks over all rows
    (True, "word " * 80, [(4, 4, 77), (2, 2, 154)]),            # token lengths differ: cond chunk(s) of 2B, then uncond
    (False, "word " * 80, [(2, 2, 77), (2, 2, 77), (2, 2, 154)]),
])
def test_row_layout_call_patterns(batch_cond_uncond, negative, expected):
    W.shared.opts.batch_cond_uncond = batch_cond_uncond
    log, plog = [], []
    install_spy(log, plog)
    W.processing.process_images(txt2img(prompt="a cat AND a dog :0.5", negative_prompt=negative))
    assert [(e["rows"], e["cond_rows"], e["tokens"]) for e in log] == expected
    params = plog[0]
    assert params.text_cond.shape[0] == 4 and params.text_uncond.shape[0] == 2
    x_in = params.x
    # cond rows grouped per image (image 0, image 0, image 1, image 1), then the uncond rows
    assert torch.equal(x_in[0], x_in[1]) and torch.equal(x_in[2], x_in[3])
    assert torch.equal(x_in[0], x_in[4]) and torch.equal(x_in[2], x_in[5]) and not torch.equal(x_in[0], x_in[2])


@pytest.mark.parametrize("sampler,calls", [("Euler", 2), ("DDIM", 1)])  # DDIM makes steps-1 calls, like A1111
def test_txt2img_two_images_two_steps(sampler, calls):
    log = []
    install_spy(log)
    res = W.processing.process_images(txt2img(steps=2, sampler_name=sampler))
    assert len(log) == calls
    assert len(res.images) == 3 and res.index_of_first_image == 1  # grid first, as with opts.return_grid
    for img in res.images[1:]:
        arr = np.asarray(img)
        assert arr.shape == (64, 64, 3) and np.isfinite(arr).all()
    assert res.infotexts[1].splitlines()[-1].startswith(f"Steps: 2, Sampler: {sampler}, CFG scale: 7.0, Seed: 3")


def test_interrupt_returns_early_and_postprocess_runs():
    seen = []

    class S(W.scripts.Script):
        def title(self):
            return "Spy script"

        def show(self, is_img2img):
            return W.scripts.AlwaysVisible

        def ui(self, is_img2img):
            with W.ui_components.InputAccordion(True, label="Spy") as enabled:
                pass
            return [enabled]

        def postprocess(self, p, processed, enabled):
            seen.append(("postprocess", enabled, len(processed.images)))

    runner = W.scripts.ScriptRunner()
    runner.initialize_scripts(False, [S])
    runner.setup_ui()
    log = []
    install_spy(log)
    W.script_callbacks.on_cfg_denoiser(lambda params: W.shared.state.interrupt())
    p = txt2img(steps=3, batch_size=1, n_iter=2)
    p.scripts = runner
    p.script_args = (0, True)
    res = W.processing.process_images(p)
    assert len(log) == 1                     # the 2nd denoiser call raised InterruptedException (caught)
    assert len(res.images) == 1              # second batch skipped by the loop's interrupted check
    assert seen == [("postprocess", True, 1)]


def test_sampling_exception_propagates_and_skips_postprocess():
    seen = []

    class S(W.scripts.Script):
        def title(self):
            return "Spy"

        def show(self, is_img2img):
            return W.scripts.AlwaysVisible

        def process(self, p, *args):
            raise ValueError("swallowed")

        def postprocess(self, p, processed, *args):
            seen.append("postprocess")

    runner = W.scripts.ScriptRunner()
    runner.initialize_scripts(False, [S])
    runner.setup_ui()
    install_spy([], fail=True)
    p = txt2img()
    p.scripts = runner
    p.script_args = (0,)
    with pytest.raises(RuntimeError, match="boom in sampling"):
        W.processing.process_images(p)
    assert seen == []
    assert any("process" in msg for msg, _ in W.errors.reported)


def test_api_helper_error_mapping():
    class S(W.scripts.Script):
        def title(self):
            return "My Ext"

        def show(self, is_img2img):
            return W.scripts.AlwaysVisible

        def ui(self, is_img2img):
            gr = W.gradio
            return [gr.Checkbox(False, label="on"), gr.Slider(0, 2, 1.0, label="w"), gr.Dropdown(["a", "b"], "a")]

        def process(self, p, on, w, choice):
            p.extra_generation_params["My Ext"] = f"{on}/{w}/{choice}"
            if w == 2:
                raise RuntimeError("hook error is swallowed")

    runner = W.scripts.ScriptRunner()
    runner.initialize_scripts(False, [S])
    runner.setup_ui()
    req = dict(prompt="x", steps=1, width=64, height=64, sampler_name="Euler")
    status, body = W.api.run_txt2img_api({**req, "alwayson_scripts": {"my ext": {"args": [True, 0.5]}}}, runner)
    assert status == 200 and len(body["images"]) == 1
    assert "My Ext: True/0.5/a" in body["info"]
    assert W.api.run_txt2img_api({**req, "alwayson_scripts": {"other": {}}}, runner)[0] == 422
    status, body = W.api.run_txt2img_api({**req, "alwayson_scripts": {"My Ext": {"args": {"0": True}}}}, runner)
    assert (status, body["error"], body["errors"]) == (500, "KeyError", "0")
    assert W.api.run_txt2img_api({**req, "alwayson_scripts": {"My Ext": {"args": [True, 2]}}}, runner)[0] == 200
    install_spy([], fail=True)
    status, body = W.api.run_txt2img_api(req, runner)
    assert status == 500 and body == {"error": "RuntimeError", "detail": "", "body": "", "errors": "boom in sampling"}


def test_extra_networks_and_infotext_roundtrip():
    got = []

    class Net(W.extra_networks.ExtraNetwork):
        def activate(self, p, params_list):
            got.append([(x.positional, x.named) for x in params_list])

        def deactivate(self, p):
            got.append("deactivate")

    W.extra_networks.register_extra_network(Net("lora"))
    p = txt2img(prompt="a cat <lora:foo:0.5:te=0.2> <hypernet:bar>", batch_size=1, steps=1)
    p.extra_generation_params["Lora hashes"] = "foo: 0123456789ab"
    runner = W.scripts.ScriptRunner()
    runner.initialize_scripts(False, [])
    runner.setup_ui()
    p.scripts = runner  # with p.scripts set, p.prompts is restored (tags back) before infotexts, as in A1111
    res = W.processing.process_images(p)
    assert got == [[(["foo", "0.5"], {"te": "0.2"})], "deactivate"]
    params = W.infotext_utils.parse_generation_parameters(res.infotexts[0])
    assert params["Prompt"] == "a cat <lora:foo:0.5:te=0.2> <hypernet:bar>"
    assert params["Lora hashes"] == "foo: 0123456789ab" and params["Size-1"] == "64" and params["Steps"] == "1"


def test_prompt_schedules_and_sdxl_conditions():
    from modules import prompt_parser
    g = prompt_parser.get_learned_conditioning_prompt_schedules
    assert g(["a [b:3]"], 10) == [[[3, "a "], [10, "a b"]]]
    assert g(["a [b : c : 1] d"], 10) == [[[1, "a b  d"], [10, "a  c  d"]]]
    assert g(["a [b:.5] c"], 10) == [[[5, "a  c"], [10, "a b c"]]]
    xl = W.standin_models.make_sdxl_model()
    W.shared.sd_model = xl
    log = []
    install_spy(log)
    W.processing.process_images(txt2img(prompt="a [cat:dog:1]", batch_size=1, steps=2))
    assert log[0]["keys"] == ["c_concat", "crossattn", "vector"] and log[0]["tokens"] == 77
    assert not torch.equal(log[0]["x"], log[1]["x"])


def test_refiner_switch_discards_model_wrap(sd15):
    refiner = W.standin_models.make_sd15_model("refiner", seed=1)
    seen, loaded = [], []
    W.script_callbacks.on_model_loaded(lambda m: loaded.append(m.sd_checkpoint_info.name_for_extra))
    W.script_callbacks.on_cfg_denoiser(lambda params: seen.append(
        (params.denoiser.model_wrap is None, params.denoiser.inner_model.inner_model is refiner)))
    p = txt2img(steps=4, batch_size=1, refiner_switch_at=0.5, refiner_model=refiner)
    W.processing.process_images(p)
    assert seen == [(False, False), (False, False), (True, True), (False, True)]
    assert loaded == ["refiner"] and p.extra_generation_params["Refiner switch at"] == 0.5


def test_lora_network_listing(tmp_path):
    import json
    import struct

    import networks

    def write(path, meta):
        path.parent.mkdir(parents=True, exist_ok=True)
        tensor = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
        header = json.dumps({"__metadata__": meta, "w": tensor}).encode()
        path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0\0\0")

    write(tmp_path / "a.safetensors", {"ss_output_name": "same"})
    write(tmp_path / "sub" / "b.safetensors", {"ss_output_name": "same", "ss_base_model_version": "sdxl_base_v1-0"})
    write(tmp_path / "sub" / "deeper" / "c.safetensors", {})
    W.shared.cmd_opts.lora_dir = str(tmp_path)
    networks.list_available_networks()
    assert sorted(networks.available_networks) == ["a", "b", "c"]
    assert sorted(networks.available_network_aliases) == ["a", "b", "c", "same"]
    assert "same" in networks.forbidden_network_aliases
    a, b, c = (networks.available_networks[k] for k in "abc")
    assert a.get_alias() == "a" and c.get_alias() == "c" and len(a.shorthash) == 12
    assert (b.sd_version.name, c.sd_version.name) == ("SDXL", "Unknown")
    # a forbidden alias resolves by file name only
    assert [n.name for n in networks.load_networks(["a", "same"])] == ["a"]
