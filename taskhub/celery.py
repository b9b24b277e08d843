"""The Celery application, so that `celery -A taskhub worker` and `celery -A taskhub flower` work.

Its configuration lives in the top-level `celeryconfig` module, derived from taskhub's settings.
"""

from __future__ import annotations

from celery import Celery

from taskhub.settings import settings_or_exit

settings_or_exit()  # a bad setting ends the process here with one line, before Celery starts

app = Celery("taskhub")
app.config_from_object("celeryconfig")
