"""Cost of signed tenants (TENANT_SIGNING_KEY): ``python -m bench.signing``.

Two measurements, each against a baseline of the same run:

- sign and verify alone, per message, for a typical task message (tenant headers, a 200-byte body);
- publishing ``send_task`` to a real Redis (BROKER_URL, default the local one; a private key prefix, deleted
  afterwards) with and without a key, which is what every producer and every retry or child pays.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import timeit
import uuid

import redis

from config import load_settings
from worker.tenant.signing import SIGNATURE_HEADER, TenantSigner

KEY = secrets.token_urlsafe(48)
ORG, USER = str(uuid.uuid4()), str(uuid.uuid4())


def per_call_us(func, number: int) -> float:  # type: ignore[no-untyped-def]
    return min(timeit.repeat(func, number=number, repeat=5)) / number * 1e6


def sign_and_verify(number: int = 20000) -> dict[str, float]:
    signer = TenantSigner([KEY, secrets.token_urlsafe(48)])
    headers = {"id": str(uuid.uuid4()), "task": "rhesis.backend.tasks.execution.run", "organization_id": ORG,
               "user_id": USER}
    body = json.dumps([["x" * 150], {"test_set_id": str(uuid.uuid4())}, {}]).encode()
    signed = {**headers, SIGNATURE_HEADER: signer.sign(headers, body)}
    assert signer.problem(signed, body) is None
    return {"sign_us": per_call_us(lambda: signer.sign(headers, body), number),
            "verify_us": per_call_us(lambda: signer.problem(signed, body), number)}


def publish_rate(key: str | None, prefix: str, number: int) -> float:
    from worker.app import create_app

    environ = {**os.environ, "REDIS_KEY_PREFIX": prefix, "ENV_FILE": "/nonexistent/.env"}
    environ.pop("TENANT_SIGNING_KEY", None)
    if key:
        environ["TENANT_SIGNING_KEY"] = key
    app = create_app(load_settings(environ=environ, scopes=("app",)), main=f"bench-signing-{bool(key)}")
    headers = {"organization_id": ORG, "user_id": USER}
    try:
        for _ in range(50):  # warm-up: connection, queue declaration
            app.send_task("bench.noop", headers=headers, ignore_result=True)
        started = time.perf_counter()
        for _ in range(number):
            app.send_task("bench.noop", headers=headers, ignore_result=True)
        return number / (time.perf_counter() - started)
    finally:
        app.close()


def main() -> int:
    results: dict[str, float] = sign_and_verify()
    prefix = f"bench-signing-{secrets.token_hex(4)}:"
    number = int(os.environ.get("BENCH_TASKS", "3000"))
    try:
        for round_ in (1, 2):
            results[f"publish_per_s_unsigned_{round_}"] = publish_rate(None, prefix, number)
            results[f"publish_per_s_signed_{round_}"] = publish_rate(KEY, prefix, number)
    finally:
        client = redis.Redis.from_url(os.environ.get("BROKER_URL", "redis://localhost:6379/0"))
        for name in client.scan_iter(f"{prefix}*"):
            client.delete(name)
        client.close()
    unsigned = max(v for k, v in results.items() if "unsigned" in k)
    signed = max(v for k, v in results.items() if "_signed_" in k)
    results["publish_ratio_signed_vs_unsigned"] = signed / unsigned
    for name, value in results.items():
        print(f"{name}: {value:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
