# irqlab service image: a slim two-stage build.
#
#   builder  makes a virtualenv in /opt/venv holding irqlab (built as a wheel) and its deps; it
#            has gcc and the Python 3.11 headers, so setup.py compiles the engine's hot modules
#            with mypyc (the wheel carries the .so files and app/engine/_native.stamp), and the
#            build fails if the installed engine is not the compiled one;
#   runtime  copies only /opt/venv onto the same base (no compiler, no headers) and runs
#            `irqlab serve` as a non-root user. GET /readyz reports "engine": "compiled (mypyc)"
#            and the version.
#
# BASE: the Debian bookworm + python3 (3.11) image both stages start from. No container registry
#   is reachable from our machines, so the default is the local image that
#   scripts/build-base-image.sh makes with debootstrap and `podman import`
#   (localhost/irqlab-base:bookworm). Any other Debian-based image that has python3 >= 3.11,
#   python3-venv, python3-pip and useradd works too: --build-arg BASE=<image>.
#
# Build, as root, from the checkout:  scripts/build-image.sh  (scripts/container-smoke.sh and
#   scripts/rig.sh call it). It runs, with the bracketed parts filled in from the host's pip
#   configuration and git:
#     podman build --format docker --pull=never --layers --network host \
#         --ulimit nofile=20000:20000 --ulimit nproc=4096:4096 \
#         [--build-arg PIP_INDEX_URL=...] [--build-arg PIP_EXTRA_INDEX_URL=...] \
#         [--secret id=pip_cert,src=<CA bundle the host's pip uses>] \
#         --build-arg VERSION=<pyproject version> --build-arg REVISION=<git commit> \
#         [--build-arg SOURCE=<git origin URL>] -t localhost/irqlab:dev .
#     podman image prune -f --filter label=io.irqlab.stage=builder
#   --format docker keeps the HEALTHCHECK (the OCI image format has no field for it);
#   --network host lets pip reach the package index the way the host does, and the pip_cert
#   secret is mounted only while pip runs (never in a layer); the ulimits are needed where
#   podman's defaults (nofile 1048576, nproc 4194304) exceed the machine's hard limits
#   ("error setting rlimit type 7"); the prune drops the builder stage's untagged image (about
#   600 MB) and nothing else.
#
# Run (the container shares the host network, so the service keeps the default 127.0.0.1):
#     podman run -d --name irqlab --network host --read-only \
#         --ulimit nofile=20000:20000 --ulimit nproc=4096:4096 \
#         -e IRQLAB_PORT=18080 localhost/irqlab:dev
#   Settings are IRQLAB_* environment variables (README, Settings); arguments after the image
#   name go to `irqlab serve` (e.g. --log-level debug). The image's /var/lib/irqlab (owned by
#   the service user) is where a state volume goes.

ARG BASE=localhost/irqlab-base:bookworm

# --------------------------------------------------------------------------------------------
FROM ${BASE} AS builder

# Marks this stage's (untagged) image so the build scripts can prune it and nothing else.
LABEL io.irqlab.stage=builder

# Pip settings from the host, passed by scripts/build-image.sh; empty means pip's default
# (pip ignores empty PIP_* variables). They exist only in this stage, never in the final image.
ARG PIP_INDEX_URL=""
ARG PIP_EXTRA_INDEX_URL=""
ARG PIP_TRUSTED_HOST=""
ARG PIP_DEFAULT_TIMEOUT="60"

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_INPUT=1

# What mypyc needs to compile the engine (setup.py): a C compiler, libc headers and Python.h.
# Builder only: none of it reaches the runtime stage. Not pinned: a Debian mirror serves only
# the current version of each package, so a pinned version stops installing at the next point
# release or security update (and libpython3.11-dev has to equal the archive's current
# libpython3.11-stdlib anyway); the compiled engine needs only the 3.11 ABI, which is stable.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libpython3.11-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# Dependencies first, from pyproject.toml alone, so that code edits do not reinstall them.
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip_cert,required=false \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -m venv /opt/venv \
    && python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" >/tmp/requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt

