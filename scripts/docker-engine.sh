#!/usr/bin/env bash
# Provide a real Docker-API engine (podman) and a local single-user image, idempotently.
#
#   eval "$(bash scripts/docker-engine.sh)"     # or: export $(bash scripts/docker-engine.sh)
#
# Steps (each skipped when already done; see /work/shared/REAL_DOCKER.md for the recipe):
#   1. apt-get install podman runc debootstrap (+ curl, debian-archive-keyring) when missing;
#   2. /etc/containers/containers.conf with runtime runc, default_ulimits, events_logger file;
#   3. `podman system service` on unix:///run/jhproxy-routes-podman.sock (detached);
#   4. image localhost/jhproxy-routes-singleuser:jh-<jupyterhub version of .venv/bin/python>-lab-dash,
#      built with debootstrap + pip (honouring the host's pip configuration) + podman import;
#   5. a long-lived keeper container on network `podman`, so the bridge (podman0, gateway
#      10.88.0.1) exists before a hub starts.
# On success stdout carries exactly two lines, DOCKER_HOST=... and JHPROXY_ROUTES_IMAGE=...;
# progress goes to stderr. On failure: non-zero exit, and stderr says which step failed and why.
#
# Environment knobs (all optional):
#   JHPROXY_ROUTES_PYTHON   python whose jupyterhub version the image matches (default .venv/bin/python)
#   JHPROXY_ROUTES_DEBIAN_MIRROR   mirror for debootstrap (default http://deb.debian.org/debian)
# Cleanup: scripts/docker-engine-stop.sh
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

SOCK_PATH=/run/jhproxy-routes-podman.sock
SOCK_URL="unix://$SOCK_PATH"
PID_FILE=/run/jhproxy-routes-podman.pid
LOG_FILE=/tmp/jhproxy-routes-podman.log
LOCK_FILE=/run/jhproxy-routes-docker-engine.lock
CONF=/etc/containers/containers.conf
KEEPER=jhproxy-routes-keeper
IMAGE_REPO=localhost/jhproxy-routes-singleuser
SUITE=bookworm
MIRROR="${JHPROXY_ROUTES_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PYTHON="${JHPROXY_ROUTES_PYTHON:-$ROOT/.venv/bin/python}"

# Everything but the final two lines goes to stderr: keep the real stdout on fd 3.
exec 3>&1 1>&2

STEP="start"
log() { echo "docker-engine: $*" >&2; }
die() { echo "docker-engine: error in step '$STEP': $*" >&2; exit 1; }
trap 'rc=$?; echo "docker-engine: error in step '"'"'$STEP'"'"': command failed (exit $rc): $BASH_COMMAND" >&2; exit $rc' ERR

[[ $EUID -eq 0 ]] || die "must run as root (apt-get, podman system service, debootstrap, chroot)"

# Serialise concurrent callers (parallel test sessions, CI jobs on one machine).
exec 9>"$LOCK_FILE"
flock -w 1800 9 || die "timed out waiting for $LOCK_FILE (another docker-engine.sh run?)"
# Whatever podman leaves running (service, conmon) must not inherit the lock, our stdout or any
# other descriptor of the caller (a capturing pipe would never see EOF): close all fds > 2.
close_extra_fds() {   # call in a subshell only
    local f n
    for f in /proc/$BASHPID/fd/*; do
        n="${f##*/}"
        if ((n > 2)); then eval "exec $n>&-"; fi
    done
}
podman() { (close_extra_fds; exec podman "$@"); }

# --------------------------------------------------------------------------------------------
STEP="install packages"
pkg_installed() { [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]; }
missing=()
for p in podman runc debootstrap curl debian-archive-keyring; do
    pkg_installed "$p" || missing+=("$p")
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die "packages missing (${missing[*]}) and apt-get not found: install them by hand"
    log "installing ${missing[*]} (apt-get update + install)"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 \
        || die "apt-get update failed (is the Debian mirror reachable?)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 \
        || die "apt-get install ${missing[*]} failed"
fi
for c in podman runc debootstrap curl chroot tar; do
    command -v "$c" >/dev/null || die "'$c' not found on PATH after installing packages"
done

