"""`python -m bench.tenancy`: the cost of tenancy, against bare Celery with the same settings, in one run.

Every worker is started the way the image starts it (`python -m worker worker`, the launcher that execs
`celery -A worker.app worker` with the argv of config/worker_command.py) at the image defaults (prefork,
concurrency 8, prefetch 1, late acks, ...), with `--include bench.tasks` added through CELERY_WORKER_OPTS. The
baseline is bench/bare.py: a plain Celery app with the product's Celery settings and the same worker argv.
Everything talks to a private redis-server started for this run (its command statistics see no other client).

1. throughput: no-op tasks, the product's BaseTask no-op with tenant headers against bare Celery's no-op. Both
   workers are started (and warmed up) for a session and stay up; batches run in ABBA order with only the batch's
   own worker consuming (the other's consumers are cancelled). Each batch is queued while its worker consumes
   nothing, then drained at the worker's own pace and timed by the results' own ``date_done`` stamps, so the
   producer is neither inside the timing nor competing for the CPU meanwhile; the CPU seconds of the worker's
   process tree and of Redis are counted per task too. Per-pair ratios of both, summarized by median, quartiles,
   min-max and a bootstrap 90 % interval of the median, over several sessions (fresh workers each).
2. redis_commands: `INFO commandstats` per task (producer and result reads included), after `CONFIG RESETSTAT`,
   for the product worker with the plain no-op and no headers, with the tenant no-op and headers, and bare Celery.
3. start_to_first_task: a task enqueued first, then the worker spawned; seconds from spawn to the task's result.
4. memory: RSS and PSS of the worker's whole process tree after the warm-up and at the end of each session.
5. flower: the product worker with Flower beside it (ENABLE_FLOWER=yes, as the image runs it: the worker sends
   task events, Flower's CPU counts in the tree) against without, the same way as 1.

Sizes: BENCH_TENANCY_TASKS (tasks per batch), BENCH_TENANCY_WARMUP, BENCH_TENANCY_ROUNDS (sessions for part 1),
BENCH_TENANCY_BATCHES (pairs of batches per session), BENCH_TENANCY_FLOWER_ROUNDS (sessions for part 5),
BENCH_TENANCY_STARTS (spawns per worker kind for part 3), BENCH_TENANCY_STATS_TASKS (tasks per part 2 batch),
BENCH_TENANCY_CONCURRENCY (instead of the image's concurrency, for both kinds). Results go to stdout and
bench/results/tenancy.json; nothing is asserted.
"""

from __future__ import annotations

import gc
import json
import os
import secrets
import statistics
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis
from celery import Celery

from bench.bare import NOOP, create_bare_app
from bench.common import (
    RESULTS_DIR,
    RUN_DIR,
    bench_environment,
    cpu_seconds,
    drain,
    drain_full_queue,
    env_int,
    migrated_database,
    product_client,
    pss_mb,
    rss_mb,
)
from bench.spread import pair_ratios, summarize
from config import Settings, load_settings
from config.worker_command import worker_argv
from tests.conftest import WorkerProcess, spawn_worker_process, wait_until_ready
from worker.dev.services import free_port, start_redis, stop_embedded_servers
from worker.launch.command import celery_environment

