"""The package's layers (see README, For developers): the core imports no host code and no WebUI-only module lives
in it, and no module of lib_loratorio imports itself back through others (read from the source, imports inside
functions included)."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "lib_loratorio")
HOSTS = ("webui", "comfyui")  # the subpackages that touch a host
HOST_MODULES = ("modules", "backend", "modules_forge", "networks", "gradio", "comfy", "folder_paths", "nodes")


def modules() -> dict[str, str]:
    """Dotted module name -> file, for every module of lib_loratorio."""
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(folder, file)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: str) -> set[str]:
    """Every module ``name`` imports (absolute, dotted), anywhere in its file."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = node.module or ""
            target = (f"{base}.{module}" if module else base) if node.level else module
            out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names)  # "from . import wiring"
    return out


MODULES = modules()
GRAPH = {name: {i for i in imports(name, path) if i in MODULES and i != name} for name, path in MODULES.items()}
CORE = sorted(n for n in MODULES if n.split(".")[1:2] and n.split(".")[1] not in HOSTS)


@pytest.mark.parametrize("name", CORE)
def test_the_core_imports_no_host_code(name):
    found = imports(name, MODULES[name])
    host = sorted(i for i in found if i.split(".")[0] in HOST_MODULES
                  or any(i.startswith(f"lib_loratorio.{h}") for h in HOSTS))
    assert not host, f"{name} imports {host}"


def test_no_import_cycle():
    def visit(name, path):
        for other in sorted(GRAPH[name]):
            if other in path:
                return path[path.index(other):] + [other]
            found = visit(other, path + [other])
            if found:
                return found
        return None

    for name in sorted(GRAPH):
        cycle = visit(name, [name])
        assert cycle is None, " -> ".join(cycle)


def test_no_core_module_is_webui_only():
    """Every core module serves ComfyUI too (imported by its host code, directly or through other core modules)."""
    reached, todo = set(), [n for n in GRAPH if n.startswith("lib_loratorio.comfyui")]
    while todo:
        for other in GRAPH[todo.pop()] - reached:
            reached.add(other)
            todo.append(other)
    assert [name for name in CORE if name not in reached] == []
