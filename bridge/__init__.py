"""The MQTT -> Celery bridge: subscribe, match a route, validate, enqueue, and only then ack."""
