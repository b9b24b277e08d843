"""The stand-in behaves as the real upstreams do (redirects, ETags, a per-client rate limit, a slow
tail, faults on demand, counters) and shrugs off bad clients; and the feed draws venues by Zipf.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import re
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from rig.processes import wait_for
from taskhub.demo.feed import checkin_tweets
from taskhub.demo.standin import SlidingWindowLimit, StandinServer
from taskhub.demo.venues import venue_for_code
from taskhub.settings import StandinSettings

TIMEOUT = 10.0
CODE = "AbCd123"
VENUE = venue_for_code(CODE)
VENUE_PATH = f"/v2/venues/{VENUE.venue_id}"
TASK_VENUE_PATH = re.compile(r"/v/(?:[^/]+/)?([A-Za-z0-9]{6,32})/?$")
"""How the check-in task reads the venue id from a short link's redirect."""

Start = Callable[..., StandinServer]


@pytest.fixture
def start_standin() -> Iterator[Start]:
    """Starts stand-ins on free ports with no latency unless told otherwise; stops them after."""
    servers: list[StandinServer] = []

    def start(**settings: Any) -> StandinServer:
        server = StandinServer(
            StandinSettings(**{"port": 0, "venue_port": 0, "latency_ms": 0} | settings)
        )
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_standin: Start) -> StandinServer:
    return start_standin()


def shortlinks(server: StandinServer, path: str = f"/s/{CODE}") -> str:
    return f"http://127.0.0.1:{server.ports[0]}{path}"


def venues(server: StandinServer, path: str = VENUE_PATH) -> str:
    return f"http://127.0.0.1:{server.ports[1]}{path}"


def get(url: str, **headers: str) -> httpx.Response:
    return httpx.get(url, headers=headers, timeout=TIMEOUT)


def get_all(requests: list[tuple[str, dict[str, str]]]) -> list[httpx.Response]:
    """All `requests` at once, each on a connection of its own."""

    async def fetch() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(requests))
        async with httpx.AsyncClient(limits=limits, timeout=TIMEOUT) as client:
            return await asyncio.gather(*(client.get(url, headers=h) for url, h in requests))

    return asyncio.run(fetch())


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send `data` on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as connection:
        connection.sendall(data)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
        return received


# What the two services answer.


def test_a_short_link_redirects_to_its_venue_on_the_short_link_host(server: StandinServer) -> None:
    response = get(shortlinks(server))

    assert response.status_code == 301
    location = response.headers["location"]
    assert location == f"http://127.0.0.1:{server.ports[0]}/v/{VENUE.slug}/{VENUE.venue_id}"
    found = TASK_VENUE_PATH.search(httpx.URL(location).path)
    assert found is not None
    assert found.group(1) == VENUE.venue_id


def test_the_venue_api_answers_the_document_with_an_etag_and_max_age(
    server: StandinServer,
) -> None:
    response = get(venues(server))

    assert response.status_code == 200
    assert response.json() == {
        "meta": {"code": 200},
        "response": {"venue": VENUE.as_api_document()},
    }
    assert re.fullmatch(r'"[0-9a-f]{8,}"', response.headers["etag"])
    assert response.headers["cache-control"] == "max-age=300"


def test_each_service_answers_only_its_own_paths_and_unknown_ones_get_404(
    server: StandinServer,
) -> None:
    not_found = {"meta": {"code": 404, "errorType": "not_found"}}
    for url in (
        shortlinks(server, VENUE_PATH),
        venues(server, f"/s/{CODE}"),
        venues(server, "/v2/venues/nosuchvenue1"),
        shortlinks(server, "/elsewhere"),
    ):
        response = get(url)
        assert (response.status_code, response.json()) == (404, not_found), url
    for url in (shortlinks(server, "/health"), venues(server, "/health")):
        assert get(url).json() == {"status": "ok"}


def test_a_method_other_than_get_is_answered_405(server: StandinServer) -> None:
    response = httpx.post(venues(server), timeout=TIMEOUT)

    assert response.status_code == 405
    assert response.headers["allow"] == "GET"


def test_a_matching_if_none_match_gets_304_without_a_body(server: StandinServer) -> None:
    etag = get(venues(server)).headers["etag"]

    again = get(venues(server), **{"If-None-Match": etag})
    other = get(venues(server), **{"If-None-Match": '"someotherversion"'})

    assert again.status_code == 304
    assert again.headers["etag"] == etag
    assert again.content == b""
    assert other.status_code == 200
    assert server.stats["venue"]["not_modified"] == 1


def test_the_two_ports_must_differ_unless_both_are_picked_free() -> None:
    with pytest.raises(ValidationError, match="port and venue_port must differ"):
        StandinSettings(port=9000, venue_port=9000)
    assert StandinSettings(port=0, venue_port=0).port == 0


