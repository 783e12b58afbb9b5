"""Stand-in for ``modules/prompt_parser.py`` (A1111 v1.10.1).

Mirrored: SdConditioning, ScheduledPromptConditioning, ComposableScheduledPromptConditioning,
MulticondLearnedConditioning, DictWithShape, get_learned_conditioning_prompt_schedules (step rules incl.
hires offsets and use_old_scheduling), get_learned_conditioning (one model call per distinct prompt with
all schedule texts), get_multicond_learned_conditioning (``\\bAND\\b`` split, ``:weight``, dedupe),
reconstruct_cond_batch, reconstruct_multicond_batch, stack_conds.
Simplified: the lark grammar is replaced by a regex that handles NON-nested ``[from:to:when]``,
``[to:when]`` and ``[a|b]`` whose parts contain no ``:``/``[``/``]``; anything else is literal text.
Attention parsing ``(a:1.2)`` is not interpreted (the stand-in text encoder sees raw text).
"""

from __future__ import annotations

import re
from collections import namedtuple

import torch

_re_scheduled = re.compile(r"\[([^\[\]:|]*)(?::([^\[\]:|]*))?:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\]")
_re_alternate = re.compile(r"\[([^\[\]:|]*(?:\|[^\[\]:|]*)+)\]")


def get_learned_conditioning_prompt_schedules(prompts, base_steps, hires_steps=None, use_old_scheduling=False):
    if hires_steps is None or use_old_scheduling:
        int_offset, flt_offset, steps = 0, 0.0, base_steps
    else:
        int_offset, flt_offset, steps = base_steps, 1.0, hires_steps

    def when_step(s):
        v = float(s)
        if use_old_scheduling:
            v = v * steps if v < 1 else v
        elif "." in s:
            v = (v - flt_offset) * steps
        else:
            v = v - int_offset
        return min(steps, int(v))

    def get_schedule(prompt):
        boundaries = {steps}
        for m in _re_scheduled.finditer(prompt):
            w = when_step(m.group(3))
            if w >= 1:
                boundaries.add(w)
        if _re_alternate.search(prompt):
            boundaries.update(range(1, steps + 1))

        def text_at(step):
            def sched(m):
                before, after = (m.group(1), m.group(2)) if m.group(2) is not None else ("", m.group(1))
                return before if step <= when_step(m.group(3)) else after

            def alt(m):
                options = m.group(1).split("|")
                return options[(step - 1) % len(options)]

            return _re_alternate.sub(alt, _re_scheduled.sub(sched, prompt))

        return [[t, text_at(t)] for t in sorted(boundaries)]

    by_prompt = {prompt: get_schedule(prompt) for prompt in set(prompts)}
    return [by_prompt[prompt] for prompt in prompts]


ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


class SdConditioning(list):
    """A list of prompts plus ``is_negative_prompt``/``width``/``height`` (SDXL needs the size)."""

    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None):
        super().__init__()
        self.extend(prompts)
        if copy_from is None:
            copy_from = prompts
        self.is_negative_prompt = is_negative_prompt or getattr(copy_from, "is_negative_prompt", False)
        self.width = width or getattr(copy_from, "width", None)
        self.height = height or getattr(copy_from, "height", None)


def get_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    """-> list (one per prompt) of list[ScheduledPromptConditioning]; cond is [T, C] or a dict of rows."""
    schedules = get_learned_conditioning_prompt_schedules(prompts, steps, hires_steps, use_old_scheduling)
    done = {}
    res = []
    for prompt, schedule in zip(prompts, schedules):
        if prompt not in done:
            texts = SdConditioning([text for _, text in schedule], copy_from=prompts)
            conds = model.get_learned_conditioning(texts)
            entries = []
            for i, (end_at_step, _) in enumerate(schedule):
                cond = {k: v[i] for k, v in conds.items()} if isinstance(conds, dict) else conds[i]
                entries.append(ScheduledPromptConditioning(end_at_step, cond))
            done[prompt] = entries
        res.append(done[prompt])
    return res


re_AND = re.compile(r"\bAND\b")
re_weight = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def get_multicond_prompt_list(prompts):
    res_indexes = []
    prompt_indexes = {}
    flat = SdConditioning(prompts)
    flat.clear()
    for prompt in prompts:
        indexes = []
        for sub in re_AND.split(prompt):
            m = re_weight.search(sub)
            text, weight = m.groups() if m is not None else (sub, 1.0)
            weight = float(weight) if weight is not None else 1.0
            if text not in prompt_indexes:
                prompt_indexes[text] = len(flat)
                flat.append(text)
            indexes.append((prompt_indexes[text], weight))
        res_indexes.append(indexes)
    return res_indexes, flat, prompt_indexes


class ComposableScheduledPromptConditioning:
    def __init__(self, schedules, weight=1.0):
        self.schedules: list[ScheduledPromptConditioning] = schedules
        self.weight: float = weight


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape: tuple = shape
        self.batch: list[list[ComposableScheduledPromptConditioning]] = batch


def get_multicond_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False) -> MulticondLearnedConditioning:
    res_indexes, flat, _ = get_multicond_prompt_list(prompts)
    learned = get_learned_conditioning(model, flat, steps, hires_steps, use_old_scheduling)
    batch = [[ComposableScheduledPromptConditioning(learned[i], weight) for i, weight in indexes] for indexes in res_indexes]
    return MulticondLearnedConditioning(shape=(len(prompts),), batch=batch)


class DictWithShape(dict):
    def __init__(self, x, shape=None):
        super().__init__()
        self.update(x)

    @property
    def shape(self):
        return self["crossattn"].shape


def _pick(schedule, current_step):
    for entry in schedule:
        if current_step <= entry.end_at_step:
            return entry
    return schedule[0]  # the real loop leaves target_index at 0 when no entry matches


def reconstruct_cond_batch(c, current_step):
    """list[list[ScheduledPromptConditioning]] -> [B, T, C] tensor or DictWithShape."""
    conds = [_pick(schedule, current_step).cond for schedule in c]
    if isinstance(conds[0], dict):
        return DictWithShape({k: torch.stack([x[k] for x in conds]) for k in conds[0]})
    return torch.stack(conds)


def stack_conds(tensors):
    """Stack [T_i, C] tensors, padding shorter ones by repeating their last vector."""
    token_count = max(t.shape[0] for t in tensors)
    padded = [t if t.shape[0] == token_count else torch.cat([t, t[-1:].repeat(token_count - t.shape[0], 1)])
              for t in tensors]
    return torch.stack(padded)


def reconstruct_multicond_batch(c: MulticondLearnedConditioning, current_step):
    """-> (conds_list, stacked): conds_list[i] = [(row, weight), ...]; rows image by image."""
    tensors = []
    conds_list = []
    for composable_prompts in c.batch:
        rows = []
        for cp in composable_prompts:
            rows.append((len(tensors), cp.weight))
            tensors.append(_pick(cp.schedules, current_step).cond)
        conds_list.append(rows)
    if isinstance(tensors[0], dict):
        stacked = DictWithShape({k: stack_conds([x[k] for x in tensors]) for k in tensors[0]})
    else:
        stacked = stack_conds(tensors)
    return conds_list, stacked