# --------------------------------------------------------------------------------------------
STEP="containers.conf"
conf_ok() {
    [[ -f $CONF ]] \
        && grep -Eq '^[[:space:]]*runtime[[:space:]]*=[[:space:]]*"runc"' "$CONF" \
        && grep -Eq '^[[:space:]]*default_ulimits[[:space:]]*=' "$CONF" \
        && grep -Eq '^[[:space:]]*events_logger[[:space:]]*=[[:space:]]*"file"' "$CONF"
}
conf_changed=0
if ! conf_ok; then
    mkdir -p "$(dirname "$CONF")"
    if [[ -f $CONF ]]; then
        backup="$CONF.bak.$(date +%Y%m%d%H%M%S)"
        cp -p "$CONF" "$backup"
        log "$CONF lacks the required settings; previous version saved as $backup"
    fi
    log "writing $CONF"
    cat >"$CONF" <<'EOF'
# Written by jhproxy-routes scripts/docker-engine.sh (see /work/shared/REAL_DOCKER.md)
[containers]
# the sandbox lacks CAP_SYS_RESOURCE: keep rlimits below the current ones
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
# crun refuses the hybrid cgroup layout here; runc works
runtime = "runc"
events_logger = "file"
EOF
    conf_changed=1
fi

# --------------------------------------------------------------------------------------------
STEP="podman service"
ping_ok() { curl -sf --max-time 3 --unix-socket "$SOCK_PATH" http://d/_ping 2>/dev/null | grep -q OK; }
our_service_pid() {
    # pid from the pid file, if that process still is our `podman system service`
    local pid
    [[ -f $PID_FILE ]] || return 1
    pid="$(cat "$PID_FILE" 2>/dev/null)"
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q "system service.*$SOCK_URL" || return 1
    echo "$pid"
}
if ((conf_changed)) && pid="$(our_service_pid)"; then
    log "restarting the podman service (pid $pid) so it reads the new $CONF"
    kill "$pid" || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
fi
if ping_ok; then
    log "podman service already answers on $SOCK_URL"
else
    if pid="$(our_service_pid)"; then
        log "podman service pid $pid exists but does not answer; stopping it"
        kill "$pid" || true
        sleep 1
    fi
    rm -f "$SOCK_PATH"
    log "starting podman system service on $SOCK_URL (log: $LOG_FILE)"
    # from /: the service (and every conmon it starts) outlives this checkout, which may be deleted
    (close_extra_fds; cd /; exec setsid nohup podman system service --time=0 "$SOCK_URL") \
        </dev/null >>"$LOG_FILE" 2>&1 &
    echo $! >"$PID_FILE"
    svc_pid=$!
    for _ in $(seq 60); do
        ping_ok && break
        kill -0 "$svc_pid" 2>/dev/null || die "podman system service exited; last lines of $LOG_FILE:
$(tail -n 20 "$LOG_FILE" 2>/dev/null)"
        sleep 0.5
    done
    ping_ok || die "podman service did not answer on $SOCK_URL within 30 s; see $LOG_FILE"
    log "podman service ready (pid $svc_pid)"
fi

# --------------------------------------------------------------------------------------------
STEP="jupyterhub version"
[[ -x $PYTHON ]] || die "$PYTHON not found: run scripts/bootstrap.sh first (or set JHPROXY_ROUTES_PYTHON)"
JH_VERSION="$("$PYTHON" -c 'import jupyterhub; print(jupyterhub.__version__)' 2>&1)" \
    || die "cannot import jupyterhub with $PYTHON: $JH_VERSION"
[[ $JH_VERSION =~ ^[0-9A-Za-z.+!-]+$ ]] || die "unexpected jupyterhub version string: $JH_VERSION"
# -lab-dash: with JupyterLab and httpx, what the in-server part (jhproxy_routes.singleuser,
# mounted by the tests) and the JupyterLab extension need, and Dash, an app that listens on
# 127.0.0.1 by default (tests/test_lab_docker.py)
IMAGE="$IMAGE_REPO:jh-${JH_VERSION//+/_}-lab-dash"

# --------------------------------------------------------------------------------------------
STEP="build image"
ROOTFS=""
MOUNTS=()
cleanup_rootfs() {
    [[ -n $ROOTFS && -d $ROOTFS ]] || return 0
    local i left
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}" 2>/dev/null || true
    done
    MOUNTS=()
    left="$(awk -v r="$ROOTFS/" 'index($2, r) == 1 {print $2}' /proc/mounts)"
    if [[ -n $left ]]; then
        log "WARNING: not removing $ROOTFS, still mounted under it: $left"
        return 0
    fi
    rm -rf --one-file-system "$ROOTFS"
    ROOTFS=""
}
trap cleanup_rootfs EXIT

