"""Forge ``modules/sd_models.py`` stand-in = the A1111 stand-in's (``model_data``, ``reload_model_weights``,
``SkipWritingToConfig``, ``apply_token_merging``, ``get_checkpoint_name``) plus
``forge_model_reload()`` -> ``(sd_model, just_reloaded)``: the stand-in switches back to the model the
current ``process_images`` started with (the real one reloads only when the checkpoint or loading
parameters changed, firing ``on_model_loaded``)."""

from modules import _load_a1111, shared

_base = _load_a1111("sd_models")

model_data = _base.model_data
SkipWritingToConfig = _base.SkipWritingToConfig
reload_model_weights = _base.reload_model_weights
apply_token_merging = _base.apply_token_merging
get_checkpoint_name = _base.get_checkpoint_name


def forge_model_reload():
    before = shared.sd_model
    model = reload_model_weights()
    return model, model is not before
