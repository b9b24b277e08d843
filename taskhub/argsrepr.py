"""Celery's `argsrepr`/`kwargsrepr` for JSON data, at a fraction of the cost.

Celery renders them with `celery.utils.saferepr`, a token stream built for arbitrary and recursive
objects; on the bridge it cost more than everything else per message together. A validated payload
is only dicts, lists, strings, numbers, booleans and None, and for those, when nothing has to be
cut, saferepr's output follows simple rules, reproduced here. Anything else, or anything long
enough to be cut, goes to saferepr itself, so the result is always saferepr's.
`tests/test_argsrepr.py` compares the two on generated data.
"""

from __future__ import annotations

from typing import Any

from celery.utils.saferepr import saferepr

MAX_LEVELS = 3
"""saferepr's default depth: containers deeper than this show as `{...}` or `[...]`."""


_BRACKETS: dict[type, tuple[str, str]] = {dict: ("{", "}"), list: ("[", "]"), tuple: ("(", ")")}


class _NotPlain(Exception):
    """The value holds something other than JSON data: let saferepr render it."""


def _render(value: Any, level: int, out: list[str]) -> None:
    kind = type(value)
    if kind is str:
        out.append("'" + value.replace("'", "\\'") + "'")
    elif kind is int or kind is float or kind is bool:
        out.append(str(value))
    elif value is None:
        out.append("None")
    elif kind is dict or kind is list or kind is tuple:
        _render_container(value, level, out)
    else:
        raise _NotPlain


def _render_container(value: Any, level: int, out: list[str]) -> None:
    kind = type(value)
    opening, closing = _BRACKETS[kind]
    if level >= MAX_LEVELS:
        out.append(f"{opening}...{closing}")
        return
    out.append(opening)
    if kind is dict:
        for index, (key, item) in enumerate(value.items()):
            if type(key) is not str:
                raise _NotPlain
            if index:
                out.append(", ")
            _render(key, MAX_LEVELS, out)
            out.append(": ")
            _render(item, level + 1, out)
    else:
        for index, item in enumerate(value):
            if index:
                out.append(", ")
            _render(item, level + 1, out)
    out.append(",)" if kind is tuple and len(value) == 1 else closing)


def argsrepr(value: Any, maxsize: int) -> str:
    """Exactly `saferepr(value, maxsize)`."""
    out: list[str] = []
    try:
        _render(value, 0, out)
    except _NotPlain:
        return str(saferepr(value, maxsize))
    text = "".join(out)
    return text if len(text) < maxsize else str(saferepr(value, maxsize))
