"""Delivery guarantees on the Redis broker (see docs/reliability.md, "Delivery").

* ``holdings``: which delivery tags this worker process holds (prefetched, waiting for an ETA, running).
* ``recovery``: publishes them under a liveness key, and gives back the unacknowledged messages of dead workers.
* ``handback``: on warm shutdown, stops fetching and requeues the tasks still waiting for their ETA.
* ``bootsteps``: runs the recovery thread and the hand-back in every ``celery worker``.
* ``fetch``: the Redis channel whose fetch pops a message and records it unacknowledged in one atomic script.
"""
