"""The benchmark worker app with kombu's BRPOP fetch instead of the atomic take (baseline of bench.fetch)."""

from bench.worker_app import app

app.conf.broker_transport = "bench.fetch:BrpopGuardedTransport"

__all__ = ["app"]
