# shellcheck shell=bash
# Sourced by the image scripts: the container engine to use, in $engine.
# CONTAINER_ENGINE wins; else docker when its daemon answers, else podman when installed.
container_engine() {
    engine="${CONTAINER_ENGINE:-}"
    if [[ -n "$engine" ]]; then
        return 0
    fi
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        engine=docker
    elif command -v podman >/dev/null 2>&1; then
        engine=podman
    else
        echo "neither a docker daemon nor podman is available" >&2
        return 69
    fi
}
