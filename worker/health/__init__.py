"""Health of a worker container, one job per module.

* ``files``: the heartbeat, ready, node and role files in ``WORKER_HEALTH_DIR`` (stdlib only).
* ``check``: the ``healthcheck`` command; reads those files, never imports Celery or talks to the broker.
* ``monitor``: the state of one worker process (starting, consuming, lost, stopping) and its beats.
* ``watchdog``: keeps beating while the broker is away, and gives up after ``WORKER_BROKER_LOST_EXIT_AFTER``.
* ``shutdown_bound``: turns a warm shutdown that outlasts ``CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT`` into a cold one.
* ``bootsteps``: the Celery bootsteps that wire the above into ``celery worker`` (``install_health_checks``).
* ``drain``: the preStop client: this node stops consuming and waits for its running tasks.

This file imports nothing, so that ``healthcheck`` stays cheap.
"""
