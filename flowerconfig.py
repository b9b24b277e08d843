"""Flower's configuration from taskhub's settings: `celery -A taskhub flower --conf=flowerconfig.py`

Flower only ever runs behind HTTP basic auth: without TASKHUB_FLOWER__PASSWORD it refuses to start.
The password stays in the environment, never on a command line where `ps` would show it.
taskhub.flower_views puts `/healthcheck` behind it too, drops `/metrics` and makes the Broker page
list every route queue (docs/observability.md, "Flower").
"""

from taskhub import flower_views
from taskhub.settings import settings_or_exit

_flower = settings_or_exit().flower
if _flower.password is None or not _flower.password.get_secret_value():
    raise SystemExit(
        "taskhub: bad configuration: TASKHUB_FLOWER__PASSWORD: must be set; Flower is never "
        "served without basic auth"
    )

address = _flower.address
port = _flower.port
basic_auth = [f"{_flower.username}:{_flower.password.get_secret_value()}"]

try:
    flower_views.install()
except RuntimeError as error:
    raise SystemExit(f"taskhub: {error}") from None
