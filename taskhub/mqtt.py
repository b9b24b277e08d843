"""Building paho-mqtt 2.x clients from MqttSettings: protocol, TLS, credentials, session.

Shared by the bridge and the demo feed so both connect the same way.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from taskhub.settings import MqttProtocol, MqttSettings


def new_client(
    settings: MqttSettings,
    client_id: str,
    *,
    persistent: bool,
    manual_ack: bool = False,
    client_class: Callable[..., mqtt.Client] = mqtt.Client,
) -> mqtt.Client:
    """A client with callback API v2, credentials and TLS applied; not yet connected.

    `persistent` keeps the broker-side session (and its queued messages) across disconnects.
    `client_class` builds the client from paho's constructor arguments (the bridge's subclass).
    """
    v5 = settings.protocol is MqttProtocol.V5
    client = client_class(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else not persistent,
        manual_ack=manual_ack,
    )
    if settings.username is not None:
        password = settings.password.get_secret_value() if settings.password else None
        client.username_pw_set(settings.username, password)
    if settings.tls:
        client.tls_set(
            ca_certs=str(settings.tls_ca_file) if settings.tls_ca_file else None,
            certfile=str(settings.tls_cert_file) if settings.tls_cert_file else None,
            keyfile=str(settings.tls_key_file) if settings.tls_key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    client.reconnect_delay_set(
        min_delay=max(1, int(settings.reconnect_min_delay)),
        max_delay=max(1, int(settings.reconnect_max_delay)),
    )
    return client


def connect_properties(settings: MqttSettings) -> Properties | None:
    """MQTT 5 CONNECT properties for a persistent session with bounded in-flight messages."""
    if settings.protocol is not MqttProtocol.V5:
        return None
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = settings.session_expiry
    properties.ReceiveMaximum = settings.receive_maximum
    return properties


def session_ending_properties(settings: MqttSettings) -> Properties | None:
    """MQTT 5 DISCONNECT properties that end the session now (expiry 0). MQTT 3.1.1 has none:
    there the session, emptied of subscriptions, lapses with the broker's own expiry."""
    if settings.protocol is not MqttProtocol.V5:
        return None
    properties = Properties(PacketTypes.DISCONNECT)
    properties.SessionExpiryInterval = 0
    return properties


def connect_arguments(settings: MqttSettings, *, persistent: bool) -> dict[str, Any]:
    """Keyword arguments for paho's `connect` or `connect_async`.

    MQTT 5 asks for a persistent session with clean start off and a session expiry; MQTT 3.1.1
    asks for it in the client's constructor (see new_client).
    """
    v5 = settings.protocol is MqttProtocol.V5
    return {
        "host": settings.host,
        "port": settings.port,
        "keepalive": settings.keepalive,
        "clean_start": (not persistent) if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
        "properties": connect_properties(settings) if persistent else None,
    }


def reason_text(reason_code: object) -> str:
    """A readable reason from paho's ReasonCode (v5) or int (v3)."""
    return str(getattr(reason_code, "getName", lambda: reason_code)())
