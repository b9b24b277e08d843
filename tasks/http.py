"""One pooled HTTP client per worker process, created after fork and reused by every task."""

from __future__ import annotations

import os

import httpx

from taskhub.settings import HttpSettings

_client: httpx.Client | None = None
_client_pid: int | None = None


def http_client(settings: HttpSettings) -> httpx.Client:
    """This process's client; a forked pool child builds its own rather than share sockets."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = httpx.Client(
            timeout=httpx.Timeout(
                settings.read_timeout, connect=settings.connect_timeout, pool=settings.read_timeout
            ),
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_connections,
            ),
            follow_redirects=False,
            headers={"user-agent": "taskhub/0.1"},
        )
        _client_pid = os.getpid()
    return _client
