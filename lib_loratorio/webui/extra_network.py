"""``<loratorio:...>`` as an extra network of its own, so that the built-in Lora extension never merges
these files: it only hands the tags to the generation's session."""

from __future__ import annotations

from modules import extra_networks

from .console import note_once
from .detailer import note_missing_script
from .session import get_session
from .tags import EXTRA_NETWORK_NAME


class ExtraNetworkLoratorio(extra_networks.ExtraNetwork):
    def __init__(self) -> None:
        super().__init__(EXTRA_NETWORK_NAME)

    def activate(self, p, params_list) -> None:
        session = get_session(p)
        if session is not None:
            if not getattr(p, "is_hr_pass", False):  # the hires pass composes the first pass's LoRAs
                session.tags = list(params_list)
        elif params_list and not note_missing_script(p):
            note_once(p, f"<{EXTRA_NETWORK_NAME}:...> tags are ignored while LoRAtorio is off: enable it in its "
                         "accordion (or with alwayson_scripts in the API) to compose them.")

    def deactivate(self, p) -> None:
        pass
