#!/usr/bin/env bash
# Entrypoint of the tenant-worker image (tini runs it). See docs/container.md.
#
#   entrypoint.sh [worker]                 the Celery worker (default); with ENABLE_FLOWER=yes also Flower
#   entrypoint.sh flower|api|migrate|drain|healthcheck [--ready]|check|doctor|queues|stuck|...
#                                          a command of the launcher, `python -m worker COMMAND`
#   entrypoint.sh -OPTION ...              the same as `entrypoint.sh worker -OPTION ...`
#   entrypoint.sh COMMAND [ARGS...]        anything else is executed as given (e.g. celery inspect ping)
#
# The launcher validates every setting (exit 64 and one line on a bad value), logs them masked and execs celery.
set -Eeuo pipefail

if [[ $# -eq 0 || "$1" == -* ]]; then
    set -- worker "$@"
fi

case "$1" in
    worker | run | flower | migrate | drain | healthcheck | check | table | worker-args | demo-data | send \
        | api | api-token | sweep | doctor | queues | stuck | revoke | purge | inspect)
        exec python3 -m worker "$@"
        ;;
esac
exec "$@"
