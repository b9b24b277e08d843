"""Nothing Flower serves answers without its basic-auth password: not its pages, not its API, not
`/healthcheck`; `/metrics` is gone (docs/observability.md, "Flower")."""

from __future__ import annotations

import re
from typing import Any

import pytest
from tornado.routing import URLSpec
from tornado.web import RequestHandler, StaticFileHandler

from taskhub import flower_views
from tests.support.flower import Flower

pytestmark = pytest.mark.e2e

_GROUP = re.compile(r"\([^)]*\)")


def test_healthcheck_asks_for_the_password_and_metrics_are_gone(flower: Flower) -> None:
    wrong = "not-" + flower.password
    assert flower.get("/healthcheck", password=None).status_code == 401
    assert flower.get("/healthcheck", password=wrong).status_code == 401
    answer = flower.get("/healthcheck")
    assert (answer.status_code, answer.text) == (200, "OK")
    assert flower.get("/metrics", password=None).status_code == 404
    assert flower.get("/metrics").status_code == 404


def _served_routes() -> list[tuple[str, str]]:
    """(method, path) for every route of Flower's URL table as taskhub installs it, except the
    static files, the login and logout pages and the catch-all 404."""
    from flower.urls import handlers
    from flower.views.auth import LoginHandler, LogoutHandler
    from flower.views.error import NotFoundErrorHandler

    table: list[Any] = list(handlers)
    flower_views.install(table)
    public = (StaticFileHandler, LoginHandler, LogoutHandler, NotFoundErrorHandler)
    routes = []
    for entry in table:
        pattern, handler = (
            (entry.regex.pattern, entry.handler_class)
            if isinstance(entry, URLSpec)
            else (entry[0], entry[1])
        )
        if issubclass(handler, public):
            continue
        method = "GET" if handler.get is not RequestHandler.get else "POST"
        routes.append((method, _GROUP.sub("x", pattern).removesuffix("$")))
    return routes


def test_every_flower_route_asks_for_the_password(flower: Flower) -> None:
    routes = _served_routes()
    assert ("GET", "/broker") in routes
    assert ("GET", "/healthcheck") in routes
    open_routes = [
        (method, path, status)
        for method, path in routes
        if (status := flower.request(method, path, password=None).status_code) != 401
    ]
    assert open_routes == []