# Local files and directories the host's pip configuration refers to, one per line.
pip_local_paths() {
    "$PYTHON" - "$@" <<'PY'
import configparser, os, sys, urllib.parse, urllib.request
keys = {"cert", "client-cert", "find-links", "index-url", "extra-index-url", "constraint"}
values = []
for f in sys.argv[1:]:
    cp = configparser.RawConfigParser()
    try:
        cp.read(f)
    except configparser.Error:
        continue
    for sec in cp.sections():
        for k, v in cp.items(sec):
            if k.replace("_", "-") in keys:
                values.append((k.replace("_", "-"), v))
for name, v in os.environ.items():
    if name.startswith("PIP_") and name[4:].lower().replace("_", "-") in keys:
        values.append((name[4:].lower().replace("_", "-"), v))
for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
    if os.environ.get(name):
        values.append(("cert", os.environ[name]))
out = []
for key, v in values:
    for tok in v.split():
        if tok.startswith("file:"):
            p = urllib.request.url2pathname(urllib.parse.urlparse(tok).path)
        elif tok.startswith("/"):
            p = tok
        else:
            continue
        p = os.path.normpath(p)
        if not os.path.exists(p):
            continue
        if key in ("index-url", "extra-index-url") and os.path.isdir(p):
            # a "simple" index usually links to files next to it (../../files/...)
            parent = os.path.dirname(p)
            if parent not in ("/", ""):
                p = parent
        out.append(p)
for p in dict.fromkeys(out):
    print(p)
PY
}

