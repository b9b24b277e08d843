"""The metric names docs/observability.md promises, and the metric names a PromQL expression
reads: what lets the alert rules and the dashboard be checked against the doc.
"""

from __future__ import annotations

import re
from pathlib import Path

OBSERVABILITY_DOC = Path(__file__).resolve().parents[2] / "docs" / "observability.md"
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
"""The series Prometheus stores for each histogram the doc names."""
PROMETHEUS_OWN = frozenset({"up"})
"""Series Prometheus writes itself for every target."""

_DOC_ROW = re.compile(r"^\|\s*`([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}`]*\})?`\s*\|", re.MULTILINE)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")
KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"offset", "bool", "inf", "nan", "atan2"}
)


METRICS_SECTION = "\n## Metric names\n"


def documented_metrics(doc: Path = OBSERVABILITY_DOC) -> set[str]:
    """Every name in the first column of the tables under the doc's "Metric names" heading
    (`name` or `name{label}`)."""
    text = doc.read_text()
    assert METRICS_SECTION in text, f"{doc} has no {METRICS_SECTION.strip()!r} section"
    section = text.split(METRICS_SECTION, 1)[1].split("\n## ", 1)[0]
    return set(_DOC_ROW.findall(section))


def metrics_in(expression: str) -> set[str]:
    """The metric names an expression selects: everything left once strings, label matchers,
    ranges, grouping clauses, dashboard variables, functions and keywords are taken out."""
    text = _VARIABLE.sub(" ", expression)
    for pattern in (_STRING, _MATCHERS, _RANGE, _GROUPING):
        text = pattern.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in KEYWORDS}


def undocumented(expression: str, documented: set[str]) -> set[str]:
    """Names in `expression` that are neither in the doc nor Prometheus's own."""

    def known(name: str) -> bool:
        if name in documented or name in PROMETHEUS_OWN:
            return True
        series_of = (name.removesuffix(s) for s in HISTOGRAM_SERIES if name.endswith(s))
        return any(histogram in documented for histogram in series_of)

    return {name for name in metrics_in(expression) if not known(name)}
