"""The naive bridge as a process of its own: paho's `on_message` calling Celery's `send_task`
once per message, auto ack, on paho's network thread.

    python -m bench.naive_bridge FILTER TASK KWARG SEGMENT [--persistent]

The task gets the decoded payload and `KWARG=` the topic's segment number SEGMENT (from 0; -1 is
the last). With `--persistent` it resumes the client id's session (and what the broker queued for
it). Runs until SIGTERM.
"""

from __future__ import annotations

import argparse
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

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("filter")
    parser.add_argument("task")
    parser.add_argument("kwarg")
    parser.add_argument("segment", type=int)
    parser.add_argument("--persistent", action="store_true")
    args = parser.parse_args()
    settings = get_settings().mqtt
    client = new_client(settings, settings.client_id, persistent=args.persistent)
    stop = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        value = message.topic.split("/")[args.segment]
        app.send_task(args.task, args=(json.loads(message.payload),), kwargs={args.kwarg: value})

    client.on_message = on_message
    client.on_connect = lambda client, *_: client.subscribe(args.filter, qos=1)
    client.on_subscribe = lambda *_: print(READY, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client.connect(**connect_arguments(settings, persistent=args.persistent))
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
