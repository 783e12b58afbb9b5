"""What scripts/loratorio.py asks of the WebUI it runs in, one interface for every host.

``lib_loratorio.webui.host.load_adapter()`` picks the host's adapter once, when the script loads:
``a1111.ADAPTER``, ``forge.ADAPTER``, or ``UNSUPPORTED`` for the older Forge.
"""

from __future__ import annotations

from ..errors import LoratorioError
from ..params import LoratorioParams
from . import wiring
from .session import Session

UNSUPPORTED_HOST = ("LoRAtorio supports AUTOMATIC1111 1.10 and Forge's current backend (since August 2024); this "
                    "WebUI is an older Forge (ldm_patched) or a fork of it. Update Forge, or disable LoRAtorio here.")


class HostAdapter:
    """A WebUI LoRAtorio composes in; ``session_class`` holds its sampling hook."""

    session_class: type[Session] = Session

    def register_callbacks(self) -> None:
        wiring.register_callbacks()

    def start_session(self, p, params: LoratorioParams, error: BaseException | None = None) -> Session:
        """Start composing for ``p``; ``error`` (unusable settings) is raised from ``p.sample`` instead."""
        return wiring.start_session(p, self.session_class(p, params, error))

    def before_every_sampling(self, session: Session) -> None:
        """The WebUI's ``process_before_every_sampling`` (before the first pass, hires...); nothing to do
        where the session hooks through callbacks (A1111)."""


class UnsupportedHost(HostAdapter):
    """The older Forge (ldm_patched): nothing is hooked, and an enabled LoRAtorio fails the generation
    with a message from ``p.sample``."""

    def register_callbacks(self) -> None:
        pass

    def start_session(self, p, params: LoratorioParams, error: BaseException | None = None) -> Session:
        return super().start_session(p, params, LoratorioError(UNSUPPORTED_HOST))


UNSUPPORTED = UnsupportedHost()
