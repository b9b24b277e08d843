"""Which Response Topics a request may name: taskhub publishes its reply there, so a client must
not be able to point it anywhere it likes (TASKHUB_REPLIES__ALLOWED_TOPICS, docs/requests.md).
"""

from __future__ import annotations

from collections.abc import Iterable

from taskhub.topics import TopicError, TopicPattern, check_topic_name


class ResponseTopics:
    """The topic filters a Response Topic must match, below the topic prefix. None: every
    request is refused."""

    def __init__(self, allowed: Iterable[str] = (), topic_prefix: str = "") -> None:
        self.filters = tuple(TopicPattern(text).with_prefix(topic_prefix) for text in allowed)

    def refusal(self, topic: str) -> str | None:
        """Why replies must not go to `topic`, or None when they may."""
        try:
            check_topic_name(topic)  # a wildcard, NUL or empty topic: MQTT forbids publishing
        except TopicError as error:
            return f"response topic refused: {error}"
        if not any(allowed.matches(topic) for allowed in self.filters):
            allowed_list = ", ".join(str(allowed) for allowed in self.filters) or "none"
            return (
                f"response topic {topic[:200]!r} matches no TASKHUB_REPLIES__ALLOWED_TOPICS "
                f"filter (allowed: {allowed_list})"
            )
        return None

    def allows(self, topic: str) -> bool:
        return self.refusal(topic) is None