def test_a_port_already_taken_fails_the_start(server: StandinServer) -> None:
    clash = StandinServer(StandinSettings(port=server.ports[0], venue_port=0))

    with pytest.raises(OSError, match="cannot listen"):
        clash.start()


# The rate limit.


def test_a_client_over_the_limit_gets_429_with_retry_after(start_standin: Start) -> None:
    server = start_standin(rate_limit=20)

    answers = get_all([(venues(server), {})] * 30)

    statuses = collections.Counter(response.status_code for response in answers)
    assert statuses == {200: 20, 429: 10}
    for response in answers:
        assert response.headers["x-ratelimit-limit"] == "20"
        assert int(response.headers["x-ratelimit-reset"]) >= int(time.time())
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert response.headers["x-ratelimit-remaining"] == "0"
            assert response.json() == {"meta": {"code": 429, "errorType": "rate_limit_exceeded"}}
    remaining = sorted(int(r.headers["x-ratelimit-remaining"]) for r in answers)
    assert remaining[-1] == 19
    assert server.stats["venue"]["over_limit"] == 10


def test_each_authorization_value_has_a_budget_of_its_own(start_standin: Start) -> None:
    server = start_standin(rate_limit=2)

    anonymous = [get(venues(server)).status_code for _ in range(3)]
    keyed = get(venues(server), Authorization="key-b")

    assert anonymous == [200, 200, 429]
    assert keyed.status_code == 200
    assert keyed.headers["x-ratelimit-remaining"] == "1"


def test_the_rate_limit_window_slides_rather_than_resetting_each_second() -> None:
    limit = SlidingWindowLimit(window=1.0)
    taken = [limit.take(b"client", 2, now).allowed for now in (10.0, 10.5, 10.9, 11.0, 11.2)]

    # 10.9: two in the last second. 11.0: 10.0 has left the window. 11.2: 10.5 and 11.0 are
    # still in it, where a fixed window starting at 11.0 would have let it through.
    assert taken == [True, True, False, True, False]
    refused = limit.take(b"client", 2, 11.2)
    assert refused.frees_in == pytest.approx(0.3)
    assert limit.take(b"another", 2, 11.2).allowed


def test_requests_refused_by_the_limit_do_not_use_up_the_window() -> None:
    limit = SlidingWindowLimit(window=1.0)
    for now in (0.0, 0.1, 0.2, 0.3, 0.4):
        limit.take(b"client", 1, now)

    assert limit.take(b"client", 1, 1.01).allowed


# Faults on demand.


def test_an_errors_fault_answers_the_named_service_with_its_status(server: StandinServer) -> None:
    server.set_fault("shortlink", "errors", seconds=30, status=502)

    assert get(shortlinks(server)).status_code == 502
    assert get(venues(server)).status_code == 200
    assert server.stats["shortlink"]["by_status"] == {"502": 1}


def test_an_outage_closes_the_connection_without_an_answer(server: StandinServer) -> None:
    fault = {"service": "venue", "kind": "outage", "seconds": 30}
    assert httpx.post(shortlinks(server, "/_standin/faults"), json=fault).status_code == 200

    with pytest.raises(httpx.TransportError):
        get(venues(server))
    assert get(shortlinks(server)).status_code == 301
    assert server.stats["venue"]["closed"] == 1


def test_a_throttle_fault_answers_429_with_its_retry_after(server: StandinServer) -> None:
    fault = {"service": "both", "kind": "throttle", "seconds": 30, "retry_after": 7}
    assert httpx.post(venues(server, "/_standin/faults"), json=fault).status_code == 200

    for url in (shortlinks(server), venues(server)):
        response = get(url)
        assert (response.status_code, response.headers["retry-after"]) == (429, "7")
    assert server.stats["venue"]["throttled"] == 1
    assert server.stats["venue"]["over_limit"] == 0


def test_a_fault_ends_after_its_seconds(server: StandinServer) -> None:
    server.set_fault("venue", "errors", seconds=0.3)

    assert get(venues(server)).status_code == 503
    wait_for(lambda: get(venues(server)).status_code == 200, TIMEOUT, "the fault to end")


def test_deleting_the_faults_ends_them_at_once(server: StandinServer) -> None:
    server.set_fault("both", "outage", seconds=600)

    assert httpx.delete(shortlinks(server, "/_standin/faults")).json() == {"faults": {}}
    assert get(venues(server)).status_code == 200


def test_a_malformed_fault_is_refused_with_400_saying_why(server: StandinServer) -> None:
    fault = {"service": "venue", "kind": "meltdown", "seconds": 5}

    response = httpx.post(venues(server, "/_standin/faults"), json=fault)

    assert response.status_code == 400
    assert "kind must be errors, outage or throttle" in response.json()["error"]
    with pytest.raises(ValueError, match="service must be"):
        server.set_fault("mail", "errors", seconds=5)


