#!/usr/bin/env bash
# End-to-end smoke test of the irqlab container image, with Podman (no Docker engine here).
#
#   1. builds the local base image if missing      (scripts/build-base-image.sh, by
#   2. builds the image from ./Dockerfile            scripts/build-image.sh: labels, no
#                                                    dangling builder image)
#   3. runs it detached, --network host, --read-only root filesystem, bound to 127.0.0.1:$PORT
#   4. polls http://127.0.0.1:$PORT/healthz until it answers (bounded)
#   5. checks GET /readyz reports "engine": "compiled (mypyc)" (the image runs the engine
#      mypyc compiled in the builder stage, not the pure-Python fallback), that the service
#      logged the same at start, and that the runtime image has no C compiler; that /readyz,
#      `irqlab --version` and the org.opencontainers.image.version label agree with
#      pyproject.toml, and the pinned dependency list is in the image
#   6. runs the image's HEALTHCHECK and checks it passes
#   7. checks the service process (PID 1) is not root
#   8. stops (SIGTERM) and removes the container
# Exits non-zero with a clear message on the first failure. Only 127.0.0.1 is ever contacted.
#
# Env:  IRQLAB_IMAGE        image tag to build          (default localhost/irqlab:dev)
#       IRQLAB_SMOKE_PORT   port to bind on 127.0.0.1   (default 18080, else a free one)
#       IRQLAB_SMOKE_WAIT   seconds to wait for /healthz (default 60)
#       IRQLAB_SKIP_BUILD=1 reuse an existing $IRQLAB_IMAGE
#       CONTAINERS_CONF     podman configuration        (default scripts/containers.conf)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"

image="${IRQLAB_IMAGE:-localhost/irqlab:dev}"
wait_s="${IRQLAB_SMOKE_WAIT:-60}"
name="irqlab-smoke-$$"
# Explicit as well as in containers.conf, so the commands also work with another config.
podman_run_opts=(--runtime runc --ulimit nofile=20000:20000 --ulimit nproc=4096:4096 --network host)

log() { printf '[container-smoke] %s\n' "$*" >&2; }
# podman 4.3 without systemd (as here) logs "unable to get systemd connection" errors for the
# healthcheck timer on run/stop/rm, even with --health-interval disable; they are harmless (we
# run the check with `podman healthcheck run`), so only those lines are dropped.
pm() { podman "$@" 2> >(grep -v -e 'unable to get systemd connection' >&2); }
fail() { printf '[container-smoke] FAIL: %s\n' "$*" >&2; exit 1; }

command -v podman >/dev/null || fail "podman not found: apt-get install -y podman debootstrap runc"
command -v python3 >/dev/null || fail "python3 not found on the host"

# ---- 1-2. base image and image -------------------------------------------------------------
if [[ "${IRQLAB_SKIP_BUILD:-0}" == 1 ]] && podman image exists "$image"; then
    log "IRQLAB_SKIP_BUILD=1: reusing $image"
else
    IRQLAB_IMAGE="$image" "$here/build-image.sh" || fail "could not build $image"
fi

# ---- 3. run --------------------------------------------------------------------------------
port_free() {
    # SO_REUSEADDR like uvicorn, so sockets in TIME_WAIT from an earlier run do not count.
    python3 -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" \
        2>/dev/null
}
port="${IRQLAB_SMOKE_PORT:-18080}"
if ! port_free "$port"; then
    [[ -n "${IRQLAB_SMOKE_PORT:-}" ]] && fail "port $port on 127.0.0.1 is in use"
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    log "port 18080 in use; using free port $port"
fi

cleanup() {
    local rc=$?
    if podman container exists "$name" 2>/dev/null; then
        if [[ $rc -ne 0 ]]; then
            log "container logs ($name):"
            podman logs --tail 50 "$name" >&2 || true
        fi
        pm rm --force --time 5 "$name" >/dev/null 2>&1 || true
    fi
    exit "$rc"
}
trap cleanup EXIT

log "starting $name on 127.0.0.1:$port"
pm run --detach --name "$name" "${podman_run_opts[@]}" \
    --read-only -e IRQLAB_HOST=127.0.0.1 -e IRQLAB_PORT="$port" "$image" >/dev/null \
    || fail "podman run failed"

# ---- 4. /healthz ---------------------------------------------------------------------------
url="http://127.0.0.1:$port/healthz"
probe() {
    python3 - "$1" <<'PY'
import sys, urllib.request as u
try:
    r = u.build_opener(u.ProxyHandler({})).open(sys.argv[1], timeout=2)
    body = r.read().decode()
    print(body)
    sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}
