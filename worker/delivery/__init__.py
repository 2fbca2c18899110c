"""Delivery guarantees on the Redis broker (see docs/reliability.md, "Delivery").

* ``holdings``: which delivery tags this worker process holds (prefetched, waiting for an ETA, running).
* ``recovery``: publishes them under a liveness key, and gives back the unacknowledged messages of dead workers.
* ``bootsteps``: runs the recovery thread in every ``celery worker``.
"""
