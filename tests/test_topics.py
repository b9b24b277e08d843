"""Topic patterns follow MQTT 5.0 section 4.7, and malformed filters are refused on construction."""

from __future__ import annotations

import pytest

from taskhub.topics import TopicError, TopicPattern, check_topic_name, strip_share


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        # 4.7.1.2: multi-level wildcard
        ("sport/tennis/player1/#", "sport/tennis/player1", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
        ("sport/#", "sport", True),
        ("#", "sport/tennis", True),
        ("#", "/", True),
        ("sport/tennis/#", "sport/tennis", True),
        ("sport/tennis/#", "sport/tennisx", False),
        # 4.7.1.3: single-level wildcard
        ("sport/tennis/+", "sport/tennis/player1", True),
        ("sport/tennis/+", "sport/tennis/player2", True),
        ("sport/tennis/+", "sport/tennis/player1/ranking", False),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        ("+/tennis/#", "sport/tennis/player1", True),
        # 4.7.2: topics beginning with $
        ("#", "$SYS/broker/uptime", False),
        ("+/monitor/Clients", "$SYS/monitor/Clients", False),
        ("$SYS/#", "$SYS/broker/uptime", True),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
        # exact levels, case and empty levels
        ("sport/tennis", "sport/tennis", True),
        ("sport/tennis", "Sport/tennis", False),
        ("sport//tennis", "sport//tennis", True),
        ("sport/tennis", "sport/tennis/", False),
    ],
)
def test_matching_follows_the_mqtt5_wildcard_examples(
    topic_filter: str, topic: str, expected: bool
) -> None:
    assert TopicPattern(topic_filter).matches(topic) is expected


def test_named_parameters_capture_their_level() -> None:
    pattern = TopicPattern("checkins/{city}/{source}/#")
    assert pattern.mqtt_filter == "checkins/+/+/#"
    assert pattern.names == ("city", "source")
    assert pattern.match("checkins/nyc/twitter/a/b") == {"city": "nyc", "source": "twitter"}
    assert pattern.match("checkins/nyc") is None


def test_named_parameter_may_capture_an_empty_level() -> None:
    assert TopicPattern("sensors/{device_id}/reading").match("sensors//reading") == {
        "device_id": ""
    }


def test_leading_named_parameter_does_not_match_dollar_topics() -> None:
    assert TopicPattern("{first}/x").match("$SYS/x") is None


@pytest.mark.parametrize(
    ("topic_filter", "complaint"),
    [
        ("", "must not be empty"),
        ("sport/tennis#", "whole level"),
        ("sport/#/ranking", "last level"),
        ("sport+", "whole level"),
        ("sport/+tennis", "whole level"),
        ("a/{city}/{city}", "twice"),
        ("a/{1city}", "not a parameter"),
        ("a/{city}x", "not a parameter"),
        ("a/\x00", "NUL"),
        ("$share/group", "$share/<group>/<filter>"),
        ("$share//a/b", "$share/<group>/<filter>"),
        ("$share/gr+oup/a", "$share/<group>/<filter>"),
    ],
)
def test_malformed_filters_are_refused_with_a_reason(topic_filter: str, complaint: str) -> None:
    with pytest.raises(TopicError, match=complaint.replace("$", r"\$").replace("+", r"\+")):
        TopicPattern(topic_filter)


def test_share_prefix_is_stripped_before_matching() -> None:
    assert strip_share("$share/workers/checkins/+/#") == ("workers", "checkins/+/#")
    pattern = TopicPattern("$share/workers/checkins/{city}/#")
    assert pattern.text == "checkins/{city}/#"
    assert pattern.match("checkins/sf/x") == {"city": "sf"}


def test_patterns_are_values() -> None:
    assert TopicPattern("a/+") == TopicPattern("a/+")
    assert len({TopicPattern("a/+"), TopicPattern("a/+")}) == 1
    with pytest.raises(AttributeError):
        TopicPattern("a/+").text = "b"  # type: ignore[misc]


@pytest.mark.parametrize("bad", ["", "a/+", "a/#", "a\x00b"])
def test_topic_names_with_wildcards_or_nothing_are_refused(bad: str) -> None:
    with pytest.raises(TopicError):
        check_topic_name(bad)


def test_prefix_puts_a_pattern_below_a_namespace() -> None:
    assert TopicPattern("checkins/{city}/#").with_prefix("t1/").mqtt_filter == "t1/checkins/+/#"
