"""LoRAtorio's console notes: each at most once per generation request."""

from __future__ import annotations

_NOTES_ATTR = "_loratorio_notes"


def log(message: str) -> None:
    print(f"[LoRAtorio] {message}")


def note_once(p, message: str) -> None:
    """Print ``message`` once per request ``p``: the WebUI calls extra networks and script hooks per batch
    and per hires pass, which would repeat a note for every one of them."""
    notes = getattr(p, _NOTES_ATTR, None)
    if notes is None:
        notes = set()
        setattr(p, _NOTES_ATTR, notes)
    if message not in notes:
        notes.add(message)
        log(message)