deadline=$((SECONDS + wait_s))
until body="$(probe "$url")"; do
    state="$(podman inspect --format '{{.State.Status}}' "$name" 2>/dev/null || echo gone)"
    [[ "$state" == running ]] || fail "container stopped before answering (state: $state)"
    ((SECONDS < deadline)) || fail "no answer from $url within ${wait_s} s"
    sleep 1
done
log "GET $url -> 200 $body"

# ---- 5. compiled engine --------------------------------------------------------------------
want_engine="compiled (mypyc)"
ready_url="http://127.0.0.1:$port/readyz"
ready="$(probe "$ready_url")" || fail "GET $ready_url did not answer 200"
engine="$(python3 -c 'import json, sys; print(json.loads(sys.argv[1]).get("engine", "<missing>"))' "$ready")" \
    || fail "GET $ready_url: not JSON: $ready"
[[ "$engine" == "$want_engine" ]] \
    || fail "GET $ready_url reports engine '$engine', want '$want_engine' ($ready)"
log "GET $ready_url -> 200 $ready"
start_log="$(podman logs "$name" 2>&1)" || fail "podman logs failed"
grep -qF "irqlab: engine $want_engine" <<<"$start_log" \
    || fail "the service did not log 'irqlab: engine $want_engine' at start"
# shellcheck disable=SC2016  # $c is expanded by the container's shell
cc_found="$(pm exec "$name" sh -c 'for c in gcc cc x86_64-linux-gnu-gcc; do command -v "$c"; done; true')"
[[ -z "$cc_found" ]] || fail "the runtime image contains a C compiler: $cc_found"
log "engine: $engine (also in the start log); no C compiler in the runtime image"

want_version="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$root/pyproject.toml")"
ready_version="$(python3 -c 'import json, sys; print(json.loads(sys.argv[1]).get("version", "<missing>"))' "$ready")"
cli_version="$(pm exec "$name" irqlab --version)"
label_version="$(podman image inspect --format '{{index .Labels "org.opencontainers.image.version"}}' "$image")"
[[ "$ready_version" == "$want_version" && "$cli_version" == "irqlab $want_version" \
    && "$label_version" == "$want_version" ]] \
    || fail "versions disagree: pyproject $want_version, /readyz $ready_version, '$cli_version', label '$label_version'"
pm exec "$name" grep -q '^fastapi==' /usr/share/doc/irqlab/requirements.lock \
    || fail "no pinned dependency list at /usr/share/doc/irqlab/requirements.lock"
pm exec "$name" python3 -c 'import json, sys; b = json.load(open("/usr/share/doc/irqlab/sbom.cdx.json")); p = {c["purl"].split("@")[0] for c in b["components"]}; sys.exit(not (b["bomFormat"] == "CycloneDX" and {"pkg:pypi/fastapi", "pkg:pypi/irqlab", "pkg:deb/debian/python3.11"} <= p))' \
    || fail "no usable CycloneDX SBOM at /usr/share/doc/irqlab/sbom.cdx.json"
log "version $want_version everywhere (/readyz, irqlab --version, image label); requirements.lock and SBOM present"

# ---- 6. HEALTHCHECK ------------------------------------------------------------------------
hc="$(pm healthcheck run "$name" 2>&1)" || fail "HEALTHCHECK failed: ${hc:-unhealthy}"
status="$(podman inspect --format '{{.State.Health.Status}}' "$name" 2>/dev/null || true)"
[[ -z "$status" || "$status" == healthy ]] || fail "health status is '$status', want healthy"
log "HEALTHCHECK passed (status: ${status:-${hc:-healthy}})"

# ---- 7. non-root ---------------------------------------------------------------------------
uids="$(pm exec "$name" sh -c 'sed -n "s/^Uid:[[:space:]]*//p" /proc/1/status')" \
    || fail "could not read the service's uid"
read -r ruid euid _ <<<"$uids"
[[ "$ruid" != 0 && "$euid" != 0 ]] || fail "service process runs as root (Uid: $uids)"
cmdline="$(pm exec "$name" sh -c 'tr "\0" " " </proc/1/cmdline')"
log "PID 1 runs as uid $euid (not root): $cmdline"

# ---- 8. stop and remove --------------------------------------------------------------------
pm stop --time 10 "$name" >/dev/null || fail "podman stop failed"
code="$(podman inspect --format '{{.State.ExitCode}}' "$name")"
pm rm "$name" >/dev/null || fail "podman rm failed"
[[ "$code" == 0 ]] || fail "service exited with code $code on SIGTERM (want 0: graceful stop)"
log "stopped gracefully (exit 0) and removed"

size="$(podman image inspect --format '{{.Size}}' "$image")"
log "image $image: $((size / 1000 / 1000)) MB ($size bytes)"
log "PASS"
