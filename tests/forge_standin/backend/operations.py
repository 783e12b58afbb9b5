"""``backend/operations.py`` (subset): ``ForgeOperations.Linear`` and ``using_forge_operations``.

Mirrored: ``ForgeOperations.Linear`` is a plain ``torch.nn.Module`` (NOT an ``nn.Linear`` subclass) with
``in_features``, ``out_features``, ``weight``/``bias`` Parameters, ``scale_weight`` (None),
``parameters_manual_cast`` and a no-op ``reset_parameters``; its forward casts weight/bias to the
input's dtype/device (``get_weight_and_bias`` / ``weights_manual_cast``) and calls ``F.linear``.
``using_forge_operations()`` swaps ``torch.nn.Linear`` while networks are built, as Forge does.
Stand-in only: ``forge_linear_from`` / ``use_forge_linear_layers`` convert existing ``nn.Linear``
children of already built networks (tests/tiny_models.py builds plain torch layers), sharing the
Parameters. Left out: Conv/GroupNorm/LayerNorm/Embedding variants (in Forge those ARE torch subclasses),
bnb-4bit, GGUF, fp8 ``scale_weight`` checkpoints, online LoRAs, CUDA streams.
"""

import contextlib

import torch
import torch.nn.functional as F


def get_weight_and_bias(layer, weight_args=None, bias_args=None, weight_fn=None, bias_fn=None):
    weight = layer.weight
    if getattr(layer, "scale_weight", None) is not None:
        weight = weight * layer.scale_weight
    bias = layer.bias
    if weight_args is not None:
        weight = weight.to(**weight_args)
    if bias is not None and bias_args is not None:
        bias = bias.to(**bias_args)
    return weight, bias


def weights_manual_cast(layer, x, skip_weight_dtype=False, skip_bias_dtype=False, weight_fn=None, bias_fn=None):
    args = dict(device=x.device, dtype=x.dtype)
    return get_weight_and_bias(layer, args, args)


class ForgeOperations:
    class Linear(torch.nn.Module):
        def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
            super().__init__()
            self.in_features = in_features
            self.out_features = out_features
            self.dummy = None
            self.scale_weight = None
            self.parameters_manual_cast = False
            # Forge leaves weight None until the state dict loads; the stand-in allocates (random init)
            self.weight = torch.nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
            self.bias = torch.nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
            with torch.no_grad():
                torch.nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
                if self.bias is not None:
                    torch.nn.init.uniform_(self.bias, -in_features ** -0.5, in_features ** -0.5)

        def reset_parameters(self):
            return None

        def forward(self, x):
            weight, bias = weights_manual_cast(self, x)
            return F.linear(x, weight, bias)

        def extra_repr(self):
            return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


@contextlib.contextmanager
def using_forge_operations(operations=None, device=None, dtype=None, manual_cast_enabled=False, bnb_dtype=None):
    operations = operations or ForgeOperations
    saved = torch.nn.Linear
    torch.nn.Linear = operations.Linear
    try:
        yield
    finally:
        torch.nn.Linear = saved


def forge_linear_from(linear):
    """Stand-in only: a ForgeOperations.Linear sharing ``linear``'s Parameters."""
    new = ForgeOperations.Linear.__new__(ForgeOperations.Linear)
    torch.nn.Module.__init__(new)
    new.in_features, new.out_features = linear.in_features, linear.out_features
    new.dummy, new.scale_weight, new.parameters_manual_cast = None, None, False
    new.weight = linear.weight
    new.bias = linear.bias
    new.train(linear.training)
    return new


def use_forge_linear_layers(*roots):
    """Stand-in only: replaces every ``nn.Linear`` child reachable from ``roots`` (a module may be
    reachable under several parents, e.g. ``tiny_models.LdmUNetView`` and its diffusers UNet) by one
    shared ``ForgeOperations.Linear``. Returns the number of layers converted."""
    converted = {}
    seen = set()
    stack = list(roots)
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        hidden = module.__dict__.get("unet")  # LdmUNetView keeps its diffusers UNet unregistered
        if isinstance(hidden, torch.nn.Module):
            stack.append(hidden)
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            if type(child) is torch.nn.Linear:
                if id(child) not in converted:
                    converted[id(child)] = forge_linear_from(child)
                module._modules[name] = converted[id(child)]
            else:
                stack.append(child)
    return len(converted)


def cleanup_cache():
    pass
