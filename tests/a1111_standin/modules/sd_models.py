"""Stand-in for the part of ``modules/sd_models.py`` the pipeline touches: ``reload_model_weights``.

The real function loads a checkpoint (by ``info``, or the one in settings) and fires
``on_model_loaded``. Here ``info`` may be a stand-in model object (anything with
``sd_checkpoint_info``), or a checkpoint of the loaded model's architecture
(``standin_models.checkpoint_file``), whose weights go into the loaded model object as the real
one does when the config matches (``load_model_weights``: the same object, its
``sd_checkpoint_info``/``sd_model_checkpoint`` replaced); with no ``info`` it switches back to
``model_data.main_model`` with its own weights (the model the current ``process_images`` started
with; a refiner left loaded by the previous run is switched back at the start of the next one,
like the real reload at process_images start). A switch fires ``model_loaded_callback``.
"""

from __future__ import annotations

import contextlib
import types

from modules import script_callbacks, shared

model_data = types.SimpleNamespace(main_model=None, switched_to=None, replaced=None)


class SkipWritingToConfig(contextlib.nullcontext):
    pass


def _load_weights(model, info, weights):
    model.load_state_dict(weights)
    model.sd_checkpoint_info, model.sd_model_checkpoint, model.sd_model_hash = info, info.filename, info.shorthash
    script_callbacks.model_loaded_callback(model)
    return model


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    if hasattr(info, "weights"):  # a checkpoint of the loaded model's architecture: into the same object
        model = shared.sd_model
        if model.sd_checkpoint_info is info:
            return model
        if model_data.replaced is None:
            model_data.replaced = (model, model.sd_checkpoint_info,
                                   {k: v.clone() for k, v in model.state_dict().items()})
        return _load_weights(model, info, info.weights)
    if model_data.replaced is not None:  # the main checkpoint's weights back into its object
        model, main_info, main_weights = model_data.replaced
        model_data.replaced = None
        _load_weights(model, main_info, main_weights)
    target = info if hasattr(info, "sd_checkpoint_info") else model_data.main_model
    if target is None or target is shared.sd_model:
        return shared.sd_model
    model_data.switched_to = target if target is not model_data.main_model else None
    shared.sd_model = target
    script_callbacks.model_loaded_callback(target)
    return target


def apply_token_merging(sd_model, token_merging_ratio):
    pass


def get_checkpoint_name(sd_model):
    info = getattr(sd_model, "sd_checkpoint_info", None)
    return getattr(info, "name_for_extra", None) or getattr(info, "title", None)
