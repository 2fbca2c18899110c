"""Every command in README.md and docs/*.md runs here as written, so the docs cannot drift from the product.

How blocks are marked: tests/support/doc_blocks.py. What stands in for docker, helm, kubectl and make on a
machine without a cluster or a docker daemon: tests/support/doc_run.py.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, WorkerProcess, detect_engine, start_worker_process
from tests.support.doc_blocks import Block, all_blocks, doc_files
from tests.support.doc_run import clean_environment, make_shims, run_python, run_shell, start_shell, uses
from tests.support.http import http_status
from worker.dev.services import free_port

BLOCKS, PARSE_PROBLEMS = all_blocks()
RUNNABLE = [block for block in BLOCKS if block.marker and block.marker.mode in ("run", "dry-run")]
TIMEOUT = 240

# Blocks known to be wrong, each with the reason; strict, so the test fails once the block works and the
# entry has to go. Keyed by (file, heading) so an edit of the block's text keeps the entry.
KNOWN_BROKEN: dict[tuple[str, str], str] = {}


def test_every_command_block_is_marked_run_or_skip_with_a_reason() -> None:
    assert not PARSE_PROBLEMS, "\n".join(PARSE_PROBLEMS)
    assert RUNNABLE, "no runnable blocks found: the parser is broken"


def test_docs_stand_on_their_own_without_the_engineering_notes() -> None:
    """Readers of the repository do not have the team's NOTES file; the chart's NOTES.txt is fine."""
    citations = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
                 for path in doc_files()
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"\bNOTES\b(?!\.txt)", line)]
    assert not citations, "\n".join(citations)


# -- fixtures ----------------------------------------------------------------------------------------------

def _fetch_tools():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("fetch_tools", ROOT / "scripts" / "fetch_tools.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def kube_tools() -> dict[str, Path]:
    tools = _fetch_tools()
    try:
        helm = tools.ensure_helm()
        kubectl = tools.TOOLS_BIN / "kubectl"
        if not kubectl.is_file():
            on_path = shutil.which("kubectl")
            kubectl = Path(on_path) if on_path else tools.fetch(("kubectl",))["kubectl"]
    except tools.FetchError as exc:
        pytest.skip(f"helm/kubectl not available and fetching them failed: {exc}")
    return {"helm": Path(helm), "kubectl": Path(kubectl)}


@pytest.fixture(scope="module")
def docs_worker(session_env: dict[str, str], run_dir: Path, client_app) -> Iterator[WorkerProcess]:  # type: ignore[no-untyped-def]
    worker = start_worker_process(session_env, run_dir, app="tests.support.docs_worker_app", ping_app=client_app)
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def docs_api(session_env: dict[str, str], run_dir: Path, client_app, migrated_database) -> Iterator[dict[str, str]]:  # type: ignore[no-untyped-def]
    """What `. .run/api.env` gives a shell beside `make run`: the API's URL, a user's token and a configuration of
    that user's organization, here against a worker, the API service and an endpoint server of the test."""
    from tests.support.api_client import start_api_process
    from tests.support.endpoint_server import EndpointServer
    from tests.support.execution_data import ExecutionData
    from tests.support.secret_watch import register_secret
    from worker.api.tokens import mint

    key = secrets.token_hex(32)
    register_secret("API_TOKEN_SECRET of the docs tests", key)
    env = {**session_env, "EXECUTION_ALLOW_PRIVATE_TARGETS": "yes", "API_TOKEN_SECRET": key}
    data = ExecutionData(migrated_database.owner_url)
    with EndpointServer() as endpoint:
        configuration = data.configuration(endpoint.url + "/chat", 3)
        worker = start_worker_process(env, run_dir, ping_app=client_app)
        api = start_api_process(env, run_dir, free_port())
        try:
            yield {"API_URL": api.url, "API_TOKEN": mint((key,), configuration.organization_id, configuration.user_id),
                   "CONFIGURATION_ID": configuration.configuration_id}
        finally:
            api.stop()
            worker.stop()
            data.close()


def _shims(request: pytest.FixtureRequest, block: Block, tmp_path: Path, run_options: tuple[str, ...] = ()) -> Path:
    engine = None
    if uses(block.code, "docker"):
        engine = detect_engine()
        if engine is None:
            pytest.skip("the block needs docker or podman; neither is available here")
    tools = request.getfixturevalue("kube_tools") if uses(block.code, "helm") or uses(block.code, "kubectl") else {}
    return make_shims(tmp_path / "shims", engine=engine, run_options=run_options, helm=tools.get("helm"),
                      kubectl=tools.get("kubectl"), make_dry_run=block.marker.mode == "dry-run")


# -- every runnable block ------------------------------------------------------------------------------------

