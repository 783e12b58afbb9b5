"""A tiny fake of the gradio 3.41 API surface used by WebUI scripts (stand-in; no UI is built).

Components record their constructor kwargs (``.kwargs``), expose ``.value`` (initial value),
``.label``, ``.elem_id``, ``.visible``, ``.choices`` and record event listeners in ``.events``
as (event_name, kwargs); ``block.fire(event, value)`` runs them as a user's change would, applying
``update(...)`` dicts to their outputs. Layout blocks are context managers that track a parent/child tree.
"""

from __future__ import annotations

__version__ = "3.41.2"

_context_stack = []
warnings_shown = []  # (kind, message) for Warning/Info calls (stand-in only)


class Block:
    _next_id = 0

    def __init__(self, *, elem_id=None, elem_classes=None, visible=True, render=True, **kwargs):
        Block._next_id += 1
        self._id = Block._next_id
        self.elem_id = elem_id
        self.elem_classes = elem_classes
        self.visible = visible
        self.kwargs = dict(kwargs, elem_id=elem_id, elem_classes=elem_classes, visible=visible)
        self.children = []
        self.parent = _context_stack[-1] if _context_stack else None
        self.events = []
        if render and self.parent is not None:
            self.parent.children.append(self)

    def _listen(self, event, fn=None, inputs=None, outputs=None, **kwargs):
        self.events.append((event, dict(fn=fn, inputs=inputs, outputs=outputs, **kwargs)))
        return _Dependency(self)

    def fire(self, event, value):
        """Stand-in only: set this block's value as a user would, run its ``event`` listeners and apply
        what they return to their outputs (gradio does that in the browser); returns the results."""
        self.value = value
        results = []
        for name, listener in self.events:
            if name != event or listener["fn"] is None:
                continue
            outputs = listener["outputs"] or []
            result = listener["fn"](*[block.value for block in listener["inputs"] or []])
            for block, out in zip(outputs, [result] if len(outputs) == 1 else result):
                if isinstance(out, dict) and out.get("__type__") == "update":
                    for key, new in out.items():
                        if key != "__type__":
                            setattr(block, key, new)
                else:
                    block.value = out
            results.append(result)
        return results

    def __getattr__(self, item):
        if item in ("change", "click", "input", "select", "release", "submit", "blur", "upload", "then",
                    "expand", "collapse", "load"):
            return lambda fn=None, inputs=None, outputs=None, **kw: self._listen(item, fn, inputs, outputs, **kw)
        raise AttributeError(item)


class _Dependency:
    def __init__(self, block):
        self.block = block

    def then(self, fn=None, inputs=None, outputs=None, **kwargs):
        return self.block._listen("then", fn, inputs, outputs, **kwargs)


class BlockContext(Block):
    def __enter__(self):
        _context_stack.append(self)
        return self

    def __exit__(self, *exc):
        _context_stack.pop()
        return False


class Blocks(BlockContext):
    def __init__(self, *, analytics_enabled=None, title="Gradio", css=None, **kwargs):
        super().__init__(**kwargs)
        self.title = title


class Row(BlockContext):
    def __init__(self, *, variant="default", equal_height=True, **kwargs):
        super().__init__(**kwargs)


class Column(BlockContext):
    def __init__(self, scale=1, min_width=320, *, variant="default", **kwargs):
        super().__init__(**kwargs)


class Group(BlockContext):
    pass


class Box(BlockContext):
    pass


class Tab(BlockContext):
    def __init__(self, label=None, *, id=None, **kwargs):
        super().__init__(**kwargs)
        self.label = label


TabItem = Tab


class Tabs(BlockContext):
    pass


class Accordion(BlockContext):
    def __init__(self, label=None, *, open=True, **kwargs):
        super().__init__(**kwargs)
        self.label = label
        self.open = open


class Component(Block):
    def __init__(self, value=None, *, label=None, info=None, interactive=None, **kwargs):
        super().__init__(**kwargs)
        self.value = value() if callable(value) else value
        self.label = label
        self.info = info
        self.interactive = interactive
        self.kwargs.update(value=value, label=label, info=info, interactive=interactive)


IOComponent = FormComponent = Component


class Checkbox(Component):
    def __init__(self, value=False, **kwargs):
        super().__init__(value, **kwargs)


class Slider(Component):
    def __init__(self, minimum=0, maximum=100, value=None, *, step=None, **kwargs):
        super().__init__(minimum if value is None else value, **kwargs)
        self.minimum, self.maximum, self.step = minimum, maximum, step
        self.kwargs.update(minimum=minimum, maximum=maximum, step=step)


class Number(Component):
    def __init__(self, value=None, *, minimum=None, maximum=None, step=1, precision=None, **kwargs):
        super().__init__(value, **kwargs)
        self.minimum, self.maximum, self.step, self.precision = minimum, maximum, step, precision


class Dropdown(Component):
    def __init__(self, choices=None, value=None, *, type="value", multiselect=None, allow_custom_value=False, **kwargs):
        super().__init__(value, **kwargs)
        self.choices = list(choices) if choices is not None else []
        self.type = type
        self.multiselect = multiselect
        self.kwargs.update(choices=choices, type=type, multiselect=multiselect)


class Radio(Component):
    def __init__(self, choices=None, value=None, *, type="value", **kwargs):
        super().__init__(value, **kwargs)
        self.choices = list(choices) if choices is not None else []
        self.type = type
        self.kwargs.update(choices=choices, type=type)


class CheckboxGroup(Radio):
    def __init__(self, choices=None, value=None, **kwargs):
        super().__init__(choices, [] if value is None else value, **kwargs)


class Textbox(Component):
    def __init__(self, value="", *, lines=1, max_lines=20, placeholder=None, **kwargs):
        super().__init__(value, **kwargs)
        self.lines, self.placeholder = lines, placeholder


class HTML(Component):
    def __init__(self, value="", **kwargs):
        super().__init__(value, **kwargs)


class Markdown(Component):
    def __init__(self, value="", **kwargs):
        super().__init__(value, **kwargs)


class Button(Component):
    def __init__(self, value="Run", *, variant="secondary", **kwargs):
        super().__init__(value, **kwargs)
        self.variant = variant


class Gallery(Component):
    def __init__(self, value=None, **kwargs):
        super().__init__(value, **kwargs)


class Image(Component):
    pass


class JSON(Component):
    pass


class State(Component):
    def __init__(self, value=None, **kwargs):
        super().__init__(value, render=False, **kwargs)


def update(**kwargs):
    kwargs["__type__"] = "update"
    return kwargs


def skip():
    return update()


class Warning:  # noqa: A001 - gradio shows a toast; here it is recorded
    def __init__(self, message="Warning issued."):
        warnings_shown.append(("warning", message))


class Info:
    def __init__(self, message="Info issued."):
        warnings_shown.append(("info", message))


class Error(Exception):
    def __init__(self, message="Error raised."):
        super().__init__(message)
        self.message = message


class Request:
    pass