# Latency.


def test_the_latency_tail_holds_a_request_for_tail_ms(start_standin: Start) -> None:
    server = start_standin(tail_rate=1.0, tail_ms=200)

    started = time.monotonic()
    assert get(venues(server)).status_code == 200

    assert time.monotonic() - started >= 0.2


def test_max_in_flight_reflects_concurrent_requests(start_standin: Start) -> None:
    server = start_standin(latency_ms=200)

    answers = get_all([(venues(server), {})] * 20)

    assert [response.status_code for response in answers] == [200] * 20
    assert server.stats["venue"]["max_in_flight"] >= 10
    assert server.stats["venue"]["in_flight"] == 0


# Counters.


def test_stats_count_real_requests_by_status_and_reset_zeroes_them(
    server: StandinServer,
) -> None:
    get(shortlinks(server))
    get(venues(server))
    get(venues(server, "/v2/venues/nosuchvenue1"))
    get(venues(server, "/health"))

    stats = httpx.get(shortlinks(server, "/_standin/stats")).json()

    assert stats == server.stats
    assert stats["shortlink"]["by_status"] == {"301": 1}
    assert stats["venue"]["by_status"] == {"200": 1, "404": 1}
    assert server.requests_served == 3
    assert httpx.post(venues(server, "/_standin/stats/reset")).status_code == 200
    assert server.requests_served == 0
    assert server.stats["venue"]["by_status"] == {}


# Bad clients.


def test_a_bad_request_line_gets_400_and_the_server_keeps_serving(server: StandinServer) -> None:
    answer = raw_exchange(server.ports[1], b"NONSENSE\r\n\r\n")

    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"Connection: close" in answer
    assert get(venues(server)).status_code == 200


def test_clients_that_disconnect_mid_request_leave_the_server_serving(
    start_standin: Start,
) -> None:
    server = start_standin(latency_ms=100)
    with socket.create_connection(("127.0.0.1", server.ports[1]), timeout=TIMEOUT) as half:
        half.sendall(b"GET /v2/venues/abc HTTP/1.1\r\nHost: x")
    with socket.create_connection(("127.0.0.1", server.ports[1]), timeout=TIMEOUT) as gone:
        gone.sendall(f"GET {VENUE_PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode())

    wait_for(lambda: server.stats["venue"]["requests"] == 1, TIMEOUT, "the whole request")
    wait_for(lambda: server.stats["venue"]["in_flight"] == 0, TIMEOUT, "the abandoned answer")
    assert get(venues(server)).status_code == 200


def test_one_connection_serves_pipelined_requests_in_order_until_connection_close(
    server: StandinServer,
) -> None:
    requests = (
        f"GET {VENUE_PATH} HTTP/1.1\r\nHost: x\r\n\r\n"
        f"GET /s/{CODE} HTTP/1.1\r\nHost: x\r\n\r\n"
        f"GET /v2/venues/nosuchvenue1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )

    answer = raw_exchange(server.ports[1], requests.encode())

    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert statuses == [b"200", b"404", b"404"]
    assert answer.count(b"Connection: close") == 1


# The feed's venue popularity.


def _codes(messages: Any) -> list[str]:
    return [re.findall(r"4sq\.com/(\w+)", m.tweet["text"])[0] for m in messages]


def test_a_zipf_feed_crowds_check_ins_into_a_few_popular_venues() -> None:
    codes = _codes(checkin_tweets(5000, id_base=1, seed=7, venues=100, zipf=1.1))

    counts = collections.Counter(codes)
    assert len(counts) <= 100
    assert counts.most_common(1)[0][1] > 10 * statistics.median(counts.values())
    assert all(venue_for_code(code).venue_id.endswith(code) for code in counts)


def test_a_zipf_feed_is_the_same_for_the_same_seed() -> None:
    first = _codes(checkin_tweets(5000, id_base=1, seed=7, venues=100))
    again = _codes(checkin_tweets(5000, id_base=1, seed=7, venues=100))
    other = _codes(checkin_tweets(5000, id_base=1, seed=8, venues=100))

    assert first == again
    assert first != other


def test_the_default_feed_is_what_it_always_was_for_a_seed() -> None:
    messages = checkin_tweets(500, id_base=1000, seed=42)
    without_time = [
        (m.topic, {k: v for k, v in m.tweet.items() if k != "created_at"}) for m in messages
    ]

    digest = hashlib.sha256(json.dumps(without_time).encode()).hexdigest()
    # Pinned before the venue options existed: a feed replayed from a seed stays the same feed.
    assert digest == "d91b5b03b232902175867bf1210d9f023afe712394a339bd75d38c97e9b8fd00"
