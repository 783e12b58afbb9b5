"""Forge ``modules/prompt_parser.py`` = the A1111 stand-in's, with Forge's differences:
``SdConditioning(..., distilled_cfg_scale=None)`` (kept through ``copy_from``), ``DictWithShape`` with
``.to()`` and ``.advanced_indexing(rows)`` (used by ``compile_weighted_conditions``), and ``stack_conds``
trying ``torch.stack`` first (so 0-d per-row values such as Flux's ``guidance`` stack to ``[B]``).
Implementation: a private copy of the A1111 stand-in file whose globals are rebound to these classes
(subclasses of its ``SdConditioning`` / ``DictWithShape``).
"""

import torch

from modules import _load_a1111

_base = _load_a1111("prompt_parser")


class SdConditioning(_base.SdConditioning):
    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None, distilled_cfg_scale=None):
        super().__init__(prompts, is_negative_prompt=is_negative_prompt, width=width, height=height, copy_from=copy_from)
        if copy_from is None:
            copy_from = prompts
        self.distilled_cfg_scale = distilled_cfg_scale or getattr(copy_from, 'distilled_cfg_scale', None)


class DictWithShape(_base.DictWithShape):
    def to(self, *args, **kwargs):
        for k, v in self.items():
            if isinstance(v, torch.Tensor):
                self[k] = v.to(*args, **kwargs)
        return self

    def advanced_indexing(self, item):
        return DictWithShape({k: v[item] for k, v in self.items() if isinstance(v, torch.Tensor)})


def stack_conds(tensors):
    try:
        return torch.stack(tensors)
    except RuntimeError:
        return _a1111_stack_conds(list(tensors))


_a1111_stack_conds = _base.stack_conds
_base.SdConditioning = SdConditioning
_base.DictWithShape = DictWithShape
_base.stack_conds = stack_conds

get_learned_conditioning_prompt_schedules = _base.get_learned_conditioning_prompt_schedules
ScheduledPromptConditioning = _base.ScheduledPromptConditioning
get_learned_conditioning = _base.get_learned_conditioning
get_multicond_prompt_list = _base.get_multicond_prompt_list
ComposableScheduledPromptConditioning = _base.ComposableScheduledPromptConditioning
MulticondLearnedConditioning = _base.MulticondLearnedConditioning
get_multicond_learned_conditioning = _base.get_multicond_learned_conditioning
reconstruct_cond_batch = _base.reconstruct_cond_batch
reconstruct_multicond_batch = _base.reconstruct_multicond_batch
re_AND = _base.re_AND
re_weight = _base.re_weight
