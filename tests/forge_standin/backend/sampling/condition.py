"""``backend/sampling/condition.py``: the Condition objects and the cond/uncond list builders.

Mirrored: ``Condition`` (``process_cond`` repeats/truncates to the batch size, ``can_concat`` needs equal
shapes, ``concat`` = cat), ``ConditionCrossAttn`` (different token counts concat when the lcm is at most
4x the shorter one: each is REPEATED along tokens up to the lcm), ``ConditionNoiseShape``,
``ConditionConstant``; ``compile_conditions`` (tensor -> ``c_crossattn``; dict -> ``c_crossattn``, ``y``,
and ``guidance`` when present; one entry for all B rows; None -> None) and
``compile_weighted_conditions`` (per AND position k, an entry built from the rows
``cond_composition[i][k][0]`` of every image i, ``strength`` = the LAST image's weight; zip truncates to
the smallest AND count across images).
"""

import math

import torch


def repeat_to_batch_size(tensor, batch_size):
    n = tensor.shape[0]
    if n == batch_size:
        return tensor
    if n > batch_size:
        return tensor[:batch_size]
    reps = -(-batch_size // n)
    return tensor.repeat(reps, *([1] * (tensor.dim() - 1)))[:batch_size]


def lcm(a, b):
    return a * b // math.gcd(a, b)


class Condition:
    def __init__(self, cond):
        self.cond = cond

    def _copy_with(self, cond):
        return type(self)(cond)

    def process_cond(self, batch_size, device, **kwargs):
        return self._copy_with(repeat_to_batch_size(self.cond, batch_size).to(device))

    def can_concat(self, other):
        return self.cond.shape == other.cond.shape

    def concat(self, others):
        return torch.cat([self.cond] + [o.cond for o in others])


class ConditionNoiseShape(Condition):
    def process_cond(self, batch_size, device, area, **kwargs):
        h, w, y, x = area
        return self._copy_with(repeat_to_batch_size(self.cond[:, :, y:y + h, x:x + w], batch_size).to(device))


class ConditionCrossAttn(Condition):
    def can_concat(self, other):
        a, b = self.cond.shape, other.cond.shape
        if a == b:
            return True
        if a[0] != b[0] or a[2] != b[2]:
            return False
        return lcm(a[1], b[1]) // min(a[1], b[1]) <= 4

    def concat(self, others):
        conds = [self.cond] + [o.cond for o in others]
        length = 1
        for c in conds:
            length = lcm(length, c.shape[1])
        return torch.cat([c if c.shape[1] == length else c.repeat(1, length // c.shape[1], 1) for c in conds])


class ConditionConstant(Condition):
    def process_cond(self, batch_size, device, **kwargs):
        return self._copy_with(self.cond)

    def can_concat(self, other):
        return self.cond == other.cond

    def concat(self, others):
        return self.cond


def compile_conditions(cond):
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return [dict(cross_attn=cond, model_conds=dict(c_crossattn=ConditionCrossAttn(cond)))]
    model_conds = dict(c_crossattn=ConditionCrossAttn(cond['crossattn']), y=Condition(cond['vector']))
    if 'guidance' in cond:
        model_conds['guidance'] = Condition(cond['guidance'])
    return [dict(cross_attn=cond['crossattn'], pooled_output=cond['vector'], model_conds=model_conds)]


def _take_rows(cond, indices):
    if hasattr(cond, 'advanced_indexing'):
        return cond.advanced_indexing(indices)
    if isinstance(cond, dict):
        return {k: v[indices] for k, v in cond.items()}
    return cond[indices]


def compile_weighted_conditions(cond, weights):
    results = []
    for position in zip(*weights):  # one tuple per AND position, (row, weight) per image
        entry = compile_conditions(_take_rows(cond, [row for row, _ in position]))
        entry[0]['strength'] = position[-1][1]
        results += entry
    return results
