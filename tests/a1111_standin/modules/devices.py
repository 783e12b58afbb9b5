"""Stand-in for ``modules/devices.py``: CPU and float32 only; autocast is a no-op."""

import contextlib

import torch

from modules import shared

cpu = torch.device("cpu")
device = device_interrogate = device_gfpgan = device_esrgan = device_codeformer = cpu
dtype = torch.float32
dtype_vae = torch.float32
dtype_unet = torch.float32
dtype_inference = torch.float32
unet_needs_upcast = False
fp8 = False
shared.device = device


def autocast(disable=False):
    return contextlib.nullcontext()


def without_autocast(disable=False):
    return contextlib.nullcontext()


def torch_gc():
    pass


def test_for_nans(x, where):
    pass


def cond_cast_unet(x):
    return x


def cond_cast_float(x):
    return x
