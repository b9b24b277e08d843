"""The Celery application, so that `celery -A taskhub worker` and `celery -A taskhub flower` work.

Its configuration lives in the top-level `celeryconfig` module, derived from taskhub's settings.
"""

from __future__ import annotations

import logging

import billiard.common
from celery import Celery
from celery.signals import worker_init

from taskhub.settings import settings_or_exit

settings_or_exit()  # a bad setting ends the process here with one line, before Celery starts

app = Celery("taskhub")
app.config_from_object("celeryconfig")

log = logging.getLogger("taskhub.worker")


@worker_init.connect
def _warn_unless_sigterm_requeues(**_: object) -> None:
    """SIGTERM should requeue in-flight tasks (soft shutdown), which needs REMAP_SIGTERM=SIGQUIT
    in the worker's environment before Celery starts; taskhub cannot set it from inside.
    """
    if billiard.common.REMAP_SIGTERM != "SIGQUIT":
        log.warning(
            "REMAP_SIGTERM is not SIGQUIT: SIGTERM will wait for running tasks instead of "
            "requeueing them after TASKHUB_TASKS__SOFT_SHUTDOWN_TIMEOUT; start the worker with "
            "REMAP_SIGTERM=SIGQUIT (the Procfile and docker-compose.yml do)"
        )
