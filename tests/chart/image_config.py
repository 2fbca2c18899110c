"""The environment of every container the chart renders, resolved the way Kubernetes would, and the image's own
configuration check run on it.

Kubernetes builds a container's environment from the image's ENV (the Dockerfile's runtime stage), then the
`envFrom` sources in order, then the `env` entries in order (later names win; `$(NAME)` in a value expands to an
earlier-defined variable). The files the container reads (the Redis CA bundle, the client certificate, the
/tmp emptyDir) are materialised from the rendered ConfigMaps/Secrets under a scratch directory, and every
variable whose value is a path under a mount is rewritten to point there.

Objects the chart references but does not render (secret.existingSecret, redisTls.*.existingSecret,
redisTls.ca.existingConfigMap) are created by the operator; for them this module SUPPLIES plausible valid
values (see PLAUSIBLE_SECRET_VALUES and PLAUSIBLE_FILE) and records that it did in `Container.supplied`.
A reference Kubernetes could not satisfy (a missing key in a rendered Secret that is not optional) means the
pod would not start at all (CreateContainerConfigError); it is recorded in `Container.unstartable` and the
variable is left unset.
"""

from __future__ import annotations

import base64
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from chart_support import CHART, ROOT, Rendered

ENTRYPOINT = ROOT / "entrypoint.sh"

# Values for the keys of Secrets the operator creates (secret.existingSecret), by the variable they feed.
PLAUSIBLE_SECRET_VALUES = {
    "BROKER_URL": "rediss://:supplied-pw@redis.data:6380/0",
    "CELERY_RESULT_BACKEND": "rediss://:supplied-pw@redis.data:6380/1",
    "DATABASE_URL": "postgresql://worker:supplied-pw@pg.data:5432/tenants",
    "MIGRATION_DATABASE_URL": "postgresql://owner:supplied-pw@pg.data:5432/tenants",
    "FLOWER_BASIC_AUTH": "admin:supplied-pw",
    "FLOWER_OAUTH2_KEY": "supplied-client-id",
    "FLOWER_OAUTH2_SECRET": "supplied-client-secret",
    "FLOWER_COOKIE_SECRET": "supplied-cookie-secret",
    "TENANT_SIGNING_KEY": "supplied-signing-key-of-at-least-32-characters",
    "DB_ENCRYPTION_KEY": "c3VwcGxpZWQtZmVybmV0LWtleS0zMi1ieXRlcy4uLi4=",  # base64 of 32 bytes
    "GEMINI_API_KEY": "supplied-gemini-key",
    "AZURE_OPENAI_API_KEY": "supplied-azure-key",
    "API_TOKEN_SECRET": "supplied-api-token-key-of-at-least-32-characters",
}
PLAUSIBLE_OTHER_SECRET_VALUE = "supplied-api-key"  # model API keys (secret.extraKeys): the image does not read them
# Content of a file mounted from an existing Secret/ConfigMap (CA bundle, client certificate or key). The image
# checks only that these files exist and are readable (config.spec.FilePath).
PLAUSIBLE_FILE = "-----BEGIN CERTIFICATE-----\nc3VwcGxpZWQ=\n-----END CERTIFICATE-----\n"

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod")


class UnsupportedSpec(AssertionError):
    """The chart renders something this resolver does not model; extend it rather than guess."""


@dataclass
class Container:
    owner: str                      # "Deployment/rel-tenant-worker-worker-default"
    name: str
    args: list[str]
    env: dict[str, str]             # as the process would see it (paths under mounts rewritten into root)
    root: Path                      # where this container's mounts were materialised
    supplied: list[str] = field(default_factory=list)
    unstartable: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.owner} container {self.name} (args {self.args})"

    @property
    def runs_worker(self) -> bool:
        return (self.args or ["worker"])[0] == "worker"


# -- the image --------------------------------------------------------------------------------------------------
def image_env(dockerfile: Path = ROOT / "Dockerfile") -> dict[str, str]:
    """ENV of the Dockerfile's last stage, without PATH (the test runs its own interpreter by absolute path)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    env: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.upper().startswith("FROM "):
            env = {}
        elif stripped.upper().startswith("ENV "):
            for word in shlex.split(stripped[4:]):
                name, _, value = word.partition("=")
                env[name] = value
    env.pop("PATH", None)
    return env


def image_reference(values: dict[str, Any]) -> str:
    """The image the chart's containers run (tw.image)."""
    image = {"repository": "tenant-worker", "tag": "", "digest": "", **(values.get("image") or {})}
    if image["digest"]:
        return f"{image['repository']}@{image['digest']}"
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    return f"{image['repository']}:{image['tag'] or app_version}"


