"""The parts of paho-mqtt that are not its public API but the bridge's fast receive path relies on,
each with the reason, and the check that they are all still there, run when the bridge imports.

paho may rename or reshape any of them in a release. Without this check the bridge would import
fine and then fail mid-stream (an AttributeError on the first ack), or worse, keep running with an
override paho no longer calls. With it, a drifted paho stops the bridge at start in one line that
names what changed and the versions it is proven on.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re
from collections.abc import Callable

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

PAHO_INTERNALS: dict[str, str] = {
    # Methods, with the parameters paho gives them: ours pass these, or (overrides) take them.
    "Client._packet_read()": "overridden: paho's loop_read calls it per packet; ours decodes "
    "QoS 0/1 PUBLISH packets from a buffer filled by one large recv",
    "Client._sock_close()": "overridden: paho calls it whenever the connection ends; ours also "
    "drops the buffered bytes and unsent acks that belong to that connection",
    "Client._sock_recv(bufsize)": "reads the socket, TLS included (a TLS want-read comes back as "
    "BlockingIOError)",
    "Client._loop_rc_handle(rc)": "after a read error: closes the connection and calls "
    "on_disconnect, as paho's loop_read does",
    "Client._packet_handle()": "paho's own handler for every packet but a QoS 0/1 PUBLISH",
    "Client._send_puback(mid)": "acks a QoS 1 message at once when manual_ack is off",
    "Client._packet_queue(command, packet, mid, qos, info)": "queues a batch's PUBACKs as one "
    "write (info left to its default)",
    "Client._send_pingreq()": "ping(): the PINGREQ whose answer proves the broker read our acks",
    "Client._easy_log(level, fmt, *args)": "logs a receive error the way paho logs its own",
    # What _packet_handle reads the packet it handles from.
    "Client._in_packet['command']": "the packet's first byte, for _packet_handle",
    "Client._in_packet['packet']": "the packet's body, for _packet_handle",
    "Client._in_packet['pos']": "where paho's decoders start reading the body",
    "Client._in_packet['remaining_length']": "the body's length: a PINGREQ or PINGRESP has none",
    # State shared with paho's keepalive and connection handling.
    "Client._sock": "the connection's socket, None once it is closed",
    "Client._manual_ack": "whether a QoS 1 PUBLISH is acked at once or through ack()",
    "Client._last_bytes_received": "when bytes last arrived: paho's keepalive (loop_misc) reads it",
    "Client._msgtime_mutex": "the lock paho holds around _last_bytes_received",
    "Client._ping_t": "when the last PINGREQ left, 0 once its PINGRESP is in: ping_answered()",
    "time_func": "paho's clock (paho.mqtt.client.time_func), what _last_bytes_received is kept in",
    # bridge/source.py
    "MQTTMessage._topic": "a QoS 2 message's topic bytes: `.topic` raises when they are not UTF-8",
}
"""Every paho-mqtt internal taskhub touches -> why it needs it. `tests/test_bulk_client.py`
proves the receive path that uses them equal to paho's own, against a real broker."""

_ENTRY = re.compile(
    r"(?:(?P<owner>Client|MQTTMessage)\.)?(?P<name>\w+)"
    r"(?:\((?P<parameters>[^)]*)\)|\['(?P<key>\w+)'\])?"
)


def _parameters(function: Callable[..., object]) -> tuple[str, ...]:
    """A method's parameter names after `self`, with `*`/`**` for the catch-alls."""
    found = list(inspect.signature(function).parameters.values())[1:]
    return tuple(_STARS.get(str(p.kind), "") + p.name for p in found)


_STARS = {"VAR_POSITIONAL": "*", "VAR_KEYWORD": "**"}


def _present(entry: str, client: object, message: object) -> bool | None:
    """Whether paho has `entry`; None when it is an instance's and there is no instance."""
    match = _ENTRY.fullmatch(entry)
    if match is None:
        raise ValueError(f"PAHO_INTERNALS entry {entry!r} is not in a form the check can read")
    owner, name = match["owner"], match["name"]
    if owner is None:
        return hasattr(mqtt, name)
    if match["parameters"] is not None:  # a method: look it up on the class, not the instance
        method = getattr(mqtt.Client if owner == "Client" else mqtt.MQTTMessage, name, None)
        wanted = tuple(part.strip() for part in match["parameters"].split(",") if part.strip())
        return callable(method) and _parameters(method) == wanted
    instance = client if owner == "Client" else message
    if instance is None:
        return None
    if match["key"] is not None:
        value = getattr(instance, name, None)
        return isinstance(value, dict) and match["key"] in value
    return hasattr(instance, name)


def _built(call: str, build: Callable[[], object], missing: list[str]) -> object:
    """An instance to look for instance attributes on, or None (and why, in `missing`)."""
    try:
        return build()
    except Exception as error:  # a constructor that changed
        missing.append(f"{call} (raised {error!r})")
        return None


def missing_internals() -> list[str]:
    """The PAHO_INTERNALS entries the installed paho lacks, or has with other parameters.

    Reads `paho.mqtt.client.Client` and `MQTTMessage` when called; instance attributes are looked
    for on a fresh client, which opens no socket.
    """
    missing: list[str] = []
    client = _built(
        "Client(CallbackAPIVersion.VERSION2)",
        lambda: mqtt.Client(CallbackAPIVersion.VERSION2),
        missing,
    )
    message = _built("MQTTMessage()", mqtt.MQTTMessage, missing)
    missing += [entry for entry in PAHO_INTERNALS if _present(entry, client, message) is False]
    return missing


def supported_paho() -> str:
    """The paho-mqtt requirement taskhub is installed with (pyproject.toml's pin)."""
    try:
        requirements = importlib.metadata.requires("taskhub") or []
    except importlib.metadata.PackageNotFoundError:
        requirements = []
    for requirement in requirements:
        if re.match(r"paho[-_.]mqtt\b", requirement, re.IGNORECASE):
            return requirement
    return "the paho-mqtt pin in taskhub's pyproject.toml"


def require_paho_internals() -> None:
    """Raise ImportError, in one line, unless the installed paho has every PAHO_INTERNALS entry."""
    missing = missing_internals()
    if missing:
        version = getattr(paho.mqtt, "__version__", "of unknown version")
        raise ImportError(
            f"the bridge's MQTT receive path needs paho-mqtt internals that the installed "
            f"paho-mqtt {version} lacks or has changed: {', '.join(missing)}; taskhub is proven "
            f"on {supported_paho()}: install that (bridge/paho_internals.py says what each is for)"
        )
