#!/usr/bin/env bash
# The irqlab test rig in one command: the service and a suite runner in containers, results for CI.
#
#   scripts/rig.sh [SUITE_DIR] [-- SUITE_ARGS...]
#
#   1. builds the image if it is missing (scripts/build-image.sh; IRQLAB_REBUILD=1 rebuilds)
#   2. plays scripts/rig-pod.yaml with `podman kube play`: the service (non-root, read-only
#      root filesystem, state directory on a named volume) and a runner doing
#        irqlab suite /suite --server http://127.0.0.1:PORT --wait 60 \
#            --junit /results/junit.xml --report /results/report [SUITE_ARGS...]
#      on the documents of SUITE_DIR (default: the built-in library, app/scenarios)
#   3. waits for the runner (bounded), checks the service's confinement (uid, read-only root,
#      the state volume writable), prints the runner's output
#   4. tears the pod down and removes the state volume (IRQLAB_RIG_KEEP_STATE=1 keeps it)
#
# Results: RESULTS_DIR (IRQLAB_RIG_RESULTS, default ./rig-results) gets junit.xml, report/
# (index.json and the JSON results) and runner.log; it is emptied first and left owned by
# whoever owns RESULTS_DIR's parent.
# Exit status: the suite's own (0 every expectation held, 1 an expectation failed, 2 a document
# could not be run or the service never became ready), or 3 when the rig itself failed (image,
# pod, confinement checks, timeout).
#
# Env:  IRQLAB_IMAGE          image (default localhost/irqlab:dev)
#       IRQLAB_RIG_RESULTS    results directory (default ./rig-results)
#       IRQLAB_RIG_PORT       port on 127.0.0.1 (default: a free one)
#       IRQLAB_RIG_TIMEOUT    seconds to wait for the runner (default 900)
#       IRQLAB_RIG_POD        pod name (default irqlab-rig)
#       CONTAINERS_CONF       podman configuration (default scripts/containers.conf)
# Needs: root and podman (apt-get install -y podman runc catatonit debootstrap).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"

image="${IRQLAB_IMAGE:-localhost/irqlab:dev}"
pod="${IRQLAB_RIG_POD:-irqlab-rig}"
state_volume="$pod-state"
timeout_s="${IRQLAB_RIG_TIMEOUT:-900}"

log() { printf '[rig] %s\n' "$*" >&2; }
fail() { printf '[rig] FAIL: %s\n' "$*" >&2; exit 3; }
# podman 4.3 without systemd logs harmless "unable to get systemd connection" errors for the
# image's healthcheck timer; only those lines are dropped.
pm() { podman "$@" 2> >(grep -v -e 'unable to get systemd connection' >&2); }
# Any unexpected command failure is the rig's failure (3), never a suite status (0/1/2).
trap 'fail "line $LINENO: command failed (exit $?)"' ERR