# Then the project itself: build a wheel (pip's isolated build env fetches setuptools and mypy,
# whose mypyc compiles the engine), install it without touching the deps, check that the
# installed engine is the compiled one (-P: import from /opt/venv, not from /src), and drop the
# installer tooling the runtime does not need.
COPY . ./
RUN --mount=type=secret,id=pip_cert,required=false \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && /opt/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/wheels . \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /tmp/wheels/irqlab-*.whl \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -P -c "import sys, app.engine as e; print('irqlab: engine', e.ENGINE_BUILD); sys.exit(not e.NATIVE)" \
    && /opt/venv/bin/pip uninstall --yes pip setuptools \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

# --------------------------------------------------------------------------------------------
FROM ${BASE} AS runtime

# OCI annotations as labels. VERSION is pyproject.toml's version (the build scripts read it;
# the installed package reports the same through `irqlab --version` and GET /readyz), REVISION
# the git commit and SOURCE where the code lives; all three are empty when not passed.
ARG VERSION=""
ARG REVISION=""
ARG SOURCE=""
LABEL org.opencontainers.image.title="irqlab" \
      org.opencontainers.image.description="Deterministic, inspectable KVM x86 irqchips (IOAPIC + local APICs) behind a REST API" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"

# The service user, and its state directory (root of the state volume; a fresh named volume
# mounted here takes this owner and mode).
RUN groupadd --gid 10001 irqlab \
    && useradd --uid 10001 --gid irqlab --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin irqlab \
    && install -d -o irqlab -g irqlab -m 0700 /var/lib/irqlab

# Root-owned and read-only for the service user.
COPY --from=builder /opt/venv /opt/venv

# What exactly is installed, kept in the image for audits and rebuilds: the pinned list of the
# runtime venv's distributions (pip freeze, by the base's own pip since the venv has none) and
# a CycloneDX SBOM of those and the Debian packages (scripts/sbom.py, standard library only,
# bind-mounted for this step alone).
RUN --mount=type=bind,source=scripts/sbom.py,target=/tmp/sbom.py \
    mkdir -p /usr/share/doc/irqlab \
    && python3 -m pip freeze --path /opt/venv/lib/python3.11/site-packages \
       >/usr/share/doc/irqlab/requirements.lock \
    && grep -q '^fastapi==' /usr/share/doc/irqlab/requirements.lock \
    && python3 /tmp/sbom.py /opt/venv/lib/python3.11/site-packages \
       >/usr/share/doc/irqlab/sbom.cdx.json

# IRQLAB_HOST / IRQLAB_PORT choose the listening address. 127.0.0.1 by default because our
# containers run with --network host; use 0.0.0.0 with a published port on a bridge network.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    IRQLAB_HOST=127.0.0.1 \
    IRQLAB_PORT=8000 \
    IRQLAB_STATE_DIR=/var/lib/irqlab

# VMs survive a restart of the container (README "Durability"): mount a volume here.
VOLUME ["/var/lib/irqlab"]

USER 10001:10001
WORKDIR /
EXPOSE 8000

# Python's stdlib only (no curl in the image); ignores proxy variables; a wildcard bind address
# is probed on loopback.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as u; h = os.environ.get('IRQLAB_HOST') or '127.0.0.1'; h = {'0.0.0.0': '127.0.0.1', '::': '::1'}.get(h, h); h = '[' + h + ']' if ':' in h else h; r = u.build_opener(u.ProxyHandler({})).open('http://' + h + ':' + (os.environ.get('IRQLAB_PORT') or '8000') + '/healthz', timeout=4); raise SystemExit(0 if r.status == 200 else 1)"]

# Exec form, no shell, no wrapper: `irqlab serve` reads IRQLAB_HOST / IRQLAB_PORT (and every
# other IRQLAB_* setting) itself, is PID 1 and gets SIGTERM directly.
ENTRYPOINT ["irqlab", "serve"]
CMD []
