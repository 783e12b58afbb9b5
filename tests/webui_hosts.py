"""A WebUI stand-in (A1111 1.10.1, Forge dfdcbab or Forge Neo 2.26) ready for LoRAtorio's end-to-end tests: its
modules, tiny models, a Lora folder of test LoRAs, and a fresh script runner per test that checks nothing was left
behind."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from tests.extension_helpers import UNET_TARGETS, hook_ids, make_txt2img
from tests.lora_writers import write_diffusers_flux, write_kohya
from tests.standins import A1111, FORGE, NEO, ROOT, imported

FLUX_TARGETS = ["double_blocks.0.img_attn.qkv", "double_blocks.0.img_attn.proj", "double_blocks.0.img_mlp.0",
                "double_blocks.0.txt_attn.qkv", "single_blocks.0.linear1", "single_blocks.0.linear2"]
XL_TARGETS = ["input_blocks.4.1.transformer_blocks.0.attn1.to_k", "middle_block.1.transformer_blocks.0.attn2.to_k"]
TE_TARGETS = ["encoder.layers.0.self_attn.q_proj", "encoder.layers.1.mlp.fc2"]
# Neo's transformer families: modules of every kind of layer (image stream, text stream, joint, embeddings)
NEO_TARGETS = {
    "flux2": ["double_blocks.0.img_attn.qkv", "double_blocks.0.img_mlp.0", "double_blocks.0.txt_attn.qkv",
              "single_blocks.0.linear1", "single_blocks.0.linear2", "final_layer.linear", "img_in"],
    "chroma": ["double_blocks.0.img_attn.qkv", "double_blocks.0.img_attn.proj", "double_blocks.0.txt_mlp.0",
               "single_blocks.0.linear1", "single_blocks.0.linear2", "distilled_guidance_layer.in_proj"],
    "zimage": ["layers.0.attention.qkv", "layers.0.feed_forward.w2", "noise_refiner.0.attention.out",
               "context_refiner.0.feed_forward.w1", "final_layer.linear", "x_embedder"],
}
QWEN3_TE_TARGETS = ["layers.0.self_attn.q_proj", "layers.1.mlp.down_proj"]
MODULES = ("standin_models", "modules.extra_networks", "modules.infotext_utils", "modules.processing",
           "modules.script_callbacks", "modules.scripts", "modules.sd_models", "modules.shared", "modules.api.api")


class WebUIHost:
    """One WebUI stand-in, active while the object is used: ``host.processing``, ``host.shared``... are its modules."""

    def __init__(self, name: str, lora_dir: str) -> None:
        self.name, self.forge = name, name in ("forge", "neo")
        self.__dict__.update(vars(imported(MODULES)))
        self.sd15, self.sdxl = self.standin_models.make_sd15_model(), self.standin_models.make_sdxl_model()
        self.flux = self.standin_models.make_flux_model() if self.forge else None
        #: Neo's transformer families by short name ("flux2", "chroma", "zimage")
        self.neo = {k: getattr(self.standin_models, f"make_{k}_model")() for k in NEO_TARGETS} if name == "neo" else {}
        self.models = [m for m in (self.sd15, self.sdxl, self.flux, *self.neo.values()) if m is not None]
        self.lora_dir = lora_dir
        self._write_loras()
        if self.forge:
            self.memory_management = imported(["backend.memory_management"]).memory_management
            for model in self.models:  # transformers adds its own hooks on a first forward
                self.shared.sd_model = model
                self._reset_forge_objects()
                self.processing.process_images(self.processing.StableDiffusionProcessingTxt2Img(
                    prompt="warm-up", steps=1, width=64, height=64, scheduler="Simple"))

    # --- the models' parts ------------------------------------------------------------------------
    def unet(self, model) -> torch.nn.Module:
        return model.forge_objects.unet.model.diffusion_model if self.forge else model.model.diffusion_model

    def text_encoder(self, model) -> torch.nn.Module:
        """SD1.5's CLIP text transformer."""
        if self.forge:
            return model.forge_objects.clip.cond_stage_model.clip_l.transformer
        return model.cond_stage_model.wrapped.transformer

    def networks_of(self, model) -> list[torch.nn.Module]:
        """The networks whose weights and hooks every test leaves as they were."""
        if self.forge:
            objects = model.forge_objects_original
            return [objects.unet.model, objects.clip.cond_stage_model]
        return [model]

    def _write_loras(self) -> None:
        folder = self.lora_dir
        os.makedirs(os.path.join(folder, "styles"), exist_ok=True)
        unet = self.unet(self.sd15).unet  # kohya SD1.5 files use diffusers names
        for i, (name, fmt) in enumerate([("alice", "lora"), ("hat", "locon_tucker"), ("styles/ink", "loha")]):
            write_kohya(os.path.join(folder, f"{name}.safetensors"), unet, UNET_TARGETS, fmt=fmt, seed=10 + i,
                        alpha=8.0, rank=4)
        write_kohya(os.path.join(folder, "te_only.safetensors"), self.text_encoder(self.sd15), TE_TARGETS,
                    component="te1", prefix="lora_te_text_model_", seed=5, alpha=8.0)
        write_kohya(os.path.join(folder, "xl_lora.safetensors"), self.unet(self.sdxl), XL_TARGETS, seed=7, alpha=8.0)
        with open(os.path.join(folder, "alice.safetensors"), "rb") as f:
            truncated = f.read()[:-64]
        with open(os.path.join(folder, "broken.safetensors"), "wb") as f:
            f.write(truncated)
        if not self.forge:
            return
        clip_g = self.sdxl.forge_objects.clip.cond_stage_model.clip_g.transformer
        write_kohya(os.path.join(folder, "xl_te2.safetensors"), clip_g,
                    ["encoder.layers.0.self_attn.v_proj", "encoder.layers.1.mlp.fc1"], component="te2",
                    prefix="lora_te2_text_model_", seed=8, alpha=8.0)
        for i, name in enumerate(("flux_a", "flux_b")):
            write_kohya(os.path.join(folder, f"{name}.safetensors"), self.unet(self.flux), FLUX_TARGETS, seed=20 + i,
                        alpha=8.0)
        for family, model in self.neo.items():
            for i, suffix in enumerate("ab"):
                write_kohya(os.path.join(folder, f"{family}_{suffix}.safetensors"), self.unet(model),
                            NEO_TARGETS[family], seed=30 + i, alpha=8.0)
        if self.neo:  # sd-scripts' layout of a language-model text encoder: lora_te_ + HF names without "model."
            qwen3 = self.neo["zimage"].forge_objects.clip.cond_stage_model.qwen3.model
            write_kohya(os.path.join(folder, "qwen3_te.safetensors"), qwen3, QWEN3_TE_TARGETS, component="te1",
                        prefix="lora_te_", seed=9, alpha=8.0, rank=4)
        # the stand-in Flux's sizes in diffusers terms (packed 2x2 latent: 64 input channels)
        write_diffusers_flux(os.path.join(folder, "flux_diffusers.safetensors"), seed=22, targets=[
            "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "proj_mlp", "proj_out"],
            dims=dict(in_channels=64, num_attention_heads=4, attention_head_dim=8, joint_attention_dim=32,
                      pooled_projection_dim=32, axes_dims_rope=(2, 2, 4)))

    def _reset_forge_objects(self) -> None:
        for m in self.models:
            m.forge_objects = m.forge_objects_original.shallow_copy()
            m.forge_objects_after_applying_lora = m.forge_objects_original.shallow_copy()

    # --- one test -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def script_runner(self) -> Iterator:
        """A script runner with LoRAtorio loaded, on a reset WebUI; afterwards every model's weights and hooks
        (and on Forge its patchers' wrappers) must be as they were."""
        self.shared.opts.reset()
        self.shared.state.begin()
        self.shared.sd_model = self.sd15
        self.shared.cmd_opts.lora_dir = str(self.lora_dir)
        self.processing.StableDiffusionProcessing.cached_c[:] = [None, None]
        self.processing.StableDiffusionProcessing.cached_uc[:] = [None, None]
        if self.forge:
            self.memory_management.free_memory_bytes = float(1 << 50)
            self._reset_forge_objects()
        self.scripts.load_scripts([os.path.join(ROOT, "scripts", "loratorio.py")])
        self.extra_networks.initialize()
        self.script_callbacks.before_ui_callback()
        self.script_callbacks.app_started_callback(None, None)
        import networks
        networks.list_available_networks()
        runner = self.scripts.ScriptRunner()
        runner.initialize_scripts(False)
        runner.setup_ui()
        before = [(self._weights(m), self._hooks(m)) for m in self.models]
        yield runner
        self.sd_models.reload_model_weights()  # the main checkpoint back, as the next generation would load it
        for m, (weights, hooks) in zip(self.models, before, strict=True):
            after = self._weights(m)
            assert all(torch.equal(weights[k], after[k]) for k in weights), "model weights changed"
            assert self._hooks(m) == hooks, "hooks left installed"
            if self.forge:
                assert "model_function_wrapper" not in m.forge_objects.unet.model_options, "wrapper left installed"
                assert "model_function_wrapper" not in m.forge_objects_after_applying_lora.unet.model_options
        self.script_callbacks.clear_callbacks()
        self.shared.state.begin()

    def _weights(self, model) -> dict:
        return {(i, k): v.clone() for i, net in enumerate(self.networks_of(model)) for k, v in net.state_dict().items()}

    def _hooks(self, model) -> set:
        return {hook for net in self.networks_of(model) for hook in hook_ids(net)}

    def txt2img(self, runner, args=None, model=None, **kw):
        """A txt2img ``p`` (see extension_helpers.make_txt2img) on ``model`` (SD1.5 by default)."""
        self.shared.sd_model = model or self.sd15
        return make_txt2img(self.processing, runner, args, **kw)

    def run(self, runner, args=None, model=None, **kw):
        return self.processing.process_images(self.txt2img(runner, args, model, **kw))


@contextlib.contextmanager
def webui_host(name: str, lora_dir: str) -> Iterator[WebUIHost]:
    """The stand-in of ``name`` ("a1111", "forge" or "neo") active for the block, as a WebUIHost."""
    with {"a1111": A1111, "forge": FORGE, "neo": NEO}[name].active():
        yield WebUIHost(name, lora_dir)
