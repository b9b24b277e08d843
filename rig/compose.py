"""docker-compose.yml as data, its `${VAR}` references resolved the way Compose resolves them,
so tests and benchmarks can run its very settings on real servers (no Docker engine runs here).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

COMPOSE_FILE = Path(__file__).resolve().parents[1] / "docker-compose.yml"

_REFERENCE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<rule>:\?|:-)?(?P<arg>[^}]*)\}"
)


class MissingVariable(LookupError):
    """A `${NAME:?message}` whose NAME is unset or empty: Compose refuses to start with message."""


def compose_file() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE_FILE.read_text()))


def service(name: str) -> dict[str, Any]:
    return dict(compose_file()["services"][name])


def interpolate(value: str, environment: Mapping[str, str]) -> str:
    """`value` with `$$`, `${NAME}`, `${NAME:-default}` and `${NAME:?message}` resolved from
    `environment` (Compose's shell environment plus `.env`); the only forms the file uses."""

    def resolve(found: re.Match[str]) -> str:
        if found.group(0) == "$$":
            return "$"
        name, rule, argument = found.group("name", "rule", "arg")
        given = environment.get(name, "")
        if rule == ":?" and not given:
            raise MissingVariable(f"{name}: {argument}")
        if rule == ":-" and not given:
            return str(argument)
        return given

    return _REFERENCE.sub(resolve, value)


def resolved(value: Any, environment: Mapping[str, str]) -> Any:
    """A piece of the compose file (a service, a command, an environment) with every string in it
    interpolated."""
    if isinstance(value, str):
        return interpolate(value, environment)
    if isinstance(value, list):
        return [resolved(item, environment) for item in value]
    if isinstance(value, dict):
        return {key: resolved(item, environment) for key, item in value.items()}
    return value
