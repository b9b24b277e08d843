"""The route table: matching, consistency checks, and the Celery routing derived from it."""

from __future__ import annotations

import json

import pytest
import redis

from taskhub.payloads import CheckinTweet, SensorReading
from taskhub.routes import ROUTES, Route, RouteError, RouteTable, route_table
from taskhub.topics import TopicPattern


def _route(
    pattern: str, task: str = "tasks.checkins.resolve_checkin", queue: str = "checkins"
) -> Route:
    return Route(pattern=TopicPattern(pattern), task=task, queue=queue, payload=CheckinTweet)


def test_first_matching_route_wins_and_hands_over_its_parameters() -> None:
    table = RouteTable(
        [_route("checkins/{city}/vip"), _route("checkins/{town}/#", task="tasks.x.y", queue="q")]
    )
    vip = table.match("checkins/nyc/vip")
    assert vip is not None
    assert vip.route.task == "tasks.checkins.resolve_checkin"
    found = table.match("checkins/sf/other")
    assert found is not None
    assert (found.route.queue, found.params) == ("q", {"town": "sf"})
    assert table.match("other/topic") is None


def test_two_routes_on_the_same_filter_are_refused() -> None:
    with pytest.raises(RouteError, match="same filter; remove one"):
        RouteTable([_route("checkins/{city}/#"), _route("checkins/+/#", task="tasks.x.y")])


def test_a_task_routed_to_two_queues_is_refused() -> None:
    with pytest.raises(RouteError, match="routed to both queue"):
        RouteTable([_route("a/+"), _route("b/+", queue="other")])


@pytest.mark.parametrize(
    ("kwargs", "complaint"),
    [
        ({"queue": "bad queue"}, "queue 'bad queue'"),
        ({"task": "resolve"}, "dotted path"),
        ({"qos": 2}, "qos must be 0 or 1 .*QoS 2 handshake acks on arrival"),
        ({"key": "nope"}, "key 'nope' is not a field of CheckinTweet"),
    ],
)
def test_a_malformed_route_is_refused_naming_it(kwargs: dict[str, object], complaint: str) -> None:
    fields: dict[str, object] = {
        "pattern": TopicPattern("checkins/+"),
        "task": "tasks.checkins.resolve_checkin",
        "queue": "checkins",
        "payload": CheckinTweet,
        **kwargs,
    }
    with pytest.raises(RouteError, match=f"route checkins/\\+: .*{complaint}"):
        Route(**fields)  # type: ignore[arg-type]


def test_topic_prefix_moves_every_route_below_it() -> None:
    table = route_table("tenant-a/")
    assert all(route.pattern.text.startswith("tenant-a/") for route in table)
    assert table.match("tenant-a/checkins/nyc/x") is not None
    assert table.match("checkins/nyc/x") is None


def test_the_project_routes_are_consistent() -> None:
    table = RouteTable(ROUTES)
    assert table.queues == ("checkins", "sensors")
    assert table.task_queues["tasks.sensors.record_reading"] == "sensors"
    assert {route.payload for route in table} == {CheckinTweet, SensorReading}


def test_celery_config_declares_every_route_queue_and_routes_each_task() -> None:
    from taskhub.celery import app

    declared = {queue.name for queue in app.conf.task_queues}
    assert declared == {"checkins", "sensors"}
    assert app.conf.task_routes == {
        "tasks.checkins.resolve_checkin": {"queue": "checkins"},
        "tasks.sensors.record_reading": {"queue": "sensors"},
    }
    assert app.conf.task_serializer == "json"
    assert app.conf.accept_content == ["json"]
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.worker_prefetch_multiplier == 1
    visibility = app.conf.broker_transport_options["visibility_timeout"]
    assert visibility > app.conf.task_time_limit > app.conf.task_soft_time_limit


def test_delay_from_any_program_lands_on_the_route_queue(broker_redis: redis.Redis) -> None:
    from tasks.sensors import record_reading

    record_reading.delay({"seq": 1, "value": 2.5, "ts": "2026-01-01T00:00:00Z"}, device_id="d1")
    assert broker_redis.llen("sensors") == 1
    assert broker_redis.llen("checkins") == 0
    raw = broker_redis.lindex("sensors", 0)
    assert raw is not None
    message = json.loads(raw)
    assert message["headers"]["task"] == "tasks.sensors.record_reading"
    assert message["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        (["checkins/{city}/#", "sensors/{id}/reading"], [("checkins/#", 1), ("sensors/#", 1)]),
        (["a/b/{x}", "a/{y}/c"], [("a/#", 1)]),  # a/b/# lies inside a/#: one subscription
        (["status/online"], [("status/#", 1)]),
        (["+/alarm"], [("+/alarm", 1)]),  # no literal namespace: subscribed as it is
    ],
)
def test_the_bridge_subscribes_each_namespace_once(
    patterns: list[str], expected: list[tuple[str, int]]
) -> None:
    table = RouteTable(
        [_route(p, task=f"tasks.t{n}.run", queue=f"q{n}") for n, p in enumerate(patterns)]
    )
    assert table.subscriptions(default_qos=1) == expected


def test_a_namespace_is_subscribed_at_the_highest_qos_of_its_routes() -> None:
    table = RouteTable(
        [
            Route(TopicPattern("a/{x}"), "tasks.a.run", "qa", CheckinTweet, qos=0),
            Route(TopicPattern("a/{x}/{y}"), "tasks.b.run", "qb", CheckinTweet),
        ]
    )
    assert table.subscriptions(default_qos=0) == [("a/#", 0)]
    assert table.subscriptions(default_qos=1) == [("a/#", 1)]


def test_a_task_whose_decorator_names_another_queue_is_refused() -> None:
    from celery.exceptions import CDeprecationWarning

    from taskhub.celery import app, check_routes

    @app.task(name="tests.elsewhere", queue="elsewhere")  # type: ignore[untyped-decorator]
    def elsewhere() -> None: ...

    table = RouteTable([_route("x/{a}", task="tests.elsewhere", queue="checkins")])
    with (
        pytest.warns(CDeprecationWarning, match="'queue' task attribute"),  # Celery's own say
        pytest.raises(RouteError, match="names queue 'elsewhere' in its decorator"),
    ):
        check_routes(app, table)
