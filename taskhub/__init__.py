"""taskhub: turn MQTT streams into reliable, scalable Celery work.

`celery -A taskhub` finds the app in `taskhub.celery`. Importing this package loads neither Celery
nor the settings, so a route table, or anything else that needs only `taskhub.routes`,
`taskhub.topics` or `taskhub.settings`, pays for neither. The bridge loads the app at start (it
checks the routes' tasks and builds task messages with it); the CLI, only for commands that
check routes.
"""

__version__ = "0.1.0"