@pytest.mark.parametrize("block", RUNNABLE, ids=[block.where for block in RUNNABLE])
def test_documented_block_runs_as_written(block: Block, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    broken = KNOWN_BROKEN.get((block.path.name, block.heading))
    if broken:
        request.applymarker(pytest.mark.xfail(strict=True, reason=broken))
    if block.is_shell and block.option("needs") == "secrets":
        run_container_block(block, request, tmp_path)
    elif block.is_shell:
        extra: dict[str, str] = {}
        if block.option("needs") == "api":
            extra = request.getfixturevalue("docs_api")
        elif block.option("needs") == "worker":
            # The on-call commands (docs/troubleshooting.md) read the deployment's settings: this session's.
            request.getfixturevalue("docs_worker")
            extra = request.getfixturevalue("session_env")
        status, output = run_shell(block.code, ROOT, clean_environment(_shims(request, block, tmp_path), extra),
                                   tmp_path / "block.log", TIMEOUT)
        assert status == 0, f"{block.where} failed ({status}):\n{block.code}\n---\n{output[-4000:]}"
    else:
        run_python_block(block, request, tmp_path)


def run_python_block(block: Block, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    env = request.getfixturevalue("session_env")
    if block.option("needs") == "worker":
        request.getfixturevalue("docs_worker")
    # Names the block takes from its context (the tenant a caller works for): fresh ids, real types.
    given = {name: str(uuid.uuid4()) for name in block.option("given").split(",") if name}
    status, output = run_python(block.code, clean_environment(tmp_path, env), tmp_path, given, TIMEOUT)
    assert status == 0, f"{block.where} failed ({status}):\n{block.code}\n---\n{output[-4000:]}"


# -- the README's docker run, against a TLS Redis and PostgreSQL made for it -----------------------------------

def _write_secret(path: Path, content: str | bytes) -> None:
    """Like a user with umask 077 would: readable by the owner (here root) only, not by the container's user."""
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(0o600)


def run_container_block(block: Block, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Start the block's ``docker run`` from a directory with ``secrets/``, use the worker and Flower, stop it."""
    from config import load_settings
    from tests.support.tls import make_pki, start_tls_redis_or_skip
    from worker.app import create_app

    request.getfixturevalue("image")  # built once per session by tests/conftest.py
    engine = request.getfixturevalue("engine")
    run_dir, db = request.getfixturevalue("run_dir"), request.getfixturevalue("migrated_database")
    pki = make_pki(tmp_path / "pki")
    redis_url, redis_proc = start_tls_redis_or_skip(run_dir, pki)
    flower_port, name, flower_auth = free_port(), f"doctest-{secrets.token_hex(4)}", "ops:doc-test"
    secrets_dir = tmp_path / "work" / "secrets"
    secrets_dir.mkdir(parents=True)
    secrets_dir.chmod(0o700)
    for file_name, content in {"broker-url": f"{redis_url}/0", "result-backend-url": f"{redis_url}/1",
                               "database-url": db.runtime_url, "flower-auth": flower_auth,
                               "redis-ca.pem": pki.ca_cert.read_bytes()}.items():
        _write_secret(secrets_dir / file_name, content)
    # Host network: the container reaches the test's services on loopback. Its own name, to stop it; a free port
    # for Flower instead of 5555, which may be taken on a shared machine.
    shims = _shims(request, block, tmp_path, run_options=("--network", "host", "--name", name,
                                                         "-e", f"FLOWER_PORT={flower_port}"))
    client = create_app(load_settings(environ={
        "BROKER_URL": f"{redis_url}/0", "CELERY_RESULT_BACKEND": f"{redis_url}/1",
        "REDIS_SSL_CA_CERTS": str(pki.ca_cert), "DATABASE_URL": db.runtime_url, "ENV_FILE": "/nonexistent/.env"}),
        main="doctest-docker-client")
    log = tmp_path / "block.log"
    proc = start_shell(block.code, secrets_dir.parent, clean_environment(shims), log)
    try:
        deadline = time.monotonic() + 120
        while not client.control.ping(timeout=0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{block.where}: the container never answered a ping (status {proc.poll()}):\n"
                            f"{block.code}\n---\n{log.read_text(errors='replace')[-4000:]}")
        org, user = str(uuid.uuid4()), str(uuid.uuid4())
        result = client.send_task("rhesis.backend.tasks.echo", args=["from the docs"],
                                  headers={"organization_id": org, "user_id": user})
        assert result.get(timeout=30) == f"Message: from the docs, Organization: {org}, User: {user}"
        flower = f"http://127.0.0.1:{flower_port}/api/workers"
        deadline = time.monotonic() + 60
        while http_status(flower, flower_auth) != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert http_status(flower, flower_auth) == 200, log.read_text(errors="replace")[-4000:]
        assert http_status(flower) == 401
        subprocess.run([*engine, "stop", "--time", "60", name], capture_output=True, timeout=90, check=False)
        status = proc.wait(90)
        assert status == 0, f"{block.where} ended with {status}:\n{log.read_text(errors='replace')[-4000:]}"
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run([*engine, "rm", "--force", name], capture_output=True, timeout=60, check=False)
        client.close()
        redis_proc.terminate()
        redis_proc.wait(10)


# -- README: the chart runs the image `make image` builds --------------------------------------------------

def test_readme_helm_install_runs_the_image_make_image_builds(request: pytest.FixtureRequest,
                                                              tmp_path: Path) -> None:
    block = next(b for b in RUNNABLE if b.path.name == "README.md" and uses(b.code, "helm"))
    status, output = run_shell(block.code, ROOT, clean_environment(_shims(request, block, tmp_path)),
                               tmp_path / "helm.log", TIMEOUT)
    assert status == 0, output[-4000:]
    built = re.search(r'image="\$\{IMAGE:-([^}]+)\}"', (ROOT / "scripts" / "build-image.sh").read_text())
    assert built, "scripts/build-image.sh no longer names its default image"
    # helm's dry-run output: a header, HOOKS: (the migration Job), MANIFEST:, then NOTES:.
    objects = output.split("\nNOTES:")[0].split("\nHOOKS:\n", 1)[-1].replace("\nMANIFEST:\n", "\n")
    images = {container["image"] for doc in yaml.safe_load_all(objects) if isinstance(doc, dict)
              for container in _containers(doc)}
    assert len(images) >= 1, output[-4000:]
    assert images == {built.group(1)}, f"README's helm install deploys {images}, make image builds {built.group(1)}"


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {}) or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    return [*pod.get("containers", []), *pod.get("initContainers", [])]