TASKS = env_int("BENCH_TENANCY_TASKS", 1000)
WARMUP = env_int("BENCH_TENANCY_WARMUP", 100)
SESSIONS = env_int("BENCH_TENANCY_ROUNDS", 3)
BATCHES = env_int("BENCH_TENANCY_BATCHES", 10)
FLOWER_SESSIONS = env_int("BENCH_TENANCY_FLOWER_ROUNDS", 2)
STARTS = env_int("BENCH_TENANCY_STARTS", 5)
STATS_TASKS = env_int("BENCH_TENANCY_STATS_TASKS", 500)
TENANT_HEADERS = {"organization_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4())}
PRODUCT_OPTS = {"CELERY_WORKER_OPTS": "--include bench.tasks"}


@dataclass(frozen=True)
class Kind:
    """One kind of worker: how to spawn it, and the producer and task that feed it."""

    name: str
    command: Callable[[dict[str, str]], tuple[list[str], dict[str, str]]]
    client: Celery
    task: str
    headers: dict[str, str] | None = None
    env: dict[str, str] | None = None


def launcher_command(env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """What entrypoint.sh runs for `worker`: the launcher, which validates, logs and execs celery."""
    return [sys.executable, "-m", "worker", "worker"], env


def celery_command(app: str) -> Callable[[dict[str, str]], tuple[list[str], dict[str, str]]]:
    """`celery -A app` with the launcher's own worker argv and environment for ``env`` (settings cannot drift)."""
    def command(env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        argv = worker_argv(load_settings(environ=env))[3:]
        return [sys.executable, "-m", "celery", "-A", app, *argv], celery_environment(env)
    return command


def spawn(kind: Kind, base_env: dict[str, str]) -> WorkerProcess:
    node = f"bench-{kind.name}-{secrets.token_hex(3)}@localhost"
    env = {**base_env, **(kind.env or {}), "CELERY_WORKER_HOSTNAME": node,
           "WORKER_HEALTH_DIR": str(RUN_DIR / "health" / node)}
    argv, env = kind.command(env)
    RUN_DIR.mkdir(parents=True, exist_ok=True)  # a fresh clone has no .run yet (tests call this without main())
    return spawn_worker_process(argv, node, env, RUN_DIR)


def started(kind: Kind, base_env: dict[str, str]) -> WorkerProcess:
    worker = spawn(kind, base_env)
    wait_until_ready(worker, kind.client, timeout=120)
    if kind.env and kind.env.get("ENABLE_FLOWER") == "yes":
        wait_for_flower(int(kind.env["FLOWER_PORT"]))
    return worker


def wait_for_flower(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"Flower did not answer on port {port} within {timeout}s")


def session(candidate: Kind, baseline: Kind, batches: int, base_env: dict[str, str], redis_pid: int,
            queues: list[str]) -> tuple[list[dict], list[dict]]:
    """Both kinds' workers started fresh and warmed up, then ``batches`` pairs of batches in ABBA order, only one
    worker consuming at a time: short batches close together, so that a change in the machine's load hits both
    kinds alike. Each batch: TASKS queued while its worker consumed nothing, then drained at the worker's own pace
    (bench.common.drain_full_queue), with the CPU seconds of the worker tree and of Redis per task."""
    workers: dict[str, WorkerProcess] = {}
    rounds: dict[str, list[dict]] = {candidate.name: [], baseline.name: []}
    try:
        for kind in (candidate, baseline):  # one at a time: both consume the same queues
            workers[kind.name] = started(kind, base_env)
            drain(kind.client, kind.task, WARMUP, kind.headers)
            consuming(kind.client, workers[kind.name].node, queues, on=False)
        warm = {name: {"rss_warm_mb": rss_mb(w.proc.pid), "pss_warm_mb": pss_mb(w.proc.pid)}
                for name, w in workers.items()}
        for pair in range(batches):
            for kind in (candidate, baseline) if pair % 2 == 0 else (baseline, candidate):
                worker = workers[kind.name]
                batch = drain_full_queue(
                    kind.client, kind.task, TASKS, kind.headers,
                    resume=lambda kind=kind, worker=worker: consuming(kind.client, worker.node, queues, on=True),
                    pause=lambda kind=kind, worker=worker: consuming(kind.client, worker.node, queues, on=False),
                    cpu_seconds=lambda worker=worker: cpu_seconds(worker.proc.pid) + cpu_seconds(redis_pid, tree=False))
                rounds[kind.name].append({"tasks_per_s": batch.tasks_per_s,
                                          "cpu_ms_per_task": batch.cpu_s_per_task * 1e3,
                                          "longest_gap_s": batch.longest_gap_s})
        for name, worker in workers.items():
            rounds[name][-1].update(warm[name], rss_after_mb=rss_mb(worker.proc.pid),
                                    pss_after_mb=pss_mb(worker.proc.pid))
    finally:
        for worker in workers.values():
            worker.stop()
    return rounds[candidate.name], rounds[baseline.name]


def interleaved(candidate: Kind, baseline: Kind, sessions: int, base_env: dict[str, str], redis_pid: int,
                queues: list[str]) -> tuple[list[dict], list[dict]]:
    """``sessions`` fresh pairs of workers (a worker's own luck, such as its memory layout, varies between
    starts), BATCHES pairs of batches each."""
    a, b = [], []
    for _ in range(sessions):
        rounds_a, rounds_b = session(candidate, baseline, BATCHES, base_env, redis_pid, queues)
        a += rounds_a
        b += rounds_b
    return a, b


def compared(candidate: list[dict], baseline: list[dict], names: tuple[str, str]) -> dict:
    summary = {}
    for measure, key in (("tasks_per_s", "over"), ("cpu_ms_per_task", "cpu_per_task_over")):
        values = {name: [r[measure] for r in rounds] for name, rounds in zip(names, (candidate, baseline),
                                                                             strict=True)}
        summary |= {f"{name}_{measure}": [round(v, 3) for v in vals] for name, vals in values.items()}
        summary[f"{names[0]}_{key}_{names[1]}"] = summarize(pair_ratios(*values.values()))
    return summary


def memory(rounds: list[dict]) -> dict[str, float]:
    """Medians over the sessions; RSS counts pages shared by the forked pool once per process, PSS once in all."""
    rounds = [r for r in rounds if "rss_warm_mb" in r]
    return {f"{size}_{when}_mb": round(statistics.median(r[f"{size}_{key}_mb"] for r in rounds), 1)
            for size in ("rss", "pss") for key, when in (("warm", "after_warmup"), ("after", "after_tasks"))}


def per_task(server: redis.Redis, tasks: int) -> dict[str, float]:
    """Commands per task since the last CONFIG RESETSTAT (every client of the private server counts but this
    benchmark's own CONFIG and INFO)."""
    stats = server.info("commandstats")
    return {name.removeprefix("cmdstat_"): round(entry["calls"] / tasks, 2) for name, entry in sorted(stats.items())
            if name not in ("cmdstat_config|resetstat", "cmdstat_info")}


def consuming(app: Celery, node: str, queues: list[str], on: bool) -> None:
    """Let the worker ``node`` consume ``queues`` again, or stop it consuming them (waits for its replies)."""
    control = app.control
    for queue in queues:
        (control.add_consumer if on else control.cancel_consumer)(queue, destination=[node], reply=True)


def command_batch(kind: Kind, worker: WorkerProcess, server: redis.Redis, task: str, headers: dict | None,
                  queues: list[str], tasks: int) -> dict[str, dict[str, float]]:
    """Publishing ``tasks`` tasks while the worker consumes nothing, then consuming them from a full queue: so
    that neither phase counts the idle polls of a worker that drained faster than the producer published."""
    consuming(kind.client, worker.node, queues, on=False)
    gc.collect()  # results of earlier batches unsubscribe when collected: not inside this one
    server.config_resetstat()
    results = [kind.client.tasks[task].apply_async(headers=headers) for _ in range(tasks)]
    publish = per_task(server, tasks)
    server.config_resetstat()
    consuming(kind.client, worker.node, queues, on=True)
    for result in results:
        result.get(timeout=300)
    del results
    gc.collect()
    return {"publish": publish, "consume": per_task(server, tasks)}


def redis_commands(product: Kind, bare: Kind, server: redis.Redis, base_env: dict[str, str], queues: list[str],
                   tasks: int = STATS_TASKS, warmup: int = WARMUP) -> dict:
    counts = {}
    worker = started(product, base_env)
    try:
        drain(product.client, "bench.noop_plain", warmup)
        drain(product.client, product.task, warmup, product.headers)
        counts["product_plain_no_headers"] = command_batch(product, worker, server, "bench.noop_plain", None, queues,
                                                           tasks)
        counts["product_tenant_headers"] = command_batch(product, worker, server, product.task, product.headers,
                                                         queues, tasks)
    finally:
        worker.stop()
    worker = started(bare, base_env)
    try:
        drain(bare.client, bare.task, warmup)
        counts["bare_celery"] = command_batch(bare, worker, server, bare.task, None, queues, tasks)
    finally:
        worker.stop()
    a, b, c = counts.values()
    counts["tenant_minus_plain"] = {phase: differences(b[phase], a[phase]) for phase in b}
    counts["tenant_minus_bare"] = {phase: differences(b[phase], c[phase]) for phase in b}
    return counts


def differences(candidate: dict[str, float], baseline: dict[str, float]) -> dict[str, float]:
    names = sorted(set(candidate) | set(baseline))
    return {name: round(candidate.get(name, 0) - baseline.get(name, 0), 2) for name in names
            if round(candidate.get(name, 0) - baseline.get(name, 0), 2)}


def first_task_seconds(kind: Kind, base_env: dict[str, str]) -> float:
    """From spawning the worker to the result of a task enqueued before it."""
    result = kind.client.tasks[kind.task].apply_async(headers=kind.headers)
    begun = time.perf_counter()
    worker = spawn(kind, base_env)
    try:
        result.get(timeout=120)
        return time.perf_counter() - begun
    finally:
        worker.stop()


def start_times(kinds: list[Kind], base_env: dict[str, str]) -> dict:
    seconds: dict[str, list[float]] = {kind.name: [] for kind in kinds}
    for run in range(STARTS):
        for kind in kinds if run % 2 == 0 else reversed(kinds):
            seconds[kind.name].append(first_task_seconds(kind, base_env))
    return {name: {"median_s": round(statistics.median(runs), 2), "runs_s": [round(s, 2) for s in runs]}
            for name, runs in seconds.items()}


def machine_state() -> dict:
    return {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]}


def worker_environment(env: dict[str, str], concurrency: str | None = None) -> dict[str, str]:
    """``env`` plus this interpreter's bin directory on PATH: the launcher execs ``celery`` found there."""
    return {**env, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}",
            **({"CELERY_WORKER_CONCURRENCY": concurrency} if concurrency else {})}


def worker_kinds(product_app: Celery, bare_app: Celery) -> dict[str, Kind]:
    return {
        "product": Kind("product", launcher_command, product_app, "bench.noop_tenant", TENANT_HEADERS, PRODUCT_OPTS),
        "bare": Kind("bare", celery_command("bench.bare_app"), bare_app, NOOP),
        "direct": Kind("product_without_launcher", celery_command("worker.app"), product_app, "bench.noop_tenant",
                       TENANT_HEADERS, PRODUCT_OPTS),
        "flower": Kind("flower", launcher_command, product_app, "bench.noop_tenant", TENANT_HEADERS,
                       {**PRODUCT_OPTS, "ENABLE_FLOWER": "yes", "FLOWER_UNAUTHENTICATED": "yes",
                        "FLOWER_PORT": str(free_port())}),
    }


@dataclass(frozen=True)
class PrivateBench:
    """What one benchmark run works with: its own Redis, a fresh database, the workers' environment and kinds."""

    redis_url: str
    redis_pid: int
    base_env: dict[str, str]
    settings: Settings
    kinds: dict[str, Kind]


@contextmanager
def private_bench() -> Iterator[PrivateBench]:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    redis_url, redis_proc = start_redis(RUN_DIR)
    try:
        with migrated_database() as db:
            base_env = worker_environment(bench_environment(db, redis_url),
                                          os.environ.get("BENCH_TENANCY_CONCURRENCY"))
            settings = load_settings(environ=base_env)
            product_app = product_client(base_env)
            bare_app = create_bare_app(settings, main="bench-bare-client")
            try:
                yield PrivateBench(redis_url, redis_proc.pid, base_env, settings, worker_kinds(product_app, bare_app))
            finally:
                gc.collect()  # pending results unsubscribe when collected: while their Redis still runs
                product_app.close()
                bare_app.close()
    finally:
        stop_embedded_servers()


def run_all(bench: PrivateBench, server: redis.Redis) -> dict:
    base_env, settings, kinds, redis_pid = bench.base_env, bench.settings, bench.kinds, bench.redis_pid
    product, bare, direct, flower = kinds["product"], kinds["bare"], kinds["direct"], kinds["flower"]
    queues = settings.celery_worker_queues
    results: dict = {"settings": {"argv": worker_argv(settings)[3:], "tasks_per_batch": TASKS, "warmup": WARMUP,
                                  "sessions": SESSIONS, "batch_pairs_per_session": BATCHES,
                                  "flower_sessions": FLOWER_SESSIONS, "starts": STARTS,
                                  "stats_tasks": STATS_TASKS},
                     "machine_before": machine_state()}
    product_rounds, bare_rounds = interleaved(product, bare, SESSIONS, base_env, redis_pid, queues)
    results["throughput"] = compared(product_rounds, bare_rounds, ("product", "bare"))
    results["memory"] = {"product": memory(product_rounds), "bare": memory(bare_rounds),
                         "tasks_after_warmup": TASKS}
    results["redis_commands_per_task"] = redis_commands(product, bare, server, base_env, queues)
    results["start_to_first_task"] = start_times([product, direct, bare], base_env)
    with_flower, without = interleaved(flower, product, FLOWER_SESSIONS, base_env, redis_pid, queues)
    results["flower"] = compared(with_flower, without, ("with_flower", "without_flower"))
    results["machine_after"] = machine_state()
    return results


def compare_in_sessions(choose: Callable[[dict[str, Kind]], tuple[Kind, Kind]], names: tuple[str, str],
                        sessions: int = SESSIONS) -> dict:
    """Another pair of worker kinds (``choose`` picks them from worker_kinds()) measured like part 1, on a private
    Redis and a fresh database: bench.metrics and bench.fetch."""
    with private_bench() as bench:
        candidate, baseline = choose(bench.kinds)
        rounds = interleaved(candidate, baseline, sessions, bench.base_env, bench.redis_pid,
                             bench.settings.celery_worker_queues)
    return {"settings": {"sessions": sessions, "batch_pairs_per_session": BATCHES, "tasks_per_batch": TASKS},
            "machine": machine_state(), **compared(*rounds, names),
            "memory": {names[0]: memory(rounds[0]), names[1]: memory(rounds[1])}}


def main() -> int:
    with private_bench() as bench:
        server = redis.Redis.from_url(bench.redis_url)
        try:
            results = run_all(bench, server)
        finally:
            server.close()
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "tenancy.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
