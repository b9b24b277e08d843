"""The paho internals the bridge relies on are all listed, all present in the installed paho, and a
paho without one of them stops the import in one line that says what is missing and what to
install."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path
from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bridge import paho_internals
from bridge.paho_internals import PAHO_INTERNALS, missing_internals, require_paho_internals

ROOT = Path(__file__).resolve().parent.parent
PAHO_IMPORTERS = sorted(
    path
    for package in ("bridge", "taskhub")
    for path in (ROOT / package).rglob("*.py")
    if "paho" in path.read_text() and path.name != "paho_internals.py"
)
THE_CLIENT_ITSELF = "bulk_client.py"
"""The one module whose `self` is a paho client: there `self._x` is paho's when paho has `_x`."""


def _listed() -> set[str]:
    """PAHO_INTERNALS' entries as the bare names and `_in_packet` keys they check."""
    names = set()
    for entry in PAHO_INTERNALS:
        name, _, rest = entry.split(".")[-1].partition("[")
        names.add(name.split("(")[0])
        if rest:
            names.add(f"{name}[{rest.strip(']')}]")
    return names


def _is_in_packet_key(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "_in_packet"
        and isinstance(node.slice, ast.Constant)
    )


def _paho_internals_used(path: Path) -> set[str]:
    """Private names of paho's client, message or module that `path` reads or writes."""
    client, message = mqtt.Client(CallbackAPIVersion.VERSION2), mqtt.MQTTMessage()
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if _is_in_packet_key(node):
            found.add(f"_in_packet[{node.slice.value!r}]")  # type: ignore[attr-defined]
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        if node.attr.startswith("__"):
            continue
        on_self = isinstance(node.value, ast.Name) and node.value.id == "self"
        if on_self and path.name != THE_CLIENT_ITSELF:
            continue  # the module's own object, not a paho one
        if any(hasattr(owner, node.attr) for owner in (client, message, mqtt)):
            found.add(node.attr)
    return found


def test_the_installed_paho_has_every_internal_the_bridge_uses() -> None:
    assert missing_internals() == []
    require_paho_internals()


@pytest.mark.parametrize("path", PAHO_IMPORTERS, ids=lambda path: path.name)
def test_every_paho_internal_the_code_touches_is_listed(path: Path) -> None:
    unlisted = _paho_internals_used(path) - _listed()
    assert not unlisted, f"{path.name} uses paho internals missing from PAHO_INTERNALS: {unlisted}"


def test_the_bulk_client_is_among_the_modules_scanned() -> None:
    assert THE_CLIENT_ITSELF in {path.name for path in PAHO_IMPORTERS}
    assert "_send_puback" in _paho_internals_used(ROOT / "bridge" / THE_CLIENT_ITSELF)


def _client_without(name: str) -> type:
    """paho's Client as it would be if a release dropped or renamed `name`."""
    members = {key: value for key, value in vars(mqtt.Client).items() if key != name}
    return type("Client", (), members)


class _ClientWithoutMsgtimeMutex(mqtt.Client):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self._msgtime_mutex


class _ClientWithoutPacketPosition(mqtt.Client):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self._in_packet["pos"]  # type: ignore[misc]


class _ClientWithAnotherPacketQueue(mqtt.Client):
    def _packet_queue(self, command: int, packet: bytes) -> None:  # type: ignore[override]
        """As if a release folded mid and qos into the packet."""


class _MessageWithoutTopicBytes:
    """An MQTTMessage that keeps its topic under another name."""

    def __init__(self) -> None:
        self.raw_topic = b""


@pytest.mark.parametrize(
    ("client", "message", "missing"),
    [
        (_client_without("_send_puback"), mqtt.MQTTMessage, "Client._send_puback(mid)"),
        (_client_without("_packet_read"), mqtt.MQTTMessage, "Client._packet_read()"),
        (_ClientWithoutMsgtimeMutex, mqtt.MQTTMessage, "Client._msgtime_mutex"),
        (
            _ClientWithoutPacketPosition,
            mqtt.MQTTMessage,
            "Client._in_packet['pos']",
        ),
        (
            _ClientWithAnotherPacketQueue,
            mqtt.MQTTMessage,
            "Client._packet_queue(command, packet, mid, qos, info)",
        ),
        (mqtt.Client, _MessageWithoutTopicBytes, "MQTTMessage._topic"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_a_paho_without_an_internal_fails_the_import_in_one_line(
    monkeypatch: pytest.MonkeyPatch, client: type, message: type, missing: str
) -> None:
    monkeypatch.setattr(mqtt, "Client", client)
    monkeypatch.setattr(mqtt, "MQTTMessage", message)
    monkeypatch.setattr(paho.mqtt, "__version__", "2.9.0")

    with pytest.raises(ImportError) as raised:
        require_paho_internals()

    text = str(raised.value)
    assert "\n" not in text
    assert f"paho-mqtt 2.9.0 lacks or has changed: {missing};" in text
    assert f"proven on {paho_internals.supported_paho()}: install that" in text


def test_a_paho_without_its_clock_fails_the_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(mqtt, "time_func")
    with pytest.raises(ImportError) as raised:
        require_paho_internals()
    # Client() itself reads it: the instance attributes cannot be looked for, and it says so.
    assert "has changed: Client(CallbackAPIVersion.VERSION2) (raised NameError(" in str(
        raised.value
    )
    assert "), time_func;" in str(raised.value)


def test_the_message_names_the_pin_pyproject_sets() -> None:
    """The pin comes from taskhub's installed metadata, which pyproject.toml writes."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = next(line.split("#")[0].strip() for line in dependencies if line.startswith("paho"))
    installed = paho_internals.supported_paho()

    def specifiers(requirement: str) -> set[str]:
        return set(requirement.removeprefix("paho-mqtt").split(","))

    assert installed.startswith("paho-mqtt")
    assert specifiers(installed) == specifiers(pinned)
