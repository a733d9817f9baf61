#!/usr/bin/env bash
# Local cleanup for scripts/docker-engine.sh: remove the keeper container and stop the podman
# service that script started. The image (a cache, ~1 min to rebuild) and the packages stay;
# pass --image to remove the single-user images too.
set -uo pipefail

SOCK_PATH=/run/jhproxy-routes-podman.sock
SOCK_URL="unix://$SOCK_PATH"
PID_FILE=/run/jhproxy-routes-podman.pid
KEEPER=jhproxy-routes-keeper
IMAGE_REPO=localhost/jhproxy-routes-singleuser

log() { echo "docker-engine-stop: $*" >&2; }

if ! command -v podman >/dev/null 2>&1; then
    log "podman not installed; nothing to do"
    exit 0
fi

if podman container exists "$KEEPER" 2>/dev/null; then
    log "removing container $KEEPER"
    podman rm -f -t 0 "$KEEPER" >/dev/null || log "WARNING: podman rm $KEEPER failed"
fi

if [[ ${1:-} == --image ]]; then
    for img in $(podman images --format '{{.Repository}}:{{.Tag}}' | grep "^$IMAGE_REPO:" || true); do
        log "removing image $img"
        podman rmi "$img" >/dev/null || log "WARNING: podman rmi $img failed"
    done
fi

# The service started by docker-engine.sh: its pid file, and only if that pid still is a
# `podman system service` on our socket (never a broad match on other processes).
is_our_service() { tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" | grep -q "system service.*$SOCK_URL"; }
pid=""
if [[ -f $PID_FILE ]]; then
    pid="$(cat "$PID_FILE" 2>/dev/null)"
    if ! [[ $pid =~ ^[0-9]+$ ]] || ! is_our_service "$pid"; then pid=""; fi
fi
if [[ -n $pid ]]; then
    log "stopping podman service (pid $pid)"
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid still running after 5 s; sending SIGKILL"
        kill -9 "$pid" 2>/dev/null
    fi
else
    log "no podman service from docker-engine.sh running (pid file $PID_FILE)"
fi
rm -f "$PID_FILE" "$SOCK_PATH"
exit 0
