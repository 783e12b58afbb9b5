"""``execution.py``: running an API-format prompt (own rewrite of the behaviour the API shows).

Mirrored: a prompt is {node id: {"class_type", "inputs"}}, a link is [node id, output index]; validation
before anything runs (unknown class_type, a missing required input -> ``node_errors``, nothing executed); the
nodes an output node (``OUTPUT_NODE``) needs run in dependency order, each once, its FUNCTION called with the
inputs as keyword arguments; an exception stops the prompt with status "error" and an ``execution_error``
message holding ``node_id``, ``node_type``, ``exception_message``, ``exception_type`` (what /history shows);
``InterruptProcessingException`` gives ``execution_interrupted``. Output nodes' "ui" go to ``outputs``.
Stand-in only: no cache between prompts, outputs also keep the result tensors (``result``).
"""

import comfy.model_management
import nodes


def validate(prompt):
    errors = {}
    for node_id, node in prompt.items():
        cls = nodes.NODE_CLASS_MAPPINGS.get(node["class_type"])
        if cls is None:
            errors[node_id] = {"errors": [{"type": "invalid_prompt", "message": f"{node['class_type']} not found"}]}
            continue
        missing = [k for k in cls.INPUT_TYPES().get("required", {}) if k not in node["inputs"]]
        if missing:
            errors[node_id] = {"class_type": node["class_type"], "errors": [
                {"type": "required_input_missing", "message": f"Required input is missing: {k}"} for k in missing]}
    return errors


def execute(prompt):
    """Run ``prompt``; returns a /history entry: {"status": {...}, "outputs": {...}} (or node_errors)."""
    errors = validate(prompt)
    if errors:
        return {"error": {"type": "prompt_outputs_failed_validation"}, "node_errors": errors}
    results, outputs, messages = {}, {}, []

    def run(node_id):
        if node_id in results:
            return results[node_id]
        node = prompt[node_id]
        cls = nodes.NODE_CLASS_MAPPINGS[node["class_type"]]
        kwargs = {}
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] in prompt:
                kwargs[name] = run(value[0])[value[1]]
            else:
                kwargs[name] = value
        try:
            out = getattr(cls(), cls.FUNCTION)(**kwargs)
        except comfy.model_management.InterruptProcessingException:
            raise
        except Exception as err:
            raise _NodeError(node_id, node["class_type"], err) from err
        if isinstance(out, dict):
            outputs[node_id] = {**out.get("ui", {}), "result": out.get("result", ())}
            out = out.get("result", ())
        results[node_id] = out
        return out

    try:
        for node_id, node in prompt.items():
            if getattr(nodes.NODE_CLASS_MAPPINGS[node["class_type"]], "OUTPUT_NODE", False):
                run(node_id)
    except comfy.model_management.InterruptProcessingException:
        messages.append(("execution_interrupted", {}))
        return {"status": {"status_str": "error", "completed": False, "messages": messages}, "outputs": outputs}
    except _NodeError as err:
        messages.append(("execution_error", {"node_id": err.node_id, "node_type": err.node_type,
                                             "exception_message": str(err.cause),
                                             "exception_type": type(err.cause).__name__}))
        return {"status": {"status_str": "error", "completed": False, "messages": messages}, "outputs": outputs}
    messages.append(("execution_success", {}))
    return {"status": {"status_str": "success", "completed": True, "messages": messages}, "outputs": outputs}


class _NodeError(Exception):
    def __init__(self, node_id, node_type, cause):
        super().__init__(str(cause))
        self.node_id, self.node_type, self.cause = node_id, node_type, cause
