"""The shapes the web endpoints accept. Anything else is a :class:`BadRequest` (HTTP 400 with a JSON reason).

Label Studio's bodies are documented in ``label-studio-facts.md``; these checks accept exactly what Label Studio
sends (and what its docs show), and name the first field that is wrong.
"""

from __future__ import annotations

from typing import Any


class BadRequest(ValueError):
    """The request body does not have the expected shape; the message says which field and why."""


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


def json_object(payload: Any, what: str) -> dict:
    if not isinstance(payload, dict):
        raise BadRequest(f"{what}: expected a JSON object, got {_type_name(payload)}")
    return payload


def _optional(payload: dict, key: str, kind: type, empty: Any, noun: str, what: str) -> Any:
    value = payload.get(key)
    if value is None:
        return empty
    if not isinstance(value, kind):
        raise BadRequest(f"{what}: '{key}' must be {noun}, got {_type_name(value)}")
    return value


def optional_object(payload: dict, key: str, what: str) -> dict:
    return _optional(payload, key, dict, {}, "an object", what)


def optional_str(payload: dict, key: str, what: str) -> str:
    return _optional(payload, key, str, "", "a string", what)


def task_id(value: Any, what: str) -> int:
    """Task and annotation ids are positive integers (Label Studio's primary keys); numeric strings are accepted."""
    if isinstance(value, bool):
        raise BadRequest(f"{what}: expected an integer id, got a boolean")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise BadRequest(f"{what}: expected an integer id, got {value!r}"[:200])


def project_ref(value: Any, what: str) -> int | None:
    """``"<id>.<created_at>"`` (/predict, /setup), an object with ``id`` (webhooks), or an integer id; or absent."""
    if value is None:
        return None
    if isinstance(value, dict):
        return None if value.get("id") is None else task_id(value.get("id"), f"{what}: project.id")
    if isinstance(value, str):
        head = value.split(".", 1)[0].strip()
        if head.isdigit():
            return int(head)
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise BadRequest(f"{what}: 'project' must be '<id>.<created_at>', an object with 'id', or an id; "
                     f"got {value!r}"[:200])


def tasks(payload: dict, what: str, required: bool = True) -> list[dict]:
    """A list of task objects, each with an integer ``id`` and an object (or absent) ``data``."""
    value = payload.get("tasks")
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise BadRequest(f"{what}: 'tasks' must be a list of task objects, got {_type_name(value)}")
    out = []
    for i, task in enumerate(value):
        if not isinstance(task, dict):
            raise BadRequest(f"{what}: tasks[{i}] must be an object, got {_type_name(task)}")
        if "id" not in task:
            raise BadRequest(f"{what}: tasks[{i}] has no 'id'")
        task_id(task["id"], f"{what}: tasks[{i}].id")
        if task.get("data") is not None and not isinstance(task["data"], dict):
            raise BadRequest(f"{what}: tasks[{i}].data must be an object, got {_type_name(task['data'])}")
        out.append(task)
    return out


def predict_body(payload: Any) -> tuple[list[dict], str, int | None, Any]:
    """``/predict``: (tasks, label_config, project id, prompt context)."""
    body = json_object(payload, "/predict")
    params = optional_object(body, "params", "/predict")
    context = params.get("context")
    if context is not None and not isinstance(context, dict):
        raise BadRequest(f"/predict: 'params.context' must be an object, got {_type_name(context)}")
    return (tasks(body, "/predict"), optional_str(body, "label_config", "/predict"),
            project_ref(body.get("project"), "/predict"), context)  # fmt: skip


def setup_body(payload: Any) -> tuple[str, int | None]:
    """``/setup``: (labeling config, project id)."""
    body = json_object(payload, "/setup")
    schema = optional_str(body, "schema", "/setup") or optional_str(body, "label_config", "/setup")
    return schema, project_ref(body.get("project"), "/setup")


def webhook_body(payload: Any) -> tuple[str | None, dict]:
    """``/webhook``: (action, body). The action is a string or absent; the parts each action reads are checked by
    :func:`webhook_parts`."""
    body = json_object(payload, "/webhook")
    action = body.get("action")
    if action is not None and not isinstance(action, str):
        raise BadRequest(f"/webhook: 'action' must be a string, got {_type_name(action)}")
    return action, body


def webhook_parts(action: str, body: dict) -> None:
    """Check the fields ``action``'s handler reads (project, tasks, annotation(s), task)."""
    what = f"/webhook {action}"
    project = optional_object(body, "project", what)
    project_ref(project or None, what)
    optional_str(project, "label_config", f"{what}: project")
    if action == "TASKS_CREATED":
        tasks(body, what)
    elif action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        annotation = optional_object(body, "annotation", what)
        task = optional_object(body, "task", what)
        task_id(annotation.get("id"), f"{what}: annotation.id")
        task_id(task.get("id"), f"{what}: task.id")
        if annotation.get("result") is not None and not isinstance(annotation["result"], list):
            raise BadRequest(f"{what}: annotation.result must be a list, got {_type_name(annotation['result'])}")
    elif action == "ANNOTATIONS_DELETED":
        annotations = body.get("annotations")
        if not isinstance(annotations, list):
            raise BadRequest(f"{what}: 'annotations' must be a list, got {_type_name(annotations)}")
        for i, a in enumerate(annotations):
            if not isinstance(a, dict):
                raise BadRequest(f"{what}: annotations[{i}] must be an object, got {_type_name(a)}")
            task_id(a.get("id"), f"{what}: annotations[{i}].id")
