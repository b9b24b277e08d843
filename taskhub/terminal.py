"""Text that came from outside (MQTT topics and payloads, error messages, records in Redis) made
safe to print on an operator's terminal: its control characters are shown, never obeyed.

A payload holding `ESC]0;title`, `ESC[2J` or a right-to-left override could otherwise retitle,
clear or recolour the terminal, or make one text read as another. Every such character is shown
as an escape instead (`\\x1b`, `\\x9b`, `\\u202e`), the way Python's repr writes it. `--json`
output needs none of this: JSON escapes them itself, and stays exact.

What counts as a control: Unicode categories Cc (C0, DEL and C1, including the 8-bit CSI
U+009B), Cf (format characters: bidi overrides and isolates, zero-width characters, tag
characters, the byte-order mark), Cs (lone surrogates, which cannot even be encoded) and Zl/Zp
(line and paragraph separators). A backslash in the text stays as it is: the tables are for
reading, `--json` is the exact record.
"""

from __future__ import annotations

import json
import unicodedata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the bridge and the workers use visible() for their logs, and no rich
    from rich.text import Text

CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
LINE_LAYOUT = frozenset("\n\t")
"""Kept as they are where the layout wants lines (a traceback, a text payload): never in a cell."""
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
_ONE_BYTE_END = 0x100
"""Code points below it escape as \\xNN."""
_BMP_END = 0x10000
"""Code points below it (the Basic Multilingual Plane) escape as one \\uNNNN."""


def is_control(char: str) -> bool:
    # isprintable() is False for every control category (and a few harmless others, such as
    # no-break space), so it is the cheap first test.
    return not char.isprintable() and unicodedata.category(char) in CONTROL_CATEGORIES


def visible(text: str, *, keep_lines: bool = False) -> str:
    """`text` with each control character written as an escape; with `keep_lines`, newline and
    tab stay for the layout."""
    if text.isprintable():  # nearly all text: no copy
        return text
    return "".join(
        _escaped(char) if is_control(char) and not (keep_lines and char in LINE_LAYOUT) else char
        for char in text
    )


def safe_text(text: str, *, keep_lines: bool = False, style: str = "") -> Text:
    """Outside text as a rich `Text`: controls escaped, and rich markup in it never parsed."""
    from rich.text import Text

    return Text(visible(text, keep_lines=keep_lines), style=style)


def json_view(value: Any) -> str:
    """`value` as indented JSON for reading: non-ASCII text as itself, every control character
    as a JSON `\\u` escape (json.dumps leaves C1, DEL, bidi and format characters raw)."""
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    if text.isprintable():
        return text
    # A control can only stand inside a string literal here, where its \\u escape means the same.
    return "".join(_json_escaped(char) if is_control(char) else char for char in text)


def _escaped(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code < _ONE_BYTE_END:
        return f"\\x{code:02x}"
    if code < _BMP_END:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _json_escaped(char: str) -> str:
    if char == "\n":  # json.dumps writes newlines between items, never inside a string
        return char
    code = ord(char)
    if code < _BMP_END:
        return f"\\u{code:04x}"
    code -= _BMP_END  # beyond the BMP JSON has only surrogate pairs
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