build_image() {
    local base tmp f cfgs=() p dest
    base="${TMPDIR_ROOTFS:-/var/tmp}"
    tmp="$(mktemp -d "$base/jhproxy-routes-rootfs.XXXXXX")"
    ROOTFS="$tmp/rootfs"
    mkdir "$ROOTFS"

    STEP="build image: debootstrap"
    log "debootstrap $SUITE into $ROOTFS (about 40 s)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$ROOTFS" "$MIRROR" >&2 \
        || die "debootstrap failed (mirror $MIRROR); see $ROOTFS/debootstrap/debootstrap.log if kept"

    STEP="build image: host CA and pip configuration"
    if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
        cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/"
    fi
    cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf" 2>/dev/null || true
    # pip configuration files, at the places pip in the chroot (running as root) reads them
    for f in /etc/xdg/pip/pip.conf /etc/pip.conf; do
        if [[ -f $f ]]; then mkdir -p "$ROOTFS$(dirname "$f")"; cp "$f" "$ROOTFS$f"; cfgs+=("$f"); fi
    done
    if [[ -f $HOME/.pip/pip.conf ]]; then
        mkdir -p "$ROOTFS/root/.pip"; cp "$HOME/.pip/pip.conf" "$ROOTFS/root/.pip/pip.conf"; cfgs+=("$HOME/.pip/pip.conf")
    fi
    f="${XDG_CONFIG_HOME:-$HOME/.config}/pip/pip.conf"
    if [[ -f $f ]]; then
        mkdir -p "$ROOTFS/root/.config/pip"; cp "$f" "$ROOTFS/root/.config/pip/pip.conf"; cfgs+=("$f")
    fi
    if [[ -n ${PIP_CONFIG_FILE:-} && -f $PIP_CONFIG_FILE ]]; then
        mkdir -p "$ROOTFS$(dirname "$PIP_CONFIG_FILE")"; cp "$PIP_CONFIG_FILE" "$ROOTFS$PIP_CONFIG_FILE"; cfgs+=("$PIP_CONFIG_FILE")
    fi
    if ((${#cfgs[@]})); then log "pip configuration copied into the chroot: ${cfgs[*]}"; fi
    # local files (certificates) are copied; local directories (find-links, file:// indexes,
    # possibly large) are bind-mounted read-only for the duration of pip install
    while IFS= read -r p; do
        [[ -n $p ]] || continue
        dest="$ROOTFS$p"
        if [[ -f $p ]]; then
            mkdir -p "$(dirname "$dest")"; cp -L "$p" "$dest"
            log "copied $p into the chroot"
        elif [[ -d $p ]]; then
            mkdir -p "$dest"
            mount --bind "$p" "$dest" || die "cannot bind-mount $p (pip index/find-links) into the chroot"
            MOUNTS+=("$dest")
            mount -o remount,bind,ro "$dest" || die "cannot make the bind mount $dest read-only"
            log "bind-mounted $p read-only into the chroot"
        fi
    done < <(pip_local_paths "${cfgs[@]}")

    # environment for the chroot: a clean one, plus pip/proxy/CA settings of the host
    local envs=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8)
    local v
    while IFS= read -r v; do
        envs+=("$v=${!v}")
    done < <(compgen -e | grep -E '^(PIP_[A-Z0-9_]+|https?_proxy|HTTPS?_PROXY|no_proxy|NO_PROXY|REQUESTS_CA_BUNDLE|SSL_CERT_FILE|CURL_CA_BUNDLE)$' || true)

    STEP="build image: pip install"
    log "pip install jupyterhub==$JH_VERSION jupyter_server jupyterlab httpx dash into /opt/venv of the chroot"
    chroot "$ROOTFS" /usr/bin/env -i "${envs[@]}" /bin/sh -c '
        set -e
        python3 -m venv /opt/venv
        /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --progress-bar off \
            "jupyterhub==$1" jupyter_server "jupyterlab>=4,<5" "httpx>=0.24" "dash>=2.9"
        /opt/venv/bin/jupyterhub-singleuser --version
    ' sh "$JH_VERSION" >&2 || die "pip install jupyterhub==$JH_VERSION jupyter_server jupyterlab httpx dash failed in the chroot"

    STEP="build image: trim"
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount "${MOUNTS[i]}"; done
    MOUNTS=()
    chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin apt-get clean >&2 || true
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* \
        "$ROOTFS"/usr/share/info/* "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/debootstrap \
        "$ROOTFS"/root/.cache "$ROOTFS"/var/log/*.log
    # podman provides resolv.conf/hosts at run time; do not bake the host's in
    : >"$ROOTFS/etc/resolv.conf"

    STEP="build image: podman import"
    log "podman import -> $IMAGE"
    tar -C "$ROOTFS" -cf - . | podman import \
        --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/opt/venv/bin/jupyterhub-singleuser", "--allow-root"]' \
        --change "LABEL org.jupyter.jupyterhub.version=$JH_VERSION" \
        - "$IMAGE" >&2 || die "podman import failed"
    cleanup_rootfs
    rmdir "$tmp" 2>/dev/null || true
}

if podman image exists "$IMAGE"; then
    log "image $IMAGE present"
else
    t0=$SECONDS
    build_image
    STEP="build image"
    podman image exists "$IMAGE" || die "image $IMAGE missing after import"
    log "built $IMAGE in $((SECONDS - t0)) s"
fi

# --------------------------------------------------------------------------------------------
STEP="keeper container"
state="$(podman container inspect -f '{{.State.Status}}' "$KEEPER" 2>/dev/null || true)"
case "$state" in
    running) log "keeper container $KEEPER running" ;;
    "")
        log "starting keeper container $KEEPER"
        podman run -d --name "$KEEPER" --network podman "$IMAGE" sleep infinity >&2 \
            || die "podman run $KEEPER failed"
        ;;
    *)
        log "keeper container $KEEPER is '$state'; starting it"
        if ! podman start "$KEEPER" >&2; then
            log "podman start failed; recreating $KEEPER"
            podman rm -f "$KEEPER" >&2 || true
            podman run -d --name "$KEEPER" --network podman "$IMAGE" sleep infinity >&2 \
                || die "podman run $KEEPER failed"
        fi
        ;;
esac
bridge="$(podman network inspect podman -f '{{.NetworkInterface}}' 2>/dev/null || true)"
bridge="${bridge:-podman0}"
for _ in $(seq 50); do
    [[ -e /sys/class/net/$bridge ]] && break
    sleep 0.2
done
[[ -e /sys/class/net/$bridge ]] || die "bridge $bridge absent although $KEEPER runs"
[[ "$(podman container inspect -f '{{.State.Status}}' "$KEEPER" 2>/dev/null)" == running ]] \
    || die "keeper container $KEEPER is not running; see: podman logs $KEEPER"

STEP="done"
echo "DOCKER_HOST=$SOCK_URL" >&3
echo "JHPROXY_ROUTES_IMAGE=$IMAGE" >&3
