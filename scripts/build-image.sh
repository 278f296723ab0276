#!/usr/bin/env bash
# Build the irqlab image once, for scripts/container-smoke.sh and scripts/rig.sh (or by hand).
#
#   1. builds the local base image if missing (scripts/build-base-image.sh)
#   2. podman build with the host's pip settings, the label values (VERSION from pyproject.toml,
#      REVISION from git, SOURCE from git's origin URL if any) and the project's ulimits
#   3. removes the builder stage's untagged image (label io.irqlab.stage=builder, ~600 MB) and
#      the image the tag pointed to before, so no dangling image is left; IRQLAB_KEEP_BUILDER=1
#      keeps the builder, tagged localhost/irqlab-builder:cache, for fast rebuilds while
#      developing
#
# pip inside the build reaches the package index the way the host's pip does: index URLs,
# trusted hosts and the CA bundle are read at run time from the host's pip configuration
# (PIP_* env vars, then `pip config list`) and passed as build args / a build secret, and the
# build runs with --network host. Local file:// indexes of the host are not visible in the
# build and are skipped. Nothing host-specific is written into any file.
#
# Usage: scripts/build-image.sh [--if-missing]     (as root; --if-missing: reuse an existing image)
# Env:   IRQLAB_IMAGE        image tag to build   (default localhost/irqlab:dev)
#        IRQLAB_KEEP_BUILDER=1  keep the builder stage's image (tagged, see above)
#        CONTAINERS_CONF     podman configuration (default scripts/containers.conf)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
image="${IRQLAB_IMAGE:-localhost/irqlab:dev}"

log() { printf '[build-image] %s\n' "$*" >&2; }
fail() { printf '[build-image] FAIL: %s\n' "$*" >&2; exit 1; }

command -v podman >/dev/null || fail "podman not found: apt-get install -y podman debootstrap runc"
command -v python3 >/dev/null || fail "python3 not found on the host"

if [[ "${1:-}" == "--if-missing" ]] && podman image exists "$image"; then
    log "reusing $image (built $(podman image inspect --format '{{.Created}}' "$image"))"
    exit 0
fi

# ---- 1. base image -------------------------------------------------------------------------
base="$(sed -n 's/^ARG BASE=//p' "$root/Dockerfile" | head -n 1)"
base="${IRQLAB_BASE_IMAGE:-$base}"
if ! podman image exists "$base"; then
    log "base image $base missing: building it (debootstrap, takes a minute or two)"
    IRQLAB_BASE_IMAGE="$base" "$here/build-base-image.sh" || fail "could not build base image $base"
fi

# ---- 2. image ------------------------------------------------------------------------------
# The host pip's settings, as KEY=VALUE lines (empty values omitted).
host_pip_settings() {
    local pip_list=""
    if python3 -m pip --version >/dev/null 2>&1; then
        pip_list="$(python3 -m pip config list 2>/dev/null || true)"
    elif command -v pip3 >/dev/null; then
        pip_list="$(pip3 config list 2>/dev/null || true)"
    fi
    PIP_LIST="$pip_list" python3 - <<'PY'
import os, re

# `pip config list` prints  section.key='value'  for every file, and :env:.key for PIP_* vars.
cfg = {}
for line in os.environ.get("PIP_LIST", "").splitlines():
    m = re.match(r"^([^.=]*)\.([A-Za-z0-9_-]+)='(.*)'$", line.strip())
    if m:
        cfg.setdefault(m.group(2), {})[m.group(1)] = m.group(3)

def get(key):
    env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
    if env:
        return env
    per = cfg.get(key, {})
    for section in (":env:", "install", "download", "global"):
        if per.get(section):
            return per[section]
    return ""

def remote(urls):  # the build cannot see the host's file:// indexes
    return " ".join(u for u in urls.split() if re.match(r"^https?://", u))

out = {
    "PIP_INDEX_URL": remote(get("index-url")),
    "PIP_EXTRA_INDEX_URL": remote(get("extra-index-url")),
    "PIP_TRUSTED_HOST": get("trusted-host"),
    "PIP_DEFAULT_TIMEOUT": get("default-timeout") or get("timeout"),
}
cert = (get("cert") or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
        or "/etc/ssl/certs/ca-certificates.crt")
out["CERT_FILE"] = cert if os.path.isfile(cert) else ""
for k, v in out.items():
    if v:
        print(f"{k}={v}")
PY
}

build_opts=()
while IFS='=' read -r key value; do
    case "$key" in
        CERT_FILE) build_opts+=(--secret "id=pip_cert,src=$value"); log "pip CA bundle: $value" ;;
        PIP_*) build_opts+=(--build-arg "$key=$value"); log "pip setting passed: $key" ;;
    esac
done < <(host_pip_settings)

# Label values: the version from pyproject.toml (the one version source), the commit and the
# origin URL from git when the checkout has them.
version="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$root/pyproject.toml")"
revision="$(git -C "$root" rev-parse HEAD 2>/dev/null || true)"
if [[ -n "$revision" ]] && [[ -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    revision="$revision-dirty"
fi
source_url="$(git -C "$root" remote get-url origin 2>/dev/null || true)"
build_opts+=(--build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "SOURCE=$source_url")
log "labels: version=$version revision=${revision:-<none>} source=${source_url:-<none>}"

previous="$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
log "building $image"
start=$SECONDS
podman build --format docker --pull=never --layers \
    --runtime runc --ulimit nofile=20000:20000 --ulimit nproc=4096:4096 --network host \
    "${build_opts[@]}" -t "$image" -f "$root/Dockerfile" "$root" \
    || fail "podman build failed"
log "built $image in $((SECONDS - start)) s"

# ---- 3. no dangling builder image ----------------------------------------------------------
if [[ "${IRQLAB_KEEP_BUILDER:-0}" == 1 ]]; then
    builder="$(podman images --quiet --filter dangling=true --filter label=io.irqlab.stage=builder | head -n 1)"
    [[ -n "$builder" ]] && podman tag "$builder" localhost/irqlab-builder:cache \
        && log "kept the builder stage as localhost/irqlab-builder:cache"
else
    podman image prune --force --filter label=io.irqlab.stage=builder >/dev/null
    left="$(podman images --quiet --filter dangling=true --filter label=io.irqlab.stage=builder)"
    [[ -z "$left" ]] || fail "builder images left behind: $left"
    log "removed the builder stage's image (IRQLAB_KEEP_BUILDER=1 keeps it)"
fi
# The image the tag pointed to before is now untagged: remove it unless a container uses it.
if [[ -n "$previous" && "$previous" != "$(podman image inspect --format '{{.Id}}' "$image")" ]]; then
    if podman rmi "$previous" >/dev/null 2>&1; then
        log "removed the previous $image (${previous:0:12})"
    fi
fi
size="$(podman image inspect --format '{{.Size}}' "$image")"
log "$image: $((size / 1000 / 1000)) MB"
