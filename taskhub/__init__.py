"""taskhub: turn MQTT streams into reliable, scalable Celery work.

`celery -A taskhub` finds the app in `taskhub.celery`. Importing this package loads neither Celery
nor the settings, so a route table, or anything else that needs only `taskhub.routes`,
`taskhub.topics` or `taskhub.settings`, pays for neither. The bridge loads the app at start (it
checks the routes' tasks and builds task messages with it); the CLI, only for commands that
check routes.

`taskhub.request(topic, payload, timeout=5.0)` asks over MQTT 5 and waits for the reply
(taskhub/requests.py); its MQTT client is loaded at first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskhub.requests import request

__version__ = "0.1.0"
__all__ = ["__version__", "request"]


def __getattr__(name: str) -> Any:
    if name == "request":
        from taskhub.requests import request

        return request
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
