"""Wiring into the WebUI: the ``p.sample`` wrapper that encloses composition, and the callbacks."""

from __future__ import annotations

from modules import extra_networks, script_callbacks

from ..composing_session import LIBRARY
from .api_args import guard_api_args
from .extra_network import ExtraNetworkLoratorio
from .memory_settings import on_ui_settings
from .session import Session, get_session
from .xyz_axes import add_xyz_axes


def start_session(p, session: Session) -> Session:
    """Attach ``session`` to ``p`` and wrap ``p.sample`` / ``p.get_conds_with_caching`` on the instance.

    ``p.sample`` encloses every sampler run of a batch (first pass, hires, a refiner switch), so
    the hooks live exactly that long, and an error raised there reaches the UI and the API (the
    WebUI swallows exceptions raised in script hooks).
    """
    session.attach()
    original_sample = p.sample
    p.get_conds_with_caching = session.record_conds(p.get_conds_with_caching)

    def sample(*args, **kwargs):
        session.raise_error()
        if not session.loras:
            return original_sample(*args, **kwargs)
        with session.sampling():
            result = original_sample(*args, **kwargs)
        session.raise_error()
        return result

    p.sample = sample
    return session


def on_before_ui() -> None:
    """The extra-network registry is reset after scripts load, so register here (as Lora does)."""
    extra_networks.register_extra_network(ExtraNetworkLoratorio())
    add_xyz_axes()


def on_cfg_denoiser(params) -> None:
    session = get_session(getattr(params.denoiser, "p", None))
    if session is not None and session.runner is not None:
        with session.capture_errors():
            session.on_cfg_denoiser(params)


def register_callbacks() -> None:
    """Register the WebUI callbacks (the WebUI clears them on every script reload)."""
    script_callbacks.on_cfg_denoiser(on_cfg_denoiser, name="loratorio")
    script_callbacks.on_before_ui(on_before_ui, name="loratorio")
    script_callbacks.on_ui_settings(on_ui_settings, name="loratorio")
    # bindings hold the layers of the model they were made for: let an unloaded model go
    script_callbacks.on_model_loaded(lambda _model: LIBRARY.forget_bindings(), name="loratorio")
    script_callbacks.on_app_started(lambda _demo, _app: guard_api_args(), name="loratorio")