suite_dir="$root/app/scenarios"
if [[ $# -gt 0 && "$1" != "--" ]]; then
    suite_dir="$1"
    shift
fi
[[ "${1:-}" == "--" ]] && shift
[[ -d "$suite_dir" ]] || fail "suite directory $suite_dir does not exist"
suite_dir="$(cd "$suite_dir" && pwd)"
results="${IRQLAB_RIG_RESULTS:-$PWD/rig-results}"
mkdir -p "$results"
results="$(cd "$results" && pwd)"

command -v podman >/dev/null || fail "podman not found: apt-get install -y podman runc catatonit debootstrap"
[[ $(id -u) -eq 0 ]] || fail "must run as root (rootful podman, as scripts/container-smoke.sh)"

# ---- 1. image ------------------------------------------------------------------------------
if [[ "${IRQLAB_REBUILD:-0}" == 1 ]]; then
    IRQLAB_IMAGE="$image" "$here/build-image.sh" || fail "could not build $image"
else
    IRQLAB_IMAGE="$image" "$here/build-image.sh" --if-missing || fail "could not build $image"
fi

# ---- 2. play the pod -----------------------------------------------------------------------
port="${IRQLAB_RIG_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
work="$(mktemp -d /tmp/irqlab-rig.XXXXXX)"
manifest="$work/pod.yaml"
owner="$(stat -c %u:%g "$(dirname "$results")")"

# shellcheck disable=SC2317  # called by the EXIT trap
teardown() {
    local rc=$?
    if pm pod exists "$pod" 2>/dev/null; then
        if [[ $rc -ge 2 ]] && pm container exists "$pod-service" 2>/dev/null; then
            log "service logs:"
            podman logs --tail 30 "$pod-service" >&2 || true
        fi
        pm kube down "$manifest" >/dev/null 2>&1 || pm pod rm --force "$pod" >/dev/null 2>&1 || true
    fi
    if [[ "${IRQLAB_RIG_KEEP_STATE:-0}" != 1 ]]; then
        pm volume rm --force "$state_volume" >/dev/null 2>&1 || true
    fi
    chown -R "$owner" "$results" 2>/dev/null || true
    rm -rf "$work"
    exit "$rc"
}
trap teardown EXIT

pm pod exists "$pod" 2>/dev/null && fail "a pod named $pod exists already (IRQLAB_RIG_POD=another)"
# The runner writes as uid 10001: give it the (emptied) results directory for the run.
find "$results" -mindepth 1 -delete
chown 10001:10001 "$results"

runner_args=(/suite --server "http://127.0.0.1:$port" --wait 60
             --junit /results/junit.xml --report /results/report "$@")
POD="$pod" IMAGE="$image" PORT="$port" STATE_VOLUME="$state_volume" SUITE_DIR="$suite_dir" \
RESULTS_DIR="$results" python3 - "$here/rig-pod.yaml" "$manifest" "${runner_args[@]}" <<'PY' \
    || fail "could not render $here/rig-pod.yaml"
import json, os, string, sys

template, out, args = sys.argv[1], sys.argv[2], sys.argv[3:]
values = {k: os.environ[k] for k in
          ("POD", "IMAGE", "PORT", "STATE_VOLUME", "SUITE_DIR", "RESULTS_DIR")}
values["RUNNER_ARGS"] = json.dumps(args)  # a YAML flow sequence
with open(template) as f:
    text = string.Template(f.read()).substitute(values)
with open(out, "w") as f:
    f.write(text)
PY

log "suite $suite_dir -> $results (service on 127.0.0.1:$port, image $image)"
start=$SECONDS
pm kube play "$manifest" >"$work/play.log" || { cat "$work/play.log" >&2; fail "podman kube play failed"; }

# ---- 3. wait and check ---------------------------------------------------------------------
# podman wait has no timeout in 4.3: poll the runner's state instead.
deadline=$((SECONDS + timeout_s))
while [[ "$(podman inspect --format '{{.State.Status}}' "$pod-runner" 2>/dev/null)" == running ]]; do
    ((SECONDS < deadline)) || fail "the runner did not finish within $timeout_s s"
    sleep 1
done
code="$(podman inspect --format '{{.State.ExitCode}}' "$pod-runner")"
podman logs "$pod-runner" >"$results/runner.log" 2>&1 || true
cat "$results/runner.log"
log "runner exited $code after $((SECONDS - start)) s"

# The service's confinement, as it ran.
svc="$pod-service"
[[ "$(podman inspect --format '{{.State.Status}}' "$svc")" == running ]] \
    || fail "the service is not running (state $(podman inspect --format '{{.State.Status}}' "$svc"))"
[[ "$(podman inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$svc")" == true ]] \
    || fail "the service's root filesystem is not read-only"
uids="$(pm exec "$svc" sh -c 'sed -n "s/^Uid:[[:space:]]*//p" /proc/1/status')"
read -r ruid euid _ <<<"$uids"
[[ "$ruid" == 10001 && "$euid" == 10001 ]] || fail "the service runs as uid $uids, want 10001"
# shellcheck disable=SC2016  # $m and $o belong to the container's shell
root_opts="$(pm exec "$svc" sh -c 'while read -r _ m _ o _; do [ "$m" = / ] && echo "$o"; done </proc/mounts; true')"
[[ "$root_opts" == ro,* || "$root_opts" == ro ]] || fail "the service's / is mounted '$root_opts', want ro"
pm exec "$svc" sh -c 'touch /var/lib/irqlab/.probe && rm /var/lib/irqlab/.probe' \
    || fail "the service cannot write to its state directory /var/lib/irqlab"
mounted="$(podman inspect --format '{{range .Mounts}}{{if eq .Destination "/var/lib/irqlab"}}{{.Type}}:{{.Name}}{{end}}{{end}}' "$svc")"
[[ "$mounted" == "volume:$state_volume" ]] || fail "state directory mount is '$mounted', want volume:$state_volume"
log "service: uid 10001, read-only root filesystem, state on volume $state_volume"

case "$code" in
    0 | 1 | 2) ;;
    *) fail "the runner exited $code (not an irqlab suite status)" ;;
esac
[[ -s "$results/junit.xml" && -s "$results/report/index.json" ]] \
    || { [[ "$code" == 2 ]] || fail "the runner left no junit.xml / report/index.json"; }
log "results: $(cd "$results" && find . -maxdepth 2 -name '*.xml' -o -maxdepth 2 -name index.json | sort | tr '\n' ' ')"
exit "$code"
