"""What the `taskhub` commands print: text from outside never drives the operator's terminal, and
the tables stay readable in an 80-column one."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import time
import unicodedata

import pytest
import redis
from rich.console import Console

from taskhub.deadletters import DeadLetter, DeadLetterStream, FailedTask, Reason, count_letter
from taskhub.fitted_table import Field, FittedTable
from taskhub.settings import get_settings
from taskhub.telemetry import deadletter_log
from taskhub.telemetry.beats import BridgeBeat, WorkerBeat, record_beat
from taskhub.terminal import json_view, visible

EVIL = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x9b2J\u202eevil\u2066\x7f\U000e0041"
"""Retitle, clear, recolour (7-bit and 8-bit CSI), reverse the text, DEL, an invisible tag."""
EVIL_SHOWN = "\\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mred\\x9b2J\\u202eevil\\u2066\\x7f\\U000e0041"
EVIL_IN_JSON = (
    "\\u001b]0;pwned\\u0007\\u001b[2J\\u001b[31mred\\u009b2J\\u202eevil\\u2066\\u007f\\udb40\\udc41"
)
SGR = re.compile(r"\x1b\[[0-9;]*m")
"""The only escape sequences rich writes for these commands: its own colours and styles."""
CONTROL_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}
PLAIN = {"TTY_COMPATIBLE": "0"}
TERMINAL = {"TTY_COMPATIBLE": "1", "FORCE_COLOR": "1", "TERM": "xterm-256color"}
"""rich writes for a terminal whatever stdout is (rich's docs: environment variables)."""


def taskhub(*args: str, columns: int, mode: dict[str, str]) -> str:
    """stdout and stderr of the `taskhub` command, decoded so that no raw byte can hide."""
    env = {k: v for k, v in os.environ.items() if k not in {"NO_COLOR", "FORCE_COLOR", "TERM"}}
    done = subprocess.run(
        [sys.executable, "-m", "taskhub.cli", *args],
        capture_output=True,
        timeout=60,
        env={**env, "COLUMNS": str(columns), **mode},
    )
    output = (done.stdout + done.stderr).decode("utf-8", "surrogateescape")
    assert done.returncode == 0, output
    return output


def raw_controls(output: str, mode: dict[str, str]) -> str:
    """The control characters in `output`, each once, other than newlines and rich's own SGR."""
    if mode is TERMINAL:
        assert SGR.search(output), "rich did not write for a terminal: the test proves nothing"
        output = SGR.sub("", output)
    found = {c for c in output if c != "\n" and unicodedata.category(c) in CONTROL_CATEGORIES}
    return "".join(sorted(found))


# The rule itself.


def test_visible_escapes_every_control_and_keeps_all_other_text() -> None:
    assert visible(EVIL) == EVIL_SHOWN
    assert visible("Zürich 東京 🙂 a\\x1b [b]") == "Zürich 東京 🙂 a\\x1b [b]"
    assert (
        visible("\ud800 \u2028 \ufeff \u200b \xad \x85")
        == "\\ud800 \\u2028 \\ufeff \\u200b \\xad \\x85"
    )
    assert visible("a\n\tb\rc") == "a\\n\\tb\\rc"
    assert visible("a\n\tb\rc", keep_lines=True) == "a\n\tb\\rc"


def test_a_json_view_escapes_controls_and_reads_back_as_the_same_value() -> None:
    value = {"k" + EVIL: [EVIL, "Zürich", "\ud800", 1.5, None]}
    shown = json_view(value)
    assert EVIL_IN_JSON in shown
    assert "Zürich" in shown
    assert raw_controls(shown, PLAIN) == ""
    assert json.loads(shown) == value


# The dead-letter commands, run as an operator runs them, against this run's Redis.


@pytest.fixture
def evil_letters(broker_redis: redis.Redis, topic_prefix: str) -> dict[str, str]:
    """A message letter and a task letter with controls in every field that came from outside."""
    stream = DeadLetterStream(broker_redis, get_settings().key_prefix)
    message = stream.add(
        DeadLetter(
            Reason.INVALID_JSON,
            f"Expecting value near {EVIL}\nsecond line {EVIL}",
            topic=f"{topic_prefix}sensors/{EVIL}/reading",
            payload=f"{{not json {EVIL}\n{EVIL}".encode(),
            route="sensors",
            properties={"UserProperty": [["k" + EVIL, EVIL]], "ContentType": EVIL},
        )
    )
    json_payload = stream.add(
        DeadLetter(
            Reason.SCHEMA,
            "value: " + EVIL,
            topic=f"{topic_prefix}sensors/dev-1/reading",
            payload=json.dumps({"seq": 1, "value": EVIL, "lone": "\ud800"}).encode(),
            route="sensors",
        )
    )
    task = stream.add(
        DeadLetter(
            Reason.TASK_FAILED,
            f"ValueError: {EVIL}",
            route="sensors",
            task=FailedTask(
                name=f"tasks.{EVIL}",
                task_id=f"id-{EVIL}",
                queue=f"q{EVIL}",
                args=[EVIL],
                kwargs={"k": EVIL},
                exception=f"builtins.{EVIL}",
                traceback=f'Traceback:\n  File "{EVIL}"\nValueError: {EVIL}',
            ),
        )
    )
    return {"message": message, "json payload": json_payload, "task": task}


@pytest.mark.parametrize("mode", [PLAIN, TERMINAL], ids=["plain", "terminal"])
def test_deadletter_list_and_show_print_outside_controls_escaped_never_raw(
    evil_letters: dict[str, str], mode: dict[str, str]
) -> None:
    for columns in (80, 1000):  # one block per letter, and the table
        listed = taskhub("deadletter", "list", columns=columns, mode=mode)
        assert raw_controls(listed, mode) == "", f"deadletter list at {columns} columns"
    for kind, entry_id in evil_letters.items():
        shown = taskhub("deadletter", "show", entry_id, columns=120, mode=mode)
        assert raw_controls(shown, mode) == "", f"deadletter show ({kind})"
    # Shown, escaped: the topic, the details, the message payload, the task's name (wide: whole).
    assert SGR.sub("", listed).count(EVIL_SHOWN) >= 5, listed
    replayed = taskhub("deadletter", "replay", "--all", "--dry-run", columns=80, mode=mode)
    assert raw_controls(replayed, mode) == ""


def test_deadletter_show_keeps_the_lines_of_a_traceback_and_a_text_payload(
    evil_letters: dict[str, str],
) -> None:
    shown = taskhub("deadletter", "show", evil_letters["task"], columns=1000, mode=PLAIN)
    assert f'  File "{EVIL_SHOWN}"' in shown
    assert f"ValueError: {EVIL_SHOWN}" in shown
    payload = taskhub("deadletter", "show", evil_letters["message"], columns=1000, mode=PLAIN)
    assert f"{{not json {EVIL_SHOWN}" in payload
    assert f"second line {EVIL_SHOWN}" in payload
    assert f'"ContentType": "{EVIL_IN_JSON}"' in payload  # the properties, as JSON


def test_deadletter_list_json_stays_exact(evil_letters: dict[str, str]) -> None:
    listed = taskhub("deadletter", "list", "--json", columns=80, mode=PLAIN)
    letters = {}
    for line in listed.splitlines():
        fields = json.loads(line)
        entry_id = fields.pop("id")
        letters[entry_id] = DeadLetter.from_fields(entry_id, fields)
    message = letters[evil_letters["message"]]
    assert message.payload == f"{{not json {EVIL}\n{EVIL}".encode()
    assert message.topic.endswith(f"sensors/{EVIL}/reading")
    assert message.properties["ContentType"] == EVIL
    task = letters[evil_letters["task"]].task
    assert task is not None
    assert (task.name, task.args) == (f"tasks.{EVIL}", [EVIL])
    assert raw_controls(listed, PLAIN) == ""  # JSON escapes them itself


# taskhub status: names and fields written to Redis by bridges and workers, and reason counts.


def _record_beats(client: redis.Redis, worker: str, bridge: str, host: str, **odd: str) -> None:
    prefix = get_settings().key_prefix
    now = time.time()
    beat = WorkerBeat(
        hostname=worker,
        pid=41234,
        pool=odd.get("pool", "gevent"),
        queues=[odd.get("queue", "checkins"), "sensors"],
        pool_current=20,
        pool_min=2,
        pool_max=100,
        active=17,
        ready=True,
        progress_age=0.5,
        seen_at=now,
    )
    record_beat(client, prefix, "worker", worker, beat, 60)
    bridge_beat = BridgeBeat(
        client_id=bridge,
        hostname=host,
        pid=7,
        connected=True,
        subscribed=True,
        in_flight=1000,
        held=0,
        paused=odd.get("paused", "queues_full"),
        spool_depth=12345,
        leaving=False,
        seen_at=now,
    )
    record_beat(client, prefix, "bridge", bridge, bridge_beat, 60)


@pytest.mark.parametrize("mode", [PLAIN, TERMINAL], ids=["plain", "terminal"])
def test_status_prints_controls_from_beats_and_counts_escaped_never_raw(
    broker_redis: redis.Redis, mode: dict[str, str]
) -> None:
    _record_beats(
        broker_redis, f"celery@{EVIL}", f"bridge-{EVIL}", f"host{EVIL}",
        pool=EVIL, queue=EVIL, paused=EVIL,
    )  # fmt: skip
    stream = DeadLetterStream(broker_redis, get_settings().key_prefix)
    with broker_redis.pipeline() as pipe:
        count_letter(pipe, stream.key, EVIL)
        pipe.execute()
    for columns in (80, 1000):
        shown = taskhub("status", columns=columns, mode=mode)
        assert raw_controls(shown, mode) == "", f"status at {columns} columns"
    assert SGR.sub("", shown).count(EVIL_SHOWN) >= 6


def test_a_dead_letter_log_line_escapes_controls(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh limiter: earlier tests in this process may have used this window's lines.
    monkeypatch.setattr(
        deadletter_log, "_letters", deadletter_log.RateLimitedLog(deadletter_log.log)
    )
    task = FailedTask(name=EVIL, task_id=EVIL, queue="q", args=[], kwargs={})
    with caplog.at_level(logging.WARNING, logger="taskhub.deadletters"):
        deadletter_log.log_dead_letter(DeadLetter(Reason.UNKNOWN_TASK, EVIL, task=task), "1-0")
    (line,) = [record.getMessage() for record in caplog.records]
    assert raw_controls(line, PLAIN) == ""
    assert (
        line
        == f"dead-lettered as unknown_task: task {EVIL_SHOWN}[{EVIL_SHOWN}] entry 1-0: {EVIL_SHOWN}"
    )


# 80 columns.


def _words_whole(output: str, words: set[str]) -> set[str]:
    """The `words` that appear nowhere in `output` as a whole token of one line."""
    tokens = {token for line in output.splitlines() for token in re.split(r"[\s│┃]+", line)}
    return words - tokens


STATUS_HEADERS = (
    "queue depth waiting unacked oldest in/s out/s consumers "
    "bridge host connected in flight held paused spool seen "
    "worker pool size (min-max) active queues ready progress seen "
    "dead letters by reason last hour total"
)
LIST_HEADERS = "id received (UTC) reason topic / task detail payload"
ROUTES_HEADERS = "topic pattern task queue payload qos key"


def test_at_80_columns_every_header_word_and_every_id_stays_whole(
    broker_redis: redis.Redis, evil_letters: dict[str, str]
) -> None:
    workers = [f"celery@taskhub-worker-7d9f8b6c5-x2lq{n}" for n in range(2)]
    bridges = [f"taskhub-bridge-{n}" for n in range(2)]
    for worker, bridge in zip(workers, bridges, strict=True):
        _record_beats(broker_redis, worker, bridge, "taskhub-bridge-6c8d9f7b4-q8z2p")
    status = taskhub("status", columns=80, mode=PLAIN)
    listed = taskhub("deadletter", "list", columns=80, mode=PLAIN)
    routes = taskhub("routes", columns=80, mode=PLAIN)
    assert _words_whole(status, {*STATUS_HEADERS.split(), *workers, *bridges}) == set(), status
    assert _words_whole(listed, {*LIST_HEADERS.split(), *evil_letters.values()}) == set(), listed
    assert _words_whole(routes, {*ROUTES_HEADERS.split(), "tasks.sensors.record_reading"}) == set()
    for output in (status, listed, routes):
        assert max(len(line) for line in output.splitlines()) <= 80, output


# The layout rule, without a terminal.


def _rendered(table: FittedTable, width: int) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(table)
    return out.getvalue().splitlines()


def test_a_table_too_wide_for_the_terminal_becomes_one_labelled_block_per_row() -> None:
    fields = (Field("name", key=True), Field("count", number=True), Field("note", fold=True))
    table = FittedTable("things", fields)
    table.add_row("a-rather-long-name-of-a-thing-0001", "12345", "some words " * 10)
    assert table.table_width() == 69  # name, count whole; the note folded to 20; rules, padding
    assert _rendered(table, 69)[2].startswith("┃ name ")
    assert [line.rstrip() for line in _rendered(table, 68)] == [
        "things",
        "name",
        "a-rather-long-name-of-a-thing-0001",
        "  count  12345",
        "  note   some words some words some words some words some words some",
        "         words some words some words some words some words",
    ]
    for width in range(20, 140):
        assert max(len(line) for line in _rendered(table, width)) <= width, width


def test_deadletter_show_of_json_holding_a_lone_surrogate_does_not_crash(
    evil_letters: dict[str, str],
) -> None:
    # `{"lone": "\ud800"}` is valid JSON and valid UTF-8; decoded, it cannot be encoded again.
    shown = taskhub("deadletter", "show", evil_letters["json payload"], columns=120, mode=PLAIN)
    assert '"lone": "\\ud800"' in shown
