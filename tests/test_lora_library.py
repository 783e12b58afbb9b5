"""The LoRA file cache: read once while unchanged, re-read when the file changes, rebind new models."""

import os

from lib_loratorio.lora_library import LoraLibrary
from tests.lora_writers import write_kohya
from tests.tiny_models import tiny_sd15_unet

TARGETS = ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "down_blocks.0.resnets.0.conv1"]


def test_files_and_bindings_are_cached_while_unchanged(tmp_path):
    unet = tiny_sd15_unet()
    path = tmp_path / "a.safetensors"
    write_kohya(path, unet, TARGETS, seed=1)
    library = LoraLibrary()
    first = library.load(str(path))
    assert library.load(str(path)) is first
    bound = library.bind(str(path), {"unet": unet})
    assert library.bind(str(path), {"unet": unet}) is bound
    other_model = tiny_sd15_unet(seed=2)
    rebound = library.bind(str(path), {"unet": other_model})
    assert rebound is not bound and {id(m) for _, m, _ in rebound.targets} <= {id(m) for m in other_model.modules()}

    write_kohya(path, unet, TARGETS, seed=3)                 # the user replaces the file
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert library.load(str(path)) is not first
    assert library.bind(str(path), {"unet": unet}) is not bound


def test_least_recently_used_files_are_dropped_beyond_the_byte_budget(tmp_path):
    unet = tiny_sd15_unet()
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"l{i}.safetensors"))
        write_kohya(paths[-1], unet, TARGETS, seed=i)
    size = LoraLibrary().load(paths[0]).nbytes
    assert size > 0
    library = LoraLibrary(max_bytes=2 * size)
    first = library.load(paths[0])
    library.load(paths[1])
    assert library.bytes == 2 * size
    library.load(paths[0])                              # used again: now the most recent
    library.load(paths[2])                              # over budget: drops paths[1]
    assert library.bytes == 2 * size and library.load(paths[0]) is first
    tiny = LoraLibrary(max_bytes=1)                     # a file larger than the budget is still used
    assert tiny.load(paths[0]).modules and tiny.bytes == size


def test_forgetting_bindings_lets_an_unloaded_model_go(tmp_path):
    import gc
    import weakref

    path = tmp_path / "a.safetensors"
    unet = tiny_sd15_unet()
    write_kohya(path, unet, TARGETS, seed=1)
    library = LoraLibrary()
    library.bind(str(path), {"unet": unet})
    gone = weakref.ref(unet.down_blocks[0].resnets[0].conv1)
    del unet
    gc.collect()
    assert gone() is not None                      # the binding holds the old model's layers
    library.forget_bindings()                      # what LoRAtorio does when the WebUI loads a model
    gc.collect()
    assert gone() is None and library.load(str(path)).modules  # the file itself stays cached
