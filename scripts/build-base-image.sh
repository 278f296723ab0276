#!/usr/bin/env bash
# Build the local base image for the irqlab container (default tag: irqlab-base:bookworm).
#
# No container registry is reachable from our machines, so instead of `FROM debian:bookworm-slim`
# the Dockerfile builds FROM an image made here: a Debian bookworm `minbase` root filesystem
# made with debootstrap (plus python3, python3-venv, python3-pip, ca-certificates), slimmed the
# way Debian's "-slim" images are, and loaded with `podman import`.
#
# The Debian mirror is never written down in this repository: it is taken, at run time, from
# IRQLAB_DEBIAN_MIRROR if set, else from the machine's own apt configuration
# (as `apt-get indextargets` reports it). The security archive
# likewise comes from IRQLAB_DEBIAN_SECURITY_MIRROR or apt's configuration; if one is found,
# the pending security updates are applied to the root filesystem before it is imported.
#
# Usage:  sudo scripts/build-base-image.sh [--force]
# Env:    IRQLAB_BASE_IMAGE            image tag to produce        (default irqlab-base:bookworm)
#         IRQLAB_BASE_SUITE            Debian suite                (default bookworm)
#         IRQLAB_DEBIAN_MIRROR         e.g. http://<mirror>/debian (default: from apt config)
#         IRQLAB_DEBIAN_SECURITY_MIRROR                              (default: from apt config;
#                                      set to "none" to skip security updates)
#         CONTAINERS_CONF              podman configuration        (default scripts/containers.conf)
# Needs:  root, debootstrap, podman (apt-get install -y podman debootstrap runc).
# Time:   about 1-3 minutes on a 2-core machine with a nearby mirror; it is skipped when the
#         image already exists (pass --force to rebuild).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"

image="${IRQLAB_BASE_IMAGE:-irqlab-base:bookworm}"
suite="${IRQLAB_BASE_SUITE:-bookworm}"
force=0
[[ "${1:-}" == "--force" ]] && force=1

log() { printf '[build-base-image] %s\n' "$*" >&2; }
die() { printf '[build-base-image] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap needs it)"
for tool in debootstrap podman chroot; do
    command -v "$tool" >/dev/null || die "$tool not found: apt-get install -y podman debootstrap runc"
done

if [[ $force -eq 0 ]] && podman image exists "$image"; then
    log "$image already present; nothing to do (use --force to rebuild)"
    exit 0
fi

# Print the archive URI that apt's own configuration uses for suite $1 (e.g. "bookworm" or
# "bookworm-security"). `apt-get indextargets` lists every index apt is configured to fetch,
# whatever the format of the source files (one-line .list or deb822 .sources, [options],
# Enabled: no and deb-src entries already resolved by apt); $(RELEASE) is the suite as the
# source entry spells it and $(REPO_URI) its archive root.
# shellcheck disable=SC2016  # $(REPO_URI) is apt's format placeholder, not a shell expansion
apt_uri_for_suite() {
    apt-get indextargets --format '$(REPO_URI)' \
        "Release: $1" 'Target-Of: deb' 'Identifier: Packages' 2>/dev/null \
        | head -n 1 | sed 's:/*$::'
}

mirror="${IRQLAB_DEBIAN_MIRROR:-$(apt_uri_for_suite "$suite")}"
[[ -n "$mirror" ]] || die "no apt source for suite '$suite' in /etc/apt; set IRQLAB_DEBIAN_MIRROR"
security="${IRQLAB_DEBIAN_SECURITY_MIRROR:-$(apt_uri_for_suite "$suite-security")}"
[[ "$security" == "none" ]] && security=""
log "suite=$suite mirror=$mirror security=${security:-<none>}"

work="$(mktemp -d /var/tmp/irqlab-base.XXXXXX)"
rootfs="$work/rootfs"
cleanup() {
    local m
    for m in dev/pts dev proc sys; do
        mountpoint -q "$rootfs/$m" 2>/dev/null && umount -l "$rootfs/$m"
    done
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

log "debootstrap --variant=minbase $suite (this is the slow part)"
debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates \
    "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 40 "$work/debootstrap.log" >&2; die "debootstrap failed"; }

# Like Debian's official slim images: no docs/man pages/locales now or from later apt installs,
# no apt caches, and apt should not install Recommends.
mkdir -p "$rootfs/etc/dpkg/dpkg.cfg.d" "$rootfs/etc/apt/apt.conf.d"
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/irqlab-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
cat >"$rootfs/etc/apt/apt.conf.d/irqlab-slim" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Dpkg::Options { "--force-confdef"; "--force-confold"; };
EOF

# The image's own apt sources: the same archives this machine uses.
{
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$mirror" "$suite" "$suite"
    if [[ -n "$security" ]]; then
        printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$security" "$suite"
    fi
} >"$rootfs/etc/apt/sources.list.d/debian.sources"
rm -f "$rootfs/etc/apt/sources.list"

log "applying $suite-updates${security:+ and $suite-security} updates"
mount -t proc proc "$rootfs/proc"
mount --bind /dev "$rootfs/dev"
mount --bind /dev/pts "$rootfs/dev/pts"
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c 'apt-get update -q && apt-get -y -q upgrade' >"$work/upgrade.log" 2>&1 \
    || { tail -n 40 "$work/upgrade.log" >&2; die "apt-get upgrade in the new root failed"; }
for m in dev/pts dev proc; do umount "$rootfs/$m"; done

# Slim down: caches, logs, docs, man pages, locales, machine-specific files.
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
    "$rootfs"/usr/share/lintian/* \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old \
    "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/var/tmp/* "$rootfs"/root/.cache
: >"$rootfs/etc/resolv.conf"
: >"$rootfs/etc/machine-id" 2>/dev/null || true
printf '%s\n' irqlab-base >"$rootfs/etc/hostname"

log "importing as $image"
tar --numeric-owner --xattrs -C "$rootfs" -c . \
    | podman import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' \
        --message "debootstrap --variant=minbase $suite + python3 python3-venv python3-pip" \
        - "$image" >/dev/null
podman image ls --format '{{.Repository}}:{{.Tag}}  {{.ID}}  {{.Size}}' "$image" >&2
log "done"
