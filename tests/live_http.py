"""JSON over HTTP for the live tests against a running WebUI or ComfyUI (standard library only)."""

import json
import urllib.error
import urllib.request


def call(url: str, path: str, payload=None, timeout: float = 1800) -> tuple[int, dict]:
    """(HTTP status, decoded JSON body) of a GET (no payload) or a JSON POST to ``url + path``."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
