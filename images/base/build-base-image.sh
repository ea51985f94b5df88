#!/usr/bin/env bash
# Build a local Python base image for hosts that cannot pull from a registry.
#
#   images/base/build-base-image.sh [IMAGE_NAME]
#
# Uses debootstrap to make a minimal Debian bookworm root with python3 + venv + pip,
# copies this host's CA bundle into it (PyPI is often reached through a TLS-inspecting
# proxy, in CI as in hospital networks), and imports it with `docker import`.
# Skips the work when the image already exists (FORCE=1 rebuilds).
set -euo pipefail
NAME=${1:-hemafed-base:bookworm}
SUITE=${SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

log() { printf '[base-image] %s\n' "$*" >&2; }

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$NAME" >/dev/null 2>&1; then
  log "$NAME already present"
  exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
  else
    log "debootstrap is needed to build $NAME (or set BASE_IMAGE=python:3.11-slim where a registry is reachable)"
    exit 1
  fi
fi
ROOT=$(mktemp -d /tmp/hemafed-rootfs.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
log "debootstrap $SUITE into $ROOT"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  "$SUITE" "$ROOT" "$MIRROR" >/tmp/hemafed-debootstrap.log 2>&1 || {
  tail -20 /tmp/hemafed-debootstrap.log >&2; exit 1; }
if [ -f "$CA_BUNDLE" ]; then
  cp "$CA_BUNDLE" "$ROOT/etc/ssl/certs/ca-certificates.crt"
  mkdir -p "$ROOT/usr/local/share/ca-certificates"
  cp "$CA_BUNDLE" "$ROOT/usr/local/share/ca-certificates/host-bundle.crt"
fi
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
log "importing as $NAME"
tar -C "$ROOT" -c . | docker import \
  -c 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'CMD ["python3"]' - "$NAME" >/dev/null
log "built $NAME"
