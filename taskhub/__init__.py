"""taskhub: turn MQTT streams into reliable, scalable Celery work.

`celery -A taskhub` finds the app in `taskhub.celery`; this package's import stays light so the
bridge and the CLI do not pay for Celery unless they use it.
"""

__version__ = "0.1.0"
