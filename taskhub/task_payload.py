"""A task's payload argument, checked against the task's own model when it is called (`.delay()`,
`.apply_async()`) and again when a worker runs it, so a bad one fails as an InvalidPayload in words.

A task declares its model in its decorator, `@app.task(..., payload_model=CheckinTweet)`; its
payload is its first argument, as the bridge sends it. The model is the task's, not the route's:
a route may parse more loosely at the edge and hand the task the normalised document
(tests/support/fixed_routes.py), and a task on no route is still checked.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from taskhub.payloads import InvalidPayload, Payload


def payload_argument(task: Any) -> str | None:
    """The name of the argument that carries `task`'s payload; None if it declares no model."""
    if getattr(task, "payload_model", None) is None:
        return None
    parameters = list(inspect.signature(task.run).parameters.values())
    if not parameters or parameters[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise TypeError(f"task {task.name} declares payload_model but takes no payload argument")
    return parameters[0].name


def check_payload(
    task: Any, argument: str | None, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None
) -> None:
    """Raise InvalidPayload unless the payload in this call satisfies `task.payload_model`.

    A call without the payload is left to Celery's own argument check (a TypeError)."""
    if argument is None:
        return
    if args:
        payload = args[0]
    elif kwargs and argument in kwargs:
        payload = kwargs[argument]
    else:
        return
    model: type[Payload] = task.payload_model
    try:
        model.model_validate(payload)
    except ValidationError as error:
        raise InvalidPayload.of(task.name, argument, error) from None
