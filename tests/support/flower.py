"""Flower as an operator runs it (`celery -A taskhub flower --conf=flowerconfig.py`), on a free
port with a password of its own, and plain HTTP requests to it with or without that password.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from rig.isolation import free_port
from rig.processes import Process, celery, wait_for

FLOWER_CONFIG = Path(__file__).resolve().parents[2] / "flowerconfig.py"
FLOWER_STARTED = "Visit me at"
HOST = "127.0.0.1"
USERNAME = "taskhub"
REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True)
class Flower:
    process: Process
    port: int
    password: str = field(repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def url_with_credentials(self, path: str) -> str:
        """For a browser, which has no other way to be handed basic-auth credentials."""
        return f"http://{USERNAME}:{self.password}@{HOST}:{self.port}{path}"

    def get(self, path: str, *, password: str | None = "") -> httpx.Response:
        """GET `path`: with Flower's password by default, none when `password` is None."""
        return self.request("GET", path, password=password)

    def request(self, method: str, path: str, *, password: str | None = "") -> httpx.Response:
        auth = None if password is None else (USERNAME, password or self.password)
        return httpx.request(method, self.base_url + path, auth=auth, timeout=REQUEST_TIMEOUT)

    def get_json(self, path: str) -> Any:
        answer = self.get(path)
        answer.raise_for_status()
        return answer.json()


def start_flower(log_dir: Path, env: dict[str, str] | None = None) -> Flower:
    """Flower, answering on its port (its event capture starts just after)."""
    port, password = free_port(), secrets.token_urlsafe(12)
    settings = {"TASKHUB_FLOWER__PORT": str(port), "TASKHUB_FLOWER__PASSWORD": password}
    argv = celery("flower", f"--conf={FLOWER_CONFIG}")
    process = Process("flower", argv, log_dir, {**settings, **(env or {})}).start()
    flower = Flower(process, port, password)
    try:
        process.wait_output(FLOWER_STARTED, timeout=30)
        wait_for(lambda: flower.get("/healthcheck").status_code == 200, 10, "Flower to answer")
    except BaseException:
        process.kill()
        raise
    return flower
