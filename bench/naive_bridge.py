"""The naive bridge as a process of its own: paho's `on_message` calling Celery's `send_task`
once per message, auto ack. `python -m bench.naive_bridge FILTER TASK` runs until SIGTERM."""

from __future__ import annotations

import json
import signal
import sys
import threading

import paho.mqtt.client as mqtt

from taskhub.mqtt import connect_arguments, new_client
from taskhub.settings import get_settings

READY = "naive bridge subscribed"


def main() -> int:
    from taskhub.celery import app  # after the module loads: importing it reads the settings

    topic_filter, task = sys.argv[1], sys.argv[2]
    settings = get_settings().mqtt
    client = new_client(settings, settings.client_id, persistent=False)
    stop = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        source = message.topic.rsplit("/", 1)[-1]
        app.send_task(task, args=(json.loads(message.payload),), kwargs={"source": source})

    client.on_message = on_message
    client.on_connect = lambda client, *args: client.subscribe(topic_filter, qos=1)
    client.on_subscribe = lambda *args: print(READY, flush=True)
    signal.signal(signal.SIGTERM, lambda *args: stop.set())
    client.connect(**connect_arguments(settings, persistent=False))
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