def external_objects(values: dict[str, Any]) -> set[str]:
    """Names of Secrets/ConfigMaps the operator creates and the chart only references."""
    secret = values.get("secret") or {}
    tls = values.get("redisTls") or {}
    ca, client = tls.get("ca") or {}, tls.get("clientCert") or {}
    names = {secret.get("existingSecret"), ca.get("existingSecret"), ca.get("existingConfigMap"),
             client.get("existingSecret")}
    return {n for n in names if n}


# -- containers of the rendered objects -----------------------------------------------------------------------
def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "Pod":
        return obj["spec"]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def image_containers(rendered: Rendered, values: dict[str, Any], scratch: Path) -> list[Container]:
    """Every container and init container of every workload that runs our image, resolved."""
    image = image_reference(values)
    external = external_objects(values)
    found = []
    for obj in rendered.objects:
        if obj["kind"] not in WORKLOAD_KINDS:
            continue
        pod = _pod_spec(obj)
        for spec in (pod.get("initContainers") or []) + pod["containers"]:
            if spec["image"] != image:
                continue
            owner = f"{obj['kind']}/{obj['metadata']['name']}"
            root = scratch / f"{obj['kind']}-{obj['metadata']['name']}-{spec['name']}"
            found.append(_resolve(rendered, pod, spec, owner, root, external))
    return found


