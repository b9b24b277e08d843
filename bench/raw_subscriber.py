"""The throughput benchmark's ceiling as a process of its own: a paho subscriber on its persistent
session that only counts and acks, driven by `loop_forever` on its main thread.

    python -m bench.raw_subscriber COUNT

Prints `raw received COUNT in SECONDS s` (first message to last) and exits.
"""

from __future__ import annotations

import sys
import time

import paho.mqtt.client as mqtt

from taskhub.mqtt import connect_arguments, new_client
from taskhub.settings import get_settings

DONE = "raw received"


def main() -> int:
    count = int(sys.argv[1])
    settings = get_settings().mqtt
    client = new_client(settings, settings.client_id, persistent=True)
    received = 0
    first = last = 0.0

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        nonlocal received, first, last
        last = time.monotonic()
        if not received:
            first = last
        received += 1
        if received == count:
            client.disconnect()

    client.on_message = on_message
    client.connect(**connect_arguments(settings, persistent=True))
    client.loop_forever()
    print(f"{DONE} {received} in {last - first:.6f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
