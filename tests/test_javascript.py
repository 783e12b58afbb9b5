"""The Lora-card helper, run in Node against a stand-in of the WebUI's cardClicked/onUiLoaded."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "javascript" / "loratorio.js"

HARNESS = """
const calls = [];
global.window = global;
global.cardClicked = function (tab, text, neg, allow) { calls.push([tab, text, neg, allow]); };
let loaded = null;
global.onUiLoaded = (fn) => { loaded = fn; };
require(process.argv[2]);
loaded();
loaded();  // installing twice must not wrap twice
window.event = {altKey: false};
window.cardClicked("txt2img", "<lora:alice:0.8>", "", false);
window.event = {altKey: true};
window.cardClicked("txt2img", "<lora:alice:0.8>", "", false);
window.cardClicked("img2img", "<lora:sub dir/bob:1> trigger words", "", false);
window.cardClicked("txt2img", "<hypernet:x:1>", "", false);
console.log(JSON.stringify(calls));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_alt_click_inserts_a_loratorio_tag(tmp_path):
    harness = tmp_path / "harness.js"
    harness.write_text(HARNESS)
    out = subprocess.run(["node", str(harness), str(SCRIPT)], capture_output=True, text=True, check=True)
    texts = [call[1] for call in json.loads(out.stdout)]
    assert texts == ["<lora:alice:0.8>", "<loratorio:alice:0.8>", "<loratorio:sub dir/bob:1> trigger words",
                     "<hypernet:x:1>"]