def _object(rendered: Rendered, kind: str, name: str) -> dict[str, Any] | None:
    hits = [o for o in rendered.objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return hits[0] if hits else None


def _data(obj: dict[str, Any]) -> dict[str, str]:
    """Decoded data of a rendered ConfigMap or Secret."""
    if obj["kind"] == "Secret":
        out = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        out.update(obj.get("stringData") or {})
        return out
    out = dict(obj.get("data") or {})
    out.update({k: base64.b64decode(v).decode() for k, v in (obj.get("binaryData") or {}).items()})
    return out


def _resolve(rendered: Rendered, pod: dict[str, Any], spec: dict[str, Any], owner: str, root: Path,
             external: set[str]) -> Container:
    c = Container(owner=owner, name=spec["name"], args=list(spec.get("args") or []), env={}, root=root)
    defined: dict[str, str] = {}

    def source(kind: str, name: str) -> dict[str, str] | None:
        obj = _object(rendered, kind, name)
        if obj is not None:
            return _data(obj)
        if name in external:
            return None
        raise UnsupportedSpec(f"{c.label} refers to {kind}/{name}, which is neither rendered nor a value's "
                              "existing object")

    for entry in spec.get("envFrom") or []:
        kind, ref = ("ConfigMap", entry["configMapRef"]) if "configMapRef" in entry else ("Secret", entry["secretRef"])
        data = source(kind, ref["name"])
        if data is None:
            raise UnsupportedSpec(f"{c.label}: envFrom an existing {kind} {ref['name']}: its keys are unknown")
        for key, value in data.items():
            defined[entry.get("prefix", "") + key] = value
    for entry in spec.get("env") or []:
        name = entry["name"]
        if "valueFrom" not in entry:
            defined[name] = expand(entry.get("value", ""), defined)
            continue
        value_from = entry["valueFrom"]
        if "configMapKeyRef" in value_from or "secretKeyRef" in value_from:
            kind, ref = (("ConfigMap", value_from["configMapKeyRef"]) if "configMapKeyRef" in value_from
                         else ("Secret", value_from["secretKeyRef"]))
            data = source(kind, ref["name"])
            if data is None:
                defined[name] = PLAUSIBLE_SECRET_VALUES.get(name, PLAUSIBLE_OTHER_SECRET_VALUE)
                c.supplied.append(f"{name} from existing {kind} {ref['name']}[{ref['key']}]")
            elif ref["key"] in data:
                defined[name] = data[ref["key"]]
            elif not ref.get("optional", False):
                c.unstartable.append(f"{name}: key {ref['key']} missing in {kind} {ref['name']}")
        else:
            raise UnsupportedSpec(f"{c.label}: env {name} uses {sorted(value_from)}")
    mounts = _materialise_mounts(rendered, pod, spec, c, external)
    # The image's ENV is the base; the pod's variables override it.
    env = {**image_env(), **defined}
    c.env = {k: _rewrite_path(v, mounts) for k, v in env.items()}
    return c


_REFERENCE = re.compile(r"\$(\$|\(([A-Za-z_][A-Za-z0-9_.\-]*)\))")


def expand(value: str, defined: dict[str, str]) -> str:
    """Kubernetes' $(NAME) expansion of env values: $$ is a literal $, unknown names stay as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(1) == "$":
            return "$"
        return defined.get(match.group(2), match.group(0))

    return _REFERENCE.sub(replace, value)


def _materialise_mounts(rendered: Rendered, pod: dict[str, Any], spec: dict[str, Any], c: Container,
                        external: set[str]) -> dict[str, Path]:
    """Write each mounted volume under c.root; returns mountPath -> local directory."""
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    mounts: dict[str, Path] = {}
    for mount in spec.get("volumeMounts") or []:
        if mount.get("subPath") or mount.get("subPathExpr"):
            raise UnsupportedSpec(f"{c.label}: subPath mounts are not modelled")
        local = c.root / mount["mountPath"].lstrip("/")
        local.mkdir(parents=True, exist_ok=True)
        mounts[mount["mountPath"]] = local
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            continue
        if "secret" in volume or "configMap" in volume:
            kind, ref = ("Secret", volume["secret"]) if "secret" in volume else ("ConfigMap", volume["configMap"])
            name = ref.get("secretName") or ref.get("name")
            obj = _object(rendered, kind, name)
            items = ref.get("items")
            if obj is None:
                if name not in external:
                    raise UnsupportedSpec(f"{c.label}: volume {mount['name']} refers to {kind}/{name}, which is "
                                          "neither rendered nor a value's existing object")
                if not items:
                    raise UnsupportedSpec(f"{c.label}: all keys of an existing {kind} {name} are mounted; unknown")
                data = {item["key"]: PLAUSIBLE_FILE for item in items}
                c.supplied.append(f"files {[i['path'] for i in items]} from existing {kind} {name}")
            else:
                data = _data(obj)
            for item in items or [{"key": k, "path": k} for k in data]:
                if item["key"] not in data:
                    if not ref.get("optional", False):
                        c.unstartable.append(f"volume {mount['name']}: key {item['key']} missing in {kind} {name}")
                    continue
                target = local / item["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(data[item["key"]])
                target.chmod(item.get("mode", ref.get("defaultMode", 0o644)) | 0o400)
            continue
        raise UnsupportedSpec(f"{c.label}: volume {mount['name']} of type {sorted(set(volume) - {'name'})}")
    return mounts


def _rewrite_path(value: str, mounts: dict[str, Path]) -> str:
    for mount_path in sorted(mounts, key=len, reverse=True):
        if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
            return str(mounts[mount_path]) + value[len(mount_path.rstrip("/")):]
    return value


# -- the image's checks -------------------------------------------------------------------------------------------
def check_environ(c: Container) -> dict[str, str]:
    """The container's environment plus ENV_FILE=/nonexistent, so no .env file of this machine leaks in."""
    return {**c.env, "ENV_FILE": "/nonexistent"}


def run_config(c: Container, command: str) -> subprocess.CompletedProcess[str]:
    """`python -m config COMMAND` (check or worker-args) with exactly the container's environment."""
    return subprocess.run([sys.executable, "-m", "config", command], env=check_environ(c), cwd=c.root,
                          capture_output=True, text=True, timeout=60, check=False)


def make_shim(directory: Path) -> Path:
    """A PATH directory with `python3` (this interpreter) and a `celery` that prints its argv and exits 0."""
    directory.mkdir(parents=True, exist_ok=True)
    python3 = directory / "python3"
    # A wrapper, not a symlink: a symlinked venv interpreter does not find its pyvenv.cfg.
    python3.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    celery = directory / "celery"
    celery.write_text("#!/bin/sh\nprintf 'celery'\nprintf '\\0%s' \"$@\"\n")
    for script in (python3, celery):
        script.chmod(0o755)
    return directory


def run_entrypoint(c: Container, shim: Path) -> subprocess.CompletedProcess[str]:
    """entrypoint.sh with the container's args, up to the exec of `celery` (the stub prints the argv)."""
    env = {**check_environ(c), "PATH": f"{shim}:/usr/bin:/bin"}
    return subprocess.run(["bash", str(ENTRYPOINT), *c.args], env=env, cwd=c.root, capture_output=True, text=True,
                          timeout=60, check=False)


def check_in_process(env: dict[str, str], worker: bool) -> str | None:
    """What `python -m config check` (and, for a worker, `worker-args`) would say: None, or the error line.

    The same functions the CLI calls (config.loader.load_settings, config.worker_command.worker_argv), in this
    process, for the property test's many environments.
    """
    from config.loader import load_settings
    from config.spec import ConfigError
    from config.worker_command import WORKER_OPTIONS, worker_argv

    environ = {**env, "ENV_FILE": "/nonexistent"}
    try:
        load_settings(environ=environ, env_file="/nonexistent")
        if worker:
            worker_argv(load_settings(environ=environ, env_file="/nonexistent", only=WORKER_OPTIONS))
    except ConfigError as exc:
        return str(exc)
    return None
