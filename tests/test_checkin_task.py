"""The check-in task on an embedded Celery worker, against the stand-in and real Redis."""

from __future__ import annotations

import pytest
import redis

from rig.processes import wait_for
from taskhub.demo.standin import StandinServer
from taskhub.demo.venues import venue_for_code
from tests.conftest import checkin_tweet, load_checkin

TIMEOUT = 30


@pytest.fixture
def server(standin: StandinServer) -> StandinServer:
    return standin


@pytest.mark.usefixtures("embedded_worker")
def test_resolve_checkin_expands_the_link_and_stores_the_venue(broker_redis: redis.Redis) -> None:
    from tasks.checkins import resolve_checkin

    result = resolve_checkin.delay(checkin_tweet("1001", "AbCd123"), city="nyc").get(
        timeout=TIMEOUT
    )

    venue = venue_for_code("AbCd123")
    assert result["venue"]["id"] == venue.venue_id
    assert result["venue"]["name"] == venue.name
    assert (result["tweet_id"], result["city"], result["short_code"]) == ("1001", "nyc", "AbCd123")
    assert load_checkin(broker_redis, "1001") == result


@pytest.mark.usefixtures("embedded_worker")
def test_an_unavailable_upstream_is_retried_until_it_answers(server: StandinServer) -> None:
    from tasks.checkins import resolve_checkin

    normal = server.settings
    served_before = server.requests_served
    server.settings = normal.model_copy(update={"error_rate": 1.0})
    try:
        pending = resolve_checkin.delay(checkin_tweet("1002", "Retry01"))
        wait_for(lambda: server.requests_served > served_before, TIMEOUT, "a failed request")
    finally:
        server.settings = normal
    result = pending.get(timeout=TIMEOUT)
    assert result["retries"] >= 1
    assert result["venue"]["id"] == venue_for_code("Retry01").venue_id


def test_a_tweet_without_a_short_link_is_refused_before_any_request() -> None:
    from pydantic import ValidationError

    from tasks.checkins import resolve_checkin

    bad = checkin_tweet("1003", "x") | {"text": "no link here"}
    with pytest.raises(ValidationError, match=r"no 4sq\.com short link"):
        resolve_checkin.run(bad)
