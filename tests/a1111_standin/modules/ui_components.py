"""Stand-in for ``modules/ui_components.py``: FormRow/FormGroup/FormColumn/ToolButton/InputAccordion.

``InputAccordion`` is, as in the WebUI, a hidden ``gr.Checkbox`` (elem_id ``<id>-checkbox``) with a
``gr.Accordion`` (elem_id ``<id>``, ``open=value``); its script-arg value is the bool.
"""

import gradio as gr


class FormComponent:
    pass


class ToolButton(gr.Button):
    def __init__(self, *args, **kwargs):
        classes = kwargs.pop("elem_classes", [])
        super().__init__(*args, elem_classes=["tool", *classes], **kwargs)


class FormRow(gr.Row):
    pass


class FormColumn(gr.Column):
    pass


class FormGroup(gr.Group):
    pass


class FormHTML(gr.HTML):
    pass


class FormColorPicker(gr.Textbox):
    pass


class DropdownMulti(gr.Dropdown):
    def __init__(self, **kwargs):
        super().__init__(multiselect=True, **kwargs)


class DropdownEditable(gr.Dropdown):
    def __init__(self, **kwargs):
        super().__init__(allow_custom_value=True, **kwargs)


class InputAccordion(gr.Checkbox):
    global_index = 0

    def __init__(self, value, **kwargs):
        self.accordion_id = kwargs.get("elem_id")
        if self.accordion_id is None:
            self.accordion_id = f"input-accordion-{InputAccordion.global_index}"
            InputAccordion.global_index += 1
        super().__init__(value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
        self.change(fn=None, _js=f'function(checked){{ inputAccordionChecked("{self.accordion_id}", checked); }}',
                    inputs=[self])
        self.accordion = gr.Accordion(**{**kwargs, "elem_id": self.accordion_id,
                                         "label": kwargs.get("label", "Accordion"),
                                         "elem_classes": ["input-accordion"], "open": value})

    def extra(self):
        return gr.Column(elem_id=self.accordion_id + "-extra", elem_classes="input-accordion-extra", min_width=0)

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.accordion.__exit__(exc_type, exc_val, exc_tb)

    def get_block_name(self):
        return "checkbox"
