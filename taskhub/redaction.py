"""The one rule that keeps secrets out of all taskhub echoes: start errors, `taskhub config`, logs
and dead letters. A value is masked for what it is, never for the name of the setting it came in.

Masked, each replaced by `***`:
- the password of a URL's userinfo, in any scheme (`redis://:pw@host`, `amqp://u:pw@host`, ...);
  a password with a raw `@` is masked whole, since the host starts after the authority's last `@`
  (as Python's and redis-py's URL parsers read it); userinfo with no `:` is masked whole, since a
  token often stands there alone (`https://TOKEN@host`);
- the value of a parameter whose name says it is secret (`?password=`, `api_key=`, `token=`,
  `"secret": "..."`, an MQTT user property `["Authorization", "..."]`);
- anywhere in the text, each secret this process was configured with (`remember`), e.g. the MQTT
  password, should a library quote it on its own.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

MASK = "***"

MIN_REMEMBERED_CHARS = 4
"""Shorter configured secrets are masked where they stand (in a URL, after a secret name) but not
searched for in all text: masking every `ab` in every log line would leave the logs unreadable."""

# `auth` but not `author` or `authority`; `authorization` is.
_SECRET_NAME = re.compile(
    r"passw(?:or)?d|passphrase|(?<![a-z])pass(?![a-z])|pwd|secret|token|credential|signature"
    r"|auth(?!or(?!iz))|(?:api|access|private)[_.-]?key|^(?:key|sig)$",
    re.IGNORECASE,
)
# Cheap substring checks that every secret name above contains one of (on lowercased text).
_NAME_HINTS = ("pass", "pwd", "secret", "token", "credential", "signature", "auth", "key", "sig")

# The scheme is bounded and must start a word, so a long run of letters costs no backtracking.
_URL_USERINFO = re.compile(
    r"(?<![A-Za-z0-9+.-])(?P<scheme>[A-Za-z][A-Za-z0-9+.-]{0,31}://)(?P<userinfo>[^\s/?#]*)@"
)
_NAMED_VALUE = re.compile(r"(?<![\w.-])(?P<name>[\w.-]{1,64})=(?P<value>[^&\s#'\"]+)")
_QUOTED_PAIR = re.compile(
    r"(?P<q>[\"'])(?P<name>[\w.-]{1,64})(?P=q)\s*:\s*"
    r"(?P<vq>[\"'])(?P<value>(?:\\.|(?!(?P=vq))[^\\])+)(?P=vq)"
)

_remembered: tuple[str, ...] = ()


@functools.lru_cache(maxsize=1024)  # the same few names come back in line after line
def is_secret_name(name: str) -> bool:
    """True when a parameter, key or header called `name` holds a secret (password, token, ...)."""
    return _SECRET_NAME.search(name) is not None


def redact(text: str) -> str:
    """`text` with every secret in it masked; cheap (a few substring checks) when it holds none."""
    if "://" in text:
        text = _URL_USERINFO.sub(_mask_userinfo, text)
    if ("=" in text or ":" in text) and _may_name_a_secret(text):
        if "=" in text:
            text = _NAMED_VALUE.sub(_mask_value, text)
        if "':" in text or '":' in text:
            text = _QUOTED_PAIR.sub(_mask_value, text)
    for secret in _remembered:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_document(value: Any) -> Any:
    """A JSON-like document (dicts, lists, strings) with every secret in it masked: strings as
    `redact` does, a value under a secret key, and the value of a `[name, value]` pair with a
    secret name (MQTT user properties, HTTP headers)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {
            key: _masked(item) if is_secret_name(str(key)) else redact_document(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        match value:
            case [str() as name, secret] if is_secret_name(name):  # a (name, value) pair
                return [name, _masked(secret)]
        return [redact_document(item) for item in value]
    return value


def secrets_in_url(url: str) -> list[str]:
    """The secrets a URL holds (its password, secret query values), as written and decoded."""
    try:
        parts = urlsplit(url)
        found = [parts.password or ""]
        found += [v for n, v in parse_qsl(parts.query) if is_secret_name(n)]
    except ValueError:
        return []
    return [text for value in found if value for text in {value, unquote(value)}]


def remember(secrets: Iterable[str]) -> None:
    """Mask these configured secret values wherever they appear, from now on in this process."""
    global _remembered
    known = set(_remembered) | {s for s in secrets if len(s) >= MIN_REMEMBERED_CHARS}
    _remembered = tuple(sorted(known, key=len, reverse=True))  # a longer one holding a shorter


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's final message and traceback before any handler writes it:
    libraries quote URLs in their errors (`Error connecting to redis://:pw@host`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the handler reports it, a filter must not raise
            return True
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            if (masked := redact(text)) != text:
                record.exc_text = masked  # formatters print exc_text when it is set
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def redact_logs(*loggers: logging.Logger) -> None:
    """Put a RedactingFilter on every handler of `loggers` (default: the root logger), once.

    On handlers, not loggers: a logger's filters never see records propagated from its children.
    """
    for logger in loggers or (logging.getLogger(),):
        for handler in logger.handlers:
            if not any(isinstance(existing, RedactingFilter) for existing in handler.filters):
                handler.addFilter(RedactingFilter())


def _may_name_a_secret(text: str) -> bool:
    lowered = text.lower()
    return any(hint in lowered for hint in _NAME_HINTS)


def _masked(value: Any) -> Any:
    """A secret's value masked; an empty one left as it is, which says it is unset."""
    return MASK if value not in (None, "", [], {}) else value


def _mask_userinfo(found: re.Match[str]) -> str:
    user, colon, _ = found["userinfo"].partition(":")
    return f"{found['scheme']}{user}:{MASK}@" if colon else f"{found['scheme']}{MASK}@"


def _mask_value(found: re.Match[str]) -> str:
    """The match with its `value` group masked when its `name` group names a secret."""
    if not is_secret_name(found["name"]):
        return found[0]
    start, end = found.start("value") - found.start(), found.end("value") - found.start()
    return found[0][:start] + MASK + found[0][end:]
