"""Run documented commands as written, with stand-ins only for what this machine cannot run.

Shell blocks run under ``bash -e -o pipefail`` with a directory of small shims first on PATH:

- ``docker``: podman (``--runtime runc``) when no docker daemon answers. ``docker run`` gets extra options
  from the test (host network to reach the test's Redis and PostgreSQL on loopback, a container name to stop
  it, a free Flower port). ``docker info`` fails, as it does without a daemon, so scripts that probe for docker
  (scripts/build-image.sh) pick podman with its own flags.
- ``helm``: the real helm; ``install``/``upgrade`` get ``--dry-run=client`` (no cluster here).
- ``kubectl``: the real kubectl; ``create``/``apply`` get ``--dry-run=client -o yaml``; anything else needs a
  cluster and fails, so such a block has to be marked skip with a reason.
- ``make`` (dry-run blocks only): ``make -n``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.support.doc_blocks import ROOT

_WORDS = {name: re.compile(rf"(^|[\s;&|(]){name}\s") for name in ("docker", "helm", "kubectl")}


def uses(code: str, command: str) -> bool:
    """Whether a shell block calls ``command`` (``make image`` counts as docker: it builds with an engine)."""
    if command == "docker" and re.search(r"(^|\s)make image\b", code, re.M):
        return True
    return any(_WORDS[command].search(line) for line in code.splitlines() if not line.lstrip().startswith("#"))


def _write_shim(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


def make_shims(directory: Path, *, engine: Sequence[str] | None = None, run_options: Sequence[str] = (),
               helm: Path | None = None, kubectl: Path | None = None, make_dry_run: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if engine:
        real = [shutil.which(engine[0]) or engine[0], *engine[1:]]
        cmd, extra = shlex.join(real), shlex.join(run_options)
        _write_shim(directory, "docker", f"""\
case "${{1:-}}" in
  info) echo "doctest: no docker daemon here; docker commands run with {engine[0]}" >&2; exit 1 ;;
  run) shift; exec {cmd} run {extra} "$@" ;;
esac
exec {cmd} "$@"
""")
    if helm:
        _write_shim(directory, "helm", f"""\
case "${{1:-}}" in
  install|upgrade) exec {shlex.quote(str(helm))} "$@" --dry-run=client ;;
esac
exec {shlex.quote(str(helm))} "$@"
""")
    if kubectl:
        _write_shim(directory, "kubectl", f"""\
for arg in "$@"; do
  case "$arg" in
    create|apply) exec {shlex.quote(str(kubectl))} "$@" --dry-run=client -o yaml ;;
  esac
done
echo "doctest: kubectl $* needs a cluster; mark the block skip with a reason" >&2
exit 97
""")
    if make_dry_run:
        _write_shim(directory, "make", f'exec {shlex.quote(shutil.which("make") or "make")} -n "$@"\n')
    return directory


def clean_environment(shims: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment without product, Celery or Flower variables; shims first on PATH."""
    from config.options import OPTIONS

    declared = {option.name for option in OPTIONS} | {f"{option.name}_FILE" for option in OPTIONS}
    env = {k: v for k, v in os.environ.items() if k not in declared and not k.startswith(("FLOWER_", "CELERY_"))}
    env["PATH"] = f"{shims}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    return {**env, "ENV_FILE": "/nonexistent/.env", **(extra or {})}


def start_shell(code: str, cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """The block under bash in its own process group (so a timeout can end everything it started)."""
    with log.open("wb") as out:
        return subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", code], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def run_shell(code: str, cwd: Path, env: dict[str, str], log: Path, timeout: float) -> tuple[int, str]:
    proc = start_shell(code, cwd, env, log)
    try:
        status = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return -1, log.read_text(errors="replace") + f"\n[doctest: still running after {timeout}s, killed]"
    return status, log.read_text(errors="replace")


def run_python(code: str, env: dict[str, str], workdir: Path, given: dict[str, str], timeout: float) -> tuple[int, str]:
    """The block as a script (after assignments of the ``given`` names), from the repository root."""
    import sys

    script = workdir / "block.py"
    script.write_text("".join(f"{name} = {value!r}\n" for name, value in given.items()) + code)
    try:
        done = subprocess.run([sys.executable, str(script)], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        return -1, f"{exc.stdout or ''}{exc.stderr or ''}\n[doctest: still running after {timeout}s]"
    return done.returncode, done.stdout + done.stderr
