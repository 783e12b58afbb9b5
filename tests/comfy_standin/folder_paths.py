"""``folder_paths.py``: model folders by kind (own rewrite, same interface for "loras" and "checkpoints").

Mirrored: ``folder_names_and_paths`` (kind -> ([folders], {extensions})), ``get_filename_list(kind)`` (paths
relative to a folder, "/"-separated, sorted), ``get_full_path(kind, name)`` (None when absent),
``get_full_path_or_raise``. Stand-in only: ``set_folder(kind, path)``.
"""

import os

supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {
    "loras": ([], supported_pt_extensions), "checkpoints": ([], supported_pt_extensions)}


def set_folder(kind, path):
    folder_names_and_paths[kind] = ([str(path)], supported_pt_extensions)


def get_filename_list(folder_name):
    out = set()
    folders, extensions = folder_names_and_paths[folder_name]
    for folder in folders:
        for root, _, files in os.walk(folder):
            for f in files:
                if os.path.splitext(f)[1].lower() in extensions:
                    out.add(os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/"))
    return sorted(out)


def get_full_path(folder_name, filename):
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for folder in folder_names_and_paths[folder_name][0]:
        full = os.path.join(folder, filename)
        if os.path.isfile(full):
            return full
    return None


def get_full_path_or_raise(folder_name, filename):
    full = get_full_path(folder_name, filename)
    if full is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return full
