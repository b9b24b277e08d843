"""MQTT topic filters with named parameters, as validated immutable values.

Matching follows MQTT 5.0 section 4.7: `+` is one whole level, `#` the last level and its parent,
and a filter that starts with a wildcard never matches a topic that starts with `$`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SHARE_PREFIX = "$share/"
SINGLE_LEVEL = "+"
MULTI_LEVEL = "#"
MAX_TOPIC_BYTES = 65_535

_PARAMETER = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")


class TopicError(ValueError):
    """A topic name or filter breaks the MQTT rules; the message names it and the rule."""


def check_topic_name(topic: str) -> None:
    """Raise TopicError unless `topic` is a topic name a client may publish to."""
    if not topic:
        raise TopicError("a topic name must not be empty")
    if len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        raise TopicError("a topic name must be at most 65535 bytes")
    if "\x00" in topic:
        raise TopicError(f"topic name {topic!r} contains a NUL character")
    if SINGLE_LEVEL in topic or MULTI_LEVEL in topic:
        raise TopicError(f"topic name {topic!r} contains a wildcard")


def strip_share(topic_filter: str) -> tuple[str | None, str]:
    """Split `$share/<group>/<filter>` into (group, filter); (None, filter) when not shared."""
    if not topic_filter.startswith(SHARE_PREFIX):
        return None, topic_filter
    group, sep, rest = topic_filter[len(SHARE_PREFIX) :].partition("/")
    if not sep or not group or SINGLE_LEVEL in group or MULTI_LEVEL in group or not rest:
        raise TopicError(
            f"shared subscription {topic_filter!r} must be $share/<group>/<filter>, "
            "with a group free of '/', '+' and '#'"
        )
    return group, rest


@dataclass(frozen=True, slots=True)
class TopicPattern:
    """A topic filter whose single-level wildcards may be named: `checkins/{city}/#`.

    `{name}` behaves as `+` and hands the matched level to the task as keyword `name`.
    """

    text: str
    levels: tuple[str, ...] = field(init=False, repr=False, compare=False)
    parameters: tuple[str | None, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _, text = strip_share(self.text)
        object.__setattr__(self, "text", text)
        if not text:
            raise TopicError("a topic filter must not be empty")
        if "\x00" in text:
            raise TopicError(f"topic filter {text!r} contains a NUL character")
        levels = text.split("/")
        parameters: list[str | None] = []
        seen: set[str] = set()
        for index, level in enumerate(levels):
            named = _PARAMETER.match(level)
            if named:
                name = named.group(1)
                if name in seen:
                    raise TopicError(f"topic filter {text!r} names parameter {{{name}}} twice")
                seen.add(name)
                parameters.append(name)
                continue
            parameters.append(None)
            if level == MULTI_LEVEL and index != len(levels) - 1:
                raise TopicError(f"topic filter {text!r}: '#' must be the last level")
            if level not in (SINGLE_LEVEL, MULTI_LEVEL) and (
                SINGLE_LEVEL in level or MULTI_LEVEL in level
            ):
                raise TopicError(
                    f"topic filter {text!r}: a wildcard must fill a whole level (got {level!r})"
                )
            if "{" in level or "}" in level:
                raise TopicError(
                    f"topic filter {text!r}: {level!r} is not a parameter; write {{name}} "
                    "with a Python identifier as name, filling the whole level"
                )
        object.__setattr__(self, "levels", tuple(levels))
        object.__setattr__(self, "parameters", tuple(parameters))

    def __str__(self) -> str:
        return self.text

    @property
    def mqtt_filter(self) -> str:
        """The filter as the broker sees it: every `{name}` becomes `+`."""
        return "/".join(
            SINGLE_LEVEL if name is not None else level
            for level, name in zip(self.levels, self.parameters, strict=True)
        )

    @property
    def namespace(self) -> tuple[str, ...]:
        """The literal levels before the first wildcard (a literal topic: all but its last level).

        Empty when the pattern starts with a wildcard. The bridge subscribes `<namespace>/#`, so
        that a message near a route but matched by none is seen, and dead-lettered as no_route.
        """
        literal: list[str] = []
        for level, name in zip(self.levels, self.parameters, strict=True):
            if name is not None or level in (SINGLE_LEVEL, MULTI_LEVEL):
                return tuple(literal)
            literal.append(level)
        return tuple(literal[:-1]) if len(literal) > 1 else tuple(literal)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name in self.parameters if name is not None)

    def with_prefix(self, prefix: str) -> TopicPattern:
        """The same pattern below `prefix` (which ends with '/'), for tenant or test isolation."""
        return TopicPattern(prefix + self.text) if prefix else self

    # Returns as soon as the answer is known: this runs for every message and route.
    def match(self, topic: str) -> dict[str, str] | None:  # noqa: PLR0911
        """The named parameters if `topic` matches, else None."""
        if topic.startswith("$") and self.levels[0] in (SINGLE_LEVEL, MULTI_LEVEL):
            return None
        if topic.startswith("$") and self.parameters[0] is not None:
            return None
        topic_levels = topic.split("/")
        captured: dict[str, str] = {}
        for index, (level, name) in enumerate(zip(self.levels, self.parameters, strict=True)):
            if level == MULTI_LEVEL:
                return captured
            if index >= len(topic_levels):
                return None
            if name is not None:
                captured[name] = topic_levels[index]
            elif level != SINGLE_LEVEL and level != topic_levels[index]:
                return None
        if len(topic_levels) == len(self.levels):
            return captured
        return None

    def matches(self, topic: str) -> bool:
        return self.match(topic) is not None
